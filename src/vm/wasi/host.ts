/**
 * The WASI preview1 host: every `wasi_snapshot_preview1` import, running on the
 * vCPU thread.
 *
 * Role: decode arguments from guest memory, dispatch on the descriptor's kind
 * (stdio, listener, socket, file, directory), and write results back. Files
 * and directories are delegated to the FileSystem (src/vm/fs); sockets and
 * stdin are Channels shared with the I/O side (src/vm/channel.ts); clocks,
 * entropy and the stdout/stderr sinks are capabilities handed in, so record
 * and replay can substitute them.
 *
 * Invariants:
 * - Host calls never throw into the guest except the control signals ProcExit
 *   and StopRequested; a bad guest pointer becomes errno FAULT.
 * - Every write into guest memory goes through GuestMemory (so it is journaled).
 * - The vCPU blocks only when the guest really waits (poll, accept, recv or
 *   send with nothing possible on a blocking descriptor), and then in
 *   Atomics.wait on the control block, so a stop request always wakes it.
 * - Descriptor numbers are allocated lowest-free, so they are deterministic.
 *
 * Record and replay (src/ft/tape.ts): with a RecordTape, the gate writes one
 * record per call: the function, a hash of its arguments, every
 * nondeterministic input the call consumed (clock values, entropy, bytes and
 * results from streams, poll events, accepted connections), its errno, and for
 * calls that consumed none (files, the descriptor table) a hash of the memory
 * they wrote. With a ReplayTape the same code runs, but each of those inputs
 * is taken from the log instead of the world, and everything else is performed
 * for real and checked against the log. The inputs are taken at exactly the
 * points marked "nondeterministic input" below, which keeps the two modes in
 * step by construction. Streams and listeners exist in replay as phantoms:
 * descriptors whose state is kept but that reach no network.
 */
import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import {
  Clockid,
  Errno,
  Eventrwflags,
  Eventtype,
  Fdflags,
  Filetype,
  Layout,
  PREOPENTYPE_LISTENER,
  Preopentype,
  Riflags,
  RIGHTS_LISTENER,
  RIGHTS_SOCKET,
  RIGHTS_STDIO,
  Sdflags,
  Subclockflags,
  WASI_FUNCTIONS,
  type WasiFunctionName,
} from '../../wasi/abi.js';
import { GuestFault, GuestInval, GuestMemory, encodeUtf8 } from '../../wasi/memory.js';
import { Channel, CtlSlot, type Ctl, RxFlag, TxFlag } from '../channel.js';
import type { DirHandle, FileHandle, FileStat, FileSystem, HandleState } from '../fs/fs.js';
import { ProcExit, SnapshotHere, StopRequested } from './signals.js';
import type { AsyncifyController } from '../instrument/asyncify.js';
import { PATH_BYTES_MAX } from '../fs/limits.js';
import type { Clock } from '../../io/clock.js';
import type { Entropy } from '../../io/entropy.js';
import { hashBig, hashBytes, hashFinish16, hashRange, hashStart, hashWord } from '../../core/hash.js';
import { EndOfLog, ReplayStop, type RecordTape, type ReplayTape } from '../../ft/tape.js';
import type { OutputLedger } from '../../ft/outputs.js';
import { STDERR_KEY, STDOUT_KEY, type FtShared } from '../ft-shared.js';

/** A guest descriptor. */
type FdEntry =
  | { kind: 'stdin'; ch: Channel; fdflags: number }
  | { kind: 'stdout' | 'stderr'; fdflags: number }
  | { kind: 'listener'; listener: number; fdflags: number }
  | { kind: 'socket'; ch: Channel; connId: number; fdflags: number }
  | { kind: 'file'; h: FileHandle }
  | { kind: 'dir'; h: DirHandle };

/** A descriptor as a snapshot keeps it (WasiHost.exportState). */
export type HostFdState =
  | { fd: number; kind: 'stdin' | 'stdout' | 'stderr'; fdflags: number }
  | { fd: number; kind: 'listener'; listener: number; fdflags: number }
  | { fd: number; kind: 'socket'; fdflags: number }
  | { fd: number; kind: 'file' | 'dir'; handle: HandleState };

/** The host side of a snapshot: JSON, versioned (bigints as decimal strings). */
export interface HostState {
  v: 1;
  fds: HostFdState[];
  lastClockNs: string[];
}

/** Messages the I/O side posts to the vCPU's port. */
export type IoToVcpuMessage = { type: 'conn'; listener: number; connId: number; sab: SharedArrayBuffer };

/** Messages the vCPU posts to the I/O side. */
export type VcpuToIoMessage =
  | { type: 'listener-closed'; listener: number }
  | { type: 'conn-dropped'; connId: number }
  | { type: 'stdin-wanted' };

export interface OutputSinks {
  /**
   * Writes guest stdout bytes; returns when they are handed to the host, and
   * false when the reader is gone (the guest then sees PIPE, as with a closed pipe).
   */
  stdout(bytes: Uint8Array): boolean;
  stderr(bytes: Uint8Array): boolean;
}

export interface WasiHostConfig {
  args: readonly string[];
  /** "KEY=VALUE" strings, in the order given. */
  env: readonly string[];
  /** Number of preopened listeners; they become fds 3 .. 3+n-1. */
  listenerCount: number;
  stdin: Channel;
}

export interface WasiHostCaps {
  clock: Clock;
  entropy: Entropy;
  out: OutputSinks;
  ctl: Ctl;
  /** The port on which the I/O side posts IoToVcpuMessage. */
  ioPort: MessagePort;
  /** Posts a message to the I/O side. */
  postToIo(msg: VcpuToIoMessage): void;
  fs: FileSystem;
}

/** Limits on what one guest can make the host hold. */
export const FD_COUNT_MAX = 4096;
/** A poll_oneoff call cannot make the host walk more subscriptions than this. */
export const POLL_SUBSCRIPTIONS_MAX = 4096;
/**
 * The most bytes one random_get may ask for. Each call's bytes go into one log
 * record, so they must fit a frame (FRAME_BODY_BYTES_MAX); real guests ask
 * for tens of bytes at a time.
 */
export const RANDOM_BYTES_PER_CALL_MAX = 16 * 1024 * 1024;
/** Errnos that mean the host's own disk failed: on a replaying host, that side's failure. */
export const HOST_DISK_ERRNOS: ReadonlySet<number> = new Set([Errno.NOSPC, Errno.IO, Errno.DQUOT]);
const NS_PER_MS = 1_000_000n;
/** What markOutput sleeps on for a moment while the marks ring is full. */
const ftSleep = new Int32Array(new SharedArrayBuffer(4));

export type WasiImports = Record<WasiFunctionName, (...args: never[]) => number | bigint | void>;

/**
 * What the host calls of an FT VM need beyond a recorder's (src/vm/ft-shared.ts,
 * docs/FT.md). On a primary, every output also leaves a mark, stdout and
 * stderr go through channels the main thread drains as the Output Rule
 * allows, and a blocking write returns a short count rather than wait for
 * ring space its own bytes hold (a call never waits for its own release). On a
 * backup, the end of the received log at a call's entry is the go-live point.
 */
export interface FtHostCaps {
  shared: FtShared;
  stdout: Channel;
  stderr: Channel;
  /** A backup's go-live: the tape that continues the log after `events` replayed calls. */
  goLive(events: number): RecordTape;
  /** After the switch: the host now runs live, recording from `events`. */
  wentLive(events: number): void;
}

/**
 * How long a completed call that produced output may wait in the tape before
 * the next host call flushes it. A guest that never sleeps (every poll finds
 * work) would otherwise hold its outputs until a frame fills.
 */
const OUTPUT_FLUSH_DELAY_MS = 0.2;

/** How the host relates to an event log. */
export type LogMode =
  | { mode: 'live' }
  | { mode: 'record'; tape: RecordTape; outputs: OutputLedger }
  | { mode: 'replay'; tape: ReplayTape; outputs: OutputLedger };

/**
 * Arguments that point at bytes the call reads: they are part of its
 * argument hash, so a backup notices a different path or a different
 * payload, not only a different pointer. [kind, ptr arg index, len arg index]:
 * 'b' plain bytes, 'v' an iovec array, 's' poll subscriptions (len = count).
 */
type ContentArg = readonly ['b' | 'v' | 's', number, number];
const CONTENT_ARGS: Partial<Record<WasiFunctionName, readonly ContentArg[]>> = {
  fd_write: [['v', 1, 2]],
  fd_pwrite: [['v', 1, 2]],
  sock_send: [['v', 1, 2]],
  poll_oneoff: [['s', 0, 2]],
  path_create_directory: [['b', 1, 2]],
  path_filestat_get: [['b', 2, 3]],
  path_filestat_set_times: [['b', 2, 3]],
  path_link: [
    ['b', 2, 3],
    ['b', 5, 6],
  ],
  path_open: [['b', 2, 3]],
  path_readlink: [['b', 1, 2]],
  path_remove_directory: [['b', 1, 2]],
  path_rename: [
    ['b', 1, 2],
    ['b', 4, 5],
  ],
  path_symlink: [
    ['b', 0, 1],
    ['b', 3, 4],
  ],
  path_unlink_file: [['b', 1, 2]],
};

/** How a logged gate keeps its record of one call (see WasiHost.loggedGate). */
interface CallLog {
  begin(fnId: number, argHash: number, args: readonly (number | bigint)[]): void;
  end(ret: number): void;
  exited(): void;
  interrupted(): void;
}

/** A stream descriptor in replay: it keeps its flags but no I/O side ever services it. */
function phantomChannel(): Channel {
  return Channel.create(16, 16);
}

type IoResult = { ok: true; value: number } | { ok: false; errno: number };

/** A stream result as one varint: the count times two, or the errno times two plus one. */
function encodeResult(r: IoResult): number {
  return r.ok ? r.value * 2 : r.errno * 2 + 1;
}

