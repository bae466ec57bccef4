/**
 * The vCPU's side of the event log: RecordTape turns host calls into RECORDS
 * frames, ReplayTape feeds them back.
 *
 * One record per host call (docs/LOG-FORMAT.md):
 *
 *   b0         u8   bits 0-5 function id (index in WASI_FUNCTIONS),
 *                   bit 6 effect hash present, bit 7 non-zero return
 *   argHash    u16  short hash of the arguments (and of the bytes they point at)
 *   items...        the call's nondeterministic inputs, in the order the host
 *                   consumed them (clock values, bytes read, poll events, ...)
 *   ret        varint  errno, only when bit 7 is set
 *   effect     u16  hash of the guest memory the call wrote, only when bit 6 is set
 *
 * A call that consumed no items is *performed*: replay executes it for real
 * (files, descriptor table) and checks its errno and effect hash against the
 * record. A call that consumed items is *fed*: replay takes its inputs from
 * the record instead of the world. Sequence numbers are implicit: the frame
 * carries the first one and records follow without gaps.
 *
 * Invariants:
 * - A record is written only when its call completes (or exits the guest);
 *   a call interrupted by a stop leaves no trace, so the log's cut is the
 *   entry of the first call not in it.
 * - Only complete records leave the tape. A frame is flushed when it reaches
 *   FRAME_BODY_BYTES_TARGET, and before the vCPU sleeps once its oldest
 *   record is `flushDelayMs` old (0: at every sleep, as a backup needs; a
 *   file recording coalesces a few milliseconds of calls into one write).
 */
import { ByteReader, ByteWriter, DecodeError } from '../core/bytes.js';
import {
  FRAME_BODY_BYTES_TARGET,
  FrameKind,
  encodeFrame,
  encodeTrailer,
  frameCrc,
  framePrefix,
  recordsPrefix,
  type Trailer,
} from './log/format.js';

const FN_MASK = 0x3f;
const B0_EFFECT = 0x40;
const B0_RET = 0x80;

/** Where completed frames go: a ring to the main thread, or a test buffer. */
export interface FrameSink {
  write(pieces: readonly Uint8Array[]): void;
}

export class RecordTape {
  private readonly w = new ByteWriter(FRAME_BODY_BYTES_TARGET * 2);
  /** Sequence number of the first record in the current frame. */
  private firstSeq: number;
  /** Complete records in the current frame. */
  private count = 0;
  private recStart = 0;
  private inRecord = false;
  private fnId = 0;
  /** Whether the current call consumed nondeterministic inputs (it is fed, not performed). */
  itemsUsed = false;

  /** When the oldest complete record not yet flushed was completed (nowMs() time), or null. */
  private oldestMs: number | null = null;

  constructor(
    private readonly sink: FrameSink,
    opts: { startSeq?: number; flushDelayMs?: number; nowMs?: () => number } = {},
  ) {
    this.firstSeq = opts.startSeq ?? 0;
    this.flushDelayMs = opts.flushDelayMs ?? 0;
    this.nowMs = opts.nowMs ?? (() => 0);
  }

  private readonly flushDelayMs: number;
  private readonly nowMs: () => number;

  /**
   * Before the vCPU sleeps: flushes if complete records have waited long
   * enough, and returns how long the sleep may last before they must be
   * flushed (Infinity when nothing waits).
   */
  beforeSleep(): number {
    if (this.count === 0) return Infinity;
    if (this.flushDelayMs <= 0) {
      this.flush();
      return Infinity;
    }
    const waitedMs = this.nowMs() - (this.oldestMs ?? 0);
    if (waitedMs >= this.flushDelayMs) {
      this.flush();
      return Infinity;
    }
    return this.flushDelayMs - waitedMs;
  }

  /** Host calls recorded so far, including those not yet flushed. */
  get events(): number {
    return this.firstSeq + this.count;
  }

  begin(fnId: number, argHash: number): void {
    this.recStart = this.w.pos;
    this.fnId = fnId;
    this.w.u8(fnId);
    this.w.u16(argHash);
    this.itemsUsed = false;
    this.inRecord = true;
  }

  putU(v: number): void {
    this.itemsUsed = true;
    this.w.varint(v);
  }

  putZ(v: bigint): void {
    this.itemsUsed = true;
    this.w.zigzag(v);
  }

  /** An unsigned value of up to 64 bits, as a varint. */
  putBig(v: bigint): void {
    this.itemsUsed = true;
    this.w.varbig(v);
  }

  putRaw(b: Uint8Array): void {
    this.itemsUsed = true;
    this.w.bytes(b);
  }

