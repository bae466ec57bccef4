// Tests of the short divergence hashes (hash.ts): FNV-1a against published
// test vectors and an independent reference, the length step of hashBytes, the
// split of bigints into words, and that the 16-bit result a log record keeps
// depends on every input bit.
//
// The statistical checks use a seeded PRNG and print the seed; set
// LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashBig, hashBytes, hashFinish16, hashStart, hashWord } from './hash.js';
import { seededRandom, testSeed } from './prng.js';

const SEED = testSeed();

const prng = seededRandom;

/**
 * The FNV-1a step with bigints, independently of Math.imul, over the units
 * hashBytes documents: for 64 bytes or more, four lanes seeded from h that
 * each take every fourth little-endian word of each 16-byte block, folded
 * into h in lane order; then little-endian 32-bit words while four bytes
 * remain, then single bytes, then the length.
 */
function hashBytesRef(h: bigint, b: Uint8Array): bigint {
  const step = (x: bigint, unit: number): bigint => ((x ^ BigInt(unit >>> 0)) * 0x01000193n) & 0xffffffffn;
  const word = (i: number): number => b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
  let i = 0;
  if (b.byteLength >= 64) {
    const lanes = [h, h ^ 0x9e3779b9n, h ^ 0x85ebca6bn, h ^ 0xc2b2ae35n];
    const blocksEnd = b.byteLength - (b.byteLength % 16);
    for (let k = 0; k < blocksEnd; k += 16) {
      for (let l = 0; l < 4; l++) lanes[l] = step(lanes[l]!, word(k + 4 * l));
    }
    for (const l of lanes) h = step(h, Number(l));
    i = blocksEnd;
  }
  for (; i + 4 <= b.byteLength; i += 4) h = step(h, word(i));
  for (; i < b.byteLength; i++) h = step(h, b[i]!);
  return step(h, b.byteLength);
}

/** MurmurHash3's fmix32 with bigints, then the fold to 16 bits that hashFinish16 documents. */
function finish16Ref(h: bigint): number {
  const m = (x: bigint, k: bigint): bigint => (x * k) & 0xffffffffn;
  h ^= h >> 16n;
  h = m(h, 0x85ebca6bn);
  h ^= h >> 13n;
  h = m(h, 0xc2b2ae35n);
  h ^= h >> 16n;
  return Number((h ^ (h >> 16n)) & 0xffffn);
}

test('hashWord is FNV-1a: published 32-bit test vectors', () => {
  assert.equal(hashStart() >>> 0, 0x811c9dc5);
  // FNV-1a 32 of "a" is 0xe40c292c; of "foobar" is 0xbf9cf968 (the FNV reference vectors).
  assert.equal(hashWord(hashStart(), 0x61) >>> 0, 0xe40c292c);
  let h = hashStart();
  for (const c of Buffer.from('foobar')) h = hashWord(h, c);
  assert.equal(h >>> 0, 0xbf9cf968);
});

test('hashBytes is FNV-1a over four lanes of 32-bit words, then words, then the odd bytes, then a length step', () => {
  for (const s of [
    '',
    'a',
    'abc',
    'abcd',
    'foobar',
    'ñandú',
    'x'.repeat(63),
    'xy'.repeat(40),
    'x'.repeat(1001),
  ]) {
    const b = Buffer.from(s);
    assert.equal(BigInt(hashBytes(hashStart(), b) >>> 0), hashBytesRef(0x811c9dc5n, b), JSON.stringify(s));
    // The aligned fast path (an Int32Array view) and the byte path agree.
    const unaligned = new Uint8Array(b.byteLength + 1).subarray(1);
    unaligned.set(b);
    const aligned = new Uint8Array(b.byteLength);
    aligned.set(b);
    assert.equal(hashBytes(hashStart(), unaligned), hashBytes(hashStart(), aligned), JSON.stringify(s));
  }
  // The length step makes trailing zero bytes count: "a" and "a\0" hash apart.
  assert.notEqual(
    hashBytes(hashStart(), Uint8Array.of(0x61)),
    hashBytes(hashStart(), Uint8Array.of(0x61, 0)),
  );
  assert.notEqual(hashBytes(hashStart(), new Uint8Array(4)), hashBytes(hashStart(), new Uint8Array(8)));
  // Concatenation boundaries count too, since each piece carries its length.
  const ab = hashBytes(hashBytes(hashStart(), Buffer.from('ab')), Buffer.from('c'));
  const a_bc = hashBytes(hashBytes(hashStart(), Buffer.from('a')), Buffer.from('bc'));
  assert.notEqual(ab, a_bc);
});

