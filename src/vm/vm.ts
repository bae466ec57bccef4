/**
 * Vm: one guest's lifecycle on the host's main thread.
 *
 * Role: load and instrument the module (refusing bad ones with a clear error),
 * bind the listeners, start the vCPU worker, relay its I/O messages to the
 * NetDevice, and resolve with how the guest stopped.
 *
 * Invariants:
 * - load() changes nothing on the host when it refuses a module or an option.
 * - wait() resolves exactly once, after the worker has ended and the devices
 *   are closed; the host process survives whatever the guest did.
 * - stop() asks the guest to stop at its next host call; if it is computing
 *   without host calls, the worker is terminated after a grace period.
 */
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import { readFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Channel, Ctl } from './channel.js';
import { NetDevice, type ListenSpec } from '../io/net-device.js';
import type { SnapshotDisk, VcpuInit, VcpuMessage, VcpuResult } from './vcpu.js';
import type { Preopen } from './fs/fs.js';
import type { Capture } from './instrument/asyncify.js';
import type { HostState } from './wasi/host.js';
import { WASI_FUNCTIONS, WASI_MODULE } from '../wasi/abi.js';
import { DEFAULT_CALL_DEPTH_MAX, instrument, type InstrumentedModule } from './instrument/index.js';
import { instrumentInWorker } from './instrument/worker.js';
import { HOST_ROOT_BYTES_MAX } from './fs/limits.js';
import { StopReason } from './wasi/signals.js';
import { ByteRing } from '../ft/ring.js';
import { FtShared } from './ft-shared.js';
import { OutputGate } from '../io/output-gate.js';
import { LogError, LogScanner } from '../ft/log/scanner.js';
import {
  FrameKind,
  encodeFrame,
  encodeHeader,
  preamble,
  recordsPrefix,
  type LogHeader,
} from '../ft/log/format.js';
import { folderManifestSha256 } from '../io/manifest.js';
import { ByteReader } from '../core/bytes.js';

/** 64 KiB wasm pages per MiB. */
export const PAGES_PER_MIB = 16;
/** Default memory limit: generous for services, far below wasm32's 4 GiB. */
export const MEMORY_MAX_MIB_DEFAULT = 512;
/** The largest memory limit: 2 GiB less one page keeps every guest pointer a non-negative i32. */
export const MEMORY_MAX_MIB_LIMIT = 2047;
/**
 * Fixed call-depth limit. It is part of the VM's definition (a backup must
 * stop at the same depth), well below what V8's byte-based stack allows in
 * the vCPU worker with VCPU_STACK_MIB.
 */
export const CALL_DEPTH_MAX = DEFAULT_CALL_DEPTH_MAX;
/** The vCPU worker's stack; generous so the depth counter, not V8, is what stops deep recursion. */
const VCPU_STACK_MIB = 16;
/** A going-live backup retries a busy service address this many times, 100 ms apart. */
const GO_LIVE_BIND_ATTEMPTS = 50;
/** How long a stop request may wait for a host call before the worker is terminated. */
const STOP_GRACE_MS = 2000;

export interface VmConfig {
  wasmPath: string;
  args: string[];
  env: string[];
  listen: ListenSpec[];
  /** Host folder preopened as /data, or null for no disk. */
  disk: string | null;
  dirs: Preopen[];
  memoryMaxMib: number;
  /** CPU budget in fuel units, or null. */
  cpuBudget: bigint | null;
  cacheDir?: string;
  stdin?: Readable | null;
  /** Writes per-function host-call counts here as JSON when the guest stops (for coverage tests). */
  traceCallsPath?: string | null;
  /** Record into a log ring (the caller stores it), or replay from one (the caller fills it). */
  log?: VmLog | null;
  /**
   * Where the guest's stdout and stderr go (host fds, written by the vCPU thread); default 1 and 2.
   * A host daemon points both at the VM's console log.
   */
  stdioFds?: { stdout: number; stderr: number };
  /** Instrument on a worker thread, so a cold cache does not stall this thread (host daemons). */
  instrumentInWorker?: boolean;
  /** TESTING ONLY: an FT primary releases outputs without waiting for acknowledgements (a planted bug). */
  ftPlantReleaseBeforeAck?: boolean;
  /** Seed for the NetDevice's I/O chaos (tests of record/replay under hostile networks); null: none. */
  ioChaosSeed?: number | null;
  /**
   * Start from this snapshot (its memory, globals, stack and host resource
   * table) instead of from the beginning: the guest resumes at the host call
   * it was taken at. The caller checked it fits this module (see
   * snapshotMismatch).
   */
  restore?: VmSnapshot | null;
  /**
   * The caller hands `restore`'s memory over: it moves to the vCPU thread
   * instead of being copied (a 64 MiB copy would hold the main thread), and
   * the caller's view of it is detached.
   */
  restoreTransfer?: boolean;
  /** Where snapshots freeze the VM's disk (see FileSystem.freeze); absent: snapshots carry no disk. */
  freezeDir?: string | null;
}

