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
import { Worker, MessageChannel } from 'node:worker_threads';
import { readFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { Channel, Ctl } from './channel.js';
import { NetDevice, type ListenSpec } from '../io/net-device.js';
import type { VcpuInit, VcpuMessage, VcpuResult } from './vcpu.js';
import type { Preopen } from './fs/fs.js';
import { WASI_FUNCTIONS, WASI_MODULE } from '../wasi/abi.js';
import { DEFAULT_CALL_DEPTH_MAX, instrument, type InstrumentedModule } from './instrument/index.js';
import { instrumentInWorker } from './instrument/worker.js';
import { HOST_ROOT_BYTES_MAX } from './fs/limits.js';
import { StopReason } from './wasi/signals.js';
import type { ByteRing } from '../ft/ring.js';

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
  /** Seed for the NetDevice's I/O chaos (tests of record/replay under hostile networks); null: none. */
  ioChaosSeed?: number | null;
}

/**
 * A VM's relation to an event log. Replaying binds nothing: the listeners
 * (as many as the recording had) exist only as phantom descriptors.
 */
export type VmLog =
  | { mode: 'record'; fd: number }
  | { mode: 'replay'; ring: ByteRing; showOutput: boolean; listenerCount: number };

export type VmLoadError = { code: 'io' | 'instrument' | 'option'; message: string };

export type VmOutcome = VcpuResult | { type: 'result'; stop: 'killed'; reason: number };

export function defaultCacheDir(): string {
  return (
    process.env['LOCKSTEP_CACHE_DIR'] ??
    path.join(process.env['XDG_CACHE_HOME'] ?? path.join(homedir(), '.cache'), 'lockstep')
  );
}

export const KNOWN_IMPORTS: ReadonlySet<string> = new Set(WASI_FUNCTIONS.map((f) => `${WASI_MODULE}.${f}`));

export class Vm {
  private worker: Worker | null = null;
  private net: NetDevice | null = null;
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
    const log = this.config.log ?? null;
    let addresses: ListenSpec[] = [];
    if (log?.mode !== 'replay') {
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
      this.net.start();
    }
    const init: VcpuInit = {
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
      log:
        log === null
          ? null
          : log.mode === 'record'
            ? { mode: 'record', fd: log.fd }
            : { mode: 'replay', ringSab: log.ring.sab, showOutput: log.showOutput },
    };
    const workerUrl = new URL('./vcpu.js', import.meta.url);
    const worker = new Worker(workerUrl, {
      workerData: init,
      transferList: [io.port2],
      resourceLimits: { stackSizeMb: VCPU_STACK_MIB },
      stdout: false,
      stderr: false,
    });
    this.worker = worker;
    this.outcome = new Promise<VmOutcome>((resolve) => {
      let result: VcpuResult | null = null;
      worker.on('message', (m: VcpuMessage) => {
        if (m.type === 'io') this.net?.onVcpuMessage(m.msg);
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

  wait(): Promise<VmOutcome> {
    if (this.outcome === null) throw new Error('Vm.wait() before start()');
    return this.outcome;
  }
}
