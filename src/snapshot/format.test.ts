// Tests of the snapshot format (format.ts): what SnapshotWriter writes, SnapshotReader and
// readSnapshot read back, and how damage is classified:
// - full and incremental round trips (zero blocks left out, grown memory, chains of increments),
//   globals of every type with their edge values, empty and large asyncify stacks;
// - a randomized round trip over sizes, dirty sets, globals and chunkings;
// - a cut at every byte offset is 'truncated'; every single-bit flip after the preamble is
//   'corrupt'; the preamble's magic, version and flags; a wrong base; a wrong trailer hash;
//   frames out of order; well-checksummed frames that do not decode;
// - the verdict does not depend on how the bytes are chunked (1-byte chunks included);
// - the writer splits blocks into ~1 MiB frames and asserts when used out of order.
//
// Randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, testSeed } from '../core/prng.js';
import { preamble as logPreamble } from '../ft/log/format.js';
import {
  BLOCKS_FRAME_BODY_BYTES_TARGET,
  SNAPSHOT_BLOCK_BYTES,
  SNAPSHOT_PREAMBLE_BYTES,
  SnapshotFrameKind,
  SnapshotReader,
  SnapshotWriter,
  WASM_PAGE_BYTES,
  encodeHeader,
  encodeSnapshotFrame,
  encodeMachine,
  encodeTrailer,
  memorySha256,
  readSnapshot,
  type SnapshotFailure,
  type SnapshotFrame,
  type SnapshotGlobal,
  type SnapshotHeader,
  type SnapshotMachine,
} from './format.js';
import { ShadowDiff } from './shadow.js';

const SEED = testSeed();

function header(memoryBytes: number, base: Uint8Array | null = null): SnapshotHeader {
  return {
    moduleSha256: new Uint8Array(32).fill(7),
    memoryMaxPages: 256,
    callDepthMax: 10_000,
    args: ['app', '--port', '8080', 'ünïcode ✓'],
    env: ['HOME=/home', 'EMPTY='],
    listenerCount: 2,
    preopenGuestPaths: ['/data', '/tmp'],
    events: 12345,
    memoryBytes,
    blockBytes: SNAPSHOT_BLOCK_BYTES,
    base,
    createdAtMs: 1_700_000_000_000,
  };
}

/** An f64 NaN with a payload, as a guest can leave in a global. */
function payloadNaN(): number {
  const dv = new DataView(new ArrayBuffer(8));
  dv.setBigUint64(0, 0x7ff8_0000_0000_0abcn, true);
  return dv.getFloat64(0, true);
}

const EDGE_GLOBALS: SnapshotGlobal[] = [
  { type: 'i32', value: 0 },
  { type: 'i32', value: -1 },
  { type: 'i32', value: -(2 ** 31) },
  { type: 'i32', value: 2 ** 31 - 1 },
  { type: 'i64', value: 0n },
  { type: 'i64', value: -1n },
  { type: 'i64', value: -(2n ** 63n) },
  { type: 'i64', value: 2n ** 63n - 1n },
  { type: 'i64', value: -1234567890123n },
  { type: 'f32', value: NaN },
  { type: 'f32', value: -0 },
  { type: 'f32', value: Infinity },
  { type: 'f32', value: Math.fround(0.1) },
  { type: 'f32', value: Math.fround(-3.4e38) },
  { type: 'f64', value: NaN },
  { type: 'f64', value: payloadNaN() },
  { type: 'f64', value: -0 },
  { type: 'f64', value: -Infinity },
  { type: 'f64', value: 5e-324 },
  { type: 'f64', value: Number.MAX_VALUE },
  { type: 'f64', value: 0.1 },
];

function machine(memoryBytes: number, stack: Uint8Array, globals = EDGE_GLOBALS): SnapshotMachine {
  const regionEnd = memoryBytes;
  const regionStart = Math.max(0, regionEnd - Math.max(1024, stack.byteLength + 8));
  return { globals, stack, regionStart, regionEnd, lastClockNs: [1_700_000_000_000_000_000n, 42n, -5n, 0n] };
}

/** Memory of `pages` pages whose blocks are zero with probability `zeroChance`, else random. */
function randomMemory(p: Prng, pages: number, zeroChance: number): Uint8Array {
  const m = new Uint8Array(pages * WASM_PAGE_BYTES);
  for (let b = 0; b < m.byteLength; b += SNAPSHOT_BLOCK_BYTES) {
    if (p.chance(zeroChance)) continue;
    fillRandom(p, m.subarray(b, b + SNAPSHOT_BLOCK_BYTES));
  }
  return m;
}

function fillRandom(p: Prng, m: Uint8Array): void {
  const words = new Uint32Array(m.buffer, m.byteOffset, m.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = p.nextU32();
}

function flipByte(m: Uint8Array, at: number, mask: number): void {
  m[at] = m[at]! ^ mask;
}

function randomBytes(p: Prng, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, () => p.int(0, 255));
}

interface Built {
  bytes: Buffer;
  /** [start, end) of every frame (the preamble belongs to none), in order. */
  frames: { kind: string; start: number; end: number }[];
}

interface Plan {
  header: SnapshotHeader;
  machine: SnapshotMachine;
  host: Uint8Array;
  memory: Uint8Array;
  which: 'all' | Iterable<number>;
  /** The trailer's hash; the memory's own unless a test wants it wrong. */
  sha?: Uint8Array;
}

