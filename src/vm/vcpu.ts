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
 * - When recording, every completed host call is in the log ring before the
 *   result is posted, and a stop that leaves a summary closes the log with
 *   its trailer. When replaying, nothing reaches the network: streams are
 *   phantoms and inputs come from the ring the main thread fills.
 */
import {
  parentPort,
  workerData,
  MessageChannel,
  receiveMessageOnPort,
  type MessagePort,
} from 'node:worker_threads';
import { writeFileSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { createHash } from 'node:crypto';
import { ByteReader } from '../core/bytes.js';
import { ByteRing } from '../ft/ring.js';
import { OutputKind, OutputLedger, type OutputObserver } from '../ft/outputs.js';
import {
  Divergence,
  EndOfLog,
  RecordTape,
  ReplayHostFailure,
  ReplayTape,
  type CallDescription,
  type FrameSource,
  type RecordsFrame,
} from '../ft/tape.js';
import type { StopKind, Summary } from '../ft/log/format.js';
import type { LogMode } from './wasi/host.js';
import { WASI_FUNCTIONS } from '../wasi/abi.js';
import { writevAllSync } from '../io/log-file.js';
import { FtShared, type FtSharedSabs } from './ft-shared.js';

/**
 * How long completed calls may wait in the recorder's frame before a sleeping
 * vCPU writes them to a log file. Under load frames fill up instead; an idle
 * guest's last calls reach the file this long after it goes to sleep, which
 * bounds what a recorder killed with SIGKILL can lose.
 */
const LOG_FILE_FLUSH_DELAY_MS = 5;

/** The event log could not be written: recording cannot go on. */
class LogWriteError extends Error {
  constructor(why: string) {
    super(`cannot write the event log: ${why}`);
  }
}
import { Channel, Ctl } from './channel.js';
import {
  WasiHost,
  HostCallError,
  type FtHostCaps,
  type HostState,
  type VcpuToIoMessage,
} from './wasi/host.js';
import { AsyncifyController, type Capture } from './instrument/asyncify.js';
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
  /**
   * Where the main thread sends staging buffers for snapshots (ArrayBuffers
   * whose pages it touched ahead of time); null: snapshots copy into new memory.
   */
  snapshotPort?: MessagePort | null;
  /** CPU budget in fuel units, or null for none. Only meaningful for modules instrumented with fuel. */
  fuel: bigint | null;
  /** When set, per-function call counts are written here as JSON when the guest stops. */
  traceCallsPath: string | null;
  /** Host fds for the guest's stdout and stderr. */
  stdioFds: { stdout: number; stderr: number };
  /** Recording into, or replaying from, a log ring shared with the main thread. */
  log: VcpuLogInit | null;
  /** The instrumented module's mutable globals, in the order snapshots keep them. */
  globalExports: string[];
  /**
   * Where a snapshot freezes the VM's folders (FileSystem.freeze), or null
   * for snapshots without the disk.
   */
  freezeDir: string | null;
  /** Start from a snapshot instead of from `_start`'s beginning (src/vm/snapshot.ts). */
  restore: { capture: Capture; host: HostState; events: number } | null;
}

export type VcpuLogInit =
  | { mode: 'record'; fd: number }
  | { mode: 'replay'; ringSab: SharedArrayBuffer; showOutput: boolean }
  /** An FT primary: the log streams to the main thread, outputs leave marks (src/vm/ft-shared.ts). */
  | { mode: 'ft-primary'; ft: FtVcpuInit }
  /** An FT backup: replays the log the main thread receives, and goes live where it ends. */
  | { mode: 'ft-backup'; ringSab: SharedArrayBuffer; ft: FtVcpuInit };

export interface FtVcpuInit {
  sabs: FtSharedSabs;
  /** Channels for the guest's stdout and stderr, drained by the main thread as the Output Rule allows. */
  stdoutSab: SharedArrayBuffer;
  stderrSab: SharedArrayBuffer;
}

/** What replay found when it stopped early. */
export interface DivergenceReport {
  seq: number;
  expected: CallDescription;
  found: CallDescription;
  detail: string;
}

