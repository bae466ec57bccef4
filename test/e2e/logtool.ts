/**
 * A test helper that takes event logs apart and puts damaged ones together:
 * it splits a log into its frames (independently of src/ft/log/scanner.ts, so
 * that the two check each other), and it rewrites a byte of a frame with its
 * CRC recomputed, flips bits, and cuts logs at or inside frames.
 *
 * The layout it relies on (src/ft/log/format.ts):
 *   file    := magic(8) version(u16) reserved(u16) frame*
 *   frame   := kind(u8) bodyLen(varint) body crc32(u32 LE, over kind..body)
 *   RECORDS := firstSeq(varint) count(varint) record*
 *   record  := b0(u8: function id | 0x40 effect | 0x80 ret) argHash(u16 LE) items [ret varint] [effect u16]
 *
 * Every function here returns a new buffer and leaves its input unchanged.
 */
import { crc32 } from 'node:zlib';

export const PREAMBLE_BYTES = 12;
export const KIND_HEADER = 1;
export const KIND_RECORDS = 2;
export const KIND_TRAILER = 3;

export interface LogFrame {
  /** Position in the file's list of frames (0 is the header). */
  index: number;
  kind: number;
  /** File offset of the kind byte. */
  offset: number;
  /** File offset of the first body byte, and the body's length. */
  bodyOffset: number;
  bodyLen: number;
  /** File offset of the CRC (just after the body). */
  crcOffset: number;
  /** File offset just past the frame. */
  end: number;
  /** For RECORDS frames: the sequence number of the first record, the count, and where the records start. */
  firstSeq: number;
  count: number;
  recordsOffset: number;
}

export interface ParsedLog {
  bytes: Buffer;
  frames: LogFrame[];
  /** Bytes after the last whole frame (a torn tail); 0 for a log as a recorder writes it. */
  tailBytes: number;
}

/** Reads an unsigned LEB128 varint at `at`; returns the value and the offset after it. */
export function readVarint(buf: Uint8Array, at: number): { value: number; next: number } {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 8; i++) {
    const b = buf[at + i];
    if (b === undefined) throw new Error(`logtool: varint runs past the end at ${at}`);
    value += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) return { value, next: at + i + 1 };
    mul *= 128;
  }
  throw new Error(`logtool: varint too long at ${at}`);
}

