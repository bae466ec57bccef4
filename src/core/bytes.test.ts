// Tests of the byte codecs (bytes.ts): fixed-width integers, unsigned and
// zigzag LEB128 varints at their edge values, random round trips, and the
// reader's refusal of truncated, overlong and out-of-range input.
//
// The random round trips print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteReader, ByteWriter, DecodeError } from './bytes.js';
import { seededRandom, testSeed } from './prng.js';

const SEED = testSeed();

/** mulberry32: a small seeded PRNG, so a failing case can be reproduced from its seed. */
const prng = seededRandom;

function bytesOf(write: (w: ByteWriter) => void): number[] {
  const w = new ByteWriter(4);
  write(w);
  return [...w.take()];
}

function reader(bytes: number[]): ByteReader {
  return new ByteReader(Uint8Array.from(bytes));
}

test('fixed-width integers are little-endian and round-trip', () => {
  assert.deepEqual(
    bytesOf((w) => {
      w.u8(0xab);
      w.u16(0x1234);
      w.u32(0xdeadbeef);
      w.u64(0x0102030405060708n);
    }),
    [0xab, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01],
  );
  const w = new ByteWriter(1);
  w.u32(-1);
  w.u64(-1n);
  const r = new ByteReader(w.take());
  assert.equal(r.u32(), 0xffffffff);
  assert.equal(r.u64(), 0xffffffffffffffffn);
  assert.equal(r.remaining, 0);
});

test('unsigned varints: the LEB128 encodings of edge values', () => {
  const cases: [number, number[]][] = [
    [0, [0x00]],
    [1, [0x01]],
    [127, [0x7f]],
    [128, [0x80, 0x01]],
    [300, [0xac, 0x02]],
    [16383, [0xff, 0x7f]],
    [16384, [0x80, 0x80, 0x01]],
    [2 ** 32 - 1, [0xff, 0xff, 0xff, 0xff, 0x0f]],
    [2 ** 32, [0x80, 0x80, 0x80, 0x80, 0x10]],
    [Number.MAX_SAFE_INTEGER, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]],
  ];
  for (const [v, enc] of cases) {
    assert.deepEqual(
      bytesOf((w) => w.varint(v)),
      enc,
      `varint(${v})`,
    );
    const r = reader(enc);
    assert.equal(r.varint(), v);
    assert.equal(r.remaining, 0);
    // The bigint flavour encodes the same values identically.
    assert.deepEqual(
      bytesOf((w) => w.varbig(BigInt(v))),
      enc,
      `varbig(${v})`,
    );
    assert.equal(reader(enc).varbig(), BigInt(v));
  }
});

test('unsigned varints: a writer refuses what is not a non-negative safe integer', () => {
  const w = new ByteWriter();
  for (const v of [-1, 1.5, NaN, Infinity, Number.MAX_SAFE_INTEGER + 1, -0.5]) {
    assert.throws(() => w.varint(v), RangeError, `varint(${v})`);
  }
  assert.equal(w.pos, 0, 'a refused value writes nothing');
});