/** Room for the guest's memory to grow between the size the vCPU last published and the snapshot. */
const SNAPSHOT_STAGING_SLACK_BYTES = 4 * 1024 * 1024;

/**
 * A buffer of `bytes` whose pages are all touched (written once), in 4 MiB
 * slices with the event loop let in between, so that neither this thread nor
 * the guest waits for the page faults of a 64 MiB copy.
 */
async function touchedBuffer(bytes: number): Promise<ArrayBuffer> {
  const buf = new ArrayBuffer(bytes);
  const u8 = new Uint8Array(buf);
  const sliceBytes = 4 * 1024 * 1024;
  for (let at = 0; at < bytes; at += sliceBytes) {
    // One write per page faults it in; fill() of a slice writes each page.
    u8.fill(1, at, Math.min(bytes, at + sliceBytes));
    await new Promise((resolve) => setImmediate(resolve));
  }
  return buf;
}

/** A snapshot of a running VM at a host call's entry, as the vCPU took it. */
export interface VmSnapshot {
  capture: Capture;
  host: HostState;
  /** Calls completed before the cut (the log position), or null for a VM without a log. */
  events: number | null;
  /**
   * The VM's folders frozen as at the cut, one subfolder per preopen (by
   * index), until thawSnapshotDisk(); or why they could not be; null when
   * the VM has no freezeDir or no folders.
   */
  disk?: SnapshotDisk | null;
  /** How long the guest was held for it (ms). */
  pauseMs?: number;
}

/**
 * A VM's relation to an event log. Replaying binds nothing: the listeners
 * (as many as the recording had) exist only as phantom descriptors.
 */
export type VmLog =
  | { mode: 'record'; fd: number }
  | { mode: 'replay'; ring: ByteRing; showOutput: boolean; listenerCount: number }
  /**
   * An FT primary: its log streams out through `ftLog()` (the caller puts
   * `logPrefix`, the preamble and header frame, first), and its outputs wait
   * for `releaseOutputs()` (the Output Rule).
   */
  | { mode: 'ft-primary' }
  /**
   * An FT backup: replays what `feedLog()` receives, binds nothing, and at
   * `goLive()` takes over from where the received log ends.
   */
  | { mode: 'ft-backup' };

export type VmLoadError = { code: 'io' | 'instrument' | 'option'; message: string };

export type VmOutcome = VcpuResult | { type: 'result'; stop: 'killed'; reason: number };

export function defaultCacheDir(): string {
  return (
    process.env['LOCKSTEP_CACHE_DIR'] ??
    path.join(process.env['XDG_CACHE_HOME'] ?? path.join(homedir(), '.cache'), 'lockstep')
  );
}

export const KNOWN_IMPORTS: ReadonlySet<string> = new Set(WASI_FUNCTIONS.map((f) => `${WASI_MODULE}.${f}`));

/** The FT side of a running VM (primary or backup), see VmLog. */
interface FtState {
  shared: FtShared;
  stdout: Channel;
  stderr: Channel;
  gate: OutputGate | null;
  /** Backup only: the replay ring, the scanner of the received stream, and what waits to enter the ring. */
  replay: {
    ring: ByteRing;
    scanner: LogScanner;
    queue: Uint8Array[];
    queuedBytes: number;
    pumping: boolean;
  } | null;
  live: { events: number } | null;
  onLive: ((events: number) => void) | null;
}

export class Vm {
  private worker: Worker | null = null;
  private net: NetDevice | null = null;
  private ioPort: MessagePort | null = null;
  private stdinCh: Channel | null = null;
  private ft: FtState | null = null;
  private readonly ctl = new Ctl();
  private outcome: Promise<VmOutcome> | null = null;
  private killTimer: NodeJS.Timeout | null = null;
  private stopReason = 0;

