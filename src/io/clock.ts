/**
 * The real clocks: the only place Lockstep reads host time. Everything else
 * receives a Clock capability, so record and replay (and tests) can substitute
 * their own.
 */
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** Monotonic nanoseconds; never goes backwards within a process. */
  monotonicNs(): bigint;
  /** Wall-clock nanoseconds since the Unix epoch (microsecond precision). */
  realtimeNs(): bigint;
  /** CPU time used by this process, nanoseconds. */
  cpuTimeNs(): bigint;
}

export const realClock: Clock = {
  monotonicNs: () => process.hrtime.bigint(),
  realtimeNs: () => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n,
  cpuTimeNs: () => {
    const u = process.cpuUsage();
    return BigInt(u.user + u.system) * 1000n;
  },
};
