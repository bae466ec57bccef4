/**
 * The two sides of an FT pair on their hosts' main threads: they join a VM
 * (src/vm) to the logging channel (src/io/ft-link.ts). The host daemon
 * decides who is primary and who is backup; these carry it out.
 *
 * FtPrimarySide keeps the VM's whole log stream in a file (the preamble, the
 * header, every RECORDS frame) and serves it to a backup from the first
 * event: first from the file, then, once caught up, straight from the vCPU.
 * The backup's acknowledgements release outputs (the Output Rule), its
 * replay progress gives the lag, and a lag above the bound throttles the
 * primary at its host calls.
 *
 * FtBackupSide feeds what arrives to a replaying VM and keeps the same file,
 * so that after it goes live it can serve a backup of its own from the first
 * event too.
 *
 * Invariants:
 * - The file holds a valid log prefix at every moment: the primary writes
 *   only whole frames (Vm.streamFtLog hands out nothing else), and a backup
 *   cuts its copy back to the whole frames it replayed when it goes live.
 * - What the channel carries is the file's content, byte for byte, from
 *   offset 0: a backup always starts from the first event (live cloning is a
 *   later step).
 * - lastEventSeq handed to the sender never runs ahead of the bytes.
 */
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import type { Vm } from '../vm/vm.js';
import { frameEnds, wholeFrames } from '../vm/vm.js';
import { PREAMBLE_BYTES } from '../ft/log/format.js';
import { LogError } from '../ft/log/scanner.js';
import {
  connectFtLink,
  type FtAddress,
  type FtBackupLink,
  type FtCloseReason,
  type FtLinkCommon,
  type FtLinkServer,
  type FtLogger,
  type FtPrimaryLink,
} from '../io/ft-link.js';
import type { LogReceiverOptions, LogSenderOptions, StreamPosition } from '../ft/channel.js';

/** Frame ends (and clone starts) remembered, for a snapshot's position asked for soon after. */
const BOUNDARIES_KEPT = 4096;
/** How much of the file a catch-up read takes at once. */
const CATCH_UP_CHUNK_BYTES = 1024 * 1024;
/** A catch-up read grows to hold one whole frame, up to the largest frame a log may have. */
const CATCH_UP_CHUNK_BYTES_MAX = 128 * 1024 * 1024;
/** How often a backup reports its replay progress. */
const REPLAY_REPORT_MS = 20;
/** A backup stops reading the channel while this much waits to enter its replay ring. */
const BACKUP_QUEUE_BYTES_MAX = 32 * 1024 * 1024;

export type Protection = 'syncing' | 'protected' | 'unprotected';

export interface FtLag {
  events: number;
  bytes: number;
  ms: number;
}

export interface FtPrimarySideOptions {
  vm: Vm;
  vmName: string;
  /** The log file: created for a fresh primary, continued for a backup that went live. */
  logPath: string;
  /** A fresh primary: the stream's first bytes (Vm.logPrefix). Null: the file already has them. */
  prefix: Buffer | null;
  /** A backup that went live: the file's valid length and the calls it holds. */
  continueAt?: { fileBytes: number; events: number };
  server: FtLinkServer;
  sender?: LogSenderOptions;
  /** Above this replay lag the primary is slowed at its host calls (guarantee 5). */
  lagBoundMs: number;
  log: FtLogger;
  /** Protection changed (for the VM's status). */
  onProtection?(p: Protection, reason: string | null): void;
  /** An established session closed: the backup is lost. */
  onBackupLost?(reason: FtCloseReason): void;
  /** A backup's hello was refused (a join check failed, say): why, for `vm show`. */
  onRefused?(from: string, reason: string): void;
}

export class FtPrimarySide {
  private readonly fd: number;
  private fileBytes: number;
  /** Calls whose records are in the file. */
  private fileEvents: number;
  private link: FtPrimaryLink | null = null;
  /** File bytes appended to the current link. */
  private sent = 0;
  private sentEvents = 0;
  private catchingUp = false;
  private protection: Protection = 'unprotected';
  private throttled = false;
  private closed = false;