/** Writes a snapshot, copying what the sink gets (the pieces may be views of memory). */
function build(plan: Plan): Built {
  const calls: Buffer[] = [];
  const w = new SnapshotWriter((pieces) => calls.push(Buffer.concat(pieces.map((x) => Buffer.from(x)))));
  w.header(plan.header);
  w.machine(plan.machine);
  w.host(plan.host);
  w.blocks(plan.memory, plan.which);
  w.trailer(plan.sha ?? memorySha256(plan.memory));
  const bytes = Buffer.concat(calls);
  assert.equal(w.bytesWritten, bytes.byteLength);
  const frames: Built['frames'] = [];
  let at = SNAPSHOT_PREAMBLE_BYTES;
  for (const [i, c] of calls.entries()) {
    const end = i === 0 ? c.byteLength : at + c.byteLength;
    frames.push({ kind: kindName(bytes[at]!), start: at, end });
    at = end;
  }
  return { bytes, frames };
}

function kindName(k: number): string {
  return Object.entries(SnapshotFrameKind).find(([, v]) => v === k)![0];
}

/** `bytes` as a stream of chunks; `size(at)` gives the size of the chunk starting at byte `at`. */
async function* chunked(bytes: Uint8Array, size: (at: number) => number): AsyncIterable<Uint8Array> {
  for (let at = 0; at < bytes.byteLength;) {
    const n = Math.max(1, size(at));
    yield bytes.subarray(at, at + n);
    at += n;
  }
}

type Read = Awaited<ReturnType<typeof readSnapshot>>;

function describe(r: Read): string {
  return r.ok ? `ok (${r.memory.byteLength} bytes of memory)` : `${r.code}: ${r.message}`;
}

function expectFailure(r: Read, code: SnapshotFailure['code'], what: string): SnapshotFailure {
  assert.ok(!r.ok && r.code === code, `${what}: expected ${code}, got ${describe(r)}`);
  return r;
}

function expectSame(r: Read, plan: Plan, memory: Uint8Array, what: string): void {
  assert.ok(r.ok, `${what}: ${describe(r)}`);
  assert.deepEqual(r.header, plan.header, what);
  assert.deepEqual(r.machine, plan.machine, what);
  assert.deepEqual(r.host, plan.host, what);
  assert.ok(Buffer.from(r.memory).equals(Buffer.from(memory)), `${what}: memory differs`);
  assert.deepEqual(r.memorySha256, memorySha256(memory), what);
}

/** Every frame the reader yields, whole input at once. */
function frames(bytes: Uint8Array): SnapshotFrame[] {
  const r = new SnapshotReader();
  const p = r.push(bytes);
  assert.ok(p.ok, p.ok ? '' : p.message);
  const e = r.end();
  assert.ok(e.ok, e.ok ? '' : e.message);
  return p.frames;
}

// A small snapshot for the exhaustive damage tests: one page, two non-zero blocks.
const SMALL_MEMORY = (() => {
  const m = new Uint8Array(WASM_PAGE_BYTES);
  fillRandom(new Prng(1), m.subarray(4096, 8192));
  m.fill(0xab, 12 * 4096, 12 * 4096 + 100);
  return m;
})();
const SMALL_PLAN: Plan = {
  header: header(WASM_PAGE_BYTES),
  machine: machine(WASM_PAGE_BYTES, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9), EDGE_GLOBALS.slice(0, 6)),
  host: new TextEncoder().encode('resource table'),
  memory: SMALL_MEMORY,
  which: 'all',
};
const SMALL = build(SMALL_PLAN);

test('a full snapshot round-trips, with all-zero blocks left out', async () => {
  const p = new Prng(SEED);
  const memory = randomMemory(p, 5, 0.4);
  const plan: Plan = {
    header: header(memory.byteLength),
    machine: machine(memory.byteLength, randomBytes(p, 300)),
    host: randomBytes(p, 1000),
    memory,
    which: 'all',
  };
  const built = build(plan);
  expectSame(await readSnapshot(built.bytes, null), plan, memory, `seed ${SEED}`);
  let nonZero = 0;
  for (let b = 0; b < memory.byteLength; b += SNAPSHOT_BLOCK_BYTES) {
    if (memory.subarray(b, b + SNAPSHOT_BLOCK_BYTES).some((x) => x !== 0)) nonZero++;
  }
  const fs = frames(built.bytes);
  const written = fs.flatMap((f) => (f.type === 'blocks' ? f.runs : [])).reduce((n, r) => n + r.count, 0);
  assert.equal(written, nonZero, `seed ${SEED}: blocks written`);
  const t = fs.at(-1)!;
  assert.ok(t.type === 'trailer');
  assert.equal(t.trailer.blocks, nonZero);
});

test('an all-zero memory makes a snapshot without BLOCKS frames', async () => {
  for (const pages of [1, 3]) {
    const memory = new Uint8Array(pages * WASM_PAGE_BYTES);
    const plan: Plan = {
      header: header(memory.byteLength),
      machine: {
        globals: [],
        stack: new Uint8Array(0),
        regionStart: 0,
        regionEnd: 8,
        lastClockNs: [0n, 0n, 0n, 0n],
      },
      host: new Uint8Array(0),
      memory,
      which: 'all',
    };
    const built = build(plan);
    assert.deepEqual(
      built.frames.map((f) => f.kind),
      ['HEADER', 'MACHINE', 'HOST', 'TRAILER'],
    );
    expectSame(await readSnapshot(built.bytes, null), plan, memory, `${pages} zero pages`);
  }
});