export class WasiHost {
  private mem: GuestMemory | null = null;
  private readonly fds = new Map<number, FdEntry>();
  /** Offered connections per listener, in arrival order. */
  private readonly pending = new Map<number, { connId: number; sab: SharedArrayBuffer }[]>();
  private msgSeen = 0;
  /** Per-function call and errno counts, when tracing is on (tests use it to prove coverage). */
  readonly trace: Map<string, Map<number, number>> | null;
  private readonly argvBytes: Uint8Array[];
  private readonly envBytes: Uint8Array[];
  /** The recording tape; on an FT backup it appears at go-live, when `rep` goes. */
  private rec: RecordTape | null;
  private rep: ReplayTape | null;
  private readonly ft: FtHostCaps | null;
  /** Set when the replay tape ran out at a call's entry: the go-live point of a backup. */
  private endAtEntry = false;
  /** performance.now() of the first output not yet flushed to the log, or null. */
  private outputPendingSinceMs: number | null = null;
  private readonly outputs: OutputLedger | null;
  /** Iovecs parsed by the argument hash of the current call (see sourceIovecs). */
  private iovCache: { ptr: number; len: number; bufs: Uint8Array[] } | null = null;
  /** The last value each clock gave the guest; the log keeps differences from it. */
  private readonly lastClockNs: bigint[] = [0n, 0n, 0n, 0n];
  /** Snapshot support, once the vCPU binds it (see snapshotting()). */
  private asyncify: AsyncifyController | null = null;
  private rewinding = false;
  /** The control block's SNAPSHOT counter as of the last snapshot this host started. */
  private snapshotsTaken = 0;
  private pagesPublished = -1;
  private thawsSeen = 0;

  constructor(
    cfg: WasiHostConfig,
    private readonly caps: WasiHostCaps,
    opts: { traceCalls?: boolean; log?: LogMode; ft?: FtHostCaps } = {},
  ) {
    this.trace = opts.traceCalls === true ? new Map() : null;
    const log = opts.log ?? { mode: 'live' };
    this.ft = opts.ft ?? null;
    if (this.ft !== null && log.mode === 'live') throw new Error('an FT VM keeps a log');
    this.rec = log.mode === 'record' ? log.tape : null;
    this.rep = log.mode === 'replay' ? log.tape : null;
    this.outputs = log.mode === 'live' ? null : log.outputs;
    // One encoder for both the sizes and the bytes (the browser_wasi_shim bug #109 lesson).
    this.argvBytes = cfg.args.map((a) => encodeUtf8(a + '\0'));
    this.envBytes = cfg.env.map((e) => encodeUtf8(e + '\0'));
    this.fds.set(0, { kind: 'stdin', ch: cfg.stdin, fdflags: 0 });
    this.fds.set(1, { kind: 'stdout', fdflags: Fdflags.APPEND });
    this.fds.set(2, { kind: 'stderr', fdflags: Fdflags.APPEND });
    let fd = 3;
    for (let i = 0; i < cfg.listenerCount; i++) {
      this.fds.set(fd++, { kind: 'listener', listener: i, fdflags: 0 });
      this.pending.set(i, []);
    }
    for (let i = 0; i < caps.fs.preopenCount(); i++) {
      this.fds.set(fd++, { kind: 'dir', h: caps.fs.openPreopen(i) });
    }
  }

  bindMemory(memory: WebAssembly.Memory): GuestMemory {
    this.mem = new GuestMemory(memory);
    if (this.rec !== null || this.rep !== null) this.mem.startJournal();
    return this.mem;
  }

  /** The tape recording this host's calls, if any (an FT backup's appears at go-live). */
  get recording(): RecordTape | null {
    return this.rec;
  }

  /** Whether this host replays a log (streams are phantoms, inputs come from the log). */
  get replaying(): boolean {
    return this.rep !== null;
  }

  get memory(): GuestMemory {
    if (this.mem === null) throw new Error('WasiHost: memory not bound before the first host call');
    return this.mem;
  }

  /** The import object for `wasi_snapshot_preview1`, each function wrapped by the host-call gate. */
  imports(): WasiImports {
    const out = {} as Record<string, (...args: never[]) => number | bigint | void>;
    WASI_FUNCTIONS.forEach((name, fnId) => {
      const impl = (this as unknown as Record<string, (...a: unknown[]) => number>)[name];
      if (typeof impl !== 'function') throw new Error(`WasiHost lacks ${name}`);
      const bound = impl.bind(this);
      let gated: (...a: never[]) => number;
      if (this.rec === null && this.rep === null) gated = this.gate(name, bound);
      else if (this.ft === null) {
        gated =
          this.rec !== null
            ? this.loggedGate(name, fnId, bound, this.recordLog())
            : this.loggedGate(name, fnId, bound, this.replayLog());
      } else {
        // An FT VM may switch from replay to recording (a backup's go-live), so it picks its gate
        // per call; the switch happens at the entry of the first call the received log lacks.
        const recGate = this.loggedGate(name, fnId, bound, this.recordLog());
        const repGate = this.loggedGate(name, fnId, bound, this.replayLog());
        gated = (...args: never[]): number => {
          if (this.rep === null) return recGate(...args);
          try {
            return repGate(...args);
          } catch (e) {
            if (!(e instanceof EndOfLog && this.endAtEntry)) throw e;
            this.switchToLive();
            return recGate(...args);
          }
        };
      }
      out[name] = this.snapshotting(this.traced(name, gated));
    });
    return out as WasiImports;
  }

  /**
   * The host-call gate: refreshes memory views after a grow, honours a stop
   * request, and turns guest faults into errno FAULT.
   */
  private gate(name: string, impl: (...a: unknown[]) => number): (...a: never[]) => number {
    const ctl = this.caps.ctl;
    const gated = (...args: unknown[]): number => {
      const stop = ctl.stopRequested();
      if (stop !== 0) throw new StopRequested(stop);
      this.memory.refresh();
      try {
        return impl(...args);
      } catch (e) {
        if (e instanceof GuestFault) return Errno.FAULT;
        if (e instanceof GuestInval) return Errno.INVAL;
        if (e instanceof ProcExit || e instanceof StopRequested || e instanceof SnapshotHere) throw e;
        // A host bug must not look like a guest error; it stops the VM with the host's message.
        throw e instanceof Error ? new HostCallError(name, e) : e;
      }
    };
    return gated;
  }

  /**
   * Snapshots at a host call's entry (src/vm/snapshot.ts drives them). With
   * asyncify bound, a call that finds a snapshot asked for unwinds the guest's
   * stack instead of running: it starts the unwind and returns at once, and
   * the export the vCPU called returns with the stack saved in memory. When
   * the vCPU rewinds (to resume the same instance, or a restored one), the
   * guest calls the same import again; that re-entry finishes the rewind and
   * then runs the call for real. A call blocked waiting when the snapshot is
   * asked for throws SnapshotHere before it took effect and unwinds the same
   * way, so it runs again from its start.
   */
  private snapshotting(inner: (...a: never[]) => number): (...a: never[]) => number {
    return (...args: never[]): number => {
      const a = this.asyncify;
      if (a === null) return inner(...args);
      if (this.caps.ctl.thawRequests() !== this.thawsSeen) this.thaw();
      if (this.rewinding) {
        this.rewinding = false;
        a.finishRewind();
      } else if (this.caps.ctl.snapshotRequests() !== this.snapshotsTaken) {
        this.snapshotsTaken = this.caps.ctl.snapshotRequests();
        a.startUnwind(0);
        return 0;
      }
      try {
        return inner(...args);
      } catch (e) {
        if (!(e instanceof SnapshotHere)) throw e;
        this.snapshotsTaken = this.caps.ctl.snapshotRequests();
        a.startUnwind(0);
        return 0;
      }
    };
  }

  /**
   * Lets this host take snapshots: `asyncify` drives the unwinds and rewinds
   * of the instance whose imports these are. `rewinding` says the instance is
   * being rewound now (the vCPU calls the export again next).
   */
  bindAsyncify(asyncify: AsyncifyController): void {
    this.asyncify = asyncify;
  }

  /** Drops the frozen disk of the last snapshot, as the main thread asked (it has been copied). */
  private thaw(): void {
    this.thawsSeen = this.caps.ctl.thawRequests();
    this.caps.fs.thaw();
  }

  /** The vCPU is about to rewind the guest into the call it was unwound at. */
  beginRewind(): void {
    this.rewinding = true;
  }

  /**
   * The resource table at a snapshot: every descriptor and what it refers
   * to, and the clocks as the guest last saw them. Connections are named but
   * not carried: they live in this host's kernel.
   */
  exportState(): HostState {
    const fds: HostFdState[] = [];
    for (const [fd, e] of [...this.fds].sort(([a], [b]) => a - b)) {
      switch (e.kind) {
        case 'stdin':
        case 'stdout':
        case 'stderr':
          fds.push({ fd, kind: e.kind, fdflags: e.fdflags });
          break;
        case 'listener':
          fds.push({ fd, kind: 'listener', listener: e.listener, fdflags: e.fdflags });
          break;
        case 'socket':
          fds.push({ fd, kind: 'socket', fdflags: e.fdflags });
          break;
        case 'file':
        case 'dir':
          fds.push({ fd, kind: e.kind, handle: this.caps.fs.exportHandle(e.h) });
          break;
      }
    }
    return { v: 1, fds, lastClockNs: this.lastClockNs.map(String) };
  }