export type LimitKind = 'memory' | 'depth' | 'fuel' | 'stack';

export type VcpuResult = (
  | { type: 'result'; stop: 'exit'; exitCode: number }
  | { type: 'result'; stop: 'trap'; message: string }
  | { type: 'result'; stop: 'limit'; limit: LimitKind; message: string }
  | { type: 'result'; stop: 'signal'; reason: number }
  | { type: 'result'; stop: 'host-error'; message: string }
  | { type: 'result'; stop: 'end-of-log' }
  | { type: 'result'; stop: 'divergence'; divergence: DivergenceReport }
  | { type: 'result'; stop: 'replay-host-failure'; message: string }
) & {
  /** With a log: the summary of DESIGN.md §5 at the cut (absent after a host error). */
  summary?: Summary;
  /** Whether the guest's stdout (as written to ours) ends without a newline. */
  stdoutOpenLine?: boolean;
};

export type VcpuMessage =
  | VcpuResult
  | { type: 'io'; msg: VcpuToIoMessage }
  /** An FT backup went live after replaying `events` calls. */
  | { type: 'live'; events: number }
  /**
   * A snapshot at the entry of a host call (the guest resumed at once):
   * `events` calls had completed (null without a log).
   */
  | {
      type: 'snapshot';
      capture: Capture;
      host: HostState;
      events: number | null;
      /** The folders frozen as at the cut (one subfolder per preopen), or why not; null: not asked. */
      disk: SnapshotDisk | null;
      /** How long the guest was held for the copy (ms, from the unwind to the message). */
      pauseMs: number;
    };

export type SnapshotDisk = { dir: string; files: number; bytes: number } | { error: string };

/** Values of the instrumentation's `lockstep_limit` global. */
const LIMIT_BY_CODE: Record<number, LimitKind> = { 1: 'memory', 2: 'depth', 3: 'fuel' };

const retrySleep = new Int32Array(new SharedArrayBuffer(4));

/** Whether the last byte written to our stdout was not a newline (the summary line needs its own). */
let stdoutOpenLine = false;