test('empty bodies (an empty host table) get a right checksum, however their buffer was made', async () => {
  // Node's zlib.crc32 returns 0 for an empty view whose ArrayBuffer was materialized (touched
  // through .buffer), dropping the running value; the writer must not depend on it.
  const empty = new Uint8Array(0);
  assert.equal(empty.buffer.byteLength, 0);
  const plan: Plan = { ...SMALL_PLAN, host: empty };
  expectSame(await readSnapshot(build(plan).bytes, null), plan, SMALL_MEMORY, 'an empty host table');
  const f = encodeSnapshotFrame(SnapshotFrameKind.HOST, empty);
  const r = new SnapshotReader();
  const x = r.push(reassemble([0, 1, f]));
  assert.ok(x.ok, x.ok ? '' : x.message);
  assert.deepEqual(
    x.frames.map((y) => y.type),
    ['header', 'machine', 'host'],
  );
});

test('incremental snapshots round-trip over their base, through grown memory, in a chain', async () => {
  const p = new Prng(SEED + 1);
  let memory = randomMemory(p, 3, 0.3);
  const full: Plan = {
    header: header(memory.byteLength),
    machine: machine(memory.byteLength, new Uint8Array(0)),
    host: randomBytes(p, 10),
    memory,
    which: 'all',
  };
  const first = await readSnapshot(build(full).bytes, null);
  expectSame(first, full, memory, `seed ${SEED + 1}: the full snapshot`);
  assert.ok(first.ok);
  let image = first.memory;
  let baseSha = first.memorySha256;
  const shadow = new ShadowDiff();
  shadow.reset(memory);
  for (let step = 0; step < 4; step++) {
    const what = `seed ${SEED + 1}, increment ${step}`;
    // Change some blocks (some to zero, which an increment must carry), sometimes grow.
    const grownPages = step % 2 === 1 ? p.int(1, 2) : 0;
    const next = new Uint8Array(memory.byteLength + grownPages * WASM_PAGE_BYTES);
    next.set(memory);
    for (let k = p.int(0, 10); k > 0; k--) {
      const b = p.int(0, next.byteLength / SNAPSHOT_BLOCK_BYTES - 1) * SNAPSHOT_BLOCK_BYTES;
      if (p.chance(0.3)) next.fill(0, b, b + SNAPSHOT_BLOCK_BYTES);
      else flipByte(next, b + p.int(0, SNAPSHOT_BLOCK_BYTES - 1), 1 + p.int(0, 254));
    }
    memory = next;
    const plan: Plan = {
      header: header(memory.byteLength, baseSha),
      machine: machine(memory.byteLength, randomBytes(p, p.int(0, 2000))),
      host: randomBytes(p, p.int(0, 50)),
      memory,
      which: shadow.diff(memory),
    };
    const r = await readSnapshot(build(plan).bytes, image);
    expectSame(r, plan, memory, what);
    assert.ok(r.ok);
    image = r.memory;
    baseSha = r.memorySha256;
  }
});

test(`randomized round trips: sizes, dirty sets, globals, stacks and chunkings (seed ${SEED})`, async () => {
  const p = new Prng(SEED, 2);
  const types = ['i32', 'i64', 'f32', 'f64'] as const;
  for (let iter = 0; iter < 40; iter++) {
    const what = `seed ${SEED}, iteration ${iter}`;
    const pages = p.int(1, 6);
    const base = randomMemory(p, p.int(1, pages), p.next());
    const incremental = p.chance(0.5);
    const memory = new Uint8Array(pages * WASM_PAGE_BYTES);
    const dirty = new Set<number>();
    if (incremental) {
      memory.set(base);
      for (
        let b = base.byteLength / SNAPSHOT_BLOCK_BYTES;
        b < memory.byteLength / SNAPSHOT_BLOCK_BYTES;
        b++
      ) {
        dirty.add(b);
        if (p.chance(0.5))
          fillRandom(p, memory.subarray(b * SNAPSHOT_BLOCK_BYTES, (b + 1) * SNAPSHOT_BLOCK_BYTES));
      }
      const blocks = memory.byteLength / SNAPSHOT_BLOCK_BYTES;
      for (let k = p.int(0, blocks); k > 0; k--) {
        const b = p.int(0, blocks - 1);
        dirty.add(b);
        // A listed block need not have changed: writers may list more than the changed ones.
        if (p.chance(0.7))
          flipByte(memory, b * SNAPSHOT_BLOCK_BYTES + p.int(0, SNAPSHOT_BLOCK_BYTES - 1), 0x5a);
      }
    } else {
      memory.set(randomMemory(p, pages, p.next()));
    }
    const globals: SnapshotGlobal[] = Array.from({ length: p.int(0, 30) }, () => {
      const type = types[p.int(0, 3)]!;
      const bits = new DataView(new ArrayBuffer(8));
      bits.setUint32(0, p.nextU32());
      bits.setUint32(4, p.nextU32());
      switch (type) {
        case 'i32':
          return { type, value: bits.getInt32(0) };
        case 'i64':
          return { type, value: bits.getBigInt64(0) };
        case 'f32':
          return { type, value: bits.getFloat32(0) };
        case 'f64':
          return { type, value: bits.getFloat64(0) };
      }
    });
    const stackBytes = [0, p.int(1, 64), p.int(1000, 60_000)][p.int(0, 2)]!;
    const plan: Plan = {
      header: {
        ...header(memory.byteLength, incremental ? memorySha256(base) : null),
        args: Array.from({ length: p.int(0, 5) }, (_, i) => `arg${i}`),
        events: p.int(0, 2 ** 40),
      },
      machine: {
        ...machine(memory.byteLength, randomBytes(p, stackBytes), globals),
        lastClockNs: [0, 1, 2, 3].map(() =>
          BigInt.asIntN(64, (BigInt(p.nextU32()) << 32n) | BigInt(p.nextU32())),
        ),
      },
      host: randomBytes(p, p.int(0, 3000)),
      memory,
      which: incremental ? dirty : 'all',
    };
    const bytes = build(plan).bytes;
    const whole = await readSnapshot(bytes, incremental ? base : null);
    expectSame(whole, plan, memory, `${what}, whole`);
    const maxChunk = p.int(1, 70_000);
    const inChunks = await readSnapshot(
      chunked(bytes, () => p.int(1, maxChunk)),
      incremental ? base : null,
    );
    expectSame(inChunks, plan, memory, `${what}, chunks up to ${maxChunk} bytes`);
  }
});