  /**
   * Rebuilds the resource table from a snapshot's (before the rewind).
   * Connections read as reset: their TCP state stayed in the old host's
   * kernel. Returns a message when the snapshot does not fit this VM.
   */
  importState(state: HostState): string | null {
    if (state.v !== 1) return `host state version ${String(state.v)} is not supported (this host reads 1)`;
    if (state.lastClockNs.length !== this.lastClockNs.length)
      return 'the snapshot has another number of clocks';
    const rebuilt = new Map<number, FdEntry>();
    const stdin = this.fds.get(0);
    for (const f of state.fds) {
      switch (f.kind) {
        case 'stdin':
          if (stdin?.kind !== 'stdin') return 'this VM has no stdin to restore';
          rebuilt.set(f.fd, { kind: 'stdin', ch: stdin.ch, fdflags: f.fdflags });
          break;
        case 'stdout':
        case 'stderr':
          rebuilt.set(f.fd, { kind: f.kind, fdflags: f.fdflags });
          break;
        case 'listener':
          if (!this.pending.has(f.listener))
            return `the snapshot names listener ${f.listener}, which this VM lacks`;
          rebuilt.set(f.fd, { kind: 'listener', listener: f.listener, fdflags: f.fdflags });
          break;
        case 'socket': {
          const ch = phantomChannel();
          // A replaying backup gets the connection's traffic from the log; a live restore has none.
          if (this.rep === null) {
            ch.setRxFlag(RxFlag.RESET);
            ch.setTxFlag(TxFlag.BROKEN);
          }
          rebuilt.set(f.fd, { kind: 'socket', ch, connId: -1, fdflags: f.fdflags });
          break;
        }
        case 'file':
        case 'dir': {
          const h = this.caps.fs.importHandle(f.handle);
          if (typeof h === 'string') return h;
          if (!h.ok) return `cannot restore descriptor ${f.fd}: errno ${h.errno}`;
          rebuilt.set(
            f.fd,
            f.kind === 'file'
              ? { kind: 'file', h: h.value as FileHandle }
              : { kind: 'dir', h: h.value as DirHandle },
          );
          break;
        }
      }
    }
    // The preopen roots opened by the constructor are replaced by the snapshot's.
    for (const e of this.fds.values()) if (e.kind === 'dir' || e.kind === 'file') this.caps.fs.close(e.h);
    this.fds.clear();
    for (const [fd, e] of rebuilt) this.fds.set(fd, e);
    state.lastClockNs.forEach((ns, i) => (this.lastClockNs[i] = BigInt(ns)));
    // The monotonic clock continues from where the guest last saw it, as at a go-live.
    const base = this.caps.clock;
    const offsetNs = this.lastClockNs[Clockid.MONOTONIC]! - base.monotonicNs();
    if (offsetNs > 0n) {
      this.caps.clock = {
        monotonicNs: () => base.monotonicNs() + offsetNs,
        realtimeNs: () => base.realtimeNs(),
        cpuTimeNs: () => base.cpuTimeNs(),
      };
    }
    return null;
  }

  /** With tracing on, counts calls per function and errno around a gate. */
  private traced(name: string, gated: (...a: never[]) => number): (...a: never[]) => number {
    if (this.trace === null) return gated;
    // Tracing wraps the whole gate, so FAULT answers are counted as errno 21.
    const counts = new Map<number, number>();
    this.trace.set(name, counts);
    return (...args: never[]) => {
      let r: number | undefined;
      try {
        r = gated(...args);
        return r;
      } finally {
        // proc_exit and stop signals count as calls with no errno (-1).
        const key = typeof r === 'number' ? r : -1;
        counts.set(key, (counts.get(key) ?? 0) + 1);
      }
    };
  }