  private constructor(
    readonly config: VmConfig,
    readonly module: InstrumentedModule,
    readonly preopens: Preopen[],
  ) {}

  /** Reads, validates and instruments the module. Nothing is started. */
  static async load(config: VmConfig): Promise<{ ok: true; vm: Vm } | { ok: false; error: VmLoadError }> {
    const preopens: Preopen[] = [];
    if (config.disk !== null) preopens.push({ guestPath: '/data', hostPath: path.resolve(config.disk) });
    for (const d of config.dirs)
      preopens.push({ guestPath: d.guestPath, hostPath: path.resolve(d.hostPath) });
    for (const p of preopens) {
      if (Buffer.byteLength(p.hostPath, 'utf8') > HOST_ROOT_BYTES_MAX) {
        return {
          ok: false,
          error: {
            code: 'option',
            message: `folder path longer than ${HOST_ROOT_BYTES_MAX} bytes: ${p.hostPath}`,
          },
        };
      }
      let isDir = false;
      try {
        isDir = statSync(p.hostPath).isDirectory();
      } catch {
        return {
          ok: false,
          error: { code: 'option', message: `folder for ${p.guestPath} does not exist: ${p.hostPath}` },
        };
      }
      if (!isDir) return { ok: false, error: { code: 'option', message: `not a folder: ${p.hostPath}` } };
    }
    // Pointers arrive from the guest as signed i32; the host reads them as such, so the
    // limit stays below 2 GiB, where every pointer is non-negative.
    if (!(config.memoryMaxMib >= 1 && config.memoryMaxMib <= MEMORY_MAX_MIB_LIMIT)) {
      return {
        ok: false,
        error: { code: 'option', message: `memory limit must be between 1 and ${MEMORY_MAX_MIB_LIMIT} MiB` },
      };
    }
    let source: Uint8Array;
    try {
      source = await readFile(config.wasmPath);
    } catch (e) {
      return {
        ok: false,
        error: { code: 'io', message: `cannot read ${config.wasmPath}: ${(e as Error).message}` },
      };
    }
    const r = await (config.instrumentInWorker === true ? instrumentInWorker : instrument)(
      source,
      {
        memoryMaxPages: config.memoryMaxMib * PAGES_PER_MIB,
        callDepthMax: CALL_DEPTH_MAX,
        fuel: config.cpuBudget !== null,
      },
      KNOWN_IMPORTS,
      config.cacheDir ?? defaultCacheDir(),
    );
    if (!r.ok)
      return { ok: false, error: { code: 'instrument', message: `${config.wasmPath}: ${r.error.message}` } };
    return { ok: true, vm: new Vm(config, r.module, preopens) };
  }