test('1-byte chunks give the same frames and the same snapshot as one chunk', async () => {
  const p = new Prng(SEED + 3);
  const memory = randomMemory(p, 2, 0.5);
  const plan: Plan = {
    header: header(memory.byteLength),
    machine: machine(memory.byteLength, randomBytes(p, 500)),
    host: randomBytes(p, 100),
    memory,
    which: 'all',
  };
  const bytes = build(plan).bytes;
  const r = new SnapshotReader();
  const got: SnapshotFrame[] = [];
  for (let i = 0; i < bytes.byteLength; i++) {
    const x = r.push(bytes.subarray(i, i + 1));
    assert.ok(x.ok);
    got.push(...x.frames);
  }
  assert.ok(r.end().ok);
  assert.deepEqual(got, frames(bytes));
  expectSame(
    await readSnapshot(
      chunked(bytes, () => 1),
      null,
    ),
    plan,
    memory,
    `seed ${SEED + 3}, 1-byte chunks`,
  );
});

test('frames are yielded as soon as their bytes are in', () => {
  const r = new SnapshotReader();
  const [h, m] = SMALL.frames;
  let x = r.push(SMALL.bytes.subarray(0, h!.end - 1));
  assert.ok(x.ok && x.frames.length === 0);
  x = r.push(SMALL.bytes.subarray(h!.end - 1, h!.end));
  assert.ok(x.ok);
  assert.deepEqual(
    x.frames.map((f) => [f.type, f.offset]),
    [['header', h!.start]],
  );
  assert.equal(r.header?.events, 12345);
  x = r.push(SMALL.bytes.subarray(h!.end, m!.end));
  assert.ok(x.ok);
  assert.deepEqual(
    x.frames.map((f) => f.type),
    ['machine'],
  );
  assert.equal(r.consumedBytes, m!.end);
});

test(`a cut at every byte offset is 'truncated', however the bytes arrive (seed ${SEED})`, async () => {
  const p = new Prng(SEED, 4);
  // Byte by byte around every frame boundary, where the reader switches between prefix and body.
  const boundaries = [0, ...SMALL.frames.flatMap((f) => [f.start, f.end])];
  const size = (at: number): number => (boundaries.some((b) => Math.abs(b - at) <= 3) ? 1 : p.int(1, 300));
  for (let cut = 0; cut < SMALL.bytes.byteLength; cut++) {
    const prefix = SMALL.bytes.subarray(0, cut);
    const what = `cut at ${cut} of ${SMALL.bytes.byteLength}`;
    const r = expectFailure(await readSnapshot(prefix, null), 'truncated', what);
    assert.match(r.message, cut === 0 ? /empty/ : /truncated/, what);
    expectFailure(
      await readSnapshot(chunked(prefix, size), null),
      'truncated',
      `${what}, chunked (seed ${SEED})`,
    );
  }
  assert.ok((await readSnapshot(SMALL.bytes, null)).ok);
});

test('truncation messages say where the snapshot ends and what is missing', async () => {
  const [h, m, host] = SMALL.frames;
  const msg = async (cut: number): Promise<string> =>
    expectFailure(await readSnapshot(SMALL.bytes.subarray(0, cut), null), 'truncated', `cut ${cut}`).message;
  assert.match(await msg(5), /inside its preamble, after 5 of 12 bytes/);
  assert.match(await msg(h!.end), new RegExp(`ends at byte ${h!.end}, before its machine frame`));
  assert.match(await msg(host!.end), /before its trailer/);
  assert.match(
    await msg(m!.start + 10),
    new RegExp(`inside the MACHINE frame at byte ${m!.start} \\(10 of \\d+ bytes`),
  );
  assert.match(await msg(SMALL.bytes.byteLength - 1), /inside the TRAILER frame/);
});

/** Checks every single-bit flip in [from, to) of SMALL, read whole and, for some, in chunks. */
async function checkFlips(
  from: number,
  to: number,
  chunking: ((at: number) => number) | null,
  how: string,
): Promise<void> {
  for (let at = from; at < to; at++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(SMALL.bytes);
      bad[at] = bad[at]! ^ (1 << bit);
      const source = chunking === null ? bad : chunked(bad, chunking);
      expectFailure(await readSnapshot(source, null), 'corrupt', `bit ${bit} of byte ${at}, ${how}`);
    }
  }
}

test("every single-bit flip after the preamble is 'corrupt', lengths and the trailer included", async () => {
  await checkFlips(SNAPSHOT_PREAMBLE_BYTES, SMALL.bytes.byteLength, null, 'in one chunk');
});

