/**
 * Process identity on Linux, for fencing and host kill.
 *
 * Role: read a process's start time from /proc and the machine's boot id, so
 * that a pid recorded in the coordinator is acted on only while it still
 * names the same process on the same machine.
 *
 * Invariants:
 * - A pid is "the same process" only if /proc/PID/stat still exists, its start
 *   time (field 22, clock ticks since boot) equals the recorded one, and the
 *   boot id is the recorded one. A reused pid or a rebooted machine never
 *   matches, so kill() is never sent to a stranger.
 * - A zombie counts as dead: it runs no code and holds no socket.
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';

export interface ProcIdentity {
  pid: number;
  startTicks: number;
  bootId: string;
}

/** The start time (ticks since boot) and state letter of a pid, or null if there is no such process. */
export function procStat(pid: number): { startTicks: number; state: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) is in parentheses and may hold spaces or ')': fields restart after the last ')'.
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  const rest = text
    .slice(close + 2)
    .trim()
    .split(' ');
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  const startTicks = Number(rest[19]);
  if (!Number.isSafeInteger(startTicks)) return null;
  return { startTicks, state: rest[0] ?? '?' };
}

let bootIdCache: string | null = null;

export function bootId(): string {
  bootIdCache ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return bootIdCache;
}

export function selfIdentity(): ProcIdentity {
  const st = procStat(process.pid);
  if (st === null) throw new Error('assertion: /proc/self/stat is unreadable');
  return { pid: process.pid, startTicks: st.startTicks, bootId: bootId() };
}

export type Liveness = 'alive' | 'dead' | 'elsewhere';

/** Whether the recorded process still runs here ('elsewhere': it was recorded on another machine or boot). */
export function liveness(id: ProcIdentity): Liveness {
  if (id.bootId !== bootId()) return 'elsewhere';
  const st = procStat(id.pid);
  if (st === null || st.startTicks !== id.startTicks || st.state === 'Z' || st.state === 'X') return 'dead';
  return 'alive';
}

export type KillResult = { ok: true; killed: boolean } | { ok: false; message: string };

/**
 * Sends SIGKILL to the recorded process if it is still that process, and waits (up to waitMs)
 * until it is gone. `killed` says whether a signal was sent (false: it was already dead).
 */
export async function killVerified(id: ProcIdentity, waitMs: number): Promise<KillResult> {
  const before = liveness(id);
  if (before === 'elsewhere')
    return { ok: false, message: `pid ${id.pid} was recorded on another machine or boot` };
  if (before === 'dead') return { ok: true, killed: false };
  try {
    process.kill(id.pid, 'SIGKILL');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH')
      return { ok: false, message: `kill ${id.pid}: ${(e as Error).message}` };
  }
  const deadline = performance.now() + waitMs;
  while (liveness(id) === 'alive') {
    if (performance.now() > deadline)
      return { ok: false, message: `pid ${id.pid} still runs ${waitMs} ms after SIGKILL` };
    await new Promise((r) => setTimeout(r, 10));
  }
  return { ok: true, killed: true };
}

/**
 * The name under which `ip netns` knows this process's network namespace (a
 * bind mount in /run/netns with the same inode), or null for the initial
 * namespace or one without a name. A `vip` fence agent on the same machine
 * uses it to remove an address from that namespace.
 */
export function netnsName(): string | null {
  let self: number;
  try {
    self = statSync('/proc/self/ns/net').ino;
  } catch {
    return null;
  }
  let names: string[];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return null;
  }
  for (const name of names) {
    try {
      if (statSync(`/run/netns/${name}`).ino === self) return name;
    } catch {
      // Deleted while we looked: not ours.
    }
  }
  return null;
}