  constructor(private readonly o: FtPrimarySideOptions) {
    if (o.prefix !== null) {
      // Read back too: a backup that attaches later is served from this file.
      this.fd = openSync(o.logPath, 'w+', 0o600);
      writeSync(this.fd, o.prefix);
      this.fileBytes = o.prefix.byteLength;
      this.fileEvents = 0;
    } else {
      const at = o.continueAt;
      if (at === undefined) throw new Error('FtPrimarySide: a continued log needs continueAt');
      this.fd = openSync(o.logPath, 'r+');
      ftruncateSync(this.fd, at.fileBytes);
      this.fileBytes = at.fileBytes;
      this.fileEvents = at.events;
    }
    // The file's end now is also where calls from fileEvents on begin.
    this.boundaries.push({ offset: this.fileBytes, events: this.fileEvents });
    o.vm.streamFtLog((bytes, lastEventSeq) => this.onLogBytes(bytes, lastEventSeq));
  }

  get state(): Protection {
    return this.protection;
  }

  get backupAttached(): boolean {
    return this.link !== null;
  }

  get logBytes(): number {
    return this.fileBytes;
  }

  get events(): number {
    return this.fileEvents;
  }

  /** The replay lag: calls and bytes not yet replayed or received, and how long. */
  lag(): FtLag | null {
    const l = this.link;
    if (l === null) return null;
    const lag = l.lag();
    return { events: lag.events, bytes: lag.bytes, ms: lag.ms };
  }

  /**
   * Serves the VM to `backup` (its registered incarnation) at `generation`.
   * From now on outputs wait for that backup's acknowledgements.
   */
  offer(generation: number, backup: string, backupIncarnation: string): void {
    const vm = this.o.vm;
    // Everything already released stays released; what comes next waits for the backup.
    vm.outputGate?.closeAt(vm.outputGate.releasedEventSeq === Infinity ? this.fileEvents - 1 : -1);
    this.o.server.offer(this.o.vmName, {
      generation,
      backup,
      backupIncarnation,
      ...(this.o.sender !== undefined ? { sender: this.o.sender } : {}),
      startFrom: (asked) =>
        this.logBroken !== null
          ? this.logBroken
          : (asked.offset === 0 && asked.events === 0) ||
              this.cloneStarts.some((c) => c.offset === asked.offset && c.events === asked.events)
            ? { offset: asked.offset, events: asked.events }
            : `this primary serves its log from the first event, or from a snapshot it took; not from offset ${asked.offset} (event ${asked.events})`,
      onSession: (link) => this.onSession(link),
      onAck: (link, ack) => {
        // Only the current session's acks release outputs: another backup's say nothing of this one.
        if (link === this.link) this.onAck(ack.ackedEventSeq, ack.replayedEventSeq);
      },
      // A session this primary no longer serves (it ran alone, or serves another backup now)
      // says nothing about the current one.
      onClose: (link, reason) => {
        if (link === this.link) this.onClose(reason);
      },
      onRefused: (r) => {
        this.o.log.warn({ vm: this.o.vmName, ...r }, `ft: refused ${r.from}: ${r.reason}`);
        this.o.onRefused?.(r.from, r.reason);
      },
    });
    this.setProtection('unprotected', `waiting for ${backup} to attach`);
  }

  /** No backup any more: outputs leave at once (the caller won the right to run alone). */
  runAlone(reason: string): void {
    this.o.server.withdraw(this.o.vmName);
    this.link = null;
    this.o.vm.releaseAllOutputs();
    this.setThrottle(false);
    this.setProtection('unprotected', reason);
  }

  /** Stops serving; the file is closed (the VM's stop is the caller's). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.o.server.withdraw(this.o.vmName);
    this.link = null;
    try {
      closeSync(this.fd);
    } catch {
      // Already closed.
    }
  }

  /** Why the log file cannot serve a backup any more (a write failed), or null. */
  private logBroken: string | null = null;
  /** The most recent frame ends in the file: (offset after the frame, calls recorded by then). */
  private readonly boundaries: StreamPosition[] = [];
  private readonly boundaryWaiters = new Map<number, ((p: StreamPosition) => void)[]>();
  /** Positions a backup cloned from a snapshot may ask the stream to start from. */
  private readonly cloneStarts: StreamPosition[] = [];

