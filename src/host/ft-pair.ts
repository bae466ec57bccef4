/**
 * The two sides of an FT pair on their hosts' main threads: they join a VM
 * (src/vm) to the logging channel (src/io/ft-link.ts). The host daemon
 * decides who is primary and who is backup; these carry it out.
 *
 * FtPrimarySide streams the VM's log to its backup. A backup starts from a
 * snapshot of the running VM (the live clone, src/host/local-vm.ts), so the
 * stream starts at the snapshot's call and nothing before it is ever needed
 * again. The log file DATA/vms/NAME/ft.log is a spill buffer, not an
 * archive: it holds the log's prefix (preamble and header) and only the
 * bytes some backup may still be sent. Its physical layout:
 *
 *     [prefix][bytes of the stream from logical offset `base` to the end]
 *
 * Offsets everywhere else (the channel, clone starts, frame boundaries) are
 * logical: positions in the whole stream the VM ever produced. With no
 * backup, or with one that has been handed everything, new bytes are not
 * written at all; with a backup behind, the part it has been handed is cut
 * off once it is at least as big as what remains (so the copying costs at
 * most as much as the writing did). The file therefore stays bounded by
 * the backup's backlog, which the lag bound throttles (bounded logs,
 * DESIGN.md §5).
 *
 * The backup's acknowledgements release outputs (the Output Rule), its
 * replay progress gives the lag, and a lag above the bound throttles the
 * primary at its host calls. Outputs wait for a backup from the moment its
 * session opens; before that they leave at once, and the backup may not take
 * over until it has caught up (protected), so it holds every call whose
 * output left before it attached.
 *
 * FtBackupSide feeds what arrives to a replaying VM. It keeps no file while
 * it follows; when it goes live it starts a new log file of its own, so that
 * it can serve (clone) a backup of its own.
 *
 * Invariants:
 * - Logical offsets [0, prefix length) are the prefix; a session starting at
 *   offset 0 is served only while nothing after the prefix has been dropped.
 * - The file's data region is exactly the logical range [base, fileBytes):
 *   bytes are written whole-frame and in order, and a cut keeps a suffix.
 * - Nothing at or after the oldest position a backup may still be sent is
 *   dropped: the current session's unsent bytes, and a clone start handed
 *   out in the last CLONE_START_TTL_MS that no session has used yet.
 * - lastEventSeq handed to the sender never runs ahead of the bytes.
 */