  /** The hash a record keeps of a call's arguments and of the bytes they point at. */
  private argHash(name: WasiFunctionName, fnId: number, args: readonly unknown[]): number {
    let h = hashWord(hashStart(), fnId);
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      h = typeof a === 'bigint' ? hashBig(h, a) : hashWord(h, a as number);
    }
    const content = CONTENT_ARGS[name];
    if (content !== undefined) {
      const mem = this.memory;
      for (let c = 0; c < content.length; c++) {
        const [kind, pi, li] = content[c]!;
        const ptr = args[pi] as number;
        const len = args[li] as number;
        try {
          if (kind === 'b') {
            mem.check(ptr, len);
            h = hashRange(h, mem.whole(), ptr, len);
          } else if (kind === 's') {
            mem.check(ptr, len * Layout.subscription.size);
            h = hashRange(h, mem.whole(), ptr, len * Layout.subscription.size);
          } else {
            // The call reads the same iovecs next: keep them (no guest code runs in between).
            const bufs = mem.iovecs(ptr, len);
            this.iovCache = { ptr, len, bufs };
            for (const v of bufs) h = hashBytes(h, v);
          }
        } catch (e) {
          // The call itself will answer FAULT or INVAL, the same way on both sides.
          if (!(e instanceof GuestFault || e instanceof GuestInval)) throw e;
          h = hashWord(h, -1);
        }
      }
    }
    return hashFinish16(h);
  }

  /**
   * The iovecs a write-like call reads its data from. When the argument hash
   * already parsed them in this call, they are reused instead of parsed twice.
   */
  private sourceIovecs(ptr: number, len: number): Uint8Array[] {
    const c = this.iovCache;
    this.iovCache = null;
    if (c !== null && c.ptr === ptr && c.len === len) return c.bufs;
    return this.memory.iovecs(ptr, len);
  }

  /** Hash of the guest memory written during this call, or null when it wrote none. */
  private effectHash(): number | null {
    const mem = this.memory;
    const j = mem.journalPairs();
    if (j.length === 0) return null;
    let h = hashStart();
    const u8 = mem.whole();
    for (let i = 0; i < j.length; i += 2) {
      const ptr = j[i]!;
      const len = j[i + 1]!;
      h = hashWord(hashWord(h, ptr), len);
      h = hashRange(h, u8, ptr, len);
    }
    return hashFinish16(h);
  }

  /**
   * The gate when a log is kept: the live gate's duties, plus one record per
   * call. `log` says how a call begins (record its head, or check it against
   * the log), how it ends, and how one that exits the guest or is interrupted
   * is accounted for.
   */
  private loggedGate(
    name: WasiFunctionName,
    fnId: number,
    impl: (...a: unknown[]) => number,
    log: CallLog,
  ): (...a: never[]) => number {
    const ctl = this.caps.ctl;
    return (...args: unknown[]): number => {
      const stop = ctl.stopRequested();
      if (stop !== 0) throw new StopRequested(stop);
      if (this.ft !== null && this.rec !== null) this.ftEntry();
      const mem = this.memory;
      mem.refresh();
      this.iovCache = null;
      log.begin(fnId, this.argHash(name, fnId, args), args as (number | bigint)[]);
      mem.resetJournal();
      let ret: number;
      try {
        ret = impl(...args);
      } catch (e) {
        if (e instanceof GuestFault) ret = Errno.FAULT;
        else if (e instanceof GuestInval) ret = Errno.INVAL;
        else if (e instanceof ProcExit) {
          log.exited();
          throw e;
        } else {
          // Interrupted before it took effect (a stop while blocked): the call is not in the log.
          log.interrupted();
          if (e instanceof StopRequested || e instanceof ReplayStop || e instanceof SnapshotHere) throw e;
          throw e instanceof Error ? new HostCallError(name, e) : e;
        }
      }
      log.end(ret);
      return ret;
    };
  }

  private recordLog(): CallLog {
    return {
      begin: (fnId, argHash) => this.rec!.begin(fnId, argHash),
      end: (ret) => this.rec!.end(ret, this.rec!.itemsUsed ? null : this.effectHash()),
      exited: () => this.rec!.end(undefined, null),
      interrupted: () => this.rec!.abort(),
    };
  }

  /**
   * At a recorded FT call's entry: outputs that waited long enough leave in a
   * frame (so the backup can acknowledge them), and a throttled primary waits
   * for its backup here, between calls, where waiting changes no result.
   */
  private ftEntry(): void {
    const rec = this.rec!;
    const ft = this.ft!;
    if (
      this.outputPendingSinceMs !== null &&
      performance.now() - this.outputPendingSinceMs >= OUTPUT_FLUSH_DELAY_MS
    ) {
      rec.flush();
      this.outputPendingSinceMs = null;
    }
    if (!ft.shared.throttled()) return;
    rec.flush();
    this.outputPendingSinceMs = null;
    while (ft.shared.throttled()) {
      const stop = this.caps.ctl.stopRequested();
      if (stop !== 0) throw new StopRequested(stop);
      ft.shared.waitThrottle(10);
    }
  }

  /**
   * After output on a recorded FT call: the mark that lets the main thread
   * release it once the backup acknowledges this call. Waits (flushing the log,
   * so acknowledgements can come) while the marks ring is full.
   */
  private markOutput(connKey: number, ch: Channel, flags: number): void {
    const ft = this.ft;
    const rec = this.rec;
    if (ft === null || rec === null) return;
    const mark = { connKey, txHead: ch.txHead(), flags, seq: rec.events };
    while (!ft.shared.writeMark(mark)) {
      rec.flush();
      this.caps.ctl.pokeIo();
      const stop = this.caps.ctl.stopRequested();
      if (stop !== 0) throw new StopRequested(stop);
      Atomics.wait(ftSleep, 0, 0, 1);
    }
    this.outputPendingSinceMs ??= performance.now();
    this.caps.ctl.pokeIo();
  }

  /**
   * A backup's go-live, at the entry of the first call its log lacks: from
   * here on calls run live and are recorded (continuing the sequence, for a
   * later backup). Connections replayed from the log lived in the dead
   * primary's kernel, so they read as reset; the monotonic clock continues
   * from the last value the guest saw.
   */
  private switchToLive(): void {
    const ft = this.ft!;
    const events = this.rep!.events;
    this.endAtEntry = false;
    this.rep = null;
    this.rec = ft.goLive(events);
    for (const e of this.fds.values()) {
      if (e.kind === 'socket' && e.connId < 0) {
        e.ch.setRxFlag(RxFlag.RESET);
        e.ch.setTxFlag(TxFlag.BROKEN);
      }
    }
    const base = this.caps.clock;
    const lastMonoNs = this.lastClockNs[Clockid.MONOTONIC]!;
    const offsetNs = lastMonoNs - base.monotonicNs();
    if (offsetNs > 0n) {
      this.caps.clock = {
        monotonicNs: () => base.monotonicNs() + offsetNs,
        realtimeNs: () => base.realtimeNs(),
        cpuTimeNs: () => base.cpuTimeNs(),
      };
    }
    ft.wentLive(events);
    const stdin = this.fds.get(0);
    if (stdin?.kind === 'stdin' && (stdin.ch.rxFlags() & RxFlag.WANTED) !== 0) {
      this.caps.postToIo({ type: 'stdin-wanted' });
    }
  }

  private replayLog(): CallLog {
    const effect = (): number | null => this.effectHash();
    return {
      begin: (fnId, argHash, args) => {
        try {
          this.rep!.begin(fnId, argHash, args);
        } catch (e) {
          // Only the end of the log at a call's entry is a go-live point (see imports()).
          if (e instanceof EndOfLog) this.endAtEntry = true;
          throw e;
        }
      },
      end: (ret) => {
        this.rep!.end(ret, effect, HOST_DISK_ERRNOS);
        this.ft?.shared.noteReplayed(this.rep!.events);
      },
      exited: () => this.rep!.endNoReturn(),
      interrupted: () => {},
    };
  }

  // ------------------------------------------------------------------ args, environ

  private writeStrings(list: Uint8Array[], ptrsPtr: number, bufPtr: number): number {
    const mem = this.memory;
    let p = bufPtr;
    for (let i = 0; i < list.length; i++) {
      const b = list[i]!;
      mem.setU32(ptrsPtr + i * 4, p);
      mem.write(p, b);
      p += b.byteLength;
    }
    return Errno.SUCCESS;
  }

  private writeSizes(list: Uint8Array[], countPtr: number, sizePtr: number): number {
    const total = list.reduce((n, b) => n + b.byteLength, 0);
    this.memory.setU32(countPtr, list.length);
    this.memory.setU32(sizePtr, total);
    return Errno.SUCCESS;
  }

  args_get(argvPtr: number, bufPtr: number): number {
    return this.writeStrings(this.argvBytes, argvPtr, bufPtr);
  }
  args_sizes_get(countPtr: number, sizePtr: number): number {
    return this.writeSizes(this.argvBytes, countPtr, sizePtr);
  }
  environ_get(envPtr: number, bufPtr: number): number {
    return this.writeStrings(this.envBytes, envPtr, bufPtr);
  }
  environ_sizes_get(countPtr: number, sizePtr: number): number {
    return this.writeSizes(this.envBytes, countPtr, sizePtr);
  }

  // ------------------------------------------------------------------ clocks, random

  private now(clockId: number): bigint | null {
    const c = this.caps.clock;
    switch (clockId) {
      case Clockid.REALTIME:
        return c.realtimeNs();
      case Clockid.MONOTONIC:
        return c.monotonicNs();
      case Clockid.PROCESS_CPUTIME_ID:
      case Clockid.THREAD_CPUTIME_ID:
        return c.cpuTimeNs();
      default:
        return null;
    }
  }

  clock_res_get(clockId: number, resPtr: number): number {
    let res: bigint;
    switch (clockId) {
      case Clockid.REALTIME:
        res = 1000n; // the wall clock is read with microsecond precision
        break;
      case Clockid.MONOTONIC:
        res = 1n; // process.hrtime.bigint() has nanosecond resolution
        break;
      case Clockid.PROCESS_CPUTIME_ID:
      case Clockid.THREAD_CPUTIME_ID:
        res = 1000n; // process.cpuUsage() reports microseconds
        break;
      default:
        return Errno.INVAL;
    }
    this.memory.setU64(resPtr, res);
    return Errno.SUCCESS;
  }

  clock_time_get(clockId: number, _precision: bigint, timePtr: number): number {
    if (!isClockId(clockId)) return Errno.INVAL;
    this.memory.check(timePtr, 8);
    this.memory.setU64(timePtr, this.clockInput(clockId));
    return Errno.SUCCESS;
  }

  /**
   * Nondeterministic input: a clock reading, logged as the difference from
   * that clock's last one. The monotonic clock never goes back, so its
   * difference is logged as is (nanoseconds). The others may: theirs is
   * zigzag-coded, and since the wall clock and CPU clocks tick in whole
   * microseconds, a difference that is a multiple of 1000 ns is logged in
   * microseconds (low bit 1). Three clock readings per request are common
   * (the KV example's event loop), so each saved byte counts.
   */
  private clockInput(clockId: number): bigint {
    const last = this.lastClockNs[clockId]!;
    let t: bigint;
    if (this.rep !== null) {
      const v = this.rep.takeBig();
      if (clockId === Clockid.MONOTONIC) {
        t = BigInt.asUintN(64, last + v);
      } else {
        const z = v >> 1n;
        const delta = (z & 1n) === 0n ? z >> 1n : -((z + 1n) >> 1n);
        t = BigInt.asUintN(64, last + ((v & 1n) === 1n ? delta * 1000n : delta));
      }
    } else {
      t = this.now(clockId)!;
      if (this.rec !== null) {
        let delta = BigInt.asIntN(64, t - last);
        if (clockId === Clockid.MONOTONIC) {
          if (delta < 0n) throw new Error(`the monotonic clock went back by ${-delta} ns`);
          this.rec.putBig(delta);
        } else {
          const micros = delta % 1000n === 0n ? 1n : 0n;
          if (micros === 1n) delta /= 1000n;
          const z = delta >= 0n ? delta << 1n : (-delta << 1n) - 1n;
          // Clocks read below 2^62 ns: 146 years of uptime, or the wall clock until 2116.
          if (z >= 1n << 63n) throw new Error(`clock difference out of range: ${delta}`);
          this.rec.putBig((z << 1n) | micros);
        }
      }
    }
    this.lastClockNs[clockId] = t;
    return t;
  }

  random_get(bufPtr: number, len: number): number {
    if (len > RANDOM_BYTES_PER_CALL_MAX) return Errno.INVAL;
    const view = this.memory.view(bufPtr, len);
    // Nondeterministic input: entropy.
    if (this.rep !== null) {
      view.set(this.rep.takeRaw(len));
    } else {
      this.caps.entropy.fill(view);
      this.rec?.putRaw(view);
    }
    this.memory.noteExternalWrite(bufPtr, len);
    return Errno.SUCCESS;
  }

  // ------------------------------------------------------------------ process

  proc_exit(code: number): never {
    throw new ProcExit(code >>> 0);
  }

  /** ENOSYS on purpose: preview1's proc_raise has no portable meaning and was removed from later WASI. */
  proc_raise(_sig: number): number {
    return Errno.NOSYS;
  }

  sched_yield(): number {
    // The vCPU is its own thread; there is nothing to yield to. A pending stop was checked by the gate.
    return Errno.SUCCESS;
  }

  // ------------------------------------------------------------------ descriptors

  private entry(fd: number): FdEntry | undefined {
    return this.fds.get(fd);
  }

  private allocFd(e: FdEntry): number | null {
    if (this.fds.size >= FD_COUNT_MAX) return null;
    let fd = 3;
    while (this.fds.has(fd)) fd++;
    this.fds.set(fd, e);
    return fd;
  }

  fd_close(fd: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    this.fds.delete(fd);
    switch (e.kind) {
      case 'file':
      case 'dir': {
        const r = this.caps.fs.close(e.h);
        return r.ok ? Errno.SUCCESS : r.errno;
      }
      case 'socket':
        e.ch.setTxFlag(TxFlag.CLOSE);
        this.caps.ctl.pokeIo();
        this.outputs?.close(fd);
        if (e.connId > 0) this.markOutput(e.connId, e.ch, TxFlag.CLOSE);
        return Errno.SUCCESS;
      case 'listener':
        this.caps.postToIo({ type: 'listener-closed', listener: e.listener });
        for (const offer of this.pending.get(e.listener) ?? []) {
          this.caps.postToIo({ type: 'conn-dropped', connId: offer.connId });
        }
        // Offers that arrive after this point find no queue and are dropped (drainMessages).
        this.pending.delete(e.listener);
        return Errno.SUCCESS;
      default:
        return Errno.SUCCESS;
    }
  }

  fd_renumber(from: number, to: number): number {
    const e = this.entry(from);
    if (!e || !this.fds.has(to)) return Errno.BADF;
    if (from === to) return Errno.SUCCESS;
    const closed = this.fd_close(to);
    if (closed !== Errno.SUCCESS) return closed;
    this.fds.delete(from);
    this.fds.set(to, e);
    return Errno.SUCCESS;
  }

  fd_fdstat_get(fd: number, statPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    const L = Layout.fdstat;
    let filetype: number, flags: number, base: bigint, inheriting: bigint;
    switch (e.kind) {
      case 'stdin':
      case 'stdout':
      case 'stderr':
        [filetype, flags, base, inheriting] = [Filetype.CHARACTER_DEVICE, e.fdflags, RIGHTS_STDIO, 0n];
        break;
      case 'listener':
        [filetype, flags, base, inheriting] = [
          Filetype.SOCKET_STREAM,
          e.fdflags,
          RIGHTS_LISTENER,
          RIGHTS_SOCKET,
        ];
        break;
      case 'socket':
        [filetype, flags, base, inheriting] = [Filetype.SOCKET_STREAM, e.fdflags, RIGHTS_SOCKET, 0n];
        break;
      case 'file':
        [filetype, flags, base, inheriting] = [
          Filetype.REGULAR_FILE,
          e.h.fdflags,
          e.h.rightsBase,
          e.h.rightsInheriting,
        ];
        break;
      case 'dir':
        [filetype, flags, base, inheriting] = [
          Filetype.DIRECTORY,
          e.h.fdflags,
          e.h.rightsBase,
          e.h.rightsInheriting,
        ];
        break;
    }
    const mem = this.memory;
    mem.check(statPtr, L.size);
    mem.fill(statPtr, L.size, 0);
    mem.setU8(statPtr + L.filetype, filetype);
    mem.setU16(statPtr + L.flags, flags);
    mem.setU64(statPtr + L.rightsBase, base);
    mem.setU64(statPtr + L.rightsInheriting, inheriting);
    return Errno.SUCCESS;
  }

  fd_fdstat_set_flags(fd: number, flags: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    switch (e.kind) {
      case 'file':
      case 'dir': {
        const r = this.caps.fs.setFdflags(e.h, flags);
        return r.ok ? Errno.SUCCESS : r.errno;
      }
      default:
        // Streams honour only NONBLOCK (stdout and stderr always append).
        if ((flags & ~Fdflags.NONBLOCK) !== 0 && e.kind !== 'stdout' && e.kind !== 'stderr')
          return Errno.INVAL;
        e.fdflags =
          (e.kind === 'stdout' || e.kind === 'stderr' ? Fdflags.APPEND : 0) | (flags & Fdflags.NONBLOCK);
        return Errno.SUCCESS;
    }
  }

  fd_fdstat_set_rights(fd: number, base: bigint, inheriting: bigint): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind === 'file' || e.kind === 'dir') {
      const r = this.caps.fs.setRights(e.h, base, inheriting);
      return r.ok ? Errno.SUCCESS : r.errno;
    }
    // Streams carry fixed rights; asking for no more than they have is a successful no-op.
    const have = e.kind === 'socket' ? RIGHTS_SOCKET : e.kind === 'listener' ? RIGHTS_LISTENER : RIGHTS_STDIO;
    return (base & ~have) === 0n ? Errno.SUCCESS : Errno.NOTCAPABLE;
  }

  private writeFilestat(ptr: number, st: FileStat): void {
    const L = Layout.filestat;
    const mem = this.memory;
    mem.check(ptr, L.size);
    mem.fill(ptr, L.size, 0);
    mem.setU64(ptr + L.dev, st.dev);
    mem.setU64(ptr + L.ino, st.ino);
    mem.setU8(ptr + L.filetype, st.filetype);
    mem.setU64(ptr + L.nlink, st.nlink);
    mem.setU64(ptr + L.fileSize, st.size);
    mem.setU64(ptr + L.atim, st.atimNs);
    mem.setU64(ptr + L.mtim, st.mtimNs);
    mem.setU64(ptr + L.ctim, st.ctimNs);
  }

  fd_filestat_get(fd: number, ptr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind === 'file' || e.kind === 'dir') {
      const r = this.caps.fs.fdFilestatGet(e.h);
      if (!r.ok) return r.errno;
      this.writeFilestat(ptr, r.value);
      return Errno.SUCCESS;
    }
    // Streams have virtual, deterministic metadata: device 0, inode = fd, no size, no times.
    const filetype =
      e.kind === 'socket' || e.kind === 'listener' ? Filetype.SOCKET_STREAM : Filetype.CHARACTER_DEVICE;
    this.writeFilestat(ptr, {
      dev: 0n,
      ino: BigInt(fd),
      filetype,
      nlink: 1n,
      size: 0n,
      atimNs: 0n,
      mtimNs: 0n,
      ctimNs: 0n,
    });
    return Errno.SUCCESS;
  }

  fd_filestat_set_size(fd: number, size: bigint): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.ISDIR : Errno.INVAL;
    const r = this.caps.fs.setSize(e.h, size);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_filestat_set_times(fd: number, atim: bigint, mtim: bigint, fstflags: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file' && e.kind !== 'dir') return Errno.INVAL;
    const r = this.caps.fs.fdFilestatSetTimes(e.h, atim, mtim, fstflags);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_advise(fd: number, offset: bigint, len: bigint, advice: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.BADF : Errno.SPIPE;
    const r = this.caps.fs.advise(e.h, offset, len, advice);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_allocate(fd: number, offset: bigint, len: bigint): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.BADF : Errno.SPIPE;
    const r = this.caps.fs.allocate(e.h, offset, len);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_datasync(fd: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file' && e.kind !== 'dir') return Errno.INVAL;
    const r = this.caps.fs.datasync(e.h);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_sync(fd: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file' && e.kind !== 'dir') return Errno.INVAL;
    const r = this.caps.fs.sync(e.h);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  fd_seek(fd: number, delta: bigint, whence: number, newOffsetPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.ISDIR : Errno.SPIPE;
    this.memory.check(newOffsetPtr, 8);
    const r = this.caps.fs.seek(e.h, delta, whence);
    if (!r.ok) return r.errno;
    this.memory.setU64(newOffsetPtr, r.value);
    return Errno.SUCCESS;
  }

  fd_tell(fd: number, offsetPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.ISDIR : Errno.SPIPE;
    this.memory.check(offsetPtr, 8);
    const r = this.caps.fs.tell(e.h);
    if (!r.ok) return r.errno;
    this.memory.setU64(offsetPtr, r.value);
    return Errno.SUCCESS;
  }

  fd_prestat_get(fd: number, ptr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    const L = Layout.prestat;
    if (e.kind === 'listener') {
      // Success with a non-directory tag, so preopen scans continue past listeners (DESIGN.md §5).
      this.memory.check(ptr, L.size);
      this.memory.fill(ptr, L.size, 0);
      this.memory.setU8(ptr + L.tag, PREOPENTYPE_LISTENER);
      return Errno.SUCCESS;
    }
    if (e.kind !== 'dir') return Errno.BADF;
    const guestPath = this.caps.fs.preopenGuestPath(e.h);
    if (guestPath === null) return Errno.BADF;
    this.memory.check(ptr, L.size);
    this.memory.fill(ptr, L.size, 0);
    this.memory.setU8(ptr + L.tag, Preopentype.DIR);
    this.memory.setU32(ptr + L.nameLen, encodeUtf8(guestPath).byteLength);
    return Errno.SUCCESS;
  }

  fd_prestat_dir_name(fd: number, pathPtr: number, pathLen: number): number {
    const e = this.entry(fd);
    if (!e || e.kind !== 'dir') return Errno.BADF;
    const guestPath = this.caps.fs.preopenGuestPath(e.h);
    if (guestPath === null) return Errno.BADF;
    const bytes = encodeUtf8(guestPath);
    if (pathLen < bytes.byteLength) return Errno.NAMETOOLONG;
    this.memory.write(pathPtr, bytes);
    return Errno.SUCCESS;
  }

  fd_read(fd: number, iovsPtr: number, iovsLen: number, nreadPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    const mem = this.memory;
    const bufs = mem.iovecs(iovsPtr, iovsLen);
    mem.check(nreadPtr, 4);
    let r: { ok: true; value: number } | { ok: false; errno: number };
    switch (e.kind) {
      case 'file':
        r = this.caps.fs.readv(e.h, bufs);
        break;
      case 'stdin':
      case 'socket':
        r = this.streamReadInput(e, bufs, 0);
        break;
      case 'dir':
        return Errno.ISDIR;
      case 'listener':
        return Errno.NOTCONN;
      default:
        return Errno.BADF;
    }
    if (!r.ok) return r.errno;
    this.noteFilled(bufs, r.value);
    mem.setU32(nreadPtr, r.value);
    return Errno.SUCCESS;
  }

  fd_pread(fd: number, iovsPtr: number, iovsLen: number, offset: bigint, nreadPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.ISDIR : Errno.SPIPE;
    const bufs = this.memory.iovecs(iovsPtr, iovsLen);
    this.memory.check(nreadPtr, 4);
    const r = this.caps.fs.preadv(e.h, bufs, offset);
    if (!r.ok) return r.errno;
    this.noteFilled(bufs, r.value);
    this.memory.setU32(nreadPtr, r.value);
    return Errno.SUCCESS;
  }

  fd_write(fd: number, iovsPtr: number, iovsLen: number, nwrittenPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    const mem = this.memory;
    const bufs = this.sourceIovecs(iovsPtr, iovsLen);
    mem.check(nwrittenPtr, 4);
    let n: number;
    switch (e.kind) {
      case 'stdout':
      case 'stderr': {
        const r = this.stdioWriteResult(e.kind, bufs);
        if (!r.ok) return r.errno;
        n = r.value;
        this.outputs?.data(fd, bufs, n);
        break;
      }
      case 'file': {
        const r = this.caps.fs.writev(e.h, bufs);
        if (!r.ok) return r.errno;
        n = r.value;
        break;
      }
      case 'socket': {
        const r = this.streamWriteResult(e.ch, e.fdflags, bufs);
        if (!r.ok) return r.errno;
        n = r.value;
        this.outputs?.data(fd, bufs, n);
        if (e.connId > 0) this.markOutput(e.connId, e.ch, 0);
        break;
      }
      case 'dir':
        return Errno.ISDIR;
      default:
        return Errno.BADF;
    }
    mem.setU32(nwrittenPtr, n);
    return Errno.SUCCESS;
  }

  /** Nondeterministic input: how much of a stdout/stderr write the host took (PIPE when its reader left). */
  private stdioWriteResult(kind: 'stdout' | 'stderr', bufs: Uint8Array[]): IoResult {
    if (this.rep !== null) return this.takeResult(bufs);
    if (this.ft !== null) {
      // An FT VM's console output waits for the backup like any output (the Output Rule).
      const ch = kind === 'stdout' ? this.ft.stdout : this.ft.stderr;
      const r = this.streamWrite(ch, 0, bufs);
      this.rec?.putU(encodeResult(r));
      if (r.ok) this.markOutput(kind === 'stdout' ? STDOUT_KEY : STDERR_KEY, ch, 0);
      return r;
    }
    let n = 0;
    let r: IoResult | null = null;
    const sink = kind === 'stdout' ? this.caps.out.stdout : this.caps.out.stderr;
    for (const b of bufs) {
      if (b.byteLength === 0) continue;
      if (!sink(b)) {
        r = n > 0 ? { ok: true, value: n } : { ok: false, errno: Errno.PIPE };
        break;
      }
      n += b.byteLength;
    }
    r ??= { ok: true, value: n };
    this.rec?.putU(encodeResult(r));
    return r;
  }

  /** Replay: a logged stream result, checked against the buffers' size. */
  private takeResult(bufs: readonly Uint8Array[]): IoResult {
    const v = this.rep!.takeU();
    if (v % 2 === 1) return { ok: false, errno: (v - 1) / 2 };
    const n = v / 2;
    if (n > totalBytes(bufs)) throw new GuestInval();
    return { ok: true, value: n };
  }

  /** Nondeterministic input: a read from a stream (socket or stdin) and the bytes it returned. */
  private streamReadInput(
    e: { kind: 'stdin' | 'socket'; ch: Channel; fdflags: number },
    bufs: Uint8Array[],
    riflags: number,
  ): IoResult {
    if (this.rep !== null) {
      const r = this.takeResult(bufs);
      if (r.ok) scatter(bufs, this.rep.takeRaw(r.value));
      return r;
    }
    if (e.kind === 'stdin') this.wantStdin(e.ch);
    const r = this.streamRead(e.ch, e.fdflags, bufs, riflags);
    if (this.rec !== null) {
      this.rec.putU(encodeResult(r));
      if (r.ok) this.rec.putViews(bufs, r.value);
    }
    return r;
  }

  /** Nondeterministic input: how many bytes a socket's bounded send buffer accepted. */
  private streamWriteResult(ch: Channel, fdflags: number, bufs: Uint8Array[]): IoResult {
    if (this.rep !== null) return this.takeResult(bufs);
    const r = this.streamWrite(ch, fdflags, bufs);
    this.rec?.putU(encodeResult(r));
    return r;
  }

  fd_pwrite(fd: number, iovsPtr: number, iovsLen: number, offset: bigint, nwrittenPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'file') return e.kind === 'dir' ? Errno.ISDIR : Errno.SPIPE;
    const bufs = this.sourceIovecs(iovsPtr, iovsLen);
    this.memory.check(nwrittenPtr, 4);
    const r = this.caps.fs.pwritev(e.h, bufs, offset);
    if (!r.ok) return r.errno;
    this.memory.setU32(nwrittenPtr, r.value);
    return Errno.SUCCESS;
  }

  fd_readdir(fd: number, bufPtr: number, bufLen: number, cookie: bigint, usedPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'dir') return Errno.NOTDIR;
    this.memory.check(bufPtr, bufLen);
    this.memory.check(usedPtr, 4);
    const r = this.caps.fs.readdir(e.h, cookie, bufLen);
    if (!r.ok) return r.errno;
    this.memory.write(bufPtr, r.value);
    this.memory.setU32(usedPtr, r.value.byteLength);
    return Errno.SUCCESS;
  }

  /** Notes the prefix of the iovecs that a read of `n` bytes filled, for the journal. */
  private noteFilled(bufs: Uint8Array[], n: number): void {
    let left = n;
    for (const b of bufs) {
      if (left <= 0) break;
      const k = Math.min(left, b.byteLength);
      this.memory.noteExternalWrite(b.byteOffset, k);
      left -= k;
    }
  }

  // ------------------------------------------------------------------ paths

  private dirOf(fd: number): DirHandle | number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'dir') return Errno.NOTDIR;
    return e.h;
  }

  private pathArg(ptr: number, len: number): string | number {
    if (len > PATH_BYTES_MAX) return Errno.NAMETOOLONG;
    const s = this.memory.string(ptr, len);
    return s === null ? Errno.ILSEQ : s;
  }

  path_create_directory(fd: number, pathPtr: number, pathLen: number): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    const r = this.caps.fs.pathCreateDirectory(dir, path);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_filestat_get(fd: number, flags: number, pathPtr: number, pathLen: number, statPtr: number): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    this.memory.check(statPtr, Layout.filestat.size);
    const r = this.caps.fs.pathFilestatGet(dir, flags, path);
    if (!r.ok) return r.errno;
    this.writeFilestat(statPtr, r.value);
    return Errno.SUCCESS;
  }

  path_filestat_set_times(
    fd: number,
    flags: number,
    pathPtr: number,
    pathLen: number,
    atim: bigint,
    mtim: bigint,
    fstflags: number,
  ): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    const r = this.caps.fs.pathFilestatSetTimes(dir, flags, path, atim, mtim, fstflags);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_link(
    oldFd: number,
    oldFlags: number,
    oldPathPtr: number,
    oldPathLen: number,
    newFd: number,
    newPathPtr: number,
    newPathLen: number,
  ): number {
    const oldDir = this.dirOf(oldFd);
    if (typeof oldDir === 'number') return oldDir;
    const newDir = this.dirOf(newFd);
    if (typeof newDir === 'number') return newDir;
    const oldPath = this.pathArg(oldPathPtr, oldPathLen);
    if (typeof oldPath === 'number') return oldPath;
    const newPath = this.pathArg(newPathPtr, newPathLen);
    if (typeof newPath === 'number') return newPath;
    const r = this.caps.fs.pathLink(oldDir, oldFlags, oldPath, newDir, newPath);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_open(
    fd: number,
    dirflags: number,
    pathPtr: number,
    pathLen: number,
    oflags: number,
    rightsBase: bigint,
    rightsInheriting: bigint,
    fdflags: number,
    fdPtr: number,
  ): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    this.memory.check(fdPtr, 4);
    if (this.fds.size >= FD_COUNT_MAX) return Errno.NFILE;
    const r = this.caps.fs.pathOpen(dir, dirflags, path, oflags, rightsBase, rightsInheriting, fdflags);
    if (!r.ok) return r.errno;
    const h = r.value;
    const newFd = this.allocFd(h.kind === 'file' ? { kind: 'file', h } : { kind: 'dir', h });
    if (newFd === null) {
      this.caps.fs.close(h);
      return Errno.NFILE;
    }
    this.memory.setU32(fdPtr, newFd);
    return Errno.SUCCESS;
  }

  path_readlink(
    fd: number,
    pathPtr: number,
    pathLen: number,
    bufPtr: number,
    bufLen: number,
    usedPtr: number,
  ): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    this.memory.check(bufPtr, bufLen);
    this.memory.check(usedPtr, 4);
    const r = this.caps.fs.pathReadlink(dir, path);
    if (!r.ok) return r.errno;
    // Like readlink(2), a short buffer truncates silently.
    const bytes = r.value.subarray(0, bufLen);
    this.memory.write(bufPtr, bytes);
    this.memory.setU32(usedPtr, bytes.byteLength);
    return Errno.SUCCESS;
  }

  path_remove_directory(fd: number, pathPtr: number, pathLen: number): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    const r = this.caps.fs.pathRemoveDirectory(dir, path);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_rename(
    oldFd: number,
    oldPathPtr: number,
    oldPathLen: number,
    newFd: number,
    newPathPtr: number,
    newPathLen: number,
  ): number {
    const oldDir = this.dirOf(oldFd);
    if (typeof oldDir === 'number') return oldDir;
    const newDir = this.dirOf(newFd);
    if (typeof newDir === 'number') return newDir;
    const oldPath = this.pathArg(oldPathPtr, oldPathLen);
    if (typeof oldPath === 'number') return oldPath;
    const newPath = this.pathArg(newPathPtr, newPathLen);
    if (typeof newPath === 'number') return newPath;
    const r = this.caps.fs.pathRename(oldDir, oldPath, newDir, newPath);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_symlink(
    oldPathPtr: number,
    oldPathLen: number,
    fd: number,
    newPathPtr: number,
    newPathLen: number,
  ): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const target = this.pathArg(oldPathPtr, oldPathLen);
    if (typeof target === 'number') return target;
    const newPath = this.pathArg(newPathPtr, newPathLen);
    if (typeof newPath === 'number') return newPath;
    const r = this.caps.fs.pathSymlink(target, dir, newPath);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  path_unlink_file(fd: number, pathPtr: number, pathLen: number): number {
    const dir = this.dirOf(fd);
    if (typeof dir === 'number') return dir;
    const path = this.pathArg(pathPtr, pathLen);
    if (typeof path === 'number') return path;
    const r = this.caps.fs.pathUnlinkFile(dir, path);
    return r.ok ? Errno.SUCCESS : r.errno;
  }

  // ------------------------------------------------------------------ streams and sockets

  /** Drains the I/O side's messages into local queues; cheap when there are none. */
  private drainMessages(): void {
    const seq = Atomics.load(this.caps.ctl.i32, CtlSlot.MSG);
    if (seq === this.msgSeen) return;
    this.msgSeen = seq;
    for (;;) {
      const m = receiveMessageOnPort(this.caps.ioPort);
      if (m === undefined) break;
      const msg = m.message as IoToVcpuMessage;
      if (msg.type === 'conn') {
        const q = this.pending.get(msg.listener);
        if (q) q.push({ connId: msg.connId, sab: msg.sab });
        else this.caps.postToIo({ type: 'conn-dropped', connId: msg.connId });
      }
    }
  }

  private wantStdin(ch: Channel): void {
    if ((ch.rxFlags() & RxFlag.WANTED) === 0) {
      ch.setRxFlag(RxFlag.WANTED);
      this.caps.postToIo({ type: 'stdin-wanted' });
    }
  }

  /**
   * Blocks the vCPU until `ready()` holds or the deadline (monotonic ns) passes.
   * Returns whether ready() held. The wake sequence is read before ready() is
   * evaluated, so a wake between the check and the wait is never lost.
   */
  private blockUntil(ready: () => boolean, deadlineNs: bigint | null): boolean {
    const ctl = this.caps.ctl;
    for (;;) {
      const seen = ctl.wakeSeq();
      this.drainMessages();
      if (ready()) return true;
      const stop = ctl.stopRequested();
      if (stop !== 0) throw new StopRequested(stop);
      if (ctl.thawRequests() !== this.thawsSeen) this.thaw();
      // Where the guest waits, the main thread learns how big its memory is: a snapshot's staging
      // buffer is made (and its pages touched) there, ahead of the pause.
      const pages = (this.mem?.byteLength ?? 0) >>> 16;
      if (pages !== this.pagesPublished) {
        ctl.publishMemoryPages(pages);
        this.pagesPublished = pages;
      }
      // Nothing has taken effect yet: the call gives way to a snapshot and runs again after it.
      if (this.asyncify !== null && ctl.snapshotRequests() !== this.snapshotsTaken) throw new SnapshotHere();
      let timeoutMs = Infinity;
      if (deadlineNs !== null) {
        const left = deadlineNs - this.caps.clock.monotonicNs();
        if (left <= 0n) return false;
        timeoutMs = Number(left) / Number(NS_PER_MS);
      }
      // Completed calls leave the tape before a long sleep: at once for a backup (outputs wait
      // on it), after the tape's flush delay for a file. A shorter sleep comes back to flush.
      if (this.rec !== null) timeoutMs = Math.min(timeoutMs, this.rec.beforeSleep());
      ctl.waitVcpu(seen, timeoutMs);
    }
  }

  /**
   * blockUntil without a deadline that answers false instead of throwing when
   * a stop or a snapshot is requested: for a call that already took effect
   * (bytes moved), which then returns what it has; the request is honoured at
   * the next call's entry.
   */
  private blockUntilOrStop(ready: () => boolean): boolean {
    try {
      return this.blockUntil(ready, null);
    } catch (e) {
      if (e instanceof StopRequested || e instanceof SnapshotHere) return false;
      throw e;
    }
  }

  private streamRead(
    ch: Channel,
    fdflags: number,
    bufs: Uint8Array[],
    riflags: number,
  ): { ok: true; value: number } | { ok: false; errno: number } {
    const want = bufs.reduce((n, b) => n + b.byteLength, 0);
    if (want === 0) return { ok: true, value: 0 };
    if ((ch.txFlags() & TxFlag.SHUT_RD) !== 0) return { ok: true, value: 0 };
    const readable = (): boolean =>
      ch.rxAvailable() > 0 || (ch.rxFlags() & (RxFlag.EOF | RxFlag.RESET)) !== 0;
    if (!readable()) {
      if ((fdflags & Fdflags.NONBLOCK) !== 0) return { ok: false, errno: Errno.AGAIN };
      this.blockUntil(readable, null);
    }
    const peek = (riflags & Riflags.RECV_PEEK) !== 0;
    let n = ch.rxPull(bufs, peek);
    // WAITALL on a non-blocking socket returns what is there, as Linux does.
    if ((riflags & Riflags.RECV_WAITALL) !== 0 && !peek && (fdflags & Fdflags.NONBLOCK) === 0) {
      // WAITALL: keep reading until the buffers are full or the stream ends.
      while (n < want) {
        const rest = sliceBufs(bufs, n);
        // A stop request after some bytes were taken returns them (as a signal would on
        // Linux); the stop is honoured at the next call's entry.
        if (!this.blockUntilOrStop(readable)) break;
        const k = ch.rxPull(rest);
        if (k === 0) break;
        n += k;
      }
    }
    if (n > 0) this.afterRxConsumed(ch);
    if (n === 0 && (ch.rxFlags() & RxFlag.RESET) !== 0) return { ok: false, errno: Errno.CONNRESET };
    return { ok: true, value: n };
  }

  private afterRxConsumed(ch: Channel): void {
    // The I/O side paused its socket because the ring was full; tell it there is room now.
    if ((ch.rxFlags() & RxFlag.PAUSED) !== 0) this.caps.ctl.pokeIo();
  }

  private streamWrite(
    ch: Channel,
    fdflags: number,
    bufs: Uint8Array[],
  ): { ok: true; value: number } | { ok: false; errno: number } {
    const total = bufs.reduce((n, b) => n + b.byteLength, 0);
    if ((ch.txFlags() & (TxFlag.SHUT_WR | TxFlag.CLOSE)) !== 0) return { ok: false, errno: Errno.PIPE };
    if ((ch.txFlags() & TxFlag.BROKEN) !== 0) return { ok: false, errno: Errno.PIPE };
    if (total === 0) return { ok: true, value: 0 };
    let n = 0;
    const nonblock = (fdflags & Fdflags.NONBLOCK) !== 0;
    for (;;) {
      const k = ch.txPush(n === 0 ? bufs : sliceBufs(bufs, n));
      if (k > 0) this.caps.ctl.pokeIo();
      n += k;
      if (n === total) break;
      if (nonblock) break;
      // An FT primary's bytes leave the ring only once the backup has this call's record, which
      // it cannot have before the call returns: what is in, is the answer (a short write).
      if (n > 0 && this.ft !== null && this.rec !== null) break;
      // A blocking socket accepts everything, as on Linux: wait for the I/O side to drain the ring.
      const writable = (): boolean => ch.txSpace() > 0 || (ch.txFlags() & TxFlag.BROKEN) !== 0;
      ch.setTxFlag(TxFlag.WANT_SPACE);
      // Bytes already pushed will be sent, so a stop request returns the partial count.
      const ok = n > 0 ? this.blockUntilOrStop(writable) : (this.blockUntil(writable, null), true);
      ch.clearTxFlag(TxFlag.WANT_SPACE);
      if (!ok) break;
      if ((ch.txFlags() & TxFlag.BROKEN) !== 0) break;
    }
    if (n === 0) return { ok: false, errno: (ch.txFlags() & TxFlag.BROKEN) !== 0 ? Errno.PIPE : Errno.AGAIN };
    return { ok: true, value: n };
  }

  sock_accept(fd: number, flags: number, fdPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'listener') return e.kind === 'socket' ? Errno.INVAL : Errno.NOTSOCK;
    if ((flags & ~Fdflags.NONBLOCK) !== 0) return Errno.INVAL;
    this.memory.check(fdPtr, 4);
    // Nondeterministic input: whether a connection was there (0) or the errno (AGAIN).
    let offer: { connId: number; sab: SharedArrayBuffer | null };
    if (this.rep !== null) {
      const v = this.rep.takeU();
      if (v !== 0) return v;
      offer = { connId: -1, sab: null };
    } else {
      const q = this.pending.get(e.listener)!;
      const hasOne = (): boolean => q.length > 0;
      this.drainMessages();
      if (!hasOne()) {
        if ((e.fdflags & Fdflags.NONBLOCK) !== 0) {
          this.rec?.putU(Errno.AGAIN);
          return Errno.AGAIN;
        }
        this.blockUntil(hasOne, null);
      }
      offer = q.shift()!;
      this.rec?.putU(0);
    }
    const newFd = this.allocFd({
      kind: 'socket',
      ch: offer.sab === null ? phantomChannel() : Channel.attach(offer.sab),
      connId: offer.connId,
      fdflags: flags & Fdflags.NONBLOCK,
    });
    if (newFd === null) {
      if (offer.sab !== null) this.caps.postToIo({ type: 'conn-dropped', connId: offer.connId });
      return Errno.NFILE;
    }
    this.memory.setU32(fdPtr, newFd);
    return Errno.SUCCESS;
  }

  sock_recv(
    fd: number,
    iovsPtr: number,
    iovsLen: number,
    riflags: number,
    nreadPtr: number,
    roflagsPtr: number,
  ): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'socket') return Errno.NOTSOCK;
    if ((riflags & ~(Riflags.RECV_PEEK | Riflags.RECV_WAITALL)) !== 0) return Errno.INVAL;
    const bufs = this.memory.iovecs(iovsPtr, iovsLen);
    this.memory.check(nreadPtr, 4);
    this.memory.check(roflagsPtr, 2);
    const r = this.streamReadInput(e, bufs, riflags);
    if (!r.ok) return r.errno;
    this.noteFilled(bufs, r.value);
    this.memory.setU32(nreadPtr, r.value);
    this.memory.setU16(roflagsPtr, 0);
    return Errno.SUCCESS;
  }

  sock_send(fd: number, iovsPtr: number, iovsLen: number, siflags: number, nwrittenPtr: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'socket') return Errno.NOTSOCK;
    if (siflags !== 0) return Errno.INVAL;
    const bufs = this.sourceIovecs(iovsPtr, iovsLen);
    this.memory.check(nwrittenPtr, 4);
    const r = this.streamWriteResult(e.ch, e.fdflags, bufs);
    if (!r.ok) return r.errno;
    this.outputs?.data(fd, bufs, r.value);
    if (e.connId > 0) this.markOutput(e.connId, e.ch, 0);
    this.memory.setU32(nwrittenPtr, r.value);
    return Errno.SUCCESS;
  }

  sock_shutdown(fd: number, how: number): number {
    const e = this.entry(fd);
    if (!e) return Errno.BADF;
    if (e.kind !== 'socket') return Errno.NOTSOCK;
    if (how === 0 || (how & ~(Sdflags.RD | Sdflags.WR)) !== 0) return Errno.INVAL;
    if ((how & Sdflags.RD) !== 0) {
      e.ch.setTxFlag(TxFlag.SHUT_RD);
      e.ch.rxDiscard();
    }
    if ((how & Sdflags.WR) !== 0) e.ch.setTxFlag(TxFlag.SHUT_WR);
    this.caps.ctl.pokeIo();
    this.outputs?.shutdown(fd, how);
    if ((how & Sdflags.WR) !== 0 && e.connId > 0) this.markOutput(e.connId, e.ch, TxFlag.SHUT_WR);
    return Errno.SUCCESS;
  }

  // ------------------------------------------------------------------ poll

  poll_oneoff(inPtr: number, outPtr: number, nsubs: number, neventsPtr: number): number {
    if (nsubs === 0) return Errno.INVAL;
    if (nsubs < 0 || nsubs > POLL_SUBSCRIPTIONS_MAX) return Errno.INVAL;
    const mem = this.memory;
    const S = Layout.subscription;
    const E = Layout.event;
    mem.check(inPtr, nsubs * S.size);
    mem.check(outPtr, nsubs * E.size);
    mem.check(neventsPtr, 4);
    const subs: Sub[] = [];
    for (let i = 0; i < nsubs; i++) {
      const p = inPtr + i * S.size;
      const userdata = mem.u64(p + S.userdata);
      const tag = mem.u8At(p + S.tag);
      if (tag === Eventtype.CLOCK) {
        const clockId = mem.u32(p + S.clockId);
        subs.push({
          userdata,
          tag,
          fd: -1,
          clockId,
          timeoutNs: mem.u64(p + S.clockTimeout),
          clockFlags: mem.u16(p + S.clockFlags),
          deadlineNs: 0n,
          error: isClockId(clockId) ? Errno.SUCCESS : Errno.INVAL,
        });
      } else if (tag === Eventtype.FD_READ || tag === Eventtype.FD_WRITE) {
        subs.push({
          userdata,
          tag,
          fd: mem.u32(p + S.fd),
          clockId: 0,
          timeoutNs: 0n,
          clockFlags: 0,
          deadlineNs: 0n,
          error: Errno.SUCCESS,
        });
      } else {
        return Errno.INVAL;
      }
    }
    // Nondeterministic input: which subscriptions fired, and with what.
    let events: PollEvent[];
    if (this.rep !== null) {
      events = this.takePollEvents(subs);
    } else {
      events = this.pollLive(subs);
      if (this.rec !== null) this.putPollEvents(subs, events);
    }
    for (let i = 0; i < events.length; i++) {
      const ev = events[i]!;
      const p = outPtr + i * E.size;
      mem.fill(p, E.size, 0);
      mem.setU64(p + E.userdata, ev.userdata);
      mem.setU16(p + E.error, ev.error);
      mem.setU8(p + E.type, ev.type);
      mem.setU64(p + E.nbytes, ev.nbytes);
      mem.setU16(p + E.flags, ev.flags);
    }
    mem.setU32(neventsPtr, events.length);
    return Errno.SUCCESS;
  }

  /** Waits for the subscriptions on the real clock and devices. */
  private pollLive(subs: Sub[]): PollEvent[] {
    const startNs = this.caps.clock.monotonicNs();
    let deadline: bigint | null = null;
    for (const s of subs) {
      if (s.tag !== Eventtype.CLOCK || s.error !== Errno.SUCCESS) continue;
      // Deadlines are kept on the monotonic clock, so a realtime jump cannot stall a sleep forever.
      if ((s.clockFlags & Subclockflags.ABSTIME) !== 0) {
        const now = this.now(s.clockId)!;
        s.deadlineNs = startNs + (s.timeoutNs > now ? s.timeoutNs - now : 0n);
      } else {
        s.deadlineNs = startNs + s.timeoutNs;
      }
      if (deadline === null || s.deadlineNs < deadline) deadline = s.deadlineNs;
    }
    let events: PollEvent[] = [];
    const collect = (): boolean => {
      events = this.pollReady(subs);
      return events.length > 0;
    };
    if (!this.blockUntil(collect, deadline)) collect();
    return events;
  }

  /**
   * Logs poll events compactly: their count, then per event the gap since the
   * previous subscription index and, for a descriptor event, one varint of
   * nbytes with its HANGUP flag and an errno-follows flag in the low bits
   * (then the errno, if any). Userdata and type come from the subscriptions.
   */
  private putPollEvents(subs: Sub[], events: PollEvent[]): void {
    const rec = this.rec!;
    rec.putU(events.length);
    let prev = -1;
    for (const ev of events) {
      rec.putU(ev.sub - prev - 1);
      prev = ev.sub;
      if (subs[ev.sub]!.tag === Eventtype.CLOCK) continue;
      if (ev.flags !== 0 && ev.flags !== Eventrwflags.HANGUP) {
        throw new Error(`unexpected poll event flags ${ev.flags}`);
      }
      const hangup = ev.flags === Eventrwflags.HANGUP ? 2 : 0;
      rec.putU(Number(ev.nbytes) * 4 + hangup + (ev.error !== 0 ? 1 : 0));
      if (ev.error !== 0) rec.putU(ev.error);
    }
  }

  private takePollEvents(subs: Sub[]): PollEvent[] {
    const rep = this.rep!;
    const n = rep.takeU();
    if (n > subs.length) throw new GuestInval();
    const events: PollEvent[] = [];
    let prev = -1;
    for (let i = 0; i < n; i++) {
      const idx = prev + 1 + rep.takeU();
      const s = subs[idx];
      if (s === undefined) throw new GuestInval();
      prev = idx;
      if (s.tag === Eventtype.CLOCK) {
        events.push({ sub: idx, userdata: s.userdata, error: s.error, type: s.tag, nbytes: 0n, flags: 0 });
        continue;
      }
      const v = rep.takeU();
      events.push({
        sub: idx,
        userdata: s.userdata,
        error: v % 2 === 1 ? rep.takeU() : 0,
        type: s.tag,
        nbytes: BigInt(Math.floor(v / 4)),
        flags: (v & 2) !== 0 ? Eventrwflags.HANGUP : 0,
      });
    }
    return events;
  }

  /** Evaluates every subscription once, without blocking. */
  private pollReady(subs: Sub[]): PollEvent[] {
    const out: PollEvent[] = [];
    let nowNs: bigint | null = null;
    for (let i = 0; i < subs.length; i++) {
      const s = subs[i]!;
      if (s.tag === Eventtype.CLOCK) {
        if (s.error !== Errno.SUCCESS) {
          out.push({ sub: i, userdata: s.userdata, error: s.error, type: s.tag, nbytes: 0n, flags: 0 });
          continue;
        }
        nowNs ??= this.caps.clock.monotonicNs();
        if (nowNs >= s.deadlineNs)
          out.push({ sub: i, userdata: s.userdata, error: 0, type: s.tag, nbytes: 0n, flags: 0 });
        continue;
      }
      const r = this.fdReadiness(s.fd, s.tag);
      if (r !== null) out.push({ sub: i, userdata: s.userdata, type: s.tag, ...r });
    }
    return out;
  }

  /** Readiness of one descriptor for reading or writing, or null when not ready. */
  private fdReadiness(fd: number, tag: number): { error: number; nbytes: bigint; flags: number } | null {
    const e = this.entry(fd);
    if (!e) return { error: Errno.BADF, nbytes: 0n, flags: 0 };
    const isRead = tag === Eventtype.FD_READ;
    switch (e.kind) {
      case 'file':
      case 'dir':
        // Regular files are always ready, as on POSIX.
        return { error: 0, nbytes: 0n, flags: 0 };
      case 'stdout':
      case 'stderr':
        return isRead ? null : { error: 0, nbytes: 0n, flags: 0 };
      case 'listener':
        if (!isRead) return null;
        return (this.pending.get(e.listener)?.length ?? 0) > 0 ? { error: 0, nbytes: 0n, flags: 0 } : null;
      case 'stdin':
      case 'socket': {
        const ch = e.ch;
        const rxf = ch.rxFlags();
        if (isRead) {
          if (e.kind === 'stdin') this.wantStdin(ch);
          const avail = ch.rxAvailable();
          if (avail > 0) return { error: 0, nbytes: BigInt(avail), flags: 0 };
          if ((rxf & (RxFlag.EOF | RxFlag.RESET)) !== 0 || (ch.txFlags() & TxFlag.SHUT_RD) !== 0) {
            return { error: 0, nbytes: 0n, flags: Eventrwflags.HANGUP };
          }
          return null;
        }
        if (e.kind === 'stdin') return null;
        const txf = ch.txFlags();
        // A write side that is shut (by the peer, a reset, or the guest itself) polls as hung up.
        if ((txf & (TxFlag.BROKEN | TxFlag.SHUT_WR | TxFlag.CLOSE)) !== 0 || (rxf & RxFlag.RESET) !== 0) {
          return { error: 0, nbytes: 0n, flags: Eventrwflags.HANGUP };
        }
        const space = ch.txSpace();
        if (space > 0) return { error: 0, nbytes: BigInt(space), flags: 0 };
        ch.setTxFlag(TxFlag.WANT_SPACE);
        return null;
      }
    }
  }
}