test(`bit flips in frame prefixes and the trailer classify the same in small chunks (seed ${SEED})`, async () => {
  // The prefixes (kind, length) are where chunking could matter: a damaged length makes the
  // reader wait for bytes that never come.
  const p = new Prng(SEED, 5);
  for (const f of SMALL.frames) {
    // Byte by byte (or nearly) around the prefix; the rest of the file in big pieces, for speed.
    const near = (at: number): boolean => at >= f.start - 2 && at < f.start + 8;
    await checkFlips(f.start, f.start + 4, (at) => (near(at) ? 1 : 1024), `${f.kind} prefix, byte by byte`);
    await checkFlips(
      f.start,
      f.start + 4,
      (at) => (near(at) ? p.int(1, 3) : p.int(1, 2000)),
      `${f.kind} prefix, random chunks (seed ${SEED})`,
    );
  }
  const t = SMALL.frames.at(-1)!;
  await checkFlips(
    t.start,
    t.end,
    (at) => (at >= t.start - 4 ? p.int(1, 7) : p.int(1, 4096)),
    `the trailer, random chunks (seed ${SEED})`,
  );
});

test('a length damaged to run past the end is corrupt, not truncated, since the trailer follows', async () => {
  // HOST's 1-byte length gets its continuation bit: the varint takes the body's first byte too.
  const host = SMALL.frames[2]!;
  assert.ok(SMALL.bytes[host.start + 1]! < 0x80);
  const bad = Buffer.from(SMALL.bytes);
  bad[host.start + 1] = bad[host.start + 1]! | 0x80;
  // The same for BLOCKS's 2-byte length (about 8 KiB of blocks).
  const blocks = SMALL.frames[3]!;
  assert.ok(SMALL.bytes[blocks.start + 1]! >= 0x80 && SMALL.bytes[blocks.start + 2]! < 0x80);
  const bad2 = Buffer.from(SMALL.bytes);
  bad2[blocks.start + 2] = bad2[blocks.start + 2]! | 0x80;
  for (const [what, b] of [
    ['HOST length', bad],
    ['BLOCKS length', bad2],
  ] as const) {
    for (const chunking of [null, (): number => 1]) {
      const r = expectFailure(await readSnapshot(chunking ? chunked(b, chunking) : b, null), 'corrupt', what);
      assert.match(
        r.message,
        /claims \d+ bytes, past the trailer that ends the file at byte \d+ \(a damaged length\)/,
      );
    }
  }
  // Cut short as well, the same damage is a truncation: nothing says the file was whole.
  expectFailure(
    await readSnapshot(bad.subarray(0, bad.byteLength - 1), null),
    'truncated',
    'HOST length, cut',
  );
});

test("the preamble: bad magic is 'not-a-snapshot', the version 'version', the flags 'corrupt'", async () => {
  for (let at = 0; at < SNAPSHOT_PREAMBLE_BYTES; at++) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(SMALL.bytes);
      bad[at] = bad[at]! ^ (1 << bit);
      const code = at < 8 ? 'not-a-snapshot' : at < 10 ? 'version' : 'corrupt';
      expectFailure(await readSnapshot(bad, null), code, `bit ${bit} of preamble byte ${at}`);
    }
  }
});

test("a log, a text file or noise is 'not-a-snapshot', known from the first wrong byte", async () => {
  const log = Buffer.concat([logPreamble(), Buffer.alloc(100)]);
  assert.match(
    expectFailure(await readSnapshot(log, null), 'not-a-snapshot', 'an event log').message,
    /bad magic bytes at byte 3/,
  );
  expectFailure(await readSnapshot(Buffer.from('hello, this is text\n'), null), 'not-a-snapshot', 'text');
  const p = new Prng(SEED, 6);
  const noise = randomBytes(p, 5000);
  noise[0] = 0; // never the magic's first byte
  expectFailure(await readSnapshot(noise, null), 'not-a-snapshot', `noise (seed ${SEED})`);
  // Decided on the first byte, without waiting for the rest.
  const r = new SnapshotReader();
  const x = r.push(Uint8Array.of(0x7f));
  assert.ok(!x.ok && x.code === 'not-a-snapshot');
});

test("another format version is 'version', naming both versions", async () => {
  for (const v of [0, 2, 0x100, 0xffff]) {
    const bad = Buffer.from(SMALL.bytes);
    bad.writeUInt16LE(v, 8);
    const r = expectFailure(await readSnapshot(bad, null), 'version', `version ${v}`);
    assert.match(r.message, new RegExp(`version ${v} is not supported \\(this Lockstep reads version 1\\)`));
    assert.equal(r.offset, 8);
  }
});

test("an incremental snapshot against the wrong base, or none, is 'base-mismatch'", async () => {
  const p = new Prng(SEED + 7);
  const base = randomMemory(p, 2, 0.5);
  const memory = base.slice();
  flipByte(memory, 100, 1);
  const plan: Plan = {
    header: header(memory.byteLength, memorySha256(base)),
    machine: machine(memory.byteLength, new Uint8Array(0)),
    host: new Uint8Array(0),
    memory,
    which: [0],
  };
  const bytes = build(plan).bytes;
  expectSame(await readSnapshot(bytes, base), plan, memory, 'the right base');
  const other = base.slice();
  flipByte(other, base.byteLength - 1, 0x80);
  const r = expectFailure(await readSnapshot(bytes, other), 'base-mismatch', 'a base with one bit changed');
  assert.match(
    r.message,
    new RegExp(`base image with SHA-256 ${Buffer.from(memorySha256(base)).toString('hex')}`),
  );
  assert.match(
    r.message,
    new RegExp(`given base has SHA-256 ${Buffer.from(memorySha256(other)).toString('hex')}`),
  );
  assert.match(
    expectFailure(await readSnapshot(bytes, null), 'base-mismatch', 'no base').message,
    /no base was given/,
  );
  // A full snapshot ignores a base.
  const fullPlan: Plan = { ...plan, header: header(memory.byteLength), which: 'all' };
  expectSame(
    await readSnapshot(build(fullPlan).bytes, other),
    fullPlan,
    memory,
    'a full snapshot, a base given',
  );
});