  /**
   * Where in the log file the calls from `events` on begin: the end of the
   * frame that completes call `events` - 1. A snapshot flushes the log at its
   * cut, so its `events` is a frame end; this waits until the main thread has
   * written that frame. A backup restored from the snapshot may then ask for
   * the stream from there (see offer).
   */
  cloneStart(events: number): Promise<StreamPosition> {
    const known = this.boundaries.find((b) => b.events === events);
    const p =
      known !== undefined
        ? Promise.resolve(known)
        : new Promise<StreamPosition>((resolve) => {
            this.boundaryWaiters.set(events, [...(this.boundaryWaiters.get(events) ?? []), resolve]);
          });
    return p.then((pos) => {
      this.cloneStarts.push(pos);
      if (this.cloneStarts.length > BOUNDARIES_KEPT) this.cloneStarts.shift();
      return pos;
    });
  }

  private onLogBytes(bytes: Buffer, lastEventSeq: number): void {
    if (this.closed || this.logBroken !== null) return;
    const before = this.fileBytes;
    let off = 0;
    try {
      while (off < bytes.byteLength)
        off += writeSync(this.fd, bytes, off, bytes.byteLength - off, before + off);
    } catch (e) {
      // Without the whole log no backup can be served: the current one is lost, and no new one
      // attaches (the VM runs on unprotected once it wins the right to).
      this.logBroken = `the FT log cannot be written: ${(e as Error).message}`;
      this.o.log.warn({ vm: this.o.vmName, reason: this.logBroken }, `ft: ${this.logBroken}`);
      this.link?.closeWith({ code: 'local', message: this.logBroken });
      return;
    }
    this.fileBytes += bytes.byteLength;
    this.fileEvents = lastEventSeq + 1;
    // Frame ends are where a backup cloned from a snapshot can start.
    for (const f of frameEnds(bytes)) {
      if (f.events === null) continue;
      this.boundaries.push({ offset: before + f.end, events: f.events });
      if (this.boundaries.length > BOUNDARIES_KEPT) this.boundaries.shift();
      const waiters = this.boundaryWaiters.get(f.events);
      if (waiters !== undefined) {
        this.boundaryWaiters.delete(f.events);
        for (const w of waiters) w({ offset: before + f.end, events: f.events });
      }
    }
    const link = this.link;
    if (link === null || this.catchingUp || this.sent !== before) return;
    const r = link.append(bytes, lastEventSeq);
    if (r.ok) {
      this.sent = this.fileBytes;
      this.sentEvents = this.fileEvents;
      this.setThrottle(r.overHighWater || this.overLag());
    } else {
      // The sender is full: the file has the bytes, and the catch-up loop sends them as acks free room.
      this.setThrottle(true);
      void this.catchUp();
    }
  }

  private onSession(link: FtPrimaryLink): void {
    this.link = link;
    this.lastAckAtMs = performance.now();
    // From the first event, or from a snapshot's cut for a backup restored from it.
    this.sent = link.session.start.offset;
    this.sentEvents = link.session.start.events;
    this.setProtection('syncing', null);
    this.o.log.info({ vm: this.o.vmName, backup: link.backup }, `ft: ${link.backup} attached; syncing`);
    void this.catchUp();
  }

