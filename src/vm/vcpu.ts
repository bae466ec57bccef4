/**
 * The vCPU: the worker thread that runs one guest.
 *
 * Role: compile and instantiate the instrumented module with the WASI host,
 * run `_start`, and report how it stopped. The guest computes here without
 * ever touching the host's event loop, so a guest that loops forever delays
 * nothing but itself.
 *
 * Invariants:
 * - The worker reports exactly one VcpuResult and then ends.
 * - Files are served synchronously on this thread; sockets and stdin come
 *   through Channels; stdout and stderr are written synchronously to the
 *   process's fds 1 and 2, so their order is the guest's order.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { writeFileSync, writeSync } from 'node:fs';
import { Channel, Ctl } from './channel.js';
import { WasiHost, HostCallError, type VcpuToIoMessage } from './wasi/host.js';
import { ProcExit, StopRequested } from './wasi/signals.js';
import { FileSystem, type Preopen } from './fs/fs.js';
import { WASI_MODULE } from '../wasi/abi.js';
import { realClock } from '../io/clock.js';
import { realEntropy } from '../io/entropy.js';

export interface VcpuInit {
  moduleBytes: Uint8Array;
  args: string[];
  env: string[];
  listenerCount: number;
  preopens: Preopen[];
  ctlSab: SharedArrayBuffer;
  stdinSab: SharedArrayBuffer;
  ioPort: MessagePort;
  /** CPU budget in fuel units, or null for none. Only meaningful for modules instrumented with fuel. */
  fuel: bigint | null;
  /** When set, per-function call counts are written here as JSON when the guest stops. */
  traceCallsPath: string | null;
}

export type LimitKind = 'memory' | 'depth' | 'fuel' | 'stack';

export type VcpuResult =
  | { type: 'result'; stop: 'exit'; exitCode: number }
  | { type: 'result'; stop: 'trap'; message: string }
  | { type: 'result'; stop: 'limit'; limit: LimitKind; message: string }
  | { type: 'result'; stop: 'signal'; reason: number }
  | { type: 'result'; stop: 'host-error'; message: string };

export type VcpuMessage = VcpuResult | { type: 'io'; msg: VcpuToIoMessage };

/** Values of the instrumentation's `lockstep_limit` global. */
const LIMIT_BY_CODE: Record<number, LimitKind> = { 1: 'memory', 2: 'depth', 3: 'fuel' };

const retrySleep = new Int32Array(new SharedArrayBuffer(4));

/** Writes all bytes to a host fd; false when the reader is gone (EPIPE). */
function writeAll(fd: number, bytes: Uint8Array): boolean {
  let off = 0;
  while (off < bytes.byteLength) {
    try {
      off += writeSync(fd, bytes, off, bytes.byteLength - off);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        // stdout may be a non-blocking pipe; wait a moment for the reader instead of failing the guest.
        Atomics.wait(retrySleep, 0, 0, 1);
        continue;
      }
      if (code === 'EPIPE') return false; // the reader went away: the guest sees PIPE
      throw e;
    }
  }
  return true;
}

function run(init: VcpuInit): VcpuResult {
  const port = parentPort!;
  const ctl = new Ctl(init.ctlSab);
  const fs = new FileSystem(init.preopens);
  const post = (msg: VcpuToIoMessage): void => port.postMessage({ type: 'io', msg } satisfies VcpuMessage);
  const host = new WasiHost(
    {
      args: init.args,
      env: init.env,
      listenerCount: init.listenerCount,
      stdin: Channel.attach(init.stdinSab),
    },
    {
      clock: realClock,
      entropy: realEntropy,
      out: { stdout: (b) => writeAll(1, b), stderr: (b) => writeAll(2, b) },
      ctl,
      ioPort: init.ioPort,
      postToIo: post,
      fs,
    },
    { traceCalls: init.traceCallsPath !== null },
  );
  try {
    return runInstance(init, host, fs);
  } finally {
    if (host.trace !== null && init.traceCallsPath !== null) {
      const obj: Record<string, Record<string, number>> = {};
      for (const [fn, counts] of host.trace) {
        if (counts.size > 0) obj[fn] = Object.fromEntries([...counts].map(([k, v]) => [String(k), v]));
      }
      writeFileSync(init.traceCallsPath, JSON.stringify(obj));
    }
  }
}

function runInstance(init: VcpuInit, host: WasiHost, fs: FileSystem): VcpuResult {
  let instance: WebAssembly.Instance;
  try {
    const module = new WebAssembly.Module(init.moduleBytes);
    instance = new WebAssembly.Instance(module, { [WASI_MODULE]: host.imports() });
  } catch (e) {
    return {
      type: 'result',
      stop: 'host-error',
      message: `cannot instantiate module: ${(e as Error).message}`,
    };
  }
  const exports = instance.exports;
  const memory = exports['memory'];
  if (!(memory instanceof WebAssembly.Memory)) {
    return { type: 'result', stop: 'host-error', message: 'module does not export its memory as "memory"' };
  }
  host.bindMemory(memory);
  const fuelGlobal = exports['lockstep_fuel'];
  if (init.fuel !== null) {
    if (!(fuelGlobal instanceof WebAssembly.Global)) {
      return {
        type: 'result',
        stop: 'host-error',
        message: 'a CPU budget needs a module instrumented with fuel',
      };
    }
    fuelGlobal.value = init.fuel;
  }
  const start = exports['_start'];
  if (typeof start !== 'function')
    return { type: 'result', stop: 'host-error', message: 'module has no _start' };
  try {
    (start as () => void)();
    return { type: 'result', stop: 'exit', exitCode: 0 };
  } catch (e) {
    if (e instanceof ProcExit) return { type: 'result', stop: 'exit', exitCode: e.code };
    if (e instanceof StopRequested) return { type: 'result', stop: 'signal', reason: e.reason };
    if (e instanceof HostCallError) return { type: 'result', stop: 'host-error', message: e.message };
    if (e instanceof WebAssembly.RuntimeError) {
      const limitGlobal = exports['lockstep_limit'];
      const code = limitGlobal instanceof WebAssembly.Global ? Number(limitGlobal.value) : 0;
      const limit = LIMIT_BY_CODE[code];
      if (limit !== undefined) return { type: 'result', stop: 'limit', limit, message: limitMessage(limit) };
      return { type: 'result', stop: 'trap', message: e.message };
    }
    if (e instanceof RangeError && /call stack/i.test(e.message)) {
      // The depth counter should stop the guest first; reaching V8's own limit means it was set too high.
      return { type: 'result', stop: 'limit', limit: 'stack', message: 'host stack exhausted' };
    }
    return {
      type: 'result',
      stop: 'host-error',
      message: e instanceof Error ? (e.stack ?? e.message) : String(e),
    };
  } finally {
    fs.closeAll();
  }
}

function limitMessage(limit: LimitKind): string {
  switch (limit) {
    case 'memory':
      return 'the guest exhausted its memory limit';
    case 'depth':
      return 'the guest exceeded the call-depth limit';
    case 'fuel':
      return 'the guest used up its CPU budget';
    case 'stack':
      return 'the guest exhausted the host stack';
  }
}

if (
  parentPort !== null &&
  workerData !== null &&
  typeof workerData === 'object' &&
  'moduleBytes' in workerData
) {
  const result = run(workerData as VcpuInit);
  parentPort.postMessage(result satisfies VcpuMessage);
}