  /** Binds the listeners and starts the vCPU. Resolves with the bound addresses. */
  async start(): Promise<ListenSpec[]> {
    const io = new MessageChannel();
    const stdinCh = Channel.create(64 * 1024, 1024);
    this.ioPort = io.port1;
    this.stdinCh = stdinCh;
    const log = this.config.log ?? null;
    let addresses: ListenSpec[] = [];
    if (log?.mode === 'ft-primary' || log?.mode === 'ft-backup') {
      const shared = FtShared.create();
      this.ft = {
        shared,
        stdout: Channel.create(64 * 1024, 64 * 1024),
        stderr: Channel.create(64 * 1024, 64 * 1024),
        gate: null,
        replay:
          log.mode === 'ft-backup'
            ? {
                ring: ByteRing.create(),
                scanner: new LogScanner(this.config.restore?.events ?? 0),
                queue: [],
                queuedBytes: 0,
                pumping: false,
              }
            : null,
        live: null,
        onLive: null,
      };
    }
    if (log?.mode !== 'replay' && log?.mode !== 'ft-backup') {
      this.net = new NetDevice(
        this.ctl,
        io.port1,
        this.config.listen,
        {
          ch: stdinCh,
          // A VM reads the process's stdin only when its owner says so (`lockstep run` does);
          // VMs in a host daemon must never share the daemon's stdin.
          source: this.config.stdin ?? null,
        },
        this.config.ioChaosSeed ?? null,
      );
      addresses = await this.net.listen();
      if (this.ft !== null) this.net.setGate(this.makeGate(this.ft));
      this.net.start();
    }
    const snapshotChannel = new MessageChannel();
    this.snapshotPort = snapshotChannel.port1;
    const init: VcpuInit = {
      snapshotPort: snapshotChannel.port2,
      moduleBytes: this.module.bytes,
      args: this.config.args,
      env: this.config.env,
      listenerCount: log?.mode === 'replay' ? log.listenerCount : this.config.listen.length,
      preopens: this.preopens,
      ctlSab: this.ctl.sab,
      stdinSab: stdinCh.sab,
      ioPort: io.port2,
      fuel: this.config.cpuBudget,
      traceCallsPath: this.config.traceCallsPath ?? null,
      stdioFds: this.config.stdioFds ?? { stdout: 1, stderr: 2 },
      log: this.vcpuLogInit(log),
      globalExports: this.module.globalExports,
      freezeDir: this.config.freezeDir ?? null,
      restore:
        this.config.restore == null
          ? null
          : {
              capture: this.config.restore.capture,
              host: this.config.restore.host,
              events: this.config.restore.events ?? 0,
            },
    };
    const workerUrl = new URL('./vcpu.js', import.meta.url);
    const worker = new Worker(workerUrl, {
      workerData: init,
      transferList: [io.port2, snapshotChannel.port2, ...this.restoreTransferList()],
      resourceLimits: { stackSizeMb: VCPU_STACK_MIB },
      stdout: false,
      stderr: false,
    });
    this.worker = worker;
    this.outcome = new Promise<VmOutcome>((resolve) => {
      let result: VcpuResult | null = null;
      worker.on('message', (m: VcpuMessage) => {
        if (m.type === 'io') this.net?.onVcpuMessage(m.msg);
        else if (m.type === 'live') this.onVcpuLive(m.events);
        else if (m.type === 'snapshot')
          this.onSnapshot({
            capture: m.capture,
            host: m.host,
            events: m.events,
            disk: m.disk,
            pauseMs: m.pauseMs,
          });
        else result = m;
      });
      worker.on('error', (e) => {
        result ??= { type: 'result', stop: 'host-error', message: e.stack ?? e.message };
      });
      worker.on('exit', () => {
        if (this.killTimer) clearTimeout(this.killTimer);
        const net = this.net;
        const done = (): void =>
          resolve(result ?? { type: 'result', stop: 'killed', reason: this.stopReason || StopReason.HOST });
        if (net) void net.close().then(done, done);
        else done();
      });
    });
    return addresses;
  }

  private readonly snapshotWaiters: ((s: VmSnapshot | null) => void)[] = [];
  /** Where staging buffers for snapshots go to the vCPU. */
  private snapshotPort: MessagePort | null = null;

  /**
   * Takes a snapshot at the guest's next host call (a call blocked waiting
   * gives way and runs again after it). The guest resumes at once. Resolves
   * with null if the VM stops first.
   */
  async snapshot(): Promise<VmSnapshot | null> {
    if (this.worker === null || this.outcome === null) return null;
    // The copy of memory is what the guest waits for: a buffer touched here, ahead of the
    // pause, takes it several times faster than fresh memory (docs/BENCHMARKS.md).
    const staging = await touchedBuffer(this.ctl.memoryPages() * 65536 + SNAPSHOT_STAGING_SLACK_BYTES);
    if (this.worker === null || this.outcome === null) return null;
    this.snapshotPort?.postMessage(staging, [staging]);
    const p = new Promise<VmSnapshot | null>((resolve) => this.snapshotWaiters.push(resolve));
    this.ctl.requestSnapshot();
    void this.outcome.then(() => {
      for (const w of this.snapshotWaiters.splice(0)) w(null);
    });
    return p;
  }

  private onSnapshot(s: VmSnapshot): void {
    // One capture answers every request made before it was taken.
    for (const w of this.snapshotWaiters.splice(0)) w(s);
  }

  /** Drops the frozen disk of the last snapshot (once it has been copied away); writes stop copying. */
  thawSnapshotDisk(): void {
    this.ctl.requestThaw();
  }

  /** The restore snapshot's memory, when the caller handed it over and it owns its whole buffer. */
  private restoreTransferList(): ArrayBuffer[] {
    const m = this.config.restoreTransfer === true ? this.config.restore?.capture.memory : undefined;
    if (m === undefined || !(m.buffer instanceof ArrayBuffer)) return [];
    return m.byteOffset === 0 && m.byteLength === m.buffer.byteLength ? [m.buffer] : [];
  }