  /** Records the first n bytes spread over `views` (the prefix a read filled). */
  putViews(views: readonly Uint8Array[], n: number): void {
    this.itemsUsed = true;
    this.w.reserve(n);
    let left = n;
    for (const v of views) {
      if (left <= 0) break;
      const k = Math.min(left, v.byteLength);
      this.w.bytesOf(v, k);
      left -= k;
    }
  }

  /** Completes the current record; `ret` is undefined for proc_exit. */
  end(ret: number | undefined, effectHash: number | null): void {
    let b0 = this.fnId;
    if (ret !== undefined && ret !== 0) {
      b0 |= B0_RET;
      this.w.varint(ret);
    }
    if (effectHash !== null) {
      b0 |= B0_EFFECT;
      this.w.u16(effectHash);
    }
    this.w.patchU8(this.recStart, b0);
    if (this.count === 0 && this.flushDelayMs > 0) this.oldestMs = this.nowMs();
    this.count++;
    this.inRecord = false;
    if (this.w.pos >= FRAME_BODY_BYTES_TARGET) this.flush();
  }

  /** Drops the current record (the call was interrupted before it took effect). */
  abort(): void {
    this.w.truncate(this.recStart);
    this.inRecord = false;
  }

  /** Emits the complete records as one frame; a record in progress stays. */
  flush(): void {
    if (this.count === 0) return;
    const completeEnd = this.inRecord ? this.recStart : this.w.pos;
    const prefix2 = recordsPrefix(this.firstSeq, this.count);
    const records = this.w.view().subarray(0, completeEnd);
    const prefix = framePrefix(FrameKind.RECORDS, prefix2.byteLength + records.byteLength);
    const crc = frameCrc([prefix, prefix2, records]);
    this.sink.write([prefix, prefix2, records, crc]);
    this.firstSeq += this.count;
    this.count = 0;
    if (this.inRecord) {
      this.w.shiftFrom(this.recStart);
      this.recStart = 0;
    } else {
      this.w.truncate(0);
    }
  }

  /** Flushes and appends the trailer: the log is then complete. */
  finish(trailer: Trailer): void {
    if (this.inRecord) this.abort();
    this.flush();
    this.sink.write([encodeFrame(FrameKind.TRAILER, encodeTrailer(trailer))]);
  }
}

// ---------------------------------------------------------------- replay

/** A RECORDS frame as the replayer receives it. */
export interface RecordsFrame {
  firstSeq: number;
  count: number;
  records: Uint8Array;
}

/** Supplies frames in order; null means the log has no more (end of log). May block. */
export interface FrameSource {
  next(): RecordsFrame | null;
}

/** Base of the control signals replay throws through the guest's stack. */
export class ReplayStop extends Error {}

/** The log has no record for this call: the cut is here. */
export class EndOfLog extends ReplayStop {
  constructor() {
    super('end of log');
  }
}

export interface CallDescription {
  fn: string;
  argHash: number;
  /** The arguments as the guest passed them (only for the call found). */
  args?: readonly (number | bigint)[];
}

/** Replay found a call, result or effect that differs from the log. */
export class Divergence extends ReplayStop {
  constructor(
    readonly seq: number,
    readonly expected: CallDescription,
    readonly found: CallDescription,
    readonly detail: string,
  ) {
    super(`divergence at call ${seq}: ${detail}`);
  }
}

/**
 * The replaying host's own disk failed (ENOSPC, EIO, ...) where the recording
 * succeeded: that side's failure, not the guest's, and not a divergence.
 */
export class ReplayHostFailure extends ReplayStop {
  constructor(
    readonly seq: number,
    readonly fn: string,
    readonly errno: number,
    readonly expectedErrno: number,
  ) {
    super(
      `the replaying host's disk failed at call ${seq} (${fn}): errno ${errno} where the recording had ${expectedErrno}`,
    );
  }
}

export class ReplayTape {
  private r: ByteReader | null = null;
  private left = 0;
  private seq = 0;
  private b0 = 0;
  private argHash = 0;
  private fnNames: readonly string[];
  /** Whether the current call consumed items from the record. */
  itemsUsed = false;

  constructor(
    private readonly source: FrameSource,
    fnNames: readonly string[],
    /** The first call's number: 0 from the log's start, a snapshot's `events` for a clone. */
    startSeq = 0,
  ) {
    this.fnNames = fnNames;
    this.seq = startSeq;
  }

  /** Host calls replayed so far (the current one included once begin() succeeded). */
  get events(): number {
    return this.seq;
  }

  private fnName(id: number): string {
    return this.fnNames[id] ?? `function #${id}`;
  }