/** Writes all bytes to a host fd; false when the reader is gone (EPIPE). */
function writeAll(fd: number, bytes: Uint8Array): boolean {
  if (fd === 1 && bytes.byteLength > 0) stdoutOpenLine = bytes[bytes.byteLength - 1] !== 0x0a;
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

/** Reads RECORDS frame bodies (u32 length, then the body) from the replay ring. */
class RingFrameSource implements FrameSource {
  private readonly lenBuf = new Uint8Array(4);
  constructor(
    private readonly ring: ByteRing,
    private readonly ctl: Ctl,
  ) {}
  next(): RecordsFrame | null {
    const interrupted = (): boolean => this.ctl.stopRequested() !== 0;
    if (!this.ring.readBlocking(this.lenBuf, interrupted)) return this.endOrStop();
    const len = new DataView(this.lenBuf.buffer).getUint32(0, true);
    const body = new Uint8Array(len);
    if (!this.ring.readBlocking(body, interrupted)) return this.endOrStop();
    const r = new ByteReader(body);
    const firstSeq = r.varint();
    const count = r.varint();
    return { firstSeq, count, records: body.subarray(r.pos) };
  }
  private endOrStop(): null {
    const stop = this.ctl.stopRequested();
    if (stop !== 0) throw new StopRequested(stop);
    return null;
  }
}

/** replay --show-output: guest stdout and stderr go to ours; socket outputs are described on stderr. */
const showOutput: OutputObserver = (kind, fd, bytes, how) => {
  if (kind === OutputKind.DATA && bytes !== null && (fd === 1 || fd === 2)) {
    writeAll(fd, bytes);
    return;
  }
  const what =
    kind === OutputKind.DATA
      ? `send ${bytes?.byteLength ?? 0} bytes: ${JSON.stringify(Buffer.from(bytes ?? []).toString('latin1'))}`
      : kind === OutputKind.SHUTDOWN
        ? `shutdown (how ${how})`
        : 'close';
  writeAll(2, Buffer.from(`lockstep: output fd ${fd}: ${what}\n`));
};

interface LogState {
  mode: LogMode;
  ledger: OutputLedger;
  events(): number;
}

function run(init: VcpuInit): VcpuResult {
  const port = parentPort!;
  const ctl = new Ctl(init.ctlSab);
  const fs = new FileSystem(init.preopens);
  const replaying = init.log?.mode === 'replay';
  // A backup reaches no network until it goes live; then its I/O side is the one it binds.
  let ioLive = !replaying && init.log?.mode !== 'ft-backup';
  const post = (msg: VcpuToIoMessage): void => {
    if (ioLive) port.postMessage({ type: 'io', msg } satisfies VcpuMessage);
  };
  let log: LogState | null = null;
  let ft: FtHostCaps | null = null;
  if (init.log !== null && (init.log.mode === 'ft-primary' || init.log.mode === 'ft-backup')) {
    const shared = FtShared.attach(init.log.ft.sabs);
    let tape: RecordTape | null = null;
    const sink = {
      write: (pieces: readonly Uint8Array[]): void => {
        for (const p of pieces) shared.log.writeBlocking(p);
      },
    };
    const recordFrom = (startSeq: number): RecordTape => {
      tape = new RecordTape(sink, { startSeq, flushDelayMs: 0 });
      return tape;
    };
    ft = {
      shared,
      stdout: Channel.attach(init.log.ft.stdoutSab),
      stderr: Channel.attach(init.log.ft.stderrSab),
      goLive: recordFrom,
      wentLive: (events) => {
        ioLive = true;
        port.postMessage({ type: 'live', events } satisfies VcpuMessage);
      },
    };
    const ledger = new OutputLedger();
    if (init.log.mode === 'ft-primary') {
      const rec = recordFrom(0);
      log = { mode: { mode: 'record', tape: rec, outputs: ledger }, ledger, events: () => tape!.events };
    } else {
      const ring = ByteRing.attach(init.log.ringSab);
      // A backup cloned from a snapshot replays from the snapshot's call on.
      const rep = new ReplayTape(new RingFrameSource(ring, ctl), WASI_FUNCTIONS, init.restore?.events ?? 0);
      log = {
        mode: { mode: 'replay', tape: rep, outputs: ledger },
        ledger,
        events: () => (tape !== null ? tape.events : rep.events),
      };
    }
  } else if (init.log !== null) {
    if (init.log.mode === 'record') {
      const logFd = init.log.fd;
      const tape = new RecordTape(
        {
          write: (pieces) => {
            try {
              writevAllSync(logFd, pieces);
            } catch (e) {
              throw new LogWriteError((e as Error).message);
            }
          },
        },
        // A file has no reader waiting on each call: a few milliseconds of calls go in one write.
        { flushDelayMs: LOG_FILE_FLUSH_DELAY_MS, nowMs: () => performance.now() },
      );
      const ledger = new OutputLedger();
      log = { mode: { mode: 'record', tape, outputs: ledger }, ledger, events: () => tape.events };
    } else if (init.log.mode === 'replay') {
      const ring = ByteRing.attach(init.log.ringSab);
      const tape = new ReplayTape(new RingFrameSource(ring, ctl), WASI_FUNCTIONS);
      const ledger = new OutputLedger(init.log.showOutput ? showOutput : null);
      log = { mode: { mode: 'replay', tape, outputs: ledger }, ledger, events: () => tape.events };
    }
  }
  const host = new WasiHost(
    {
      args: init.args,
      env: init.env,
      listenerCount: init.listenerCount,
      stdin: replaying ? Channel.create(16, 16) : Channel.attach(init.stdinSab),
    },
    {
      clock: realClock,
      entropy: realEntropy,
      out: {
        stdout: (b) => writeAll(init.stdioFds.stdout, b),
        stderr: (b) => writeAll(init.stdioFds.stderr, b),
      },
      ctl,
      ioPort: replaying ? new MessageChannel().port1 : init.ioPort,
      postToIo: post,
      fs,
    },
    {
      traceCalls: init.traceCallsPath !== null,
      log: log?.mode ?? { mode: 'live' },
      ...(ft !== null ? { ft } : {}),
    },
  );
  try {
    const { result, memory } = runInstance(init, host, fs, (capture, hostState, pausedAtMs) => {
      // Every call before the cut is in a whole frame of the log, so a backup restored from this
      // snapshot can take the stream from the frame that holds call `events`.
      host.recording?.flush();
      let disk: SnapshotDisk | null = null;
      if (init.freezeDir !== null && init.preopens.length > 0) {
        // Still inside the pause: the frozen tree is the disk exactly at the cut.
        const frozen = fs.freeze(init.freezeDir);
        disk = typeof frozen === 'string' ? { error: frozen } : { dir: init.freezeDir, ...frozen };
      }
      const msg: VcpuMessage = {
        type: 'snapshot',
        capture,
        host: hostState,
        events: log === null ? null : log.events(),
        disk,
        pauseMs: performance.now() - pausedAtMs,
      };
      // The copy of memory moves to the main thread instead of being copied again.
      port.postMessage(msg, [capture.memory.buffer as ArrayBuffer]);
    });
    if (log === null || result.stop === 'host-error' || memory === null) return result;
    const summary: Summary = {
      events: log.events(),
      memorySha256: memorySha256(memory),
      outputSha256: log.ledger.digest(),
      exitCode: result.stop === 'exit' ? result.exitCode : null,
      stop: stopKindOf(result),
    };
    if (ft !== null) {
      // The recording tape of an FT VM (a backup's since go-live) ends the streamed log.
      host.recording?.finish({ ...summary, outputs: log.ledger.count, outputBytes: log.ledger.bytes });
    } else if (log.mode.mode === 'record') {
      log.mode.tape.finish({ ...summary, outputs: log.ledger.count, outputBytes: log.ledger.bytes });
    }
    return { ...result, summary };
  } catch (e) {
    // The log could not be written (its disk is full, say): stop, with the reason.
    if (e instanceof LogWriteError) return { type: 'result', stop: 'host-error', message: e.message };
    throw e;
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

/** The summary's stop kind for a vCPU result. */
function stopKindOf(r: VcpuResult): StopKind {
  switch (r.stop) {
    case 'exit':
      return 'exit';
    case 'limit':
      return r.limit === 'fuel' ? 'budget' : 'trap';
    case 'signal':
      return 'signal';
    case 'end-of-log':
    case 'divergence':
    case 'replay-host-failure':
      return 'end-of-log';
    default:
      return 'trap';
  }
}

/**
 * SHA-256 of linear memory. The instrumentation's asyncify data region is
 * only in use while a snapshot unwinds the stack, never between host calls,
 * so at a cut the whole memory is the guest's.
 */
function memorySha256(memory: WebAssembly.Memory): string {
  return createHash('sha256').update(new Uint8Array(memory.buffer)).digest('hex');
}

function runInstance(
  init: VcpuInit,
  host: WasiHost,
  fs: FileSystem,
  onSnapshot: (capture: Capture, hostState: HostState, pausedAtMs: number) => void,
): { result: VcpuResult; memory: WebAssembly.Memory | null } {
  let instance: WebAssembly.Instance;
  const fail = (message: string): { result: VcpuResult; memory: null } => ({
    result: { type: 'result', stop: 'host-error', message },
    memory: null,
  });
  try {
    const module = new WebAssembly.Module(init.moduleBytes);
    instance = new WebAssembly.Instance(module, { [WASI_MODULE]: host.imports() });
  } catch (e) {
    return fail(`cannot instantiate module: ${(e as Error).message}`);
  }
  const exports = instance.exports;
  const memory = exports['memory'];
  if (!(memory instanceof WebAssembly.Memory)) {
    return fail('module does not export its memory as "memory"');
  }
  host.bindMemory(memory);
  const fuelGlobal = exports['lockstep_fuel'];
  if (init.fuel !== null) {
    if (!(fuelGlobal instanceof WebAssembly.Global)) {
      return fail('a CPU budget needs a module instrumented with fuel');
    }
    fuelGlobal.value = init.fuel;
  }
  const start = exports['_start'];
  if (typeof start !== 'function') return fail('module has no _start');
  // Snapshots unwind the guest's stack at a host call's entry and rewind it (asyncify).
  let asyncify: AsyncifyController | null = null;
  try {
    asyncify = new AsyncifyController(instance, init.globalExports);
  } catch (e) {
    return fail(`the module cannot take snapshots: ${(e as Error).message}`);
  }
  host.bindAsyncify(asyncify);
  if (init.restore !== null) {
    const why = host.importState(init.restore.host);
    if (why !== null) return fail(`cannot restore the snapshot: ${why}`);
    asyncify.startRewind(init.restore.capture);
    host.beginRewind();
  }
  const done = (result: VcpuResult): { result: VcpuResult; memory: WebAssembly.Memory } => ({
    result,
    memory,
  });
  try {
    for (;;) {
      (start as () => void)();
      if (asyncify.state !== 'unwinding') break;
      // The guest stopped at a host call's entry for a snapshot: keep it, then resume it at once.
      const pausedAtMs = performance.now();
      // The latest staging buffer the main thread sent, if any (older ones are dropped).
      let staging: ArrayBuffer | null = null;
      for (
        let m = init.snapshotPort != null ? receiveMessageOnPort(init.snapshotPort) : undefined;
        m !== undefined;
      ) {
        staging = m.message instanceof ArrayBuffer ? m.message : staging;
        m = receiveMessageOnPort(init.snapshotPort!);
      }
      const capture = asyncify.finishUnwind(staging);
      asyncify.resumeInPlace({ ...capture, memory: new Uint8Array(memory.buffer) });
      host.beginRewind();
      // Still inside the pause (the guest runs again at the next start()): the copy of memory,
      // the host table and the frozen disk are what the guest waits for.
      onSnapshot(
        { ...capture, memory: capture.memory, stack: capture.stack.slice() },
        host.exportState(),
        pausedAtMs,
      );
    }
    return done({ type: 'result', stop: 'exit', exitCode: 0 });
  } catch (e) {
    if (e instanceof ProcExit) return done({ type: 'result', stop: 'exit', exitCode: e.code });
    if (e instanceof StopRequested) return done({ type: 'result', stop: 'signal', reason: e.reason });
    if (e instanceof EndOfLog) return done({ type: 'result', stop: 'end-of-log' });
    if (e instanceof Divergence) {
      const { seq, expected, found, detail } = e;
      const args = found.args?.map((a) => (typeof a === 'bigint' ? a.toString() : a)) as number[] | undefined;
      return done({
        type: 'result',
        stop: 'divergence',
        divergence: { seq, expected, found: { ...found, ...(args ? { args } : {}) }, detail },
      });
    }
    if (e instanceof ReplayHostFailure) {
      return done({ type: 'result', stop: 'replay-host-failure', message: e.message });
    }
    if (e instanceof HostCallError) return fail(e.message);
    if (e instanceof WebAssembly.RuntimeError) {
      const limitGlobal = exports['lockstep_limit'];
      const code = limitGlobal instanceof WebAssembly.Global ? Number(limitGlobal.value) : 0;
      const limit = LIMIT_BY_CODE[code];
      if (limit !== undefined)
        return done({ type: 'result', stop: 'limit', limit, message: limitMessage(limit) });
      return done({ type: 'result', stop: 'trap', message: e.message });
    }
    if (e instanceof RangeError && /call stack/i.test(e.message)) {
      // The depth counter should stop the guest first; reaching V8's own limit means it was set too high.
      return done({ type: 'result', stop: 'limit', limit: 'stack', message: 'host stack exhausted' });
    }
    return fail(e instanceof Error ? (e.stack ?? e.message) : String(e));
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
  parentPort.postMessage({ ...result, stdoutOpenLine } satisfies VcpuMessage);
}