  /** Module facts a snapshot must match to be restored here: null when it fits, else why not. */
  snapshotMismatch(s: { moduleSha256: string; globals: number }): string | null {
    if (s.moduleSha256 !== this.module.sha256)
      return 'it was taken of another module (or one instrumented differently)';
    if (s.globals !== this.module.globalExports.length) return 'its globals do not fit this module';
    return null;
  }

  /** Asks the guest to stop; terminates the worker if it makes no host call within the grace period. */
  stop(reason: number): void {
    if (this.worker === null) return;
    if (this.stopReason !== 0) {
      // A second request (a second Ctrl-C) does not wait for the grace period.
      void this.worker.terminate();
      return;
    }
    this.stopReason = reason;
    this.ctl.requestStop(reason);
    this.killTimer = setTimeout(() => void this.worker?.terminate(), STOP_GRACE_MS);
  }

  /**
   * Holds (true) or releases (false) the VM's network outputs: sent bytes, FINs and resets stay
   * in the VM's rings while held. The guest keeps running; a guest that fills a ring waits, as
   * with a slow client. Used when the host cannot renew its claim on the VM.
   */
  holdOutputs(held: boolean): void {
    this.net?.holdOutputs(held);
  }

  private vcpuLogInit(log: VmLog | null): VcpuInit['log'] {
    if (log === null) return null;
    if (log.mode === 'record') return { mode: 'record', fd: log.fd };
    if (log.mode === 'replay') return { mode: 'replay', ringSab: log.ring.sab, showOutput: log.showOutput };
    const ft = this.ft!;
    const init = { sabs: ft.shared.sabs, stdoutSab: ft.stdout.sab, stderrSab: ft.stderr.sab };
    if (log.mode === 'ft-primary') return { mode: 'ft-primary', ft: init };
    return { mode: 'ft-backup', ringSab: ft.replay!.ring.sab, ft: init };
  }

  private makeGate(ft: FtState): OutputGate {
    const stdio = this.config.stdioFds ?? { stdout: 1, stderr: 2 };
    ft.gate = new OutputGate(
      ft.shared,
      { stdout: { ch: ft.stdout, fd: stdio.stdout }, stderr: { ch: ft.stderr, fd: stdio.stderr } },
      () => this.ctl.wakeVcpu(),
      this.config.ftPlantReleaseBeforeAck === true,
    );
    return ft.gate;
  }

  // ------------------------------------------------------------------ FT

  /** The FT log stream and control of an FT VM (primary, or backup once live). */
  ftLog(): FtShared {
    if (this.ft === null) throw new Error('not an FT VM');
    return this.ft.shared;
  }

  /**
   * Hands the FT log stream to `onBytes` as the vCPU produces it, with the
   * highest host call complete at the end of each piece, until the VM ends
   * (then the last bytes, with the trailer of a clean stop, are handed over
   * too). A primary's stream starts with its first RECORDS frame: the caller
   * puts `logPrefix()` before it.
   */
  streamFtLog(onBytes: (bytes: Buffer, lastEventSeq: number) => void): void {
    const shared = this.ftLog();
    let ended = false;
    void this.outcome?.then(() => {
      ended = true;
    });
    // The vCPU writes a frame in pieces, so bytes are handed on only in whole frames, each
    // RECORDS frame saying itself how many calls are complete at its end.
    let pending: Buffer = Buffer.alloc(0);
    let events = this.ft?.live?.events ?? 0;
    void (async () => {
      for (;;) {
        const endedBefore = ended;
        const bytes = shared.log.take();
        if (bytes !== null) {
          pending = pending.byteLength === 0 ? bytes : Buffer.concat([pending, bytes]);
          const whole = wholeFrames(pending);
          if (whole.bytes > 0) {
            if (whole.events !== null) events = whole.events;
            const out = pending.subarray(0, whole.bytes);
            pending = pending.subarray(whole.bytes);
            onBytes(out, events - 1);
          }
        } else if (endedBefore) return;
        else await shared.log.waitReadable(100);
      }
    })();
  }

