// Tests of ShadowDiff (shadow.ts): it lists exactly the blocks that differ from the shadow, in
// increasing order, counts the blocks of a grown memory as changed, keeps the shadow equal to
// the memory it last saw, and asserts on a shrunk or ragged memory.
//
// Randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, testSeed } from '../core/prng.js';
import { SNAPSHOT_BLOCK_BYTES, WASM_PAGE_BYTES } from './format.js';
import { ShadowDiff } from './shadow.js';

const SEED = testSeed();
const BS = SNAPSHOT_BLOCK_BYTES;

function randomMemory(p: Prng, pages: number): Uint8Array {
  const m = new Uint8Array(pages * WASM_PAGE_BYTES);
  const words = new Uint32Array(m.buffer);
  for (let i = 0; i < words.length; i++) words[i] = p.chance(0.5) ? 0 : p.nextU32();
  return m;
}

/** The blocks where a and b differ, beyond a's end all of b's, by comparing byte by byte. */
function naiveDiff(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let blk = 0; blk * BS < b.byteLength; blk++) {
    if (blk * BS >= a.byteLength) {
      out.push(blk);
      continue;
    }
    for (let i = blk * BS; i < (blk + 1) * BS; i++) {
      if (a[i] !== b[i]) {
        out.push(blk);
        break;
      }
    }
  }
  return out;
}

test('a fresh ShadowDiff lists every block; reset makes the next diff empty', () => {
  const p = new Prng(SEED);
  const m = randomMemory(p, 2);
  const d = new ShadowDiff();
  assert.equal(d.memoryBytes, 0);
  assert.deepEqual(
    d.diff(m),
    Array.from({ length: (2 * WASM_PAGE_BYTES) / BS }, (_, i) => i),
  );
  assert.deepEqual(d.diff(m), []);
  const d2 = new ShadowDiff();
  d2.reset(m);
  assert.equal(d2.memoryBytes, m.byteLength);
  assert.deepEqual(d2.diff(m), []);
});

test('single-byte changes at the edges of blocks and spans are found, and only they', () => {
  const m = new Uint8Array(4 * WASM_PAGE_BYTES);
  const d = new ShadowDiff();
  d.reset(m);
  // First and last bytes of blocks, including the ones at the edges of 16-block spans.
  const offsets = [0, BS - 1, BS, 15 * BS + BS - 1, 16 * BS, 33 * BS + 7, m.byteLength - 1];
  for (const at of offsets) {
    m[at] = 1;
    assert.deepEqual(d.diff(m), [Math.floor(at / BS)], `a byte at ${at}`);
    assert.deepEqual(d.diff(m), [], `a byte at ${at}, again`);
  }
  // A change back to the old value is a change too.
  m[0] = 0;
  assert.deepEqual(d.diff(m), [0]);
});

test(`diff finds exactly the changed blocks and keeps the shadow equal to memory (seed ${SEED})`, () => {
  const p = new Prng(SEED, 1);
  let m = randomMemory(p, p.int(1, 4));
  const d = new ShadowDiff();
  d.reset(m);
  let prev = m.slice();
  for (let round = 0; round < 60; round++) {
    const what = `seed ${SEED}, round ${round}`;
    if (p.chance(0.2)) {
      // Growth: new pages, zero as wasm gives them or already written to.
      const grown = new Uint8Array(m.byteLength + p.int(1, 3) * WASM_PAGE_BYTES);
      grown.set(m);
      if (p.chance(0.5)) grown[grown.byteLength - 1] = 0xff;
      m = grown;
    }
    for (let k = p.int(0, 40); k > 0; k--) {
      const at = p.int(0, m.byteLength - 1);
      m[at] = p.chance(0.1) ? m[at]! : p.int(0, 255); // sometimes the same value: no change
    }
    if (p.chance(0.1)) m.fill(p.int(0, 255), p.int(0, m.byteLength / 2), m.byteLength);
    const want = naiveDiff(prev, m);
    assert.deepEqual(d.diff(m), want, what);
    assert.equal(d.memoryBytes, m.byteLength, what);
    assert.deepEqual(d.diff(m), [], `${what}: the shadow was updated`);
    prev = m.slice();
  }
});

test('a grown memory counts its new blocks as changed, zero or not, besides the changed old ones', () => {
  const old = new Uint8Array(WASM_PAGE_BYTES);
  const d = new ShadowDiff();
  d.reset(old);
  const grown = new Uint8Array(3 * WASM_PAGE_BYTES);
  grown[5 * BS] = 1;
  const perPage = WASM_PAGE_BYTES / BS;
  assert.deepEqual(d.diff(grown), [5, ...Array.from({ length: 2 * perPage }, (_, i) => perPage + i)]);
  assert.deepEqual(d.diff(grown), []);
});

test('diff works on views with an offset, as a memory image inside a larger buffer', () => {
  const p = new Prng(SEED, 2);
  const backing = new Uint8Array(WASM_PAGE_BYTES + 3 * BS);
  const m = backing.subarray(3 * BS);
  const d = new ShadowDiff();
  d.reset(m);
  const at = p.int(0, m.byteLength - 1);
  m[at] = m[at]! ^ 0xff;
  assert.deepEqual(d.diff(m), [Math.floor(at / BS)], `seed ${SEED}`);
});

test('other block sizes, and host bugs: shrinking or ragged memory, a bad block size', () => {
  const d = new ShadowDiff({ blockBytes: 65536 });
  const m = new Uint8Array(2 * WASM_PAGE_BYTES);
  d.reset(m);
  m[70000] = 1;
  assert.deepEqual(d.diff(m), [1]);
  assert.throws(() => d.diff(new Uint8Array(WASM_PAGE_BYTES)), /memory does not shrink/);
  assert.throws(() => new ShadowDiff().diff(new Uint8Array(100)), /whole blocks/);
  assert.throws(() => new ShadowDiff({ blockBytes: 3000 }), /power of two/);
});
