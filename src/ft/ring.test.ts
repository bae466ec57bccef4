// Tests of ByteRing (ring.ts), the bounded SPSC byte stream between a vCPU
// worker and the main thread: a real worker thread writes or reads a seeded
// random stream in random chunks through a small ring (so it wraps and fills
// thousands of times), a full ring blocks its producer, close ends the
// stream, and the running counters wrap at 2^32.
//
// The seed is printed in the test names; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { ByteRing } from './ring.js';
import { seededRandom, testSeed } from '../core/prng.js';

const SEED = testSeed();
const RING_URL = new URL('./ring.js', import.meta.url).href;
/** Bounds every wait loop of the main thread, so a broken ring fails instead of hanging. */
const LOOP_MAX = 2_000_000;

/** Byte i of the test stream for a seed: a pure function, so both threads agree on it. */
function streamByte(seed: number, i: number): number {
  return Math.imul((i + 1) ^ seed, 0x9e3779b1) >>> 24;
}

/**
 * The worker's code. It runs as CommonJS (eval) and imports the compiled ring.
 * Tasks: 'produce' writes the stream in random chunks with writeBlocking, then
 * closes; 'consume' reads it with readBlocking in random chunks and posts its
 * SHA-256; 'interrupt' sleeps in readBlocking until a shared flag is raised.
 */
const WORKER_CODE = `
const { workerData, parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const streamByte = ${streamByte.toString()};
import(workerData.ringUrl).then(({ ByteRing }) => {
  const ring = ByteRing.attach(workerData.sab);
  const flags = new Int32Array(workerData.flags);
  const { seed, total, maxChunk } = workerData;
  const rnd = prng(seed ^ 0x5bd1e995);
  if (workerData.task === 'produce') {
    let off = 0;
    while (off < total) {
      const n = Math.min(total - off, 1 + Math.floor(rnd() * maxChunk));
      const chunk = new Uint8Array(n);
      for (let k = 0; k < n; k++) chunk[k] = streamByte(seed, off + k);
      ring.writeBlocking(chunk);
      off += n;
      Atomics.store(flags, 0, off);
    }
    ring.close();
    Atomics.store(flags, 1, 1);
    parentPort.postMessage({ written: off });
  } else if (workerData.task === 'consume') {
    const h = createHash('sha256');
    let got = 0;
    for (;;) {
      const dst = new Uint8Array(1 + Math.floor(rnd() * maxChunk));
      const full = ring.readBlocking(dst, () => false);
      // readBlocking does not return a count: on the end of the stream, the bytes read so far are at the
      // start of dst, and since the producer wrote exactly total bytes they are the rest of the stream.
      const n = full ? dst.byteLength : Math.min(dst.byteLength, total - got);
      h.update(dst.subarray(0, n));
      got += n;
      if (!full) break;
    }
    parentPort.postMessage({ got, sha256: h.digest('hex') });
  } else if (workerData.task === 'interrupt') {
    const dst = new Uint8Array(100);
    const full = ring.readBlocking(dst, () => Atomics.load(flags, 2) !== 0);
    parentPort.postMessage({ full });
  }
});
`;

interface WorkerRun {
  worker: Worker;
  flags: Int32Array;
  message: Promise<Record<string, unknown>>;
}

function startWorker(
  task: string,
  ring: ByteRing,
  data: { seed: number; total: number; maxChunk: number },
): WorkerRun {
  const flagsSab = new SharedArrayBuffer(16);
  const worker = new Worker(WORKER_CODE, {
    eval: true,
    workerData: { task, sab: ring.sab, flags: flagsSab, ringUrl: RING_URL, ...data },
  });
  const message = new Promise<Record<string, unknown>>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`worker exited (${code}) before reporting`)));
  });
  return { worker, flags: new Int32Array(flagsSab), message };
}

const prng = seededRandom;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

test(`worker → main: a random stream in random chunks through a 64-byte ring (seed ${SEED})`, async () => {
  const ring = ByteRing.create(64);
  const total = 150_000;
  const run = startWorker('produce', ring, { seed: SEED, total, maxChunk: 200 });
  try {
    const rnd = prng(SEED ^ 0x1234567);
    let got = 0;
    let sawFull = false;
    for (let i = 0; i < LOOP_MAX; i++) {
      if (ring.buffered() === ring.capBytes) sawFull = true;
      const dst = new Uint8Array(1 + Math.floor(rnd() * 100));
      const n = ring.tryRead(dst);
      for (let k = 0; k < n; k++) {
        if (dst[k] !== streamByte(SEED, got + k)) assert.fail(`seed ${SEED}: byte ${got + k} differs`);
      }
      got += n;
      if (n > 0) continue;
      if (ring.closed() && ring.buffered() === 0) break;
      await ring.waitReadable(100);
    }
    assert.equal(got, total, `seed ${SEED}: bytes received`);
    assert.deepEqual(await run.message, { written: total });
    // Not an assertion on timing: whether the producer ever found the ring full is only reported.
    if (!sawFull) console.log(`# seed ${SEED}: the consumer never saw the ring full`);
  } finally {
    await run.worker.terminate();
  }
});