/** Encodes an unsigned LEB128 varint. */
export function varint(v: number): Buffer {
  const out: number[] = [];
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

/** The CRC a frame must carry: crc32 over kind, the length varint and the body. */
export function crcOf(bytes: Uint8Array): number {
  return crc32(bytes) >>> 0;
}

/**
 * Splits a log into frames. Every whole frame's CRC is checked (a helper that
 * misread a log would make every test built on it meaningless); a torn tail is
 * counted in `tailBytes`.
 */
export function parseLog(input: Uint8Array): ParsedLog {
  const bytes = Buffer.from(input);
  if (bytes.byteLength < PREAMBLE_BYTES) throw new Error('logtool: shorter than the preamble');
  const frames: LogFrame[] = [];
  let at = PREAMBLE_BYTES;
  while (at < bytes.byteLength) {
    if (bytes.byteLength - at < 2) break;
    const kind = bytes[at]!;
    let len: { value: number; next: number };
    try {
      len = readVarint(bytes, at + 1);
    } catch {
      break;
    }
    const end = len.next + len.value + 4;
    if (end > bytes.byteLength) break;
    const crcOffset = len.next + len.value;
    if (crcOf(bytes.subarray(at, crcOffset)) !== bytes.readUInt32LE(crcOffset)) {
      throw new Error(`logtool: frame ${frames.length} at byte ${at} fails its CRC`);
    }
    const frame: LogFrame = {
      index: frames.length,
      kind,
      offset: at,
      bodyOffset: len.next,
      bodyLen: len.value,
      crcOffset,
      end,
      firstSeq: -1,
      count: 0,
      recordsOffset: -1,
    };
    if (kind === KIND_RECORDS) {
      const first = readVarint(bytes, len.next);
      const count = readVarint(bytes, first.next);
      frame.firstSeq = first.value;
      frame.count = count.value;
      frame.recordsOffset = count.next;
    }
    frames.push(frame);
    at = end;
  }
  return { bytes, frames, tailBytes: bytes.byteLength - at };
}

/** Recomputes the CRC of the frame that starts at `frame.offset` (whose length field is unchanged). */
export function fixCrc(bytes: Buffer, frame: LogFrame): void {
  bytes.writeUInt32LE(crcOf(bytes.subarray(frame.offset, frame.crcOffset)), frame.crcOffset);
}

/**
 * Sets the byte at file offset `at`, inside `frame`'s body, to `value` and
 * recomputes the frame's CRC, so that the damage passes the checksum and only
 * the replay can notice it.
 */
export function rewriteByte(log: ParsedLog, frame: LogFrame, at: number, value: number): Buffer {
  if (at < frame.bodyOffset || at >= frame.crcOffset) {
    throw new Error(`logtool: byte ${at} is not in the body of the frame at ${frame.offset}`);
  }
  const out = Buffer.from(log.bytes);
  out[at] = value & 0xff;
  fixCrc(out, frame);
  return out;
}

/** Writes a little-endian u16 at `at` inside `frame`'s body and recomputes the CRC. */
export function rewriteU16(log: ParsedLog, frame: LogFrame, at: number, value: number): Buffer {
  if (at < frame.bodyOffset || at + 2 > frame.crcOffset) {
    throw new Error(`logtool: bytes ${at}..${at + 1} are not in the body of the frame at ${frame.offset}`);
  }
  const out = Buffer.from(log.bytes);
  out.writeUInt16LE(value & 0xffff, at);
  fixCrc(out, frame);
  return out;
}

/** Replaces one frame's body (its length may change) and re-encodes the frame with a correct CRC. */
export function replaceBody(log: ParsedLog, frame: LogFrame, body: Uint8Array): Buffer {
  const prefix = Buffer.concat([Buffer.of(frame.kind), varint(body.byteLength)]);
  const whole = Buffer.concat([prefix, body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crcOf(whole));
  return Buffer.concat([log.bytes.subarray(0, frame.offset), whole, crc, log.bytes.subarray(frame.end)]);
}

/** One whole frame with a correct CRC. */
export function encodeFrame(kind: number, body: Uint8Array): Buffer {
  const whole = Buffer.concat([Buffer.of(kind), varint(body.byteLength), body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32LE(crcOf(whole));
  return Buffer.concat([whole, crc]);
}

/** The log with bit `bit` of byte `at` inverted (no CRC fix: this is damage a checksum must catch). */
export function flipBit(bytes: Uint8Array, at: number, bit = 0): Buffer {
  const out = Buffer.from(bytes);
  out[at] = out[at]! ^ (1 << bit);
  return out;
}

/** The first `n` bytes of the log. */
export function cut(bytes: Uint8Array, n: number): Buffer {
  return Buffer.from(bytes.subarray(0, n));
}

/** The log without the given frame (the bytes before and after it, joined). */
export function dropFrame(log: ParsedLog, frame: LogFrame): Buffer {
  return Buffer.concat([log.bytes.subarray(0, frame.offset), log.bytes.subarray(frame.end)]);
}

/** The RECORDS frames that are neither first nor last among the frames (damage there is never a torn tail). */
export function middleRecordsFrames(log: ParsedLog): LogFrame[] {
  return log.frames.filter((f) => f.kind === KIND_RECORDS && f.index > 0 && f.index < log.frames.length - 1);
}

/** The file offset of the first occurrence of `needle` at or after `from`, or -1. */
export function find(bytes: Uint8Array, needle: Uint8Array | string, from = 0): number {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(
    typeof needle === 'string' ? Buffer.from(needle) : needle,
    from,
  );
}

/** The frame whose body holds file offset `at`, or undefined. */
export function frameAt(log: ParsedLog, at: number): LogFrame | undefined {
  return log.frames.find((f) => at >= f.bodyOffset && at < f.crcOffset);
}

/** A short human description of a log's frames, for assertion messages. */
export function describe(log: ParsedLog): string {
  const kinds: Record<number, string> = { 1: 'HEADER', 2: 'RECORDS', 3: 'TRAILER' };
  const lines = log.frames.map(
    (f) =>
      `#${f.index} ${kinds[f.kind] ?? `kind ${f.kind}`} @${f.offset} body ${f.bodyLen}` +
      (f.kind === KIND_RECORDS ? ` seq ${f.firstSeq}+${f.count}` : ''),
  );
  if (log.tailBytes > 0) lines.push(`torn tail of ${log.tailBytes} bytes`);
  return lines.join('\n');
}