  /**
   * The log header of this VM as configured (folders hashed now, so call it
   * before the guest runs), as `lockstep record` writes it.
   */
  logHeader(): LogHeader {
    const c = this.config;
    return {
      moduleSha256: Buffer.from(this.module.sha256, 'hex'),
      sourceSha256: Buffer.from(this.module.sourceSha256, 'hex'),
      memoryMaxPages: c.memoryMaxMib * PAGES_PER_MIB,
      callDepthMax: CALL_DEPTH_MAX,
      fuelBudget: c.cpuBudget,
      args: c.args,
      env: c.env,
      listeners: c.listen.map((l) =>
        l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`,
      ),
      preopens: this.preopens.map((p) => ({
        guestPath: p.guestPath,
        manifestSha256: folderManifestSha256(p.hostPath),
      })),
      stdin: c.stdin !== null && c.stdin !== undefined,
      nodeVersion: process.version,
      arch: process.arch,
      createdAtMs: Date.now(),
    };
  }

  /** The first bytes of a log stream: the preamble and the header frame. */
  static logPrefix(header: LogHeader): Buffer {
    return Buffer.concat([preamble(), encodeFrame(FrameKind.HEADER, encodeHeader(header))]);
  }

  /** The Output Rule's gate (a primary's, or a backup's once it is live); null before. */
  get outputGate(): OutputGate | null {
    return this.ft?.gate ?? null;
  }

  /** The backup acknowledged every call up to `ackedEventSeq`: their outputs may leave. */
  releaseOutputs(ackedEventSeq: number): void {
    this.ft?.gate?.release(ackedEventSeq);
  }

  /** No backup protects the VM any more (it won the right to run alone): outputs leave at once. */
  releaseAllOutputs(): void {
    this.ft?.gate?.releaseAll();
  }

  /** Slows the primary at its host calls (the lag bound), or lets it run. */
  throttle(on: boolean): void {
    this.ft?.shared.setThrottle(on);
  }

  /** Whether an FT backup has gone live, and after how many replayed calls. */
  get liveAfterEvents(): number | null {
    return this.ft?.live?.events ?? null;
  }

  /** Backup: bytes of the received stream that form whole frames (the prefix it replays). */
  get consumedLogBytes(): number {
    return this.ft?.replay?.scanner.consumedBytes ?? 0;
  }

  /** Backup: bytes received and not yet handed to the replaying vCPU. */
  get replayQueuedBytes(): number {
    return this.ft?.replay?.queuedBytes ?? 0;
  }

  /**
   * Backup: feeds bytes of the primary's log stream (the preamble, the header,
   * then RECORDS frames, in order). Only whole frames reach the replayer; a
   * frame cut by the end of what arrived waits for its rest. Throws LogError
   * on a corrupt stream.
   */
  feedLog(bytes: Uint8Array): void {
    const rp = this.ft?.replay;
    if (rp === undefined || rp === null) throw new Error('feedLog on a VM that is not an FT backup');
    for (const f of rp.scanner.push(bytes)) {
      if (f.type === 'header') {
        const why = this.headerMismatch(f.header);
        if (why !== null)
          throw new LogError('refused', `the primary's log does not fit this backup: ${why}`, 0);
        continue;
      }
      if (f.type !== 'records') continue;
      const prefix = recordsPrefix(f.firstSeq, f.count);
      const body = new Uint8Array(4 + prefix.byteLength + f.records.byteLength);
      new DataView(body.buffer).setUint32(0, prefix.byteLength + f.records.byteLength, true);
      body.set(prefix, 4);
      body.set(f.records, 4 + prefix.byteLength);
      rp.queue.push(body);
      rp.queuedBytes += body.byteLength;
    }
    this.pumpReplay();
  }

  /** Why a primary's log header cannot be replayed here, or null when it can. */
  private headerMismatch(h: LogHeader): string | null {
    if (Buffer.from(h.moduleSha256).toString('hex') !== this.module.sha256)
      return 'it was recorded from another module (or instrumented differently)';
    // The guest reads its arguments and environment without host calls: they must be the primary's.
    if (h.args.join('\0') !== this.config.args.join('\0')) return 'the arguments differ';
    if (h.env.join('\0') !== this.config.env.join('\0')) return 'the environments differ';
    if (h.memoryMaxPages !== this.config.memoryMaxMib * PAGES_PER_MIB) return 'the memory limits differ';
    if (h.callDepthMax !== CALL_DEPTH_MAX) return 'the call-depth limits differ';
    if (h.listeners.length !== this.config.listen.length) return 'the numbers of listeners differ';
    const mine = this.preopens.map((p) => p.guestPath).join('\0');
    if (h.preopens.map((p) => p.guestPath).join('\0') !== mine) return 'the folders differ';
    for (let i = 0; i < this.preopens.length; i++) {
      const sha = folderManifestSha256(this.preopens[i]!.hostPath);
      if (Buffer.compare(Buffer.from(sha), Buffer.from(h.preopens[i]!.manifestSha256)) !== 0)
        return `the folder ${this.preopens[i]!.guestPath} does not hold what the primary's held when it started`;
    }
    return null;
  }