test(`main → worker: writeAsync in random chunks, readBlocking in random chunks (seed ${SEED})`, async () => {
  const ring = ByteRing.create(128);
  const total = 150_000;
  const run = startWorker('consume', ring, { seed: SEED, total, maxChunk: 300 });
  try {
    const rnd = prng(SEED ^ 0x7654321);
    const h = createHash('sha256');
    let off = 0;
    while (off < total) {
      const n = Math.min(total - off, 1 + Math.floor(rnd() * 500));
      const chunk = new Uint8Array(n);
      for (let k = 0; k < n; k++) chunk[k] = streamByte(SEED, off + k);
      h.update(chunk);
      await ring.writeAsync(chunk);
      off += n;
    }
    ring.close();
    assert.deepEqual(await run.message, { got: total, sha256: h.digest('hex') }, `seed ${SEED}`);
  } finally {
    await run.worker.terminate();
  }
});

test('a full ring blocks its producer until the consumer reads', async () => {
  const ring = ByteRing.create(64);
  const total = 64 * 4;
  // One chunk larger than the ring: writeBlocking cannot return before the consumer has read.
  const run = startWorker('produce', ring, { seed: SEED, total, maxChunk: total * 2 });
  try {
    // waitReadable returns at once while bytes are buffered, so poll with a sleep (bounded: 10 s at most).
    for (let i = 0; i < 2000 && ring.buffered() < ring.capBytes; i++) await sleep(5);
    assert.equal(ring.buffered(), ring.capBytes, 'the producer fills the ring');
    // However long we wait, a correct ring holds no more than its capacity and the producer stays blocked.
    await sleep(50);
    assert.equal(ring.buffered(), ring.capBytes);
    assert.equal(Atomics.load(run.flags, 1), 0, 'the producer finished while the ring was full');
    assert.equal(ring.closed(), false);
    let got = 0;
    for (let i = 0; i < LOOP_MAX; i++) {
      const b = ring.take();
      if (b !== null) {
        for (let k = 0; k < b.byteLength; k++) assert.equal(b[k], streamByte(SEED, got + k));
        got += b.byteLength;
        continue;
      }
      if (ring.closed() && ring.buffered() === 0) break;
      await ring.waitReadable(100);
    }
    assert.equal(got, total);
    assert.deepEqual(await run.message, { written: total });
  } finally {
    await run.worker.terminate();
  }
});

test('close ends the stream: a blocked reader returns false with what was there', async () => {
  const ring = ByteRing.create(64);
  const run = startWorker('consume', ring, { seed: SEED, total: 10, maxChunk: 1 });
  try {
    const first = new Uint8Array(10);
    for (let k = 0; k < 10; k++) first[k] = streamByte(SEED, k);
    assert.equal(ring.tryWrite(first), 10);
    ring.close();
    const m = await run.message;
    assert.equal(m.got, 10);
    assert.equal(m.sha256, createHash('sha256').update(first).digest('hex'));
  } finally {
    await run.worker.terminate();
  }
});

test('a reader blocked on an empty ring notices an interruption', async () => {
  const ring = ByteRing.create(64);
  const run = startWorker('interrupt', ring, { seed: SEED, total: 0, maxChunk: 1 });
  try {
    await sleep(20);
    Atomics.store(run.flags, 2, 1);
    assert.deepEqual(await run.message, { full: false });
  } finally {
    await run.worker.terminate();
  }
});

test('tryWrite and tryRead are partial at the edges; space and buffered add up', () => {
  const ring = ByteRing.create(16);
  assert.equal(ring.capBytes, 16);
  assert.equal(ring.tryWrite(Uint8Array.from({ length: 20 }, (_, i) => i)), 16);
  assert.equal(ring.space(), 0);
  assert.equal(ring.tryWrite(Uint8Array.of(99)), 0);
  const a = new Uint8Array(5);
  assert.equal(ring.tryRead(a), 5);
  assert.deepEqual([...a], [0, 1, 2, 3, 4]);
  assert.equal(ring.buffered() + ring.space(), 16);
  // This write wraps around the end of the data area.
  assert.equal(ring.tryWrite(Uint8Array.of(20, 21, 22, 23, 24, 25)), 5);
  const b = new Uint8Array(32);
  assert.equal(ring.tryRead(b), 16);
  assert.deepEqual([...b.subarray(0, 16)], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24]);
  assert.equal(ring.take(), null);
  assert.equal(ring.tryRead(new Uint8Array(0)), 0);
});

test('the running counters wrap at 2^32', () => {
  const ring = ByteRing.create(32);
  // HEAD and TAIL are Int32 slots 0 and 1 (ring.ts); start them just below 2^32.
  const slots = new Int32Array(ring.sab, 0, 2);
  slots[0] = -5;
  slots[1] = -5;
  assert.equal(ring.buffered(), 0);
  for (let round = 0; round < 4; round++) {
    const src = Uint8Array.from({ length: 20 }, (_, i) => round * 20 + i);
    assert.equal(ring.tryWrite(src), 20);
    assert.equal(ring.buffered(), 20);
    const dst = new Uint8Array(20);
    assert.equal(ring.tryRead(dst), 20);
    assert.deepEqual([...dst], [...src], `round ${round}`);
  }
  assert.equal(slots[0], slots[1]);
  assert.ok(slots[0]! > 0, 'the counters went past 2^32');
});

test('a ring shared by attach sees the same bytes; bad capacities are refused', () => {
  const a = ByteRing.create(16);
  const b = ByteRing.attach(a.sab);
  assert.equal(b.capBytes, 16);
  a.tryWrite(Uint8Array.of(1, 2, 3));
  assert.deepEqual([...(b.take() ?? [])], [1, 2, 3]);
  a.close();
  assert.equal(b.closed(), true);
  for (const cap of [0, 8, 15, 24, 1000, 2 ** 31]) {
    assert.throws(() => ByteRing.create(cap), /power of two/, `capacity ${cap}`);
  }
});