test("a trailer hash that does not match the memory is 'corrupt', naming both hashes", async () => {
  const sha = new Uint8Array(32).fill(0xee);
  const bytes = build({ ...SMALL_PLAN, sha }).bytes;
  const r = expectFailure(await readSnapshot(bytes, null), 'corrupt', 'a wrong trailer hash');
  assert.match(r.message, /hashes to [0-9a-f]{64}, but the trailer at byte \d+ says (ee){32}/);
  // So is an increment whose listed blocks miss a change: the image it yields is not the one hashed.
  const base = SMALL_MEMORY;
  const memory = base.slice();
  memory[0] = 9;
  memory[5 * 4096] = 9;
  const missing: Plan = {
    ...SMALL_PLAN,
    header: header(memory.byteLength, memorySha256(base)),
    memory,
    which: [0],
  };
  expectFailure(await readSnapshot(build(missing).bytes, base), 'corrupt', 'an increment missing a block');
});

/** SMALL's preamble followed by the given frames: indexes into SMALL.frames, or raw frame bytes. */
function reassemble(parts: (number | Uint8Array)[]): Buffer {
  return Buffer.concat([
    SMALL.bytes.subarray(0, SNAPSHOT_PREAMBLE_BYTES),
    ...parts.map((x) =>
      typeof x === 'number' ? SMALL.bytes.subarray(SMALL.frames[x]!.start, SMALL.frames[x]!.end) : x,
    ),
  ]);
}

test("frames out of order, missing, repeated or after the trailer are 'corrupt'", async () => {
  // SMALL is HEADER(0) MACHINE(1) HOST(2) BLOCKS(3) TRAILER(4).
  assert.deepEqual(
    SMALL.frames.map((f) => f.kind),
    ['HEADER', 'MACHINE', 'HOST', 'BLOCKS', 'TRAILER'],
  );
  assert.ok((await readSnapshot(reassemble([0, 1, 2, 3, 4]), null)).ok);
  const cases: [string, (number | Uint8Array)[], RegExp][] = [
    ['machine first', [1, 0, 2, 3, 4], /a MACHINE frame at byte 12 where the HEADER was due/],
    ['host before machine', [0, 2, 1, 3, 4], /a HOST frame at byte \d+ where the MACHINE was due/],
    ['blocks before host', [0, 1, 3, 2, 4], /a BLOCKS frame at byte \d+ where the HOST was due/],
    ['no host', [0, 1, 3, 4], /where the HOST was due/],
    ['two headers', [0, 0, 1, 2, 3, 4], /a HEADER frame .* where the MACHINE was due/],
    ['a second host', [0, 1, 2, 2, 3, 4], /a HOST frame .* where BLOCKS or the TRAILER was due/],
    ['blocks after the trailer', [0, 1, 2, 4, 3], /counts 2 blocks but the snapshot holds 0/],
    ['two trailers', [0, 1, 2, 3, 4, 4], /data follows the trailer/],
    ['blocks repeated', [0, 1, 2, 3, 3, 4], /before block/],
    ['a trailer alone', [4], /a TRAILER frame at byte 12 where the HEADER was due/],
    ['a byte after the trailer', [0, 1, 2, 3, 4, Uint8Array.of(0)], /data follows the trailer at byte/],
  ];
  for (const [what, parts, message] of cases) {
    const r = expectFailure(await readSnapshot(reassemble(parts), null), 'corrupt', what);
    assert.match(r.message, message, what);
  }
  // Frames missing at the end are a truncation, not corruption.
  expectFailure(await readSnapshot(reassemble([0, 1, 2, 3]), null), 'truncated', 'no trailer');
});