test('bigint varints: u64 edge values, and values outside u64 wrap as u64', () => {
  const max = (1n << 64n) - 1n;
  const enc = bytesOf((w) => w.varbig(max));
  assert.deepEqual(enc, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
  assert.equal(reader(enc).varbig(), max);
  for (const v of [2n ** 53n - 1n, 2n ** 53n, 2n ** 56n, 2n ** 63n, 2n ** 63n + 1n, max - 1n]) {
    const b = bytesOf((w) => w.varbig(v));
    const r = reader(b);
    assert.equal(r.varbig(), v, `varbig(${v})`);
    assert.equal(r.remaining, 0);
  }
  // A negative bigint is taken modulo 2^64, as the writer documents ("any u64").
  assert.equal(reader(bytesOf((w) => w.varbig(-1n))).varbig(), max);
});

test('zigzag: the canonical mapping of small values and the i64 edges', () => {
  const cases: [bigint, number[]][] = [
    [0n, [0x00]],
    [-1n, [0x01]],
    [1n, [0x02]],
    [-2n, [0x03]],
    [2n, [0x04]],
    [-64n, [0x7f]],
    [64n, [0x80, 0x01]],
  ];
  for (const [v, enc] of cases) {
    assert.deepEqual(
      bytesOf((w) => w.zigzag(v)),
      enc,
      `zigzag(${v})`,
    );
    assert.equal(reader(enc).zigzag(), v);
  }
  const min = -(1n << 63n);
  const max = (1n << 63n) - 1n;
  for (const v of [min, min + 1n, max, max - 1n, -(2n ** 53n), 2n ** 53n]) {
    const r = reader(bytesOf((w) => w.zigzag(v)));
    assert.equal(r.zigzag(), v, `zigzag(${v})`);
    assert.equal(r.remaining, 0);
  }
  // Values outside i64 wrap as i64 (2^63 is -2^63).
  assert.equal(reader(bytesOf((w) => w.zigzag(1n << 63n))).zigzag(), min);
});

test(`random round trips of mixed fields (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  const big = (): bigint =>
    (BigInt(Math.floor(rnd() * 2 ** 32)) << 32n) | BigInt(Math.floor(rnd() * 2 ** 32));
  for (let round = 0; round < 200; round++) {
    const w = new ByteWriter(1 + Math.floor(rnd() * 16));
    const expect: [string, unknown][] = [];
    const n = Math.floor(rnd() * 40);
    for (let i = 0; i < n; i++) {
      const k = Math.floor(rnd() * 6);
      // Magnitudes spread over every byte length, not only the large values uniform sampling favours.
      const bits = Math.floor(rnd() * 54);
      const u = Math.floor(rnd() * 2 ** bits);
      if (k === 0) {
        w.varint(u);
        expect.push(['varint', u]);
      } else if (k === 1) {
        const v = big() >> BigInt(Math.floor(rnd() * 64));
        w.varbig(v);
        expect.push(['varbig', v]);
      } else if (k === 2) {
        const v = BigInt.asIntN(64, big() >> BigInt(Math.floor(rnd() * 64)));
        w.zigzag(v);
        expect.push(['zigzag', v]);
      } else if (k === 3) {
        const b = Uint8Array.from({ length: Math.floor(rnd() * 300) }, () => Math.floor(rnd() * 256));
        w.lenBytes(b);
        expect.push(['lenBytes', b]);
      } else if (k === 4) {
        const s = String.fromCodePoint(
          ...Array.from({ length: Math.floor(rnd() * 8) }, () => 0x20 + Math.floor(rnd() * 0x3000)),
        );
        w.string(s);
        expect.push(['string', s]);
      } else {
        const v = Math.floor(rnd() * 2 ** 32);
        w.u32(v);
        expect.push(['u32', v]);
      }
    }
    const r = new ByteReader(w.take());
    for (const [kind, v] of expect) {
      const got =
        kind === 'varint'
          ? r.varint()
          : kind === 'varbig'
            ? r.varbig()
            : kind === 'zigzag'
              ? r.zigzag()
              : kind === 'lenBytes'
                ? new Uint8Array(r.lenBytes(1 << 20))
                : kind === 'string'
                  ? r.string(1 << 20)
                  : r.u32();
      assert.deepEqual(got, v, `seed ${SEED}, round ${round}, ${kind}`);
    }
    assert.equal(r.remaining, 0, `seed ${SEED}, round ${round}: bytes left over`);
  }
});

test('the reader refuses truncated input at every cut, and never reads past its end', () => {
  const w = new ByteWriter();
  w.u16(7);
  w.varint(2 ** 40);
  w.varbig(1n << 63n);
  w.zigzag(-123456789n);
  w.string('héllo');
  w.u64(42n);
  const all = w.take();
  for (let cut = 0; cut < all.byteLength; cut++) {
    // A reader over a prefix of a larger buffer must stop at its end, not at the buffer's.
    const r = new ByteReader(all, 0, cut);
    assert.throws(
      () => {
        r.u16();
        r.varint();
        r.varbig();
        r.zigzag();
        r.string(100);
        r.u64();
      },
      DecodeError,
      `cut at ${cut}`,
    );
    assert.ok(r.pos <= cut, `cut at ${cut}: the reader went to ${r.pos}`);
  }
});

test('the reader refuses overlong and out-of-range varints', () => {
  // varint: at most 8 bytes (enough for 2^53 - 1).
  assert.throws(() => reader([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).varint(), DecodeError);
  assert.throws(() => reader([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x10]).varint(), DecodeError, '2^53');
  assert.throws(() => reader(Array<number>(20).fill(0xff)).varint(), DecodeError);
  // varbig: at most 10 bytes, and the value must fit 64 bits.
  assert.throws(
    () => reader([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).varbig(),
    DecodeError,
    '2^64',
  );
  assert.throws(() => reader([...Array<number>(10).fill(0x80), 0x00]).varbig(), DecodeError, '11 bytes');
  assert.throws(() => reader([...Array<number>(10).fill(0x80), 0x00]).zigzag(), DecodeError);
  // A continuation bit on the last byte of the input is truncation.
  assert.throws(() => reader([0x80]).varint(), DecodeError);
  assert.throws(() => reader([0xff, 0xff]).varbig(), DecodeError);
});

test('lenBytes and string: bounds on the length, UTF-8 validity, views not copies', () => {
  assert.throws(() => reader([5, 1, 2, 3, 4, 5]).lenBytes(4), DecodeError, 'over the limit');
  assert.throws(() => reader([5, 1, 2, 3]).lenBytes(10), DecodeError, 'truncated');
  assert.throws(() => reader([2, 0xc3, 0x28]).string(10), DecodeError, 'invalid UTF-8');
  assert.throws(() => reader([1, 0x80]).string(10), DecodeError, 'a lone continuation byte');
  assert.equal(reader([0]).string(0), '');
  const buf = Uint8Array.of(3, 9, 8, 7);
  const v = new ByteReader(buf).lenBytes(3);
  buf[1] = 1;
  assert.deepEqual([...v], [1, 8, 7], 'lenBytes returns a view of the input');
});

test('the writer grows across many reserves and keeps what it wrote', () => {
  const w = new ByteWriter(1);
  for (let i = 0; i < 10_000; i++) w.varint(i);
  const r = new ByteReader(w.view());
  for (let i = 0; i < 10_000; i++) assert.equal(r.varint(), i);
  assert.equal(r.remaining, 0);
});

test('writer editing: patchU8, truncate and shiftFrom', () => {
  const w = new ByteWriter(2);
  w.bytes(Uint8Array.of(1, 2, 3, 4, 5));
  w.patchU8(0, 9);
  assert.deepEqual([...w.view()], [9, 2, 3, 4, 5]);
  w.shiftFrom(2);
  assert.deepEqual([...w.view()], [3, 4, 5]);
  w.truncate(1);
  w.u8(6);
  assert.deepEqual([...w.take()], [3, 6]);
  // take() is a copy: later writes do not change it.
  const copy = w.take();
  w.patchU8(0, 0);
  assert.deepEqual([...copy], [3, 6]);
});

test('a reader over a subarray honours its byteOffset', () => {
  const backing = Uint8Array.of(0xee, 0xee, 0x34, 0x12, 0x05, 0xee);
  const r = new ByteReader(backing.subarray(2, 5));
  assert.equal(r.u16(), 0x1234);
  assert.equal(r.varint(), 5);
  assert.throws(() => r.u8(), DecodeError);
});
