/**
 * LogScanner: reads a log as a stream of bytes and yields its frames once their
 * CRC checks, classifying damage as DESIGN.md §5 asks.
 *
 * - A bad CRC or an impossible length makes a frame *damaged*. It is
 *   *corruption* when the log's own frames follow it (well-formed, numbered
 *   on from where the log was, up to the end: checked where the damaged
 *   frame claims to end and at every offset in the first MiB after its
 *   start), and *truncation* (a torn last frame) otherwise. The verdict is
 *   taken at the end, from the whole tail, so it does not depend on how the
 *   bytes arrived. Anything after the trailer is corruption.
 * - Structure is checked too: one HEADER first, RECORDS numbered without
 *   gaps, nothing after the TRAILER.
 *
 * It works the same on a file read in chunks and on a live stream from a
 * primary; it never holds more than one frame's bytes beyond what it yields.
 */
import { crc32 } from 'node:zlib';
import { ByteReader, DecodeError } from '../../core/bytes.js';
import {
  FRAME_BODY_BYTES_MAX,
  FrameKind,
  LOG_MAGIC,
  LOG_VERSION,
  PREAMBLE_BYTES,
  decodeHeader,
  decodeTrailer,
  type LogHeader,
  type Trailer,
} from './format.js';

export type ScanFrame =
  | { type: 'header'; header: LogHeader; offset: number }
  | { type: 'records'; firstSeq: number; count: number; records: Uint8Array; offset: number }
  | { type: 'trailer'; trailer: Trailer; offset: number };

/**
 * A log that cannot be used: `corrupt` (replay exit 4), `refused` (exit 5, e.g.
 * an unknown version) or `io` (exit 1: it could not be read at all).
 */
export class LogError extends Error {
  constructor(
    readonly kind: 'corrupt' | 'refused' | 'io',
    message: string,
    readonly offset: number,
  ) {
    super(message);
  }
}

export interface ScanEnd {
  /** True when the log has a trailer; false when it is a prefix (maybe with a torn last frame). */
  complete: boolean;
  /** Why it is incomplete, for the user. */
  note: string | null;
  events: number;
}

/** How far into a torn tail the scanner looks for a later frame (bounds the work on huge tails). */
const RESYNC_SCAN_BYTES_MAX = 1 << 20;
/** How much of a damaged tail is kept as evidence (frames after a resync point must fit). */
const TAIL_KEEP_BYTES = 2 * FRAME_BODY_BYTES_MAX;

export class LogScanner {
  private pending: Buffer = Buffer.alloc(0);
  /** File offset of pending[0]. */
  private offset = 0;
  private preambleDone = false;
  private header: LogHeader | null = null;
  private trailer: Trailer | null = null;
  private nextSeq: number;
  /**
   * A damaged frame at pending[0], with the file offset where it claims to
   * end when its length could be read. Everything after it is kept (up to
   * TAIL_KEEP_BYTES) as evidence until end() decides: corrupt or torn.
   */
  private suspect: { offset: number; why: string; end: number | null } | null = null;
  /** Bytes seen after the suspect frame's start, including those not kept. */
  private tailBytes = 0;

  /**
   * `startSeq`: the number of the first call the log's RECORDS hold: 0 for a
   * whole log, a snapshot's `events` for the stream a cloned backup replays
   * (its header is its own, and its records start at the snapshot's cut).
   */
  constructor(startSeq = 0) {
    this.nextSeq = startSeq;
  }

  get events(): number {
    return this.nextSeq;
  }

  /** Bytes consumed as the preamble and whole frames: the log's valid prefix so far. */
  get consumedBytes(): number {
    return this.offset;
  }

  /** Feeds bytes; returns the frames completed by them. Throws LogError. */
  push(chunk: Uint8Array): ScanFrame[] {
    if (chunk.byteLength === 0) return [];
    if (this.suspect !== null) {
      this.keepTail(chunk);
      return [];
    }
    this.pending = this.pending.byteLength === 0 ? Buffer.from(chunk) : Buffer.concat([this.pending, chunk]);
    const out: ScanFrame[] = [];
    if (!this.preambleDone) {
      if (this.pending.byteLength < PREAMBLE_BYTES) return out;
      this.checkPreamble(this.pending.subarray(0, PREAMBLE_BYTES));
      this.consume(PREAMBLE_BYTES);
      this.preambleDone = true;
    }
    for (;;) {
      if (this.trailer !== null && this.pending.byteLength > 0) {
        throw new LogError(
          'corrupt',
          `corrupt log: data follows the trailer at byte ${this.offset}`,
          this.offset,
        );
      }
      const f = this.nextFrame();
      if (f === null) break;
      out.push(f);
    }
    return out;
  }