test("well-checksummed frames that cannot be right are 'corrupt'", async () => {
  const h = SMALL_PLAN.header;
  const blocks = (runs: [number, number][], blockBytes = 4096): Uint8Array => {
    const parts: Buffer[] = [];
    for (const [first, count] of runs) {
      parts.push(Buffer.from([first, count]), Buffer.alloc(count * blockBytes, 1));
    }
    return encodeSnapshotFrame(SnapshotFrameKind.BLOCKS, Buffer.concat(parts));
  };
  const trailer = (n: number): Uint8Array =>
    encodeSnapshotFrame(
      SnapshotFrameKind.TRAILER,
      encodeTrailer({ blocks: n, memorySha256: new Uint8Array(32) }),
    );
  const headerBytes = encodeHeader(h);
  const machineBytes = encodeMachine(SMALL_PLAN.machine, h.memoryBytes);
  const cases: [string, (number | Uint8Array)[], RegExp][] = [
    ['an unknown kind', [0, 1, 2, encodeSnapshotFrame(9, Uint8Array.of(1)), 4], /unknown frame kind 9/],
    ['kind 0', [0, 1, encodeSnapshotFrame(0, Uint8Array.of(1)), 4], /unknown frame kind 0/],
    [
      'an empty BLOCKS frame',
      [0, 1, 2, encodeSnapshotFrame(SnapshotFrameKind.BLOCKS, new Uint8Array(0)), 4],
      /empty/,
    ],
    ['a run of no blocks', [0, 1, 2, blocks([[3, 0]]), 4], /empty run/],
    ['blocks past the memory', [0, 1, 2, blocks([[15, 2]]), 4], /outside the 16 blocks/],
    [
      'runs going backwards',
      [
        0,
        1,
        2,
        blocks([
          [5, 1],
          [2, 1],
        ]),
        4,
      ],
      /before block 6/,
    ],
    [
      'overlapping runs',
      [
        0,
        1,
        2,
        blocks([
          [5, 2],
          [6, 1],
        ]),
        4,
      ],
      /before block 7/,
    ],
    [
      'a run cut short',
      [0, 1, 2, encodeSnapshotFrame(SnapshotFrameKind.BLOCKS, Uint8Array.of(1, 1, 0, 0)), 4],
      /cut short/,
    ],
    ['a trailer counting other blocks', [0, 1, 2, 3, trailer(5)], /counts 5 blocks but the snapshot holds 2/],
    [
      'a header with a stray byte',
      [encodeSnapshotFrame(1, Buffer.concat([headerBytes, Uint8Array.of(0)]))],
      /trailing bytes/,
    ],
    [
      'a machine with a stray byte',
      [0, encodeSnapshotFrame(2, Buffer.concat([machineBytes, Uint8Array.of(0)]))],
      /trailing/,
    ],
    ['a header cut short', [encodeSnapshotFrame(1, headerBytes.subarray(0, 40))], /does not decode/],
  ];
  // Headers and machines the encoders refuse (they assert on host bugs), built by hand: the
  // decoder must refuse them too.
  const hdr = (patch: Partial<SnapshotHeader>): Uint8Array =>
    encodeSnapshotFrame(1, rawHeader({ ...h, ...patch }));
  cases.push(
    ['memory not whole pages', [hdr({ memoryBytes: WASM_PAGE_BYTES + 4096 })], /not whole pages/],
    ['memory over its limit', [hdr({ memoryBytes: 257 * WASM_PAGE_BYTES })], /within the limit of 256 pages/],
    ['a block size of 1000', [hdr({ blockBytes: 1000 })], /block size 1000 is not supported/],
    ['a base flag of 2', [hdr({ base: new Uint8Array(0) })], /base flag 2/],
    [
      'a region outside memory',
      [0, encodeSnapshotFrame(2, rawMachine(SMALL_PLAN.machine, 60000, 70000))],
      /region/,
    ],
    [
      'a stack larger than its region',
      [0, encodeSnapshotFrame(2, rawMachine(SMALL_PLAN.machine, 65000, 65010))],
      /fit/,
    ],
    [
      'an unknown global type',
      [0, encodeSnapshotFrame(2, Uint8Array.of(1, 0x7b, 0, 0, 0, 0))],
      /unknown type tag 0x7b/,
    ],
  );
  for (const [what, parts, message] of cases) {
    const r = expectFailure(await readSnapshot(reassemble(parts), null), 'corrupt', what);
    assert.match(r.message, message, what);
    assert.match(r.message, /at byte \d+/, what);
  }
});