test(`hashBytes: every single-bit change of a buffer changes the 16-bit result, at any length (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  let unchanged = 0;
  let total = 0;
  for (let len = 1; len <= 13; len++) {
    for (let t = 0; t < 20; t++) {
      const b = Uint8Array.from({ length: len }, () => Math.floor(rnd() * 256));
      const base = hashFinish16(hashBytes(hashStart(), b));
      for (let i = 0; i < len; i++) {
        for (let bit = 0; bit < 8; bit++) {
          b[i] = b[i]! ^ (1 << bit);
          if (hashFinish16(hashBytes(hashStart(), b)) === base) unchanged++;
          b[i] = b[i]! ^ (1 << bit);
          total++;
        }
      }
    }
  }
  // About 0.3 expected by chance in ~14,500 changes.
  assert.ok(
    unchanged <= 6,
    `seed ${SEED}: ${unchanged} of ${total} single-bit changes left the hash unchanged`,
  );
});

test('hashWord folds any number as an int32; hashBig folds two words, low then high', () => {
  const h = hashStart();
  assert.equal(hashWord(h, 0xffffffff), hashWord(h, -1));
  assert.equal(hashWord(h, 2 ** 32 + 5), hashWord(h, 5));
  assert.equal(hashBig(h, 0x0000000200000001n), hashWord(hashWord(h, 1), 2));
  // Negative bigints are taken as u64.
  assert.equal(hashBig(h, -1n), hashWord(hashWord(h, -1), -1));
  assert.equal(hashBig(h, 1n << 64n), hashBig(h, 0n));
  assert.notEqual(hashBig(h, 1n), hashBig(h, 1n << 32n));
});

test('hashFinish16 matches fmix32 folded to 16 bits, and stays in 0..65535', () => {
  const rnd = prng(SEED);
  const samples = [0, 1, -1, 0x7fffffff, -0x80000000, hashStart()];
  for (let i = 0; i < 1000; i++) samples.push(Math.floor(rnd() * 2 ** 32) | 0);
  for (const h of samples) {
    const v = hashFinish16(h);
    assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffff, `seed ${SEED}: ${h} -> ${v}`);
    assert.equal(v, finish16Ref(BigInt(h >>> 0)), `seed ${SEED}: hashFinish16(${h})`);
  }
});

test(`the 16-bit result depends on every bit of every input word (seed ${SEED})`, () => {
  const rnd = prng(SEED);
  const trials = 200;
  let unchanged = 0;
  const setCounts = new Array<number>(16).fill(0);
  for (let t = 0; t < trials; t++) {
    const words = Array.from({ length: 4 }, () => Math.floor(rnd() * 2 ** 32) | 0);
    const full = (ws: number[]): number => hashFinish16(ws.reduce((h, w) => hashWord(h, w), hashStart()));
    const base = full(words);
    for (let b = 0; b < 16; b++) if ((base >> b) & 1) setCounts[b]!++;
    for (let wi = 0; wi < words.length; wi++) {
      for (let bit = 0; bit < 32; bit++) {
        const flipped = words.slice();
        flipped[wi] = flipped[wi]! ^ (1 << bit);
        if (full(flipped) === base) unchanged++;
      }
    }
  }
  // 25,600 single-bit changes; a 16-bit hash that mixes well leaves about 0.4 of them unchanged.
  assert.ok(unchanged <= 8, `seed ${SEED}: ${unchanged} single-bit input changes left the hash unchanged`);
  // Each output bit is set about half the time.
  for (let b = 0; b < 16; b++) {
    const share = setCounts[b]! / trials;
    assert.ok(share > 0.3 && share < 0.7, `seed ${SEED}: output bit ${b} set in ${share} of the samples`);
  }
});

test('hashes are pure: the same input always gives the same value', () => {
  const b = Buffer.from('lockstep');
  assert.equal(hashBytes(hashStart(), b), hashBytes(hashStart(), b));
  assert.equal(hashFinish16(hashBig(hashStart(), 123n)), hashFinish16(hashBig(hashStart(), 123n)));
});

test('hashBig folds the two halves of the 64-bit two’s complement, on both of its paths', () => {
  const ref = (v: bigint): number => {
    const u = BigInt.asUintN(64, v);
    return hashWord(hashWord(hashStart(), Number(u & 0xffffffffn)), Number(u >> 32n));
  };
  for (const v of [
    0n,
    1n,
    -1n,
    2n ** 32n,
    -(2n ** 32n) - 5n,
    2n ** 53n - 1n,
    -(2n ** 53n) + 1n,
    2n ** 53n,
    2n ** 63n - 1n,
    -(2n ** 63n),
    2n ** 64n - 1n,
  ]) {
    assert.equal(hashBig(hashStart(), v), ref(v), String(v));
  }
});