  /** Declares the end of input and says whether the log was complete. Throws LogError. */
  end(): ScanEnd {
    if (!this.preambleDone) {
      throw new LogError(
        'corrupt',
        this.pending.byteLength === 0 && this.offset === 0
          ? 'the log is empty'
          : 'the log ends inside its preamble',
        0,
      );
    }
    let note: string | null = null;
    if (this.suspect !== null || this.pending.byteLength > 0) {
      // A tail that is not a whole frame: torn, unless well-formed frames carry on inside it,
      // which means the length field of the frame at its start was damaged.
      const claimed = this.suspect?.end ?? null;
      const later = laterFrames(this.pending, this.nextSeq, claimed === null ? null : claimed - this.offset);
      if (later >= 0) {
        throw new LogError(
          'corrupt',
          `corrupt log: the frame at byte ${this.offset} is damaged${this.suspect ? ` (${this.suspect.why})` : ''}, and well-formed frames follow from byte ${this.offset + later}`,
          this.offset,
        );
      }
      note =
        this.suspect !== null
          ? `the last frame (at byte ${this.offset}) is torn: ${this.suspect.why}`
          : `the last frame (at byte ${this.offset}) is torn: ${this.pending.byteLength} bytes of it are present`;
    }
    if (this.header === null) {
      throw new LogError(
        'corrupt',
        `the log ends before its header is complete${note ? ` (${note})` : ''}`,
        0,
      );
    }
    if (this.trailer !== null) return { complete: true, note: null, events: this.nextSeq };
    return {
      complete: false,
      note: note ?? 'the log has no trailer (the recorder did not stop cleanly)',
      events: this.nextSeq,
    };
  }

  private checkPreamble(p: Uint8Array): void {
    for (let i = 0; i < LOG_MAGIC.byteLength; i++) {
      if (p[i] !== LOG_MAGIC[i]) throw new LogError('corrupt', 'not a Lockstep log (bad magic bytes)', 0);
    }
    const version = p[8]! | (p[9]! << 8);
    if (version !== LOG_VERSION) {
      throw new LogError(
        'refused',
        `log format version ${version} is not supported (this Lockstep reads ${LOG_VERSION})`,
        8,
      );
    }
    // The reserved field is 0 in version 1; anything else is damage (the preamble has no CRC).
    if (p[10] !== 0 || p[11] !== 0) throw new LogError('corrupt', 'corrupt log: damaged preamble', 10);
  }

  private consume(n: number): void {
    this.pending = this.pending.subarray(n);
    this.offset += n;
  }

  private nextFrame(): ScanFrame | null {
    const buf = this.pending;
    if (buf.byteLength < 2) return null;
    const at = this.offset;
    const kind = buf[0]!;
    // The body length: a varint of at most 4 bytes (FRAME_BODY_BYTES_MAX < 2^28).
    let len = 0;
    let i = 1;
    let shift = 1;
    for (;;) {
      if (i >= buf.byteLength) return null;
      const b = buf[i++]!;
      len += (b & 0x7f) * shift;
      if ((b & 0x80) === 0) break;
      shift *= 128;
      if (i > 4) {
        this.markSuspect(at, 'impossible frame length', null);
        return null;
      }
    }
    if (len > FRAME_BODY_BYTES_MAX) {
      this.markSuspect(at, `frame length ${len} exceeds the limit`, null);
      return null;
    }
    const total = i + len + 4;
    if (buf.byteLength < total) return null;
    const want = buf.readUInt32LE(i + len);
    if (crc32(buf.subarray(0, i + len)) >>> 0 !== want) {
      this.markSuspect(at, 'checksum mismatch', at + total);
      return null;
    }
    const body = buf.subarray(i, i + len);
    let frame: ScanFrame;
    try {
      frame = this.interpret(kind, body, at);
    } catch (e) {
      if (e instanceof DecodeError) {
        throw new LogError('corrupt', `corrupt log: frame at byte ${at} does not decode: ${e.message}`, at);
      }
      throw e;
    }
    this.consume(total);
    return frame;
  }

  /**
   * Marks the frame at pending[0] damaged. The verdict must not depend on how
   * the bytes were chunked, so it is taken at end(), from the whole tail: a
   * damaged frame followed by the log's own well-formed frames is corruption;
   * otherwise the damage is in the last frame, which is torn.
   */
  private markSuspect(offset: number, why: string, end: number | null): void {
    this.suspect = { offset, why, end };
    this.tailBytes = this.pending.byteLength;
    if (this.pending.byteLength > TAIL_KEEP_BYTES) this.pending = this.pending.subarray(0, TAIL_KEEP_BYTES);
  }

  private keepTail(chunk: Uint8Array): void {
    this.tailBytes += chunk.byteLength;
    const room = TAIL_KEEP_BYTES - this.pending.byteLength;
    if (room > 0) this.pending = Buffer.concat([this.pending, chunk.subarray(0, room)]);
  }