/** A HEADER body with fields the encoder would refuse (it asserts on host bugs). */
function rawHeader(h: SnapshotHeader): Uint8Array {
  const parts: number[] = [...h.moduleSha256];
  const u32 = (v: number): void => {
    parts.push(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  };
  const varint = (v: number): void => {
    while (v >= 0x80) {
      parts.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    parts.push(v);
  };
  const str = (s: string): void => {
    const b = new TextEncoder().encode(s);
    varint(b.byteLength);
    parts.push(...b);
  };
  u32(h.memoryMaxPages);
  u32(h.callDepthMax);
  for (const list of [h.args, h.env]) {
    varint(list.length);
    list.forEach(str);
  }
  varint(h.listenerCount);
  varint(h.preopenGuestPaths.length);
  h.preopenGuestPaths.forEach(str);
  varint(h.events);
  varint(h.memoryBytes);
  varint(h.blockBytes);
  if (h.base === null) parts.push(0);
  else if (h.base.byteLength === 0)
    parts.push(2); // an impossible flag
  else parts.push(1, ...h.base);
  varint(h.createdAtMs);
  return Uint8Array.from(parts);
}

/** A MACHINE body like `m` but with the region given (the encoder would refuse a bad one). */
function rawMachine(m: SnapshotMachine, regionStart: number, regionEnd: number): Uint8Array {
  const ok = encodeMachine({ ...m, regionStart: 0, regionEnd: WASM_PAGE_BYTES }, WASM_PAGE_BYTES);
  // The body ends with regionStart varint, regionEnd varint, 4 × 8 clock bytes; region 0..65536 is
  // 1 + 3 bytes, replaced here.
  const tail = ok.subarray(ok.byteLength - 32);
  const head = ok.subarray(0, ok.byteLength - 32 - 4);
  const v = (x: number): number[] => {
    const out: number[] = [];
    while (x >= 0x80) {
      out.push((x % 0x80) | 0x80);
      x = Math.floor(x / 0x80);
    }
    out.push(x);
    return out;
  };
  return Uint8Array.from([...head, ...v(regionStart), ...v(regionEnd), ...tail]);
}

test('BLOCKS frames carry about 1 MiB each, in several runs, and split long runs', () => {
  const p = new Prng(SEED + 8);
  const memory = randomMemory(p, 64, 0); // 4 MiB, every block non-zero: one run of 1024 blocks
  const plan: Plan = {
    header: { ...header(memory.byteLength), memoryMaxPages: 64 },
    machine: machine(memory.byteLength, new Uint8Array(0)),
    host: new Uint8Array(0),
    memory,
    which: 'all',
  };
  const built = build(plan);
  const blockFrames = built.frames.filter((f) => f.kind === 'BLOCKS');
  assert.equal(blockFrames.length, (64 * WASM_PAGE_BYTES) / BLOCKS_FRAME_BODY_BYTES_TARGET);
  for (const f of blockFrames) {
    assert.ok(
      f.end - f.start <= BLOCKS_FRAME_BODY_BYTES_TARGET + 64,
      `a BLOCKS frame of ${f.end - f.start} bytes`,
    );
  }
  // Every other block: runs of one, still 256 blocks per frame.
  const odd = Array.from({ length: 512 }, (_, i) => 2 * i + 1);
  const built2 = build({ ...plan, header: { ...plan.header, base: new Uint8Array(32) }, which: odd });
  const fs = frames(built2.bytes).filter((f) => f.type === 'blocks');
  assert.equal(fs.length, 2);
  for (const f of fs) {
    assert.ok(f.type === 'blocks');
    assert.equal(f.runs.length, 256);
    assert.ok(f.runs.every((r) => r.count === 1 && r.firstBlock % 2 === 1));
  }
});

test('blocks() may be called repeatedly with increasing blocks, in any order within a call', async () => {
  const p = new Prng(SEED + 9);
  const base = randomMemory(p, 2, 0.5);
  const memory = base.slice();
  const changed = [0, 1, 2, 3, 4, 5, 31];
  for (const b of changed) fillRandom(p, memory.subarray(b * 4096, (b + 1) * 4096));
  const calls: Buffer[] = [];
  const w = new SnapshotWriter((pieces) => calls.push(Buffer.concat(pieces)));
  w.header(header(memory.byteLength, memorySha256(base)));
  w.machine(machine(memory.byteLength, new Uint8Array(0)));
  w.host(new Uint8Array(0));
  w.blocks(memory, [3, 1, 2, 2, 0]); // any order, duplicates ignored
  w.blocks(memory, []);
  w.blocks(memory, new Set([4, 31, 5]));
  w.trailer(memorySha256(memory));
  assert.equal(w.blockCount, changed.length);
  const r = await readSnapshot(Buffer.concat(calls), base);
  assert.ok(r.ok, describe(r));
  assert.ok(Buffer.from(r.memory).equals(Buffer.from(memory)), `seed ${SEED + 9}`);
});

test('the writer asserts when used out of order or with impossible values (host bugs)', () => {
  const sink = (): void => {};
  const m = SMALL_PLAN.machine;
  const h = SMALL_PLAN.header;
  const mem = SMALL_MEMORY;
  const started = (): SnapshotWriter => {
    const w = new SnapshotWriter(sink);
    w.header(h);
    w.machine(m);
    w.host(new Uint8Array(0));
    return w;
  };
  assert.throws(() => new SnapshotWriter(sink).machine(m), /machine\(\) called when header was due/);
  assert.throws(() => {
    const w = new SnapshotWriter(sink);
    w.header(h);
    w.blocks(mem, 'all');
  }, /blocks\(\) called when machine was due/);
  assert.throws(() => {
    const w = started();
    w.trailer(new Uint8Array(32));
    w.trailer(new Uint8Array(32));
  }, /trailer\(\) called when nothing was due/);
  assert.throws(() => started().blocks(mem.subarray(4096), 'all'), /memory is 65536 bytes/);
  assert.throws(() => started().blocks(mem, [16]), /block 16 is in memory/);
  assert.throws(() => started().blocks(mem, [1.5]), /block 1.5 is in memory/);
  assert.throws(() => {
    const w = started();
    w.blocks(mem, [5]);
    w.blocks(mem, [4]);
  }, /increasing block order/);
  assert.throws(() => {
    const w = new SnapshotWriter(sink);
    w.header({ ...h, base: new Uint8Array(32) });
    w.machine(m);
    w.host(new Uint8Array(0));
    w.blocks(mem, 'all');
  }, /'all' is for full snapshots/);
  assert.throws(() => started().trailer(new Uint8Array(31)), /memorySha256 is 32 bytes/);
  assert.throws(() => new SnapshotWriter(sink).header({ ...h, memoryBytes: 1000 }), /memoryBytes 1000/);
  assert.throws(() => new SnapshotWriter(sink).header({ ...h, blockBytes: 1024 }), /blockBytes 1024/);
  assert.throws(
    () => new SnapshotWriter(sink).header({ ...h, moduleSha256: new Uint8Array(0) }),
    /moduleSha256/,
  );
  const bad: [string, SnapshotGlobal][] = [
    ['an i32 bigint', { type: 'i32', value: 1n }],
    ['an i32 too large', { type: 'i32', value: 2 ** 31 }],
    ['an i32 fraction', { type: 'i32', value: 0.5 }],
    ['an i64 number', { type: 'i64', value: 1 }],
    ['an i64 too large', { type: 'i64', value: 2n ** 63n }],
    ['an f32 that is not one', { type: 'f32', value: 0.1 }],
    ['an f64 bigint', { type: 'f64', value: 1n }],
    ['an unknown type', { type: 'v128' as 'i32', value: 0 }],
  ];
  for (const [what, g] of bad) {
    assert.throws(() => encodeMachine({ ...m, globals: [g] }, h.memoryBytes), /global 0/, what);
  }
  assert.throws(() => encodeMachine({ ...m, lastClockNs: [0n] }, h.memoryBytes), /lastClockNs/);
  assert.throws(
    () => encodeMachine({ ...m, regionStart: 0, regionEnd: WASM_PAGE_BYTES + 8 }, h.memoryBytes),
    /asyncify region/,
  );
});