  /** Reads the next record's head and checks it against the call found. Throws EndOfLog or Divergence. */
  begin(fnId: number, argHash: number, args: readonly (number | bigint)[]): void {
    if (this.left === 0) {
      const f = this.source.next();
      if (f === null) throw new EndOfLog();
      if (f.firstSeq !== this.seq)
        throw new Error(`replay: frame starts at ${f.firstSeq}, expected ${this.seq}`);
      this.r = new ByteReader(f.records);
      this.left = f.count;
    }
    const r = this.r!;
    try {
      this.b0 = r.u8();
      this.argHash = r.u16();
    } catch (e) {
      throw this.undecodable(fnId, argHash, args, e);
    }
    const expFn = this.b0 & FN_MASK;
    this.itemsUsed = false;
    if (expFn !== fnId || this.argHash !== argHash) {
      const detail =
        expFn !== fnId
          ? `expected ${this.fnName(expFn)}, found ${this.fnName(fnId)}`
          : `${this.fnName(fnId)} was called with different arguments`;
      throw new Divergence(
        this.seq,
        { fn: this.fnName(expFn), argHash: this.argHash },
        { fn: this.fnName(fnId), argHash, args },
        detail,
      );
    }
  }

  private undecodable(
    fnId: number,
    argHash: number,
    args: readonly (number | bigint)[],
    e: unknown,
  ): Divergence {
    const why = e instanceof DecodeError ? e.message : String(e);
    return new Divergence(
      this.seq,
      { fn: this.fnName(this.b0 & FN_MASK), argHash: this.argHash },
      { fn: this.fnName(fnId), argHash, args },
      `the record does not decode as this call's inputs (${why})`,
    );
  }

  // The take* methods are on replay's hot path: no closures, one try each.

  takeU(): number {
    this.itemsUsed = true;
    try {
      return this.r!.varint();
    } catch (e) {
      throw this.undecodable(this.b0 & FN_MASK, this.argHash, [], e);
    }
  }

  takeZ(): bigint {
    this.itemsUsed = true;
    try {
      return this.r!.zigzag();
    } catch (e) {
      throw this.undecodable(this.b0 & FN_MASK, this.argHash, [], e);
    }
  }

  takeBig(): bigint {
    this.itemsUsed = true;
    try {
      return this.r!.varbig();
    } catch (e) {
      throw this.undecodable(this.b0 & FN_MASK, this.argHash, [], e);
    }
  }

  /** A view of the next n recorded bytes. */
  takeRaw(n: number): Uint8Array {
    this.itemsUsed = true;
    try {
      return this.r!.bytes(n);
    } catch (e) {
      throw this.undecodable(this.b0 & FN_MASK, this.argHash, [], e);
    }
  }

  /**
   * Completes the current record: checks the return value, and for a performed
   * call the effect hash (computed lazily by `effect`). `hostErrnos` are the
   * errnos that mean the replaying host's own disk failed.
   */
  end(ret: number, effect: () => number | null, hostErrnos: ReadonlySet<number>): void {
    const r = this.r!;
    let expRet = 0;
    let expEffect: number | null = null;
    try {
      if ((this.b0 & B0_RET) !== 0) expRet = r.varint();
      if ((this.b0 & B0_EFFECT) !== 0) expEffect = r.u16();
    } catch (e) {
      throw this.undecodable(this.b0 & FN_MASK, this.argHash, [], e);
    }
    const fn = this.fnName(this.b0 & FN_MASK);
    if (ret !== expRet) {
      if (hostErrnos.has(ret) && !this.itemsUsed) throw new ReplayHostFailure(this.seq, fn, ret, expRet);
      throw new Divergence(
        this.seq,
        { fn, argHash: this.argHash },
        { fn, argHash: this.argHash },
        `${fn} returned errno ${ret}, the recording had ${expRet}`,
      );
    }
    if (!this.itemsUsed) {
      const got = effect();
      if (got !== expEffect) {
        throw new Divergence(
          this.seq,
          { fn, argHash: this.argHash },
          { fn, argHash: this.argHash },
          `${fn} wrote different bytes into guest memory than in the recording`,
        );
      }
    }
    this.next(fn);
  }

  /** Counts a record that ends the guest (proc_exit) without a return value. */
  endNoReturn(): void {
    this.next(this.fnName(this.b0 & FN_MASK));
  }

  /** Moves past the current record; a frame's last record must end exactly at the frame's end. */
  private next(fn: string): void {
    this.left--;
    if (this.left === 0 && this.r!.remaining !== 0) {
      throw new Divergence(
        this.seq,
        { fn, argHash: this.argHash },
        { fn, argHash: this.argHash },
        `the frame holding call ${this.seq} has ${this.r!.remaining} bytes after its last record: the records do not decode as the calls replayed`,
      );
    }
    this.seq++;
  }
}