interface Sub {
  userdata: bigint;
  tag: number;
  fd: number;
  clockId: number;
  timeoutNs: bigint;
  clockFlags: number;
  /** Monotonic deadline, computed only when polling live. */
  deadlineNs: bigint;
  error: number;
}

interface PollEvent {
  /** Index of the subscription that fired. */
  sub: number;
  userdata: bigint;
  error: number;
  type: number;
  nbytes: bigint;
  flags: number;
}

function isClockId(id: number): boolean {
  return (
    id === Clockid.REALTIME ||
    id === Clockid.MONOTONIC ||
    id === Clockid.PROCESS_CPUTIME_ID ||
    id === Clockid.THREAD_CPUTIME_ID
  );
}

function totalBytes(bufs: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of bufs) n += b.byteLength;
  return n;
}

/** Copies `src` across the buffers in order (replay of a read). */
function scatter(bufs: readonly Uint8Array[], src: Uint8Array): void {
  let off = 0;
  for (const b of bufs) {
    if (off >= src.byteLength) break;
    const k = Math.min(b.byteLength, src.byteLength - off);
    b.set(src.subarray(off, off + k));
    off += k;
  }
}

/** Views of `bufs` with the first `skip` bytes removed. */
function sliceBufs(bufs: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let left = skip;
  for (const b of bufs) {
    if (left >= b.byteLength) {
      left -= b.byteLength;
      continue;
    }
    out.push(left > 0 ? b.subarray(left) : b);
    left = 0;
  }
  return out;
}

/** A failure inside the host's implementation of a call: a Lockstep bug, not a guest error. */
export class HostCallError extends Error {
  constructor(
    readonly call: string,
    readonly inner: Error,
  ) {
    super(`host call ${call} failed: ${inner.message}`);
    this.stack = inner.stack;
  }
}
