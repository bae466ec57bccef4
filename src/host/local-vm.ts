/**
 * LocalVm: one VM that this host runs, at one generation.
 *
 * Role: prepare the VM's files in the host's data folder (its disk copy and
 * console log), load and start it with the VM core (src/vm), and report its
 * state changes. The daemon decides when to start and stop; this carries it
 * out.
 *
 * Layout under DATA/vms/NAME/:
 *   disk/            the VM's disk (preopened as /data)
 *   disk.generation  the generation that last ran on this disk, as text
 *   console.log      the guest's stdout and stderr, appended
 *   frozen/          while a snapshot is taken: the disk as at its cut
 *   ft.log           the log's prefix and what a backup may still be sent
 *                    (src/host/ft-pair.ts); bounded
 *
 * Invariants:
 * - The disk is reused only when this host ran this generation (the host
 *   restarted) or the directly preceding one (a stop and start on the same
 *   host); otherwise it is copied
 *   afresh from the VM's disk image, so a host never resumes from a disk it
 *   left behind before another host ran the VM.
 * - onState is called for every state change, in order, and 'stopped' or
 *   'failed' is the last call.
 * - stop() with discardOutputs holds every network output first: nothing the
 *   VM computed after losing its generation leaves the host.
 */
import { cp, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { PassThrough, type Readable } from 'node:stream';
import path from 'node:path';
import type { VmRunState, VmSpec } from '../coord/records.js';
import { Vm, type VmOutcome, type VmSnapshot } from '../vm/vm.js';
import { StopReason } from '../vm/wasi/signals.js';
import { parseListen } from '../io/net-device.js';
import { FtBackupSide, FtPrimarySide, type Protection } from './ft-pair.js';
import type { CloneProgress } from '../api/backend.js';
import type { FtLinkServer, FtLogger } from '../io/ft-link.js';
import type { HostRecord } from '../coord/records.js';
import type { ServiceAddresses } from './vip.js';
import type { StreamPosition } from '../ft/channel.js';
import { readVmSnapshot, writeVmSnapshot } from '../snapshot/vm-snapshot.js';
import { fetchClone } from './clone-fetch.js';
import type { ModuleStore } from './modules.js';

/** What a host gives its FT VMs: its channel listener and identity. */
export interface FtServices {
  server: FtLinkServer;
  key: Buffer;
  clusterId: string;
  self: string;
  incarnation: string;
  log: FtLogger;
  lagBoundMs: number;
  /** The cluster's API token: a backup fetches its clone from the primary's host API with it. */
  apiToken: string;
  /** TESTING ONLY: delay every frame a backup receives (widens windows for the planted-bug tests). */
  linkDelayMs: number;
  /** Something about protection changed: the daemon reconciles and reports. */
  changed(): void;
}

/** How a VM runs here: alone, or as one member of an FT pair. */
export type LocalRole =
  { kind: 'plain' } | { kind: 'ft-primary' } | { kind: 'ft-backup'; primary: HostRecord };

/** What a clone's stream holds before the writer waits for the network (back-pressure). */
const CLONE_STREAM_BUFFER_BYTES = 8 * 1024 * 1024;

/** How long a backup waits for its primary's host to send a clone. */
const CLONE_FETCH_TIMEOUT_MS = 60_000;

/** How long an offered backup may take to attach before it counts as lost. */
export const FT_ATTACH_TIMEOUT_MS = 20_000;

export interface LocalVmEvent {
  state: VmRunState;
  message: string | null;
  exitCode: number | null;
}

export function vmDataDir(hostData: string, vmName: string): string {
  return path.join(hostData, 'vms', vmName);
}

export class LocalVm {
  state: VmRunState = 'starting';
  private vm: Vm | null = null;
  private stopRequested = false;
  private pside: FtPrimarySide | null = null;
  private bside: FtBackupSide | null = null;
  private offered: { backup: string; incarnation: string; generation: number; atMs: number } | null = null;
  /** FT primary: the offered backup's session closed, or it never attached in time. */
  backupLost = false;
  /**
   * Which backup backupLost speaks of: a backup the placement has just
   * replaced (a migration) may close its session before this copy hears of
   * the replacement, and that says nothing about the new one.
   */
  lostBackup: string | null = null;
  /** FT backup: the session with the primary closed. */
  primaryLost = false;
  /** FT backup: the primary reported the pair protected at this copy's generation (it caught up). */
  caughtUp = false;

  constructor(
    readonly spec: VmSpec,
    public generation: number,
    private readonly hostData: string,
    private readonly cacheDir: string | undefined,
    private readonly onState: (e: LocalVmEvent) => void,
    private role: LocalRole = { kind: 'plain' },
    private readonly ft: FtServices | null = null,
    private readonly addresses: ServiceAddresses | null = null,
    /** Where the module is found by its hash; null: read from the spec's path as it is. */
    private readonly modules: ModuleStore | null = null,
  ) {}

  /** Whether this copy claimed the service address (it ran as a primary), so stopping releases it. */
  private addressClaimed = false;

  /** The IP of the service address, or null when the spec's address does not parse. */
  private get serviceIp(): string | null {
    const l = parseListen(this.spec.listen);
    return typeof l === 'string' ? null : l.host;
  }

  /** Makes the service address bindable here (a virtual IP with --vip-interface); a message on failure. */
  private async claimAddress(): Promise<string | null> {
    const ip = this.serviceIp;
    if (this.addresses === null || ip === null) return null;
    this.addressClaimed = true;
    const r = await this.addresses.claim(ip);
    return r.ok ? null : `cannot take the service address: ${r.message}`;
  }

  private releaseAddress(): void {
    const ip = this.serviceIp;
    if (this.addresses === null || ip === null || !this.addressClaimed) return;
    this.addressClaimed = false;
    void this.addresses.release(ip);
  }

  /** FT backup: the host of the primary it follows; null otherwise. */
  get primaryHost(): string | null {
    return this.role.kind === 'ft-backup' ? this.role.primary.name : null;
  }

  /** 'backup' for an FT backup, 'primary' otherwise. */
  get roleName(): 'primary' | 'backup' {
    return this.role.kind === 'ft-backup' ? 'backup' : 'primary';
  }

  private get ftLogPath(): string {
    return path.join(this.dir, 'ft.log');
  }

  /** FT primary: its live protection, for the VM's status. */
  ftStatus(): {
    protection: Protection;
    reason: string | null;
    lagMs: number | null;
    lagEvents: number | null;
    lagBytes: number | null;
    heldOutputs: number;
    logBytes: number;
    logFileBytes: number;
    logEvents: number;
    clone: CloneProgress | null;
    backup: string | null;
    backupIncarnation: string | null;
  } | null {
    const ps = this.pside;
    if (ps === null) return null;
    return {
      protection: ps.state,
      reason: this.ftReason,
      lagMs: ps.lag()?.ms ?? null,
      lagEvents: ps.lag()?.events ?? null,
      lagBytes: ps.lag()?.bytes ?? null,
      heldOutputs: this.vm?.outputGate?.heldMarks ?? 0,
      logBytes: ps.logBytes,
      logFileBytes: ps.logFileBytes,
      logEvents: ps.events,
      clone: this.cloneProgress,
      backup: ps.backupAttached ? (this.offered?.backup ?? null) : null,
      backupIncarnation: ps.backupAttached ? (this.offered?.incarnation ?? null) : null,
    };
  }
  private ftReason: string | null = 'no backup attached yet';
  /** While a clone's snapshot is being written: how far, for the VM's status. */
  private cloneProgress: CloneProgress | null = null;

  /**
   * FT primary: ms since its backup last acknowledged anything, or, before it
   * attached, since it was offered (a backup host that dies before attaching
   * must not hold the VM's outputs for the whole attach timeout).
   */
  backupSilentMs(nowMs: number): number {
    const ps = this.pside;
    if (ps === null) return Infinity;
    if (ps.backupAttached) return nowMs - ps.lastAckAtMs;
    return this.offered === null ? Infinity : nowMs - this.offered.atMs;
  }

  /**
   * FT primary: serve `backup` (at its registered incarnation) from the first
   * event; a no-op when it is already offered. Marks the backup lost when it
   * has not attached within FT_ATTACH_TIMEOUT_MS.
   */
  offerBackup(generation: number, backup: string, incarnation: string, nowMs: number): void {
    const ps = this.pside;
    if (ps === null) return;
    const o = this.offered;
    if (o !== null && o.backup === backup && o.incarnation === incarnation && o.generation === generation) {
      if (
        !ps.backupAttached &&
        ps.state !== 'protected' &&
        nowMs - o.atMs > FT_ATTACH_TIMEOUT_MS &&
        !this.backupLost
      ) {
        this.backupLost = true;
        this.lostBackup = backup;
        this.ftReason = `backup ${backup} did not attach within ${FT_ATTACH_TIMEOUT_MS} ms`;
        this.ft?.changed();
      }
      return;
    }
    this.offered = { backup, incarnation, generation, atMs: nowMs };
    this.backupLost = false;
    this.ftReason = `waiting for ${backup} to attach`;
    ps.offer(generation, backup, incarnation);
  }

  /**
   * FT primary whose placement names no backup (none could be placed): it runs
   * unprotected, with outputs leaving at once, rather than hold them forever.
   * The placement is already its own, so no test-and-set is needed.
   */
  runWithoutBackup(reason: string): void {
    const ps = this.pside;
    if (ps === null) return;
    // A backup no longer wanted is not lost: its going says nothing.
    this.backupLost = false;
    // Called at every reconciliation pass: only a change is acted on.
    if (this.offered !== null || ps.state !== 'unprotected') {
      this.offered = null;
      ps.runAlone(reason);
    }
    if (this.ftReason !== reason) {
      this.ftReason = reason;
      this.ft?.changed();
    }
  }

  /** FT primary: it won `generation` without its backup; what it held leaves now. */
  adopt(generation: number, reason: string): void {
    this.generation = generation;
    this.offered = null;
    this.backupLost = false;
    this.ftReason = reason;
    this.pside?.runAlone(reason);
    // Asserted again (idempotent), and announced: this copy is the VM's only one now.
    void this.claimAddress();
  }

  /** Whether `backup` (at `incarnation`) is offered this VM at `generation`. */
  isOfferedTo(backup: string, incarnation: string, generation: number): boolean {
    const o = this.offered;
    return o !== null && o.backup === backup && o.incarnation === incarnation && o.generation === generation;
  }

  /** A snapshot file of the running VM, with its disk as at the cut (`lockstep vm snapshot`). */
  async snapshotFile(): Promise<Buffer[] | string> {
    const vm = this.vm;
    if (vm === null || this.state !== 'running') return `${this.spec.name} is not running here`;
    if (this.cloning) return `a snapshot of ${this.spec.name} is being made already`;
    this.cloning = true;
    try {
      const snap = await vm.snapshot();
      if (snap === null) return `${this.spec.name} stopped`;
      if (snap.disk != null && 'error' in snap.disk) return `cannot freeze the disk: ${snap.disk.error}`;
      const body: Buffer[] = [];
      await writeVmSnapshot(vm, snap, (p) => body.push(...p.map((x) => Buffer.from(x))), Date.now(), {
        diskDir: snap.disk != null && 'dir' in snap.disk ? snap.disk.dir : null,
      });
      return body;
    } finally {
      vm.thawSnapshotDisk();
      this.cloning = false;
    }
  }

  /** Whether a clone is being made now (one at a time). */
  private cloning = false;

  /**
   * FT primary: a snapshot of the running VM for the backup it offered
   * (`backup` at `incarnation`, at `generation`), with its disk as at the
   * cut, and the log position the backup's stream starts from. The offer
   * came first, so every output from the cut on waits for that backup.
   */
  async clone(
    backup: string,
    incarnation: string,
    generation: number,
  ): Promise<
    { start: StreamPosition; body: Readable; pauseMs: number; done: Promise<number | string> } | string
  > {
    const ps = this.pside;
    const vm = this.vm;
    if (ps === null || vm === null || this.state !== 'running')
      return `${this.spec.name} is not an FT primary here`;
    const o = this.offered;
    if (o === null || o.backup !== backup || o.incarnation !== incarnation || o.generation !== generation)
      return `${this.spec.name} is not offered to ${backup} (incarnation ${incarnation}) at generation ${generation}`;
    if (this.cloning) return `a clone of ${this.spec.name} is being made already`;
    this.cloning = true;
    // The log keeps everything from here until the snapshot's position is known.
    ps.cloneBegins();
    let begun = true;
    let streaming = false;
    try {
      const snap = await vm.snapshot();
      if (snap === null) return `${this.spec.name} stopped`;
      if (snap.events === null) throw new Error('assertion: an FT primary snapshot has a log position');
      if (snap.disk != null && 'error' in snap.disk) return `cannot freeze the disk: ${snap.disk.error}`;
      begun = false;
      const start = await ps.cloneStart(snap.events);
      // Written while it is sent, with the stream's back-pressure: the backup restores memory
      // while the rest is still being written, and nothing waits for the whole 64 MiB first.
      const body = new PassThrough({ highWaterMark: CLONE_STREAM_BUFFER_BYTES });
      let bytes = 0;
      const sink = (pieces: readonly Uint8Array[]): Promise<void> | undefined => {
        if (body.destroyed) throw new Error('the backup stopped reading the clone');
        let room = true;
        // The writer hands out views of memory and files: copy them as they go.
        for (const p of pieces) {
          bytes += p.byteLength;
          room = body.write(Buffer.from(p)) && room;
        }
        // Between the writer's own reports (per disk folder, per 4 MiB of memory), the bytes sent
        // move the progress on; they never pass the estimate (zero blocks are not sent).
        const cp = this.cloneProgress;
        if (cp !== null && bytes > cp.doneBytes)
          this.cloneProgress = { doneBytes: Math.min(bytes, cp.totalBytes), totalBytes: cp.totalBytes };
        if (room) return undefined;
        return new Promise((resolve) => {
          const go = (): void => {
            body.off('drain', go);
            body.off('close', go);
            resolve();
          };
          body.once('drain', go);
          body.once('close', go);
        });
      };
      streaming = true;
      const done = (async (): Promise<number | string> => {
        try {
          await writeVmSnapshot(vm, snap, sink, Date.now(), {
            diskDir: snap.disk != null && 'dir' in snap.disk ? snap.disk.dir : null,
            onProgress: (doneBytes, totalBytes) =>
              (this.cloneProgress = {
                doneBytes: Math.max(doneBytes, this.cloneProgress?.doneBytes ?? 0),
                totalBytes,
              }),
          });
          body.end();
          return bytes;
        } catch (e) {
          body.destroy(e as Error);
          return (e as Error).message;
        } finally {
          vm.thawSnapshotDisk();
          this.cloning = false;
          this.cloneProgress = null;
        }
      })();
      return { start, body, pauseMs: snap.pauseMs ?? 0, done };
    } finally {
      if (begun) ps.cloneAbandoned();
      if (!streaming) {
        vm.thawSnapshotDisk();
        this.cloning = false;
      }
    }
  }

  /**
   * FT backup: it won `generation` and the old primary is fenced. Replays what
   * it received, goes live at the service address, and runs on as a primary
   * that continues the same log (so it can serve a backup of its own).
   */
  async promote(generation: number, reason: string): Promise<void> {
    const bs = this.bside;
    const vm = this.vm;
    if (bs === null || vm === null || this.ft === null) throw new Error('promote: not a running FT backup');
    // The address must be local before go-live binds it (the old primary's was fenced away).
    const addressProblem = await this.claimAddress();
    if (addressProblem !== null) throw new Error(addressProblem);
    const at = await bs.goLive();
    this.bside = null;
    this.generation = generation;
    this.role = { kind: 'ft-primary' };
    this.pside = this.primarySide(vm, Vm.logPrefix(vm.logHeader()), at);
    this.offered = null;
    this.ftReason = reason;
    this.pside.runAlone(reason);
    this.state = 'running';
    this.onState({ state: 'running', message: null, exitCode: null });
  }

  private primarySide(
    vm: Vm,
    prefix: Buffer,
    continueAt?: { fileBytes: number; events: number },
  ): FtPrimarySide {
    const ft = this.ft!;
    return new FtPrimarySide({
      vm,
      vmName: this.spec.name,
      logPath: this.ftLogPath,
      prefix,
      ...(continueAt !== undefined ? { continueAt } : {}),
      server: ft.server,
      lagBoundMs: ft.lagBoundMs,
      log: ft.log,
      onProtection: (p, reason) => {
        if (p === 'syncing' || p === 'protected') this.ftReason = null;
        else if (reason !== null) this.ftReason = reason;
        ft.changed();
      },
      onRefused: (from, reason) => {
        // The pairing stays refused until the hosts agree; people see why in `vm show`.
        if (this.pside?.state !== 'protected') {
          this.ftReason = `pairing with ${from} refused: ${reason}`;
          ft.changed();
        }
      },
      onBackupLost: (reason) => {
        this.backupLost = true;
        this.lostBackup = this.offered?.backup ?? null;
        this.ftReason = `backup lost: ${reason.message}`;
        ft.changed();
      },
    });
  }

  get dir(): string {
    return vmDataDir(this.hostData, this.spec.name);
  }

  get consoleLog(): string {
    return path.join(this.dir, 'console.log');
  }

  /** Prepares the files and starts the VM; the outcome arrives through onState. */
  async start(): Promise<void> {
    this.onState({ state: 'starting', message: null, exitCode: null });
    let consoleFd = -1;
    try {
      await mkdir(this.dir, { recursive: true });
      const role = this.role;
      // The module by its hash, not by its path: the path may not be on this machine (an upload
      // to another host) or may hold other bytes by now. A peer sends it if need be.
      let wasmPath = this.spec.wasmPath;
      if (this.modules !== null) {
        const m = await this.modules.resolve(this.spec.wasmPath, this.spec.wasmSha256);
        if (!m.ok) {
          this.startError = `cannot find its module: ${m.message}`;
          return this.finish('failed', this.startError, null, consoleFd);
        }
        wasmPath = m.path;
      }
      // A backup starts from a snapshot of the running primary (the live clone), with the disk as
      // it was at the snapshot; the log stream then starts at the snapshot's call.
      let clone: { snapshot: VmSnapshot; start: StreamPosition } | null = null;
      if (role.kind === 'ft-backup') {
        const c = await this.fetchCloneFrom(role.primary);
        if (typeof c === 'string') {
          this.startError = c;
          return this.finish('failed', c, null, consoleFd);
        }
        clone = c;
      }
      const disk =
        role.kind === 'ft-backup'
          ? this.spec.disk === null
            ? null
            : path.join(this.dir, 'disk')
          : await this.prepareDisk();
      consoleFd = openSync(this.consoleLog, 'a', 0o600);
      writeSync(consoleFd, `--- lockstep: ${this.spec.name} generation ${this.generation} starting\n`);
      const listen = parseListen(this.spec.listen);
      if (typeof listen === 'string')
        return this.finish('failed', `bad service address: ${listen}`, null, consoleFd);
      const loaded = await Vm.load({
        wasmPath,
        args: this.spec.args,
        env: this.spec.env,
        listen: [listen],
        disk,
        dirs: [],
        memoryMaxMib: this.spec.memoryMaxMib,
        cpuBudget: null,
        stdioFds: { stdout: consoleFd, stderr: consoleFd },
        instrumentInWorker: true,
        // Snapshots (clones for new backups) freeze the disk here while it is copied.
        freezeDir: path.join(this.dir, 'frozen'),
        restore: clone?.snapshot ?? null,
        restoreTransfer: true,
        ...(role.kind === 'ft-primary'
          ? { log: { mode: 'ft-primary' as const } }
          : role.kind === 'ft-backup'
            ? { log: { mode: 'ft-backup' as const } }
            : {}),
        ...(this.cacheDir !== undefined ? { cacheDir: this.cacheDir } : {}),
      });
      if (!loaded.ok) return this.finish('failed', loaded.error.message, null, consoleFd);
      if (this.stopRequested) return this.finish('stopped', 'stopped before it started', null, consoleFd);
      this.vm = loaded.vm;
      const prefix = Vm.logPrefix(loaded.vm.logHeader());
      if (role.kind !== 'ft-backup') {
        const addressProblem = await this.claimAddress();
        if (addressProblem !== null) {
          loaded.vm.stop(StopReason.HOST);
          return this.finish('failed', addressProblem, null, consoleFd);
        }
      }
      try {
        await loaded.vm.start();
      } catch (e) {
        return this.finish(
          'failed',
          `cannot bind ${this.spec.listen}: ${(e as Error).message}`,
          null,
          consoleFd,
        );
      }
      const fd = consoleFd;
      void loaded.vm.wait().then((o) => this.finishWithOutcome(o, fd));
      if (role.kind === 'ft-primary') this.pside = this.primarySide(loaded.vm, prefix);
      if (role.kind === 'ft-backup') {
        const ft = this.ft!;
        const addr = role.primary.ft ?? '';
        const m = /^(.*):(\d+)$/.exec(addr);
        if (m === null) {
          loaded.vm.stop(StopReason.HOST);
          this.startError = `primary ${role.primary.name} registered no FT listener`;
          return;
        }
        const r = await FtBackupSide.connect({
          key: ft.key,
          clusterId: ft.clusterId,
          self: ft.self,
          selfIncarnation: ft.incarnation,
          linkDelayMs: ft.linkDelayMs,
          vm: loaded.vm,
          vmName: this.spec.name,
          primaryAddress: { host: m[1]!, port: Number(m[2]) },
          primary: role.primary.name,
          primaryIncarnation: role.primary.incarnation,
          generation: this.generation,
          log: ft.log,
          ...(clone !== null
            ? { clone: { start: clone.start, prefix: Vm.logPrefix(loaded.vm.logHeader()) } }
            : {}),
          onPrimaryLost: () => {
            this.primaryLost = true;
            ft.changed();
          },
          onFailed: (why) => {
            // A replica that cannot follow must never go live: this copy stops, and a fresh one follows.
            this.startError = why;
            this.stop(true);
          },
        });
        if (!r.ok) {
          this.startError = `cannot attach to ${role.primary.name}: ${r.reason}`;
          loaded.vm.stop(StopReason.HOST);
          return;
        }
        this.bside = r.side;
        if (this.stopRequested) {
          void r.side.close();
          return;
        }
      }
      this.state = 'running';
      this.onState({ state: 'running', message: null, exitCode: null });
    } catch (e) {
      this.finish('failed', (e as Error).message, null, consoleFd);
    }
  }

  /** Asks the VM to stop; with discardOutputs, nothing it still holds or sends leaves the host. */
  stop(discardOutputs: boolean): void {
    this.stopRequested = true;
    if (discardOutputs) this.vm?.holdOutputs(true);
    this.vm?.stop(StopReason.HOST);
    this.pside?.close();
    void this.bside?.close();
    // Clients go to whichever host holds the address next, not to a copy that is stopping.
    this.releaseAddress();
  }

  /**
   * FT backup: fetches a snapshot of the running primary from its host
   * (src/host/clone-fetch.ts) and reads it, with its disk, into this VM's
   * folder. Returns the snapshot and the log position it matches, or why not.
   */
  private async fetchCloneFrom(
    primary: HostRecord,
  ): Promise<{ snapshot: VmSnapshot; start: StreamPosition } | string> {
    const ft = this.ft;
    if (ft === null) return 'no FT services on this host';
    const f = await fetchClone(
      primary.api,
      ft.apiToken,
      this.spec.name,
      { backup: ft.self, incarnation: ft.incarnation, generation: this.generation },
      CLONE_FETCH_TIMEOUT_MS,
    );
    if (!f.ok) return `cannot clone from ${primary.name}: ${f.message}`;
    const staging = path.join(this.dir, 'clone-disk');
    await rm(staging, { recursive: true, force: true });
    const r = await readVmSnapshot(f.body, { diskInto: staging });
    if (!r.ok) return `the clone from ${primary.name} was refused (${r.code}): ${r.message}`;
    if (this.spec.disk !== null) {
      const disk = path.join(this.dir, 'disk');
      await rm(disk, { recursive: true, force: true });
      await mkdir(path.join(staging, '0'), { recursive: true });
      await rename(path.join(staging, '0'), disk);
      await writeFile(path.join(this.dir, 'disk.generation'), `${this.generation}\n`);
    }
    await rm(staging, { recursive: true, force: true });
    return { snapshot: r.snapshot, start: f.start };
  }

  /** Why a start ended early (an FT backup that could not attach), for the failed state. */
  private startError: string | null = null;

  holdOutputs(held: boolean): void {
    this.vm?.holdOutputs(held);
  }

  /** Copies the disk image unless this host ran the previous generation on the disk it has. */
  private async prepareDisk(): Promise<string | null> {
    if (this.spec.disk === null) return null;
    const disk = path.join(this.dir, 'disk');
    const marker = path.join(this.dir, 'disk.generation');
    let last = -1;
    try {
      last = Number((await readFile(marker, 'utf8')).trim());
    } catch {
      last = -1;
    }
    // The same generation again is a restart of this host; the one before is a stop and start here.
    if (!(existsSync(disk) && (last === this.generation || last === this.generation - 1))) {
      await rm(disk, { recursive: true, force: true });
      await cp(this.spec.disk, disk, { recursive: true, errorOnExist: false, force: true });
    }
    await writeFile(marker, `${this.generation}\n`);
    return disk;
  }

  private finishWithOutcome(o: VmOutcome, consoleFd: number): void {
    switch (o.stop) {
      case 'exit':
        return this.finish(
          o.exitCode === 0 || this.stopRequested ? 'stopped' : 'failed',
          `guest exited with ${o.exitCode}`,
          o.exitCode,
          consoleFd,
        );
      case 'trap':
        return this.finish('failed', `guest trapped: ${o.message}`, null, consoleFd);
      case 'limit':
        return this.finish('failed', `stopped by a limit (${o.limit}): ${o.message}`, null, consoleFd);
      case 'signal':
      case 'killed':
        if (this.startError !== null) return this.finish('failed', this.startError, null, consoleFd);
        return this.finish('stopped', 'stopped', null, consoleFd);
      case 'host-error':
        return this.finish('failed', `host error: ${o.message}`, null, consoleFd);
      case 'divergence': {
        // A backup that cannot follow its primary's log: the details say where, for the bug report.
        const d = o.divergence;
        return this.finish(
          'failed',
          `replay diverged at call ${d.seq}: ${d.detail} (expected ${d.expected.fn}, found ${d.found.fn})`,
          null,
          consoleFd,
        );
      }
      default:
        return this.finish('failed', `unexpected stop: ${o.stop}`, null, consoleFd);
    }
  }

  private finish(
    state: 'stopped' | 'failed',
    message: string,
    exitCode: number | null,
    consoleFd: number,
  ): void {
    if (consoleFd >= 0) {
      try {
        writeSync(consoleFd, `--- lockstep: ${this.spec.name} ${state}: ${message}\n`);
        closeSync(consoleFd);
      } catch {
        // The console log is for people; failing to write it must not hide the VM's state.
      }
    }
    this.state = state;
    this.vm = null;
    this.releaseAddress();
    this.pside?.close();
    void this.bside?.close();
    this.onState({ state, message, exitCode });
  }
}