  private pumpReplay(): void {
    const rp = this.ft?.replay;
    if (!rp || rp.pumping) return;
    rp.pumping = true;
    void (async () => {
      try {
        while (rp.queue.length > 0) {
          const b = rp.queue[0]!;
          const n = rp.ring.tryWrite(b);
          rp.queuedBytes -= n;
          if (n === b.byteLength) rp.queue.shift();
          else {
            rp.queue[0] = b.subarray(n);
            await rp.ring.waitWritable(50);
          }
          if (rp.ring.closed()) return;
        }
      } finally {
        rp.pumping = false;
      }
    })();
  }

  /**
   * Backup: go live. Every whole frame received is replayed, then the guest's
   * host calls switch to live at the entry of the first call the log lacks;
   * then the listeners are bound (the service address), with outputs open
   * (no backup protects the new primary yet). Resolves with the bound
   * addresses and the number of calls replayed.
   */
  async goLive(): Promise<{ addresses: ListenSpec[]; events: number }> {
    const ft = this.ft;
    const rp = ft?.replay;
    if (ft === undefined || ft === null || !rp) throw new Error('goLive on a VM that is not an FT backup');
    while (rp.queue.length > 0) {
      this.pumpReplay();
      await rp.ring.waitWritable(50);
      if (this.worker === null) break;
    }
    rp.ring.close();
    const events = await new Promise<number | null>((resolve) => {
      if (ft.live !== null) return resolve(ft.live.events);
      ft.onLive = resolve;
      void this.outcome?.then(() => resolve(null));
    });
    if (events === null) throw new Error('the backup stopped before it could go live');
    this.net = new NetDevice(
      this.ctl,
      this.ioPort!,
      this.config.listen,
      { ch: this.stdinCh!, source: this.config.stdin ?? null },
      null,
    );
    // The old primary may still be letting go of the address (a test failover on one machine).
    let addresses: ListenSpec[] = [];
    for (let attempt = 0; ; attempt++) {
      try {
        addresses = await this.net.listen();
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= GO_LIVE_BIND_ATTEMPTS) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    this.net.setGate(this.makeGate(ft));
    ft.gate!.releaseAll();
    this.net.start();
    return { addresses, events };
  }

  private onVcpuLive(events: number): void {
    const ft = this.ft;
    if (ft === null) return;
    ft.live = { events };
    ft.onLive?.(events);
  }

  wait(): Promise<VmOutcome> {
    if (this.outcome === null) throw new Error('Vm.wait() before start()');
    return this.outcome;
  }
}

/**
 * The length of the whole frames at the start of `b`, and the events
 * complete at the end of the last RECORDS frame among them (null if none).
 * Frame layout: kind u8, body length varint, body, crc u32
 * (docs/LOG-FORMAT.md); a RECORDS body starts with firstSeq and count.
 */
export function wholeFrames(b: Buffer): { bytes: number; events: number | null } {
  const ends = frameEnds(b);
  let events: number | null = null;
  for (const e of ends) if (e.events !== null) events = e.events;
  return { bytes: ends.length === 0 ? 0 : ends[ends.length - 1]!.end, events };
}

/**
 * Where each whole frame at the start of `b` ends, and for a RECORDS frame
 * the number of calls recorded once it is read (its firstSeq plus count).
 */
export function frameEnds(b: Buffer): { end: number; events: number | null }[] {
  const out: { end: number; events: number | null }[] = [];
  let at = 0;
  while (at < b.byteLength) {
    const r = new ByteReader(b.subarray(at));
    let bodyBytes: number;
    try {
      r.u8();
      bodyBytes = r.varint();
    } catch {
      break; // the length is not all here yet
    }
    const end = at + r.pos + bodyBytes + 4;
    if (end > b.byteLength) break;
    let events: number | null = null;
    if (b[at] === FrameKind.RECORDS) {
      const body = new ByteReader(b.subarray(at + r.pos, at + r.pos + bodyBytes));
      const firstSeq = body.varint();
      events = firstSeq + body.varint();
    }
    at = end;
    out.push({ end: at, events });
  }
  return out;
}
