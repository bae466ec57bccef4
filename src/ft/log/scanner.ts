/**
 * LogScanner: reads a log as a stream of bytes and yields its frames once their
 * CRC checks, classifying damage as DESIGN.md §5 asks.
 *
 * - A bad CRC, an impossible length or an unknown kind is *corruption* when
 *   any byte follows the damaged frame, and *truncation* (a torn last frame)
 *   when it is the end of the log. A tail that claims to run past the end is
 *   checked for a later well-formed frame inside it: if one exists, the
 *   length was damaged and the log is corrupt, not torn.
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

export class LogScanner {
  private pending: Buffer = Buffer.alloc(0);
  /** File offset of pending[0]. */
  private offset = 0;
  private preambleDone = false;
  private header: LogHeader | null = null;
  private trailer: Trailer | null = null;
  private nextSeq = 0;
  /** A damaged frame that is fatal only if anything follows it. */
  private suspect: { offset: number; why: string } | null = null;

  get events(): number {
    return this.nextSeq;
  }

  /** Feeds bytes; returns the frames completed by them. Throws LogError. */
  push(chunk: Uint8Array): ScanFrame[] {
    if (chunk.byteLength === 0) return [];
    if (this.suspect !== null) {
      throw new LogError(
        'corrupt',
        `corrupt log: ${this.suspect.why} at byte ${this.suspect.offset}, and the log goes on after it`,
        this.suspect.offset,
      );
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
    if (this.suspect !== null) {
      note = `the last frame (at byte ${this.suspect.offset}) is torn: ${this.suspect.why}`;
    } else if (this.pending.byteLength > 0) {
      const later = findLaterFrame(this.pending);
      if (later >= 0) {
        throw new LogError(
          'corrupt',
          `corrupt log: the frame at byte ${this.offset} has a damaged length (a well-formed frame follows at byte ${this.offset + later})`,
          this.offset,
        );
      }
      note = `the last frame (at byte ${this.offset}) is torn: ${this.pending.byteLength} bytes of it are present`;
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
        this.markSuspect(at, 'impossible frame length');
        return null;
      }
    }
    if (len > FRAME_BODY_BYTES_MAX) {
      this.markSuspect(at, `frame length ${len} exceeds the limit`);
      return null;
    }
    const total = i + len + 4;
    if (buf.byteLength < total) return null;
    const want = buf.readUInt32LE(i + len);
    if (crc32(buf.subarray(0, i + len)) >>> 0 !== want) {
      this.markSuspect(at, 'checksum mismatch');
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

  private markSuspect(offset: number, why: string): void {
    this.suspect = { offset, why };
    // Bytes after the damaged frame's start are only evidence now; keep none of them.
    if (this.pending.byteLength > 0) {
      const rest = this.pending;
      this.pending = Buffer.alloc(0);
      // If a later well-formed frame is already here, the damage is not a torn tail.
      const later = findLaterFrame(rest);
      if (later >= 0) {
        throw new LogError(
          'corrupt',
          `corrupt log: ${why} at byte ${offset}, and the log goes on after it`,
          offset,
        );
      }
    }
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
 * The offset of a well-formed frame (known kind, sane length, matching CRC)
 * starting after offset 0 of `tail`, or -1.
 */
function findLaterFrame(tail: Uint8Array): number {
  const limit = Math.min(tail.byteLength, RESYNC_SCAN_BYTES_MAX);
  for (let s = 1; s < limit; s++) {
    const kind = tail[s]!;
    if (kind !== FrameKind.RECORDS && kind !== FrameKind.TRAILER) continue;
    let len = 0;
    let i = s + 1;
    let shift = 1;
    let ok = false;
    while (i < tail.byteLength && i - s <= 4) {
      const b = tail[i++]!;
      len += (b & 0x7f) * shift;
      if ((b & 0x80) === 0) {
        ok = true;
        break;
      }
      shift *= 128;
    }
    if (!ok || len > FRAME_BODY_BYTES_MAX || i + len + 4 > tail.byteLength) continue;
    const want = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength).readUInt32LE(i + len);
    if (crc32(tail.subarray(s, i + len)) >>> 0 === want) return s;
  }
  return -1;
}
