/**
 * Byte codecs for Lockstep's persistent formats: a growable writer and a
 * bounds-checked reader with LEB128 varints (unsigned, and zigzag for signed).
 *
 * Invariants:
 * - Varints encode non-negative integers up to 2^53 - 1 as numbers, and any
 *   u64 as bigints; a reader refuses encodings longer than 10 bytes.
 * - A reader never reads past its end: it throws DecodeError, which callers
 *   turn into a "corrupt input" value. Nothing here trusts its input.
 */

/** Malformed or truncated input found while decoding. */
export class DecodeError extends Error {}

export class ByteWriter {
  private buf: Uint8Array;
  private dv: DataView;
  pos = 0;

  constructor(initialBytes = 256) {
    this.buf = new Uint8Array(initialBytes);
    this.dv = new DataView(this.buf.buffer);
  }

  /** Makes room for `n` more bytes. */
  reserve(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.byteLength) return;
    let cap = Math.max(16, this.buf.byteLength * 2);
    while (cap < need) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.dv = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.reserve(2);
    this.dv.setUint16(this.pos, v, true);
    this.pos += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.dv.setUint32(this.pos, v >>> 0, true);
    this.pos += 4;
  }
  u64(v: bigint): void {
    this.reserve(8);
    this.dv.setBigUint64(this.pos, BigInt.asUintN(64, v), true);
    this.pos += 8;
  }

  /** Unsigned LEB128 of a non-negative safe integer. */
  varint(v: number): void {
    if (!(v >= 0 && Number.isSafeInteger(v))) throw new RangeError(`varint out of range: ${v}`);
    this.reserve(8);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
  }

  /** Unsigned LEB128 of a u64. */
  varbig(v: bigint): void {
    v = BigInt.asUintN(64, v);
    if (v < 0x20000000000000n) {
      this.varint(Number(v));
      return;
    }
    this.reserve(10);
    while (v >= 0x80n) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.pos++] = Number(v);
  }

  /** Zigzag LEB128 of a signed 64-bit value (small magnitudes stay short). */
  zigzag(v: bigint): void {
    const s = BigInt.asIntN(64, v);
    this.varbig(s >= 0n ? s << 1n : (-s << 1n) - 1n);
  }

  bytes(b: Uint8Array): void {
    this.reserve(b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }

  /** The first n bytes of b (a short prefix is copied without making a view). */
  bytesOf(b: Uint8Array, n: number): void {
    if (n === b.byteLength) {
      this.bytes(b);
      return;
    }
    this.reserve(n);
    if (n <= 64) {
      for (let i = 0; i < n; i++) this.buf[this.pos + i] = b[i]!;
    } else {
      this.buf.set(b.subarray(0, n), this.pos);
    }
    this.pos += n;
  }

  /** A varint length followed by the bytes. */
  lenBytes(b: Uint8Array): void {
    this.varint(b.byteLength);
    this.bytes(b);
  }

  string(s: string): void {
    this.lenBytes(new TextEncoder().encode(s));
  }

  /** The bytes written so far (a view, valid until the next write). */
  view(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }

  /** A copy of the bytes written so far. */
  take(): Uint8Array {
    return this.buf.slice(0, this.pos);
  }

  /** Overwrites one byte already written. */
  patchU8(at: number, v: number): void {
    this.buf[at] = v;
  }

  /** Drops everything from `at` on. */
  truncate(at: number): void {
    this.pos = at;
  }

  /** Moves bytes [from, pos) to the start and drops the rest. */
  shiftFrom(from: number): void {
    this.buf.copyWithin(0, from, this.pos);
    this.pos -= from;
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export class ByteReader {
  private readonly dv: DataView;
  pos: number;

  constructor(
    readonly buf: Uint8Array,
    start = 0,
    readonly end = buf.byteLength,
  ) {
    this.dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  private need(n: number): void {
    if (this.pos + n > this.end) throw new DecodeError(`truncated: need ${n} bytes at offset ${this.pos}`);
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.dv.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.dv.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(): bigint {
    this.need(8);
    const v = this.dv.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** Unsigned LEB128 that must fit a safe integer. */
  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(v)) throw new DecodeError('varint exceeds 2^53');
        return v;
      }
      mul *= 0x80;
    }
    throw new DecodeError('varint too long');
  }

  varbig(): bigint {
    let v = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      const b = this.u8();
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) {
        if (v >= 1n << 64n) throw new DecodeError('varint exceeds 64 bits');
        return v;
      }
      shift += 7n;
    }
    throw new DecodeError('varint too long');
  }

  zigzag(): bigint {
    const z = this.varbig();
    return BigInt.asIntN(64, (z & 1n) === 0n ? z >> 1n : -((z + 1n) >> 1n));
  }

  /** A view of the next `n` bytes (not a copy). */
  bytes(n: number): Uint8Array {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }

  lenBytes(maxBytes: number): Uint8Array {
    const n = this.varint();
    if (n > maxBytes) throw new DecodeError(`length ${n} exceeds ${maxBytes}`);
    return this.bytes(n);
  }

  string(maxBytes: number): string {
    try {
      return utf8.decode(this.lenBytes(maxBytes));
    } catch (e) {
      if (e instanceof DecodeError) throw e;
      throw new DecodeError('invalid UTF-8');
    }
  }
}