  private interpret(kind: number, body: Uint8Array, at: number): ScanFrame {
    if (this.trailer !== null)
      throw new LogError('corrupt', `corrupt log: a frame follows the trailer at byte ${at}`, at);
    switch (kind) {
      case FrameKind.HEADER: {
        if (this.header !== null)
          throw new LogError('corrupt', `corrupt log: a second header at byte ${at}`, at);
        this.header = decodeHeader(body);
        return { type: 'header', header: this.header, offset: at };
      }
      case FrameKind.RECORDS: {
        if (this.header === null)
          throw new LogError('corrupt', `corrupt log: records before the header at byte ${at}`, at);
        const r = new ByteReader(body);
        const firstSeq = r.varint();
        const count = r.varint();
        if (firstSeq !== this.nextSeq) {
          throw new LogError(
            'corrupt',
            `corrupt log: frame at byte ${at} starts at event ${firstSeq}, expected ${this.nextSeq}`,
            at,
          );
        }
        if (count === 0 || count > body.byteLength) {
          throw new LogError('corrupt', `corrupt log: frame at byte ${at} claims ${count} records`, at);
        }
        this.nextSeq += count;
        return { type: 'records', firstSeq, count, records: body.subarray(r.pos), offset: at };
      }
      case FrameKind.TRAILER: {
        if (this.header === null)
          throw new LogError('corrupt', `corrupt log: trailer before the header at byte ${at}`, at);
        const t = decodeTrailer(body);
        if (t.events !== this.nextSeq) {
          throw new LogError(
            'corrupt',
            `corrupt log: the trailer counts ${t.events} events but the log holds ${this.nextSeq}`,
            at,
          );
        }
        this.trailer = t;
        return { type: 'trailer', trailer: t, offset: at };
      }
      default:
        throw new LogError('corrupt', `corrupt log: unknown frame kind ${kind} at byte ${at}`, at);
    }
  }
}

/**
 * The offset (after 0) in `tail` from which well-formed frames carry on to the
 * end of `tail`, or -1. The first must continue the log's numbering (a RECORDS
 * frame starting after `nextSeq`, or a TRAILER counting more events), and each
 * next one must follow it directly, with consecutive numbers, up to the end or
 * to a last frame cut short. Bytes a guest received can look like one frame,
 * but hardly like the log's own continuation.
 */
function laterFrames(tail: Uint8Array, nextSeq: number, claimedEnd: number | null): number {
  const limit = Math.min(tail.byteLength, RESYNC_SCAN_BYTES_MAX);
  // Where the damaged frame says it ends comes first: a frame of any size with a flipped body bit.
  const starts = claimedEnd !== null && claimedEnd < tail.byteLength ? [claimedEnd] : [];
  for (let s = 1; s < limit; s++) starts.push(s);
  for (const s of starts) {
    const kind = tail[s]!;
    if (kind !== FrameKind.RECORDS && kind !== FrameKind.TRAILER) continue;
    const f = wellFormedAt(tail, s);
    if (f === null || f === 'short') continue;
    const seq = f.kind === FrameKind.RECORDS ? f.firstSeq : f.events;
    if (!(seq > nextSeq)) continue;
    if (chainsToEnd(tail, f)) return s;
  }
  return -1;
}

interface FrameAt {
  kind: number;
  end: number;
  /** RECORDS: first sequence number and count. */
  firstSeq: number;
  count: number;
  /** TRAILER: the event count. */
  events: number;
}

/** The well-formed frame at `s`, 'short' if it runs past the end, or null. */
function wellFormedAt(tail: Uint8Array, s: number): FrameAt | 'short' | null {
  const kind = tail[s]!;
  if (kind !== FrameKind.RECORDS && kind !== FrameKind.TRAILER && kind !== FrameKind.HEADER) return null;
  let len = 0;
  let i = s + 1;
  let shift = 1;
  for (;;) {
    if (i >= tail.byteLength) return 'short';
    const b = tail[i++]!;
    len += (b & 0x7f) * shift;
    if ((b & 0x80) === 0) break;
    shift *= 128;
    if (i - s > 4) return null;
  }
  if (len > FRAME_BODY_BYTES_MAX) return null;
  if (i + len + 4 > tail.byteLength) return 'short';
  const want = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength).readUInt32LE(i + len);
  if (crc32(tail.subarray(s, i + len)) >>> 0 !== want) return null;
  try {
    const r = new ByteReader(tail, i, i + len);
    if (kind === FrameKind.RECORDS) {
      const firstSeq = r.varint();
      return { kind, end: i + len + 4, firstSeq, count: r.varint(), events: 0 };
    }
    if (kind === FrameKind.TRAILER)
      return { kind, end: i + len + 4, firstSeq: 0, count: 0, events: r.varint() };
    return null;
  } catch {
    return null;
  }
}

function chainsToEnd(tail: Uint8Array, first: FrameAt): boolean {
  let f = first;
  let seq = f.kind === FrameKind.RECORDS ? f.firstSeq + f.count : -1;
  for (let guard = 0; guard < tail.byteLength; guard++) {
    if (f.end === tail.byteLength) return true;
    if (f.kind === FrameKind.TRAILER) return false;
    const next = wellFormedAt(tail, f.end);
    if (next === 'short') return true;
    if (next === null) return false;
    if (next.kind === FrameKind.RECORDS && next.firstSeq !== seq) return false;
    if (next.kind === FrameKind.TRAILER && next.events !== seq) return false;
    seq = next.kind === FrameKind.RECORDS ? next.firstSeq + next.count : seq;
    f = next;
  }
  return false;
}