import { closeSync, ftruncateSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
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
/** The file's sent part is cut off once it is at least this big (and at least as big as the rest). */
export const FT_LOG_COMPACT_BYTES_DEFAULT = 16 * 1024 * 1024;
/**
 * How long a clone start keeps the log from its offset on, waiting for the
 * backup restored from that snapshot to open its session: longer than a
 * backup waits for its clone (CLONE_FETCH_TIMEOUT_MS in local-vm.ts).
 */
export const CLONE_START_TTL_MS = 120_000;

/**
 * unprotected: no backup is being made; reprotecting: a backup was named and
 * is being cloned (not attached yet); syncing: attached, catching up;
 * protected: caught up, every output waits for its acknowledgement.
 */
/** Writes all of `bytes` at file offset `at`. */
function writeAll(fd: number, bytes: Uint8Array, at: number): void {
  let off = 0;
  while (off < bytes.byteLength) off += writeSync(fd, bytes, off, bytes.byteLength - off, at + off);
}

export type Protection = 'unprotected' | 'reprotecting' | 'syncing' | 'protected';

export interface FtLag {
  events: number;
  bytes: number;
  ms: number;
}

export interface FtPrimarySideOptions {
  vm: Vm;
  vmName: string;
  /** The log file: created (or replaced) with `prefix` and nothing else. */
  logPath: string;
  /** The log's preamble and header (Vm.logPrefix of this VM's header). */
  prefix: Buffer;
  /**
   * A backup that went live continues its log: the logical length and call
   * count it replayed to (the new file starts with the prefix and holds no
   * earlier bytes). Absent: a fresh primary, at the prefix's end with 0 calls.
   */
  continueAt?: { fileBytes: number; events: number };
  server: FtLinkServer;
  sender?: LogSenderOptions;
  /** Above this replay lag the primary is slowed at its host calls (guarantee 5). */
  lagBoundMs: number;
  /** The sent part of the file is cut off once it is this big (default FT_LOG_COMPACT_BYTES_DEFAULT). */
  compactBytes?: number;
  /** The monotonic clock (ms), for ack times and clone-start expiry; performance.now by default. */
  nowMs?: () => number;
  log: FtLogger;
  /** Protection changed (for the VM's status). */
  onProtection?(p: Protection, reason: string | null): void;
  /** An established session closed: the backup is lost. */
  onBackupLost?(reason: FtCloseReason): void;
  /** A backup's hello was refused (a join check failed, say): why, for `vm show`. */
  onRefused?(from: string, reason: string): void;
}

export class FtPrimarySide {
  private fd: number;
  /** Bytes of the prefix at the file's start (logical and physical offsets agree below it). */
  private readonly prefixBytes: number;
  /** The logical offset of the first byte after the prefix in the file. */
  private base: number;
  /** The logical length of the stream: every byte the VM's log produced. */
  private fileBytes: number;
  /** Calls whose records are in the stream. */
  private fileEvents: number;
  private link: FtPrimaryLink | null = null;
  /** Whether a backup is offered (named by the placement), attached or not. */
  private offered = false;
  /** Logical stream bytes appended to the current link. */
  private sent = 0;
  private sentEvents = 0;
  private catchingUp = false;
  private protection: Protection = 'unprotected';
  private throttled = false;
  private closed = false;
  /** Snapshots being taken for a clone: while any is, nothing is dropped (its start is not known yet). */
  private clonesInFlight = 0;
  private readonly nowMs: () => number;
  private readonly compactBytes: number;

  constructor(private readonly o: FtPrimarySideOptions) {
    this.nowMs = o.nowMs ?? (() => performance.now());
    this.compactBytes = o.compactBytes ?? FT_LOG_COMPACT_BYTES_DEFAULT;
    // Read back too: a backup behind is served from this file.
    this.fd = openSync(o.logPath, 'w+', 0o600);
    writeAll(this.fd, o.prefix, 0);
    this.prefixBytes = o.prefix.byteLength;
    this.fileBytes = o.continueAt?.fileBytes ?? this.prefixBytes;
    this.fileEvents = o.continueAt?.events ?? 0;
    if (this.fileBytes < this.prefixBytes)
      throw new Error(`FtPrimarySide: a log continued at ${this.fileBytes} bytes is shorter than its prefix`);
    this.base = this.fileBytes;
    // The stream's end now is also where calls from fileEvents on begin.
    this.boundaries.push({ offset: this.fileBytes, events: this.fileEvents });
    // No backup yet: nothing waits for one.
    o.vm.releaseAllOutputs();
    o.vm.streamFtLog((bytes, lastEventSeq) => this.onLogBytes(bytes, lastEventSeq));
  }

  get state(): Protection {
    return this.protection;
  }

  get backupAttached(): boolean {
    return this.link !== null;
  }

  /** Every byte of the log stream so far (logical). */
  get logBytes(): number {
    return this.fileBytes;
  }

  /** The log file's size now: the prefix and what a backup may still be sent. */
  get logFileBytes(): number {
    return this.prefixBytes + (this.fileBytes - this.base);
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
   * Outputs wait for that backup from the moment its session opens. A
   * backup served before is dropped (the caller replaced it: the placement
   * no longer names it, so it can never take over), and what waited for it
   * leaves now.
   */
  offer(generation: number, backup: string, backupIncarnation: string): void {
    if (this.link !== null) {
      const old = this.link;
      this.link = null;
      void old.close();
      this.setThrottle(false);
    }
    // The caller offers only a backup the placement names, so no earlier backup can take over
    // any more (the placement's version moved on): what waited for one leaves now.
    this.o.vm.releaseAllOutputs();
    this.offered = true;
    // A clone start belongs to the offer it was made for.
    this.cloneStarts.length = 0;
    this.o.server.offer(this.o.vmName, {
      generation,
      backup,
      backupIncarnation,
      ...(this.o.sender !== undefined ? { sender: this.o.sender } : {}),
      startFrom: (asked) => this.startFrom(asked),
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
        // The named backup cannot attach (until the hosts agree): not re-protecting, unprotected.
        if (this.protection === 'reprotecting') this.setProtection('unprotected', r.reason);
        this.o.onRefused?.(r.from, r.reason);
      },
    });
    this.setProtection('reprotecting', `cloning to ${backup}`);
  }

  /** Where a backup may start: a clone start of the current offer, or offset 0 while the log has it all. */
  private startFrom(asked: StreamPosition): StreamPosition | string {
    if (this.logBroken !== null) return this.logBroken;
    const now = this.nowMs();
    const clone = this.cloneStarts.find(
      (c) => c.offset === asked.offset && c.events === asked.events && now - c.atMs <= CLONE_START_TTL_MS,
    );
    if (clone !== undefined) return { offset: asked.offset, events: asked.events };
    if (asked.offset === 0 && asked.events === 0 && this.wholeLogKept()) return { offset: 0, events: 0 };
    return `this primary serves its log from a snapshot it took for this backup, not from offset ${asked.offset} (event ${asked.events})`;
  }

  /** No backup any more: outputs leave at once (the caller won the right to run alone). */
  runAlone(reason: string): void {
    this.o.server.withdraw(this.o.vmName);
    this.link = null;
    this.offered = false;
    this.cloneStarts.length = 0;
    this.o.vm.releaseAllOutputs();
    this.setThrottle(false);
    this.setProtection('unprotected', reason);
    this.dropUnneeded();
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
  /** The most recent frame ends in the stream: (logical offset after the frame, calls recorded by then). */
  private readonly boundaries: StreamPosition[] = [];
  private readonly boundaryWaiters = new Map<number, ((p: StreamPosition) => void)[]>();
  /** Positions a backup cloned from a snapshot may ask the stream to start from, and when made. */
  private readonly cloneStarts: (StreamPosition & { atMs: number })[] = [];

  /**
   * A snapshot for a clone is about to be taken: nothing is dropped until
   * cloneStart (or cloneAbandoned) says where its stream starts.
   */
  cloneBegins(): void {
    this.clonesInFlight++;
  }

  /** A snapshot begun with cloneBegins was not taken after all. */
  cloneAbandoned(): void {
    this.clonesInFlight = Math.max(0, this.clonesInFlight - 1);
  }

  /**
   * Where in the log stream the calls from `events` on begin: the end of the
   * frame that completes call `events` - 1. A snapshot flushes the log at its
   * cut, so its `events` is a frame end; this waits until the main thread has
   * the frame. A backup restored from the snapshot may then ask for the
   * stream from there (see offer); the log keeps it for CLONE_START_TTL_MS.
   * Ends a cloneBegins, which must come before the snapshot is asked for:
   * without it the frame at the cut may be dropped before this is called.
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
      // The bytes from the cut on were kept while the snapshot was taken (clonesInFlight).
      if (pos.offset < this.base)
        throw new Error(
          `assertion: clone start ${pos.offset} lies before the log's kept part (${this.base})`,
        );
      this.cloneStarts.push({ ...pos, atMs: this.nowMs() });
      if (this.cloneStarts.length > BOUNDARIES_KEPT) this.cloneStarts.shift();
      this.cloneAbandoned();
      return pos;
    });
  }

  /** Whether the file still holds the stream from its first event (nothing dropped, nothing continued). */
  private wholeLogKept(): boolean {
    return this.base === this.prefixBytes && this.o.continueAt === undefined;
  }

  /** The physical file offset of logical offset `at` (which must still be in the file). */
  private physical(at: number): number {
    if (at < this.prefixBytes) return at;
    if (at < this.base) throw new Error(`assertion: log offset ${at} was dropped (kept from ${this.base})`);
    return this.prefixBytes + (at - this.base);
  }

  /**
   * The oldest logical offset some backup may still be sent: the current
   * session's unsent bytes, a live clone start, or everything while a clone's
   * snapshot is being taken or an offset-0 session may still come.
   */
  private keepFrom(): number {
    if (this.link !== null) return this.sent;
    if (!this.offered) return this.fileBytes;
    if (this.clonesInFlight > 0) return this.base;
    // A first backup may still ask for the stream from event 0 (in-process pairs do).
    if (this.wholeLogKept()) return this.prefixBytes;
    const now = this.nowMs();
    let keep = this.fileBytes;
    for (const c of this.cloneStarts) if (now - c.atMs <= CLONE_START_TTL_MS) keep = Math.min(keep, c.offset);
    return keep;
  }

  /** Cuts off the file's part no backup needs: all of it at once, or a big sent part (see the module note). */
  private dropUnneeded(): void {
    if (this.closed) return;
    const keep = this.keepFrom();
    if (keep <= this.base) return;
    if (keep >= this.fileBytes) {
      if (this.fileBytes > this.base) ftruncateSync(this.fd, this.prefixBytes);
      this.base = this.fileBytes;
      return;
    }
    const dead = keep - this.base;
    if (dead < this.compactBytes || dead < this.fileBytes - keep) return;
    // Copy the kept suffix after the prefix into a new file and put it in place.
    const tmpPath = `${this.o.logPath}.compact`;
    const tmp = openSync(tmpPath, 'w+', 0o600);
    try {
      const buf = Buffer.allocUnsafe(CATCH_UP_CHUNK_BYTES);
      for (let at = 0; at < this.prefixBytes;) {
        const n = readSync(this.fd, buf, 0, Math.min(buf.byteLength, this.prefixBytes - at), at);
        if (n === 0) throw new Error(`ft log ${this.o.logPath}: the prefix ends early at ${at}`);
        writeAll(tmp, buf.subarray(0, n), at);
        at += n;
      }
      for (let at = keep; at < this.fileBytes;) {
        const n = readSync(this.fd, buf, 0, Math.min(buf.byteLength, this.fileBytes - at), this.physical(at));
        if (n === 0) throw new Error(`ft log ${this.o.logPath}: the data ends early at ${at}`);
        writeAll(tmp, buf.subarray(0, n), this.prefixBytes + (at - keep));
        at += n;
      }
      renameSync(tmpPath, this.o.logPath);
    } catch (e) {
      closeSync(tmp);
      throw e;
    }
    closeSync(this.fd);
    this.fd = tmp;
    this.base = keep;
  }

  private onLogBytes(bytes: Buffer, lastEventSeq: number): void {
    if (this.closed || this.logBroken !== null) return;
    const before = this.fileBytes;
    const link = this.link;
    // A session that has been handed everything takes the bytes straight from the vCPU.
    const direct = link !== null && !this.catchingUp && this.sent === before;
    const r = direct ? link.append(bytes, lastEventSeq) : null;
    this.fileBytes += bytes.byteLength;
    this.fileEvents = lastEventSeq + 1;
    this.noteBoundaries(bytes, before);
    if (r?.ok === true) {
      this.sent = this.fileBytes;
      this.sentEvents = this.fileEvents;
      this.setThrottle(r.overHighWater || this.overLag());
    }
    try {
      if (this.keepFrom() >= this.fileBytes && this.base === before) {
        // No one needs these bytes: nothing is written.
        this.base = this.fileBytes;
      } else {
        this.base = Math.min(this.base, before);
        writeAll(this.fd, bytes, this.physical(before));
        this.dropUnneeded();
      }
    } catch (e) {
      // Without the log no backup can be served: the current one is lost, and no new one
      // attaches (the VM runs on unprotected once it wins the right to).
      this.logBroken = `the FT log cannot be written: ${(e as Error).message}`;
      this.o.log.warn({ vm: this.o.vmName, reason: this.logBroken }, `ft: ${this.logBroken}`);
      this.link?.closeWith({ code: 'local', message: this.logBroken });
      return;
    }
    if (r !== null && !r.ok) {
      // The sender is full: the file has the bytes, and the catch-up loop sends them as acks free room.
      this.setThrottle(true);
      void this.catchUp();
    }
  }

  /** Frame ends are where a backup cloned from a snapshot can start. */
  private noteBoundaries(bytes: Buffer, before: number): void {
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
  }

  private onSession(link: FtPrimaryLink): void {
    this.link = link;
    this.lastAckAtMs = this.nowMs();
    // From a snapshot's cut (a backup restored from it), or from the first event.
    this.sent = link.session.start.offset;
    this.sentEvents = link.session.start.events;
    this.syncTargetEvents = this.fileEvents;
    // The clone start is used: older ones are void.
    this.cloneStarts.length = 0;
    // Outputs wait for this backup from now on; those of earlier calls left already, and the
    // backup may take over only once it has replayed them (it is protected).
    const vm = this.o.vm;
    const gate = vm.outputGate;
    if (gate != null && gate.open) gate.closeAt(this.fileEvents - 1);
    // A clone taken while the VM was idle holds every call already: nothing to catch up (and no
    // ack may come to say so until the VM makes another call).
    const caughtUp = link.session.start.events >= this.syncTargetEvents;
    this.setProtection(caughtUp ? 'protected' : 'syncing', null);
    this.o.log.info(
      { vm: this.o.vmName, backup: link.backup },
      `ft: ${link.backup} attached; ${caughtUp ? 'protected' : 'syncing'}`,
    );
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
        if (this.sent >= this.fileBytes) {
          this.dropUnneeded();
          return;
        }
        const space = link.spaceBytes;
        if (space < Math.min(buf.byteLength, this.fileBytes - this.sent)) {
          // Acks free room; poll gently rather than busily.
          await new Promise((r) => setTimeout(r, 5));
          continue;
        }
        if (this.sent < PREAMBLE_BYTES) {
          const n = readSync(this.fd, buf, 0, PREAMBLE_BYTES - this.sent, this.physical(this.sent));
          this.appendFromFile(link, buf.subarray(0, n), this.sentEvents - 1);
          continue;
        }
        const want = Math.min(buf.byteLength, this.fileBytes - this.sent);
        const n = readSync(this.fd, buf, 0, want, this.physical(this.sent));
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
        this.dropUnneeded();
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

  /**
   * Calls the session's backup must have replayed to be protected: all those
   * made before it attached (their outputs left without waiting for it).
   * Later calls are followed under the lag bound; requiring the backup to
   * have replayed everything sent would, under steady load, never be met.
   */
  private syncTargetEvents = 0;

  private onAck(ackedEventSeq: number, replayedEventSeq: number): void {
    this.lastAckAtMs = this.nowMs();
    this.o.vm.releaseOutputs(ackedEventSeq);
    if (this.protection === 'syncing' && replayedEventSeq + 1 >= this.syncTargetEvents) {
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
    this.offered = false;
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
   * log preamble and header) begins its replay instead of the primary's first
   * bytes.
   */
  clone?: { start: StreamPosition; prefix: Buffer };
}

export class FtBackupSide {
  private timer: NodeJS.Timeout | null = null;
  private wentLive = false;
  /** Why this backup cannot follow its primary, once it cannot. */
  private failure: string | null = null;

  private constructor(
    private readonly o: FtBackupSideOptions,
    private link: FtBackupLink | null,
  ) {
    if (o.clone !== undefined) o.vm.feedLog(o.clone.prefix);
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
   * the service address. Returns what FtPrimarySide needs to continue the log:
   * the logical length of the log this copy replayed (its prefix included) and
   * its calls.
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
  }
}