  /** Sends the file from `sent` while the sender has room, in whole frames. */
  private async catchUp(): Promise<void> {
    if (this.catchingUp) return;
    this.catchingUp = true;
    let link: FtPrimaryLink | null = null;
    try {
      let buf = Buffer.allocUnsafe(CATCH_UP_CHUNK_BYTES);
      for (;;) {
        link = this.link;
        if (link === null || link.isClosed || this.closed) return;
        if (this.sent >= this.fileBytes) return;
        const space = link.spaceBytes;
        if (space < Math.min(buf.byteLength, this.fileBytes - this.sent)) {
          // Acks free room; poll gently rather than busily.
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        if (this.sent < PREAMBLE_BYTES) {
          const n = readSync(this.fd, buf, 0, PREAMBLE_BYTES - this.sent, this.sent);
          this.appendFromFile(link, buf.subarray(0, n), this.sentEvents - 1);
          continue;
        }
        const want = Math.min(buf.byteLength, this.fileBytes - this.sent);
        const n = readSync(this.fd, buf, 0, want, this.sent);
        const whole = wholeFrames(buf.subarray(0, n));
        if (whole.bytes === 0) {
          // One record can be bigger than a chunk (random_get takes up to 16 MiB): read more.
          if (n < want || buf.byteLength >= CATCH_UP_CHUNK_BYTES_MAX)
            throw new Error(`ft log ${this.o.logPath}: no whole frame at offset ${this.sent}`);
          buf = Buffer.allocUnsafe(buf.byteLength * 2);
          continue;
        }
        const events = whole.events ?? this.sentEvents;
        this.appendFromFile(link, Buffer.from(buf.subarray(0, whole.bytes)), events - 1);
        // Let acks and the guest's I/O in between chunks.
        await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      // The backup cannot be served (the log file failed): it is lost, the VM is not.
      const why = (e as Error).message;
      this.o.log.warn({ vm: this.o.vmName, reason: why }, `ft: cannot serve the log to the backup: ${why}`);
      link?.closeWith({ code: 'local', message: `cannot serve the log: ${why}` });
    } finally {
      this.catchingUp = false;
    }
  }

  private appendFromFile(link: FtPrimaryLink, bytes: Buffer, lastEventSeq: number): void {
    const r = link.append(bytes, Math.max(lastEventSeq, this.sentEvents - 1));
    if (!r.ok) throw new Error(`ft: append refused during catch-up (${r.reason})`);
    this.sent += bytes.byteLength;
    this.sentEvents = Math.max(this.sentEvents, lastEventSeq + 1);
  }

  /** performance.now() of the backup's last acknowledgement (-Infinity before any). */
  lastAckAtMs = -Infinity;

  private onAck(ackedEventSeq: number, replayedEventSeq: number): void {
    this.lastAckAtMs = performance.now();
    this.o.vm.releaseOutputs(ackedEventSeq);
    if (
      this.protection === 'syncing' &&
      this.sent === this.fileBytes &&
      replayedEventSeq + 1 >= this.sentEvents
    ) {
      this.setProtection('protected', null);
      this.o.log.info({ vm: this.o.vmName }, `ft: ${this.o.vmName} protected`);
    }
    this.setThrottle(this.overLag() || (this.link?.overHighWater ?? false));
    if (!this.catchingUp && this.sent < this.fileBytes) void this.catchUp();
  }

  private overLag(): boolean {
    const lag = this.link?.lag();
    return lag !== undefined && lag.ms > this.o.lagBoundMs;
  }

  private setThrottle(on: boolean): void {
    if (on === this.throttled) return;
    this.throttled = on;
    this.o.vm.throttle(on);
    this.o.log.info({ vm: this.o.vmName, on }, on ? 'ft: throttling the primary' : 'ft: throttle off');
  }

  /** Times the throttle engaged (tests and metrics). */
  get throttling(): boolean {
    return this.throttled;
  }

  private onClose(reason: FtCloseReason): void {
    this.link = null;
    this.setThrottle(false);
    this.setProtection('unprotected', `backup lost: ${reason.message}`);
    this.o.onBackupLost?.(reason);
  }

  private setProtection(p: Protection, reason: string | null): void {
    if (p === this.protection) return;
    this.protection = p;
    this.o.onProtection?.(p, reason);
  }
}

export interface FtBackupSideOptions extends FtLinkCommon {
  vm: Vm;
  vmName: string;
  logPath: string;
  primaryAddress: FtAddress;
  primary: string;
  primaryIncarnation: string;
  generation: number;
  receiver?: LogReceiverOptions;
  log: FtLogger;
  /** The established link closed: the primary is lost (or the channel failed). */
  onPrimaryLost?(reason: FtCloseReason): void;
  /**
   * This backup cannot follow (the log it received does not replay here). It
   * is not its primary that failed: the caller stops this copy, and the pair
   * re-forms with a fresh one; it must never go live.
   */
  onFailed?(reason: string): void;
  /**
   * A backup restored from the primary's snapshot: the stream starts at the
   * snapshot's cut (see FtPrimarySide.cloneStart), and `prefix` (this VM's own
   * log preamble and header) begins its log file and its replay instead of the
   * primary's first bytes.
   */
  clone?: { start: StreamPosition; prefix: Buffer };
}

export class FtBackupSide {
  private fd: number;
  private fileBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private wentLive = false;
  /** Why this backup cannot follow its primary, once it cannot. */
  private failure: string | null = null;

  private constructor(
    private readonly o: FtBackupSideOptions,
    private link: FtBackupLink | null,
  ) {
    this.fd = openSync(o.logPath, 'w', 0o600);
    if (o.clone !== undefined) {
      writeSync(this.fd, o.clone.prefix, 0, o.clone.prefix.byteLength, 0);
      this.fileBytes = o.clone.prefix.byteLength;
      o.vm.feedLog(o.clone.prefix);
    }
  }

  /** Connects to the primary and starts replaying; resolves with the side, or why it could not. */
  static async connect(
    o: FtBackupSideOptions,
  ): Promise<{ ok: true; side: FtBackupSide } | { ok: false; reason: string; refused: boolean }> {
    let side: FtBackupSide | null = null;
    const pendingChunks: Buffer[] = [];
    const r = await connectFtLink(o.primaryAddress, {
      key: o.key,
      clusterId: o.clusterId,
      self: o.self,
      selfIncarnation: o.selfIncarnation,
      log: o.log,
      ...(o.facts !== undefined ? { facts: o.facts } : {}),
      ...(o.linkDelayMs !== undefined ? { linkDelayMs: o.linkDelayMs } : {}),
      primary: o.primary,
      primaryIncarnation: o.primaryIncarnation,
      vm: o.vmName,
      generation: o.generation,
      ...(o.clone !== undefined ? { start: o.clone.start } : {}),
      ...(o.receiver !== undefined ? { receiver: o.receiver } : {}),
      onLog: (link, chunk) => {
        if (side === null) pendingChunks.push(chunk.bytes);
        else side.onLog(link, chunk.bytes);
      },
      onClose: (_link, reason) => side?.onClose(reason),
    });
    if (!r.ok) return { ok: false, reason: r.reason, refused: r.refused };
    side = new FtBackupSide(o, r.link);
    for (const b of pendingChunks) side.onLog(r.link, b);
    side.timer = setInterval(() => side!.report(), REPLAY_REPORT_MS);
    return { ok: true, side };
  }

  get attached(): boolean {
    return this.link !== null && !this.link.isClosed;
  }

  private onLog(link: FtBackupLink, bytes: Buffer): void {
    if (this.wentLive) return;
    try {
      this.o.vm.feedLog(bytes);
    } catch (e) {
      const why = e instanceof LogError ? e.message : String(e);
      this.o.log.warn({ vm: this.o.vmName, reason: why }, `ft: cannot replay the primary's log: ${why}`);
      // Set before the close, whose handler must not read this as the primary's loss.
      this.failure ??= `cannot replay the primary's log: ${why}`;
      void link.close();
      this.o.onFailed?.(this.failure);
      return;
    }
    let off = 0;
    while (off < bytes.byteLength)
      off += writeSync(this.fd, bytes, off, bytes.byteLength - off, this.fileBytes + off);
    this.fileBytes += bytes.byteLength;
    if (this.o.vm.replayQueuedBytes > BACKUP_QUEUE_BYTES_MAX) link.pause();
  }

  private report(): void {
    const link = this.link;
    if (link === null || link.isClosed) return;
    // The channel counts an event as held only at the end of a frame that completes it, while the
    // replayer may already have run records from a frame whose count arrives with the next one.
    const replayed = Math.min(this.o.vm.ftLog().replayed() - 1, link.heldEventSeq);
    if (replayed >= 0) link.reportReplayed(replayed);
    if (this.o.vm.replayQueuedBytes < BACKUP_QUEUE_BYTES_MAX / 2) link.resume();
  }

  private onClose(reason: FtCloseReason): void {
    if (this.wentLive || this.failure !== null) return;
    this.o.log.info(
      { vm: this.o.vmName, reason: reason.message },
      `ft: lost the primary of ${this.o.vmName}: ${reason.message}`,
    );
    this.o.onPrimaryLost?.(reason);
  }

  /**
   * Go-live (after the caller won the generation and fenced the old primary):
   * stop receiving, replay every whole frame received, switch to live, bind
   * the service address. Returns what FtPrimarySide needs to continue the log.
   */
  async goLive(): Promise<{ fileBytes: number; events: number }> {
    this.wentLive = true;
    if (this.timer !== null) clearInterval(this.timer);
    const link = this.link;
    this.link = null;
    // Not awaited: a graceful close to a primary that is gone or cut off waits out its grace
    // period, and the VM must not wait for it.
    void link?.close();
    const fileBytes = this.o.vm.consumedLogBytes;
    ftruncateSync(this.fd, fileBytes);
    closeSync(this.fd);
    const { events } = await this.o.vm.goLive();
    return { fileBytes, events };
  }

  /** Stops following the primary (the VM's stop is the caller's). */
  async close(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    const link = this.link;
    this.link = null;
    this.wentLive = true;
    await link?.close();
    try {
      closeSync(this.fd);
    } catch {
      // Already closed by goLive.
    }
  }
}
