// Tests of the snapshot format (format.ts): what SnapshotWriter writes, SnapshotReader and
// readSnapshot read back, and how damage is classified:
// - full and incremental round trips (zero blocks left out, grown memory, chains of increments),
//   globals of every type with their edge values, empty and large asyncify stacks;
// - a randomized round trip over sizes, dirty sets, globals and chunkings;
// - a cut at every byte offset is 'truncated'; every single-bit flip after the preamble is
//   'corrupt' (the small snapshot they use carries a disk, so DISK frames included); the
//   preamble's magic, version and flags; a wrong base; a wrong trailer hash; frames out of
//   order; well-checksummed frames that do not decode;
// - the verdict does not depend on how the bytes are chunked (1-byte chunks included);
// - the writer splits blocks into ~1 MiB frames and asserts when used out of order;
// - the disk: a tree of nested directories, empty files, symlinks and a file spanning DISK
//   frames round-trips into a folder; paths that could leave it are refused before anything is
//   written; ordering rules; truncation and damage in a multi-frame disk; files replaced while
//   the writer reads them (by hand, and by FileSystem.freeze's copy-on-write); sinks that hold
//   the writer back.
//
// Randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  closeSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Prng, testSeed } from '../core/prng.js';
import { preamble as logPreamble } from '../ft/log/format.js';
import { RIGHTS_FILE } from '../wasi/abi.js';
import { FileSystem, type FileHandle } from '../vm/fs/fs.js';
import {
  BLOCKS_FRAME_BODY_BYTES_TARGET,
  DISK_FRAME_BODY_BYTES_MAX,
  DISK_NAME_BYTES_MAX,
  DISK_PATH_BYTES_MAX,
  DiskEntryType,
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
  type DiskEntry,
  type DiskStats,
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
    args: ['app', '--port', '8080', 'ünïcode ✓', '\uFEFFstarts with a byte order mark'],
    env: ['HOME=/home', 'EMPTY='],
    listenerCount: 2,
    preopenGuestPaths: ['/data', '/tmp'],
    diskPreopens: 0,
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
  /** Folders written as the disk, one per preopen the header's diskPreopens covers. */
  disk?: string[];
}

/** Writes a snapshot, copying what the sink gets (the pieces may be views of memory). */
async function build(plan: Plan, stats: DiskStats[] = []): Promise<Built> {
  const calls: Buffer[] = [];
  const w = new SnapshotWriter((pieces) => calls.push(Buffer.concat(pieces.map((x) => Buffer.from(x)))));
  w.header(plan.header);
  w.machine(plan.machine);
  w.host(plan.host);
  for (const [i, root] of (plan.disk ?? []).entries()) stats.push(await w.disk(i, root));
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
  assert.equal(r.disk.preopens, plan.header.diskPreopens, what);
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

// ---------------------------------------------------------------- folder trees

/** A tree of files as the tests build and compare them. */
type Node = { file: string | Uint8Array } | { dir: Tree } | { link: string };
type Tree = Record<string, Node>;

const SCRATCH = mkdtempSync(join(tmpdir(), 'lockstep-snapshot-'));
// Removed at exit, not in a file-level after(): that hook can run while the module's top-level
// awaits (the snapshots built below) are still reading the folders.
process.on('exit', () => rmSync(SCRATCH, { recursive: true, force: true }));
let scratchCount = 0;

/** A fresh folder under the test's scratch folder (not created). */
function scratchPath(what: string): string {
  return join(SCRATCH, `${what}-${scratchCount++}`);
}

function writeTree(dir: string, tree: Tree): string {
  mkdirSync(dir, { recursive: true });
  for (const [name, node] of Object.entries(tree)) {
    const p = join(dir, name);
    if ('file' in node) writeFileSync(p, node.file);
    else if ('dir' in node) writeTree(p, node.dir);
    else symlinkSync(node.link, p);
  }
  return dir;
}

/** The tree under `dir` as read back, with every file's and directory's permission bits checked. */
function readTree(dir: string, modes?: { file: number; dir: number }): Tree {
  const out: Tree = {};
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) out[name] = { link: readlinkSync(p) };
    else if (st.isDirectory()) {
      if (modes) assert.equal(st.mode & 0o777, modes.dir, `mode of ${p}`);
      out[name] = { dir: readTree(p, modes) };
    } else {
      if (modes) assert.equal(st.mode & 0o777, modes.file, `mode of ${p}`);
      out[name] = { file: new Uint8Array(readFileSync(p)) };
    }
  }
  return out;
}

/** `tree` with string contents as bytes, for comparing with readTree. */
function asBytes(tree: Tree): Tree {
  const out: Tree = {};
  for (const [name, node] of Object.entries(tree)) {
    if ('file' in node)
      out[name] = { file: typeof node.file === 'string' ? new TextEncoder().encode(node.file) : node.file };
    else if ('dir' in node) out[name] = { dir: asBytes(node.dir) };
    else out[name] = node;
  }
  return out;
}

function assertTree(dir: string, tree: Tree, what: string): void {
  const got = readTree(dir, { file: 0o600, dir: 0o700 });
  assert.deepEqual(got, asBytes(tree), what);
}

// A small snapshot for the exhaustive damage tests: one page, two non-zero blocks, and a disk of
// two preopens (the second empty).
const SMALL_TREE: Tree = {
  d: { dir: { f: { file: 'hello' } } },
  e: { file: '' },
  l: { link: 'd/f' },
};
const SMALL_DISK = [writeTree(scratchPath('small'), SMALL_TREE), writeTree(scratchPath('small-empty'), {})];
const SMALL_MEMORY = (() => {
  const m = new Uint8Array(WASM_PAGE_BYTES);
  fillRandom(new Prng(1), m.subarray(4096, 8192));
  m.fill(0xab, 12 * 4096, 12 * 4096 + 100);
  return m;
})();
const SMALL_PLAN: Plan = {
  header: { ...header(WASM_PAGE_BYTES), diskPreopens: 2 },
  machine: machine(WASM_PAGE_BYTES, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8, 9), EDGE_GLOBALS.slice(0, 6)),
  host: new TextEncoder().encode('resource table'),
  memory: SMALL_MEMORY,
  which: 'all',
  disk: SMALL_DISK,
};
const SMALL = await build(SMALL_PLAN);

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
  const built = await build(plan);
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
    const built = await build(plan);
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
  expectSame(await readSnapshot((await build(plan)).bytes, null), plan, SMALL_MEMORY, 'an empty host table');
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
  const first = await readSnapshot((await build(full)).bytes, null);
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
    const r = await readSnapshot((await build(plan)).bytes, image);
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
    const bytes = (await build(plan)).bytes;
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
  const bytes = (await build(plan)).bytes;
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
  const blocks = SMALL.frames[4]!;
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
  const bytes = (await build(plan)).bytes;
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
    await readSnapshot((await build(fullPlan)).bytes, other),
    fullPlan,
    memory,
    'a full snapshot, a base given',
  );
});

test("a trailer hash that does not match the memory is 'corrupt', naming both hashes", async () => {
  const sha = new Uint8Array(32).fill(0xee);
  const bytes = (await build({ ...SMALL_PLAN, sha })).bytes;
  const r = expectFailure(await readSnapshot(bytes, null), 'corrupt', 'a wrong trailer hash');
  assert.match(r.message, /hashes to [0-9a-f]{64}, but the trailer at byte \d+ says (ee){32}/);
  // So is an increment whose listed blocks miss a change: the image it yields is not the one hashed.
  const base = SMALL_MEMORY;
  const memory = base.slice();
  memory[0] = 9;
  memory[5 * 4096] = 9;
  const missing: Plan = {
    ...SMALL_PLAN,
    header: { ...header(memory.byteLength, memorySha256(base)), diskPreopens: 2 },
    memory,
    which: [0],
  };
  expectFailure(
    await readSnapshot((await build(missing)).bytes, base),
    'corrupt',
    'an increment missing a block',
  );
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
  // SMALL is HEADER(0) MACHINE(1) HOST(2) DISK(3) BLOCKS(4) TRAILER(5).
  assert.deepEqual(
    SMALL.frames.map((f) => f.kind),
    ['HEADER', 'MACHINE', 'HOST', 'DISK', 'BLOCKS', 'TRAILER'],
  );
  assert.ok((await readSnapshot(reassemble([0, 1, 2, 3, 4, 5]), null)).ok);
  const cases: [string, (number | Uint8Array)[], RegExp][] = [
    ['machine first', [1, 0, 2, 3, 4, 5], /a MACHINE frame at byte 12 where the HEADER was due/],
    ['host before machine', [0, 2, 1, 3, 4, 5], /a HOST frame at byte \d+ where the MACHINE was due/],
    ['disk before host', [0, 1, 3, 2, 4, 5], /a DISK frame at byte \d+ where the HOST was due/],
    ['blocks before host', [0, 1, 4, 2, 3, 5], /a BLOCKS frame at byte \d+ where the HOST was due/],
    ['no host', [0, 1, 3, 4, 5], /where the HOST was due/],
    ['two headers', [0, 0, 1, 2, 3, 4, 5], /a HEADER frame .* where the MACHINE was due/],
    ['a second host', [0, 1, 2, 2, 3, 4, 5], /a HOST frame .* where DISK, BLOCKS or the TRAILER was due/],
    ['disk after blocks', [0, 1, 2, 4, 3, 5], /a DISK frame .* where BLOCKS or the TRAILER was due/],
    ['disk repeated', [0, 1, 2, 3, 3, 4, 5], /the entry "d" is out of order: "l" came before it/],
    ['no disk', [0, 1, 2, 4, 5], /counts 4 disk entries and 5 disk bytes but the snapshot holds 0 and 0/],
    ['blocks after the trailer', [0, 1, 2, 3, 5, 4], /counts 2 blocks but the snapshot holds 0/],
    ['two trailers', [0, 1, 2, 3, 4, 5, 5], /data follows the trailer/],
    ['blocks repeated', [0, 1, 2, 3, 4, 4, 5], /before block/],
    ['a trailer alone', [5], /a TRAILER frame at byte 12 where the HEADER was due/],
    ['a byte after the trailer', [0, 1, 2, 3, 4, 5, Uint8Array.of(0)], /data follows the trailer at byte/],
  ];
  for (const [what, parts, message] of cases) {
    const r = expectFailure(await readSnapshot(reassemble(parts), null), 'corrupt', what);
    assert.match(r.message, message, what);
  }
  // Frames missing at the end are a truncation, not corruption.
  expectFailure(await readSnapshot(reassemble([0, 1, 2, 3, 4]), null), 'truncated', 'no trailer');
  expectFailure(await readSnapshot(reassemble([0, 1, 2, 3]), null), 'truncated', 'the disk, then nothing');
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
      encodeTrailer({
        blocks: n,
        memorySha256: new Uint8Array(32),
        diskEntries: 4,
        diskBytes: 5,
        diskSha256: new Uint8Array(32),
      }),
    );
  const headerBytes = encodeHeader(h);
  const machineBytes = encodeMachine(SMALL_PLAN.machine, h.memoryBytes);
  const cases: [string, (number | Uint8Array)[], RegExp][] = [
    ['an unknown kind', [0, 1, 2, 3, encodeSnapshotFrame(9, Uint8Array.of(1)), 5], /unknown frame kind 9/],
    ['kind 0', [0, 1, encodeSnapshotFrame(0, Uint8Array.of(1)), 5], /unknown frame kind 0/],
    [
      'an empty BLOCKS frame',
      [0, 1, 2, 3, encodeSnapshotFrame(SnapshotFrameKind.BLOCKS, new Uint8Array(0)), 5],
      /empty/,
    ],
    ['a run of no blocks', [0, 1, 2, 3, blocks([[3, 0]]), 5], /empty run/],
    ['blocks past the memory', [0, 1, 2, 3, blocks([[15, 2]]), 5], /outside the 16 blocks/],
    [
      'runs going backwards',
      [
        0,
        1,
        2,
        3,
        blocks([
          [5, 1],
          [2, 1],
        ]),
        5,
      ],
      /before block 6/,
    ],
    [
      'overlapping runs',
      [
        0,
        1,
        2,
        3,
        blocks([
          [5, 2],
          [6, 1],
        ]),
        5,
      ],
      /before block 7/,
    ],
    [
      'a run cut short',
      [0, 1, 2, 3, encodeSnapshotFrame(SnapshotFrameKind.BLOCKS, Uint8Array.of(1, 1, 0, 0)), 5],
      /cut short/,
    ],
    [
      'a trailer counting other blocks',
      [0, 1, 2, 3, 4, trailer(5)],
      /counts 5 blocks but the snapshot holds 2/,
    ],
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
    [
      'a disk over more preopens than the VM has',
      [hdr({ diskPreopens: 3 })],
      /the disk covers 3 preopens but the VM has 2/,
    ],
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
  varint(h.diskPreopens);
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

test('BLOCKS frames carry about 1 MiB each, in several runs, and split long runs', async () => {
  const p = new Prng(SEED + 8);
  const memory = randomMemory(p, 64, 0); // 4 MiB, every block non-zero: one run of 1024 blocks
  const plan: Plan = {
    header: { ...header(memory.byteLength), memoryMaxPages: 64 },
    machine: machine(memory.byteLength, new Uint8Array(0)),
    host: new Uint8Array(0),
    memory,
    which: 'all',
  };
  const built = await build(plan);
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
  const built2 = await build({ ...plan, header: { ...plan.header, base: new Uint8Array(32) }, which: odd });
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
  const h = { ...SMALL_PLAN.header, diskPreopens: 0 };
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

// ---------------------------------------------------------------- the disk

/** Unsigned LEB128, for DISK bodies built by hand. */
function leb(v: number): number[] {
  const out: number[] = [];
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

function lenPrefixed(s: string | Uint8Array): number[] {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  return [...leb(b.byteLength), ...b];
}

/** DISK entries by hand, without the writer's checks (the reader must refuse the bad ones). */
const dirEntry = (path: string | Uint8Array, preopen = 0): Buffer =>
  Buffer.from([...leb(preopen), ...lenPrefixed(path), DiskEntryType.DIRECTORY]);
const fileEntry = (
  path: string | Uint8Array,
  content: string | Uint8Array,
  offset = 0,
  preopen = 0,
): Buffer =>
  Buffer.from([
    ...leb(preopen),
    ...lenPrefixed(path),
    DiskEntryType.FILE,
    ...leb(offset),
    ...lenPrefixed(content),
  ]);
const linkEntry = (path: string | Uint8Array, target: string | Uint8Array, preopen = 0): Buffer =>
  Buffer.from([...leb(preopen), ...lenPrefixed(path), DiskEntryType.SYMLINK, ...lenPrefixed(target)]);

/** A snapshot with two covered preopens and no entries: the frames crafted disks go between. */
const EMPTY_DISK = await build({
  ...SMALL_PLAN,
  disk: [writeTree(scratchPath('none'), {}), writeTree(scratchPath('none'), {})],
});

/**
 * EMPTY_DISK's HEADER, MACHINE and HOST, DISK frames of the given bodies, its BLOCKS, and a
 * trailer with the given disk counts and the bodies' hash.
 */
function craft(bodies: Uint8Array[], counts = { entries: 0, bytes: 0 }): Buffer {
  const f = EMPTY_DISK.frames;
  const sha = createHash('sha256');
  for (const b of bodies) sha.update(b);
  return Buffer.concat([
    EMPTY_DISK.bytes.subarray(0, f[2]!.end),
    ...bodies.map((b) => encodeSnapshotFrame(SnapshotFrameKind.DISK, b)),
    EMPTY_DISK.bytes.subarray(f[3]!.start, f[3]!.end),
    encodeSnapshotFrame(
      SnapshotFrameKind.TRAILER,
      encodeTrailer({
        blocks: 2,
        memorySha256: memorySha256(SMALL_MEMORY),
        diskEntries: counts.entries,
        diskBytes: counts.bytes,
        diskSha256: new Uint8Array(sha.digest()),
      }),
    ),
  ]);
}

/** 3.5 MiB of random bytes: a file that spans four DISK frames. */
const BIG_FILE = (() => {
  const b = new Uint8Array(3.5 * 1024 * 1024);
  fillRandom(new Prng(SEED, 10), b);
  return b;
})();

const TREE0: Tree = {
  B: { file: 'upper case sorts first' },
  a: {
    dir: {
      b: { dir: { 'deep.txt': { file: 'deep' }, empty: { file: '' } } },
      'c.bin': { file: BIG_FILE },
      'empty-dir': { dir: {} },
    },
  },
  'abs-link': { link: '/etc/passwd' },
  'up-link': { link: '../../outside' },
  dangling: { link: 'no/such/file' },
  'ünï ✓.txt': { file: 'unicode' },
  '\uFEFFbom': { file: 'a name starting with a byte order mark' },
  z: { dir: { last: { file: 'last' } } },
};
const TREE1: Tree = { 'only.txt': { file: 'x' } };
/** Depth first, names in byte order: what the reader reports. */
const TREE0_ORDER = [
  'B',
  'a',
  'a/b',
  'a/b/deep.txt',
  'a/b/empty',
  'a/c.bin',
  'a/empty-dir',
  'abs-link',
  'dangling',
  'up-link',
  'z',
  'z/last',
  'ünï ✓.txt',
  '\uFEFFbom',
];

const BIG_PLAN: Plan = {
  header: { ...header(WASM_PAGE_BYTES), preopenGuestPaths: ['/data', '/tmp', '/cache'], diskPreopens: 2 },
  machine: machine(WASM_PAGE_BYTES, new Uint8Array(0)),
  host: new Uint8Array(0),
  memory: SMALL_MEMORY,
  which: 'all',
  disk: [writeTree(scratchPath('tree0'), TREE0), writeTree(scratchPath('tree1'), TREE1)],
};
const BIG_STATS: DiskStats[] = [];
const BIG = await build(BIG_PLAN, BIG_STATS);

/** Bytes of file content in `tree`. */
function treeBytes(tree: Tree): number {
  let n = 0;
  for (const node of Object.values(tree)) {
    if ('file' in node) n += Buffer.byteLength(node.file);
    else if ('dir' in node) n += treeBytes(node.dir);
  }
  return n;
}

test('a disk round-trips into a folder: nested directories, empty files, symlinks, a file over frames', async () => {
  assert.deepEqual(BIG_STATS, [
    { entries: TREE0_ORDER.length, bytes: treeBytes(TREE0), skipped: 0, restarts: 0 },
    { entries: 1, bytes: 1, skipped: 0, restarts: 0 },
  ]);
  const p = new Prng(SEED, 11);
  for (const chunking of ['whole', 'chunks'] as const) {
    const what = `${chunking} (seed ${SEED})`;
    const out = scratchPath('out');
    const source = chunking === 'whole' ? BIG.bytes : chunked(BIG.bytes, () => p.int(1, 300_000));
    const r = await readSnapshot(source, null, { diskInto: out });
    expectSame(r, BIG_PLAN, SMALL_MEMORY, what);
    assert.ok(r.ok);
    assertTree(join(out, '0'), TREE0, what);
    assertTree(join(out, '1'), TREE1, what);
    assert.deepEqual(readdirSync(out).sort(), ['0', '1'], `${what}: the third preopen is not covered`);
    assert.deepEqual(
      r.disk.entries.filter((e) => e.preopen === 0).map((e) => e.path),
      TREE0_ORDER,
      what,
    );
    assert.deepEqual(
      r.disk.entries.find((e) => e.path === 'a/c.bin'),
      {
        preopen: 0,
        path: 'a/c.bin',
        type: 'file',
        bytes: BIG_FILE.byteLength,
      },
    );
    assert.deepEqual(
      r.disk.entries.find((e) => e.path === 'up-link'),
      {
        preopen: 0,
        path: 'up-link',
        type: 'symlink',
        target: '../../outside',
      },
    );
    assert.deepEqual(r.disk.entries.at(-1), { preopen: 1, path: 'only.txt', type: 'file', bytes: 1 });
    assert.equal(r.disk.bytes, treeBytes(TREE0) + treeBytes(TREE1));
  }
  // Without a folder the disk is checked and dropped.
  const r = await readSnapshot(BIG.bytes, null);
  assert.ok(r.ok, describe(r));
  assert.equal(r.disk.entries.length, TREE0_ORDER.length + 1);
  // The same tree gives the same bytes.
  assert.ok((await build(BIG_PLAN)).bytes.equals(BIG.bytes), 'the writer is deterministic');
});

test('DISK frames stay within 1 MiB and a big file goes in contiguous chunks across them', () => {
  const diskFrames = BIG.frames.filter((f) => f.kind === 'DISK');
  assert.ok(diskFrames.length >= 4, `${diskFrames.length} DISK frames`);
  for (const f of diskFrames) {
    assert.ok(f.end - f.start <= DISK_FRAME_BODY_BYTES_MAX + 8, `a DISK frame of ${f.end - f.start} bytes`);
  }
  assert.deepEqual(
    BIG.frames.map((f) => f.kind).filter((k, i, all) => k !== all[i - 1]),
    ['HEADER', 'MACHINE', 'HOST', 'DISK', 'BLOCKS', 'TRAILER'],
  );
  const chunks = frames(BIG.bytes)
    .flatMap((f) => (f.type === 'disk' ? f.entries : []))
    .filter((e): e is DiskEntry & { type: 'file' } => e.type === 'file' && e.path === 'a/c.bin');
  assert.ok(chunks.length >= 4, `${chunks.length} chunks`);
  let at = 0;
  for (const c of chunks) {
    assert.equal(c.offset, at);
    assert.ok(Buffer.from(c.bytes).equals(Buffer.from(BIG_FILE.subarray(at, at + c.bytes.byteLength))));
    at += c.bytes.byteLength;
  }
  assert.equal(at, BIG_FILE.byteLength);
});

test('sockets are skipped, and an empty preopen still gets its folder', async (t) => {
  const root = writeTree(scratchPath('sock'), { 'a.txt': { file: 'a' } });
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(join(root, 'sock'), resolve));
  t.after(() => server.close());
  const stats: DiskStats[] = [];
  const plan: Plan = { ...SMALL_PLAN, disk: [root, writeTree(scratchPath('empty'), {})] };
  const built = await build(plan, stats);
  assert.equal(stats[0]!.skipped, 1);
  const out = scratchPath('out');
  const r = await readSnapshot(built.bytes, null, { diskInto: out });
  assert.ok(r.ok, describe(r));
  assert.deepEqual(
    r.disk.entries.map((e) => e.path),
    ['a.txt'],
  );
  assertTree(join(out, '0'), { 'a.txt': { file: 'a' } }, 'the socket left out');
  assertTree(join(out, '1'), {}, 'an empty preopen');
});

test("paths that could leave the folder are 'corrupt', and nothing is written outside it", async () => {
  const long = 'n'.repeat(DISK_NAME_BYTES_MAX + 1);
  const deep = Array.from({ length: 20 }, () => 'd'.repeat(250)).join('/');
  assert.ok(Buffer.byteLength(deep) > DISK_PATH_BYTES_MAX);
  const cases: [string, Buffer[], RegExp][] = [
    ['a parent name', [fileEntry('../x', 'evil')], /the path "..\/x" has a '..' name/],
    ['two parents', [fileEntry('../../x', 'evil')], /has a '..' name/],
    ['an absolute path', [fileEntry('/tmp/x', 'evil')], /the path "\/tmp\/x" is absolute/],
    ['a parent inside', [dirEntry('a'), fileEntry('a/../../x', 'evil')], /has a '..' name/],
    ['a dot', [fileEntry('./x', 'evil')], /has a '.' name/],
    ['a trailing slash', [dirEntry('x/')], /has an empty name/],
    ['a double slash', [dirEntry('a'), fileEntry('a//x', 'evil')], /has an empty name/],
    ['an empty path', [fileEntry('', 'evil')], /the path "" is empty/],
    ['a NUL', [fileEntry('x\0y', 'evil')], /contains NUL/],
    ['a name too long', [fileEntry(long, 'evil')], /has a name longer than 255 bytes/],
    ['a path too long', [fileEntry(deep, 'evil')], /a path that cannot be read: length \d+ exceeds 4096/],
    ['a path not UTF-8', [fileEntry(Uint8Array.of(0x61, 0xff), 'evil')], /invalid UTF-8/],
    [
      'through a symlink',
      [linkEntry('l', '..'), fileEntry('l/x', 'evil')],
      /the entry "l\/x" does not follow its parent directory "l"/,
    ],
    [
      'through a symlink to an absolute path',
      [linkEntry('l', SCRATCH), dirEntry('l/x')],
      /does not follow its parent directory "l"/,
    ],
    [
      'under a file',
      [fileEntry('f', 'x'), fileEntry('f/x', 'evil')],
      /does not follow its parent directory "f"/,
    ],
    ['a parent never listed', [fileEntry('a/x', 'evil')], /does not follow its parent directory "a"/],
    ['a symlink with an empty target', [linkEntry('l', '')], /the target of the symlink "l" is empty/],
    ['a symlink target with NUL', [linkEntry('l', 'a\0b')], /target of the symlink "l" contains NUL/],
  ];
  const before = readdirSync(SCRATCH).sort();
  const out = scratchPath('escape');
  /**
   * `bytes` in 4-byte chunks (no two frames, 10 bytes at least, end in one), noting what
   * preopen 0's folder holds before each.
   */
  async function* watched(bytes: Uint8Array, seen: string[][]): AsyncIterable<Uint8Array> {
    for await (const c of chunked(bytes, () => 4)) {
      if (existsSync(join(out, '0'))) seen.push(readdirSync(join(out, '0')));
      yield c;
    }
  }
  for (const [what, entries, message] of cases) {
    for (const split of [false, true]) {
      // In one frame and one chunk, or each entry in its own frame, read in small chunks so that
      // the good entries are materialized before the bad one comes (and the bad one never is).
      const bytes = craft(split ? entries : [Buffer.concat(entries)]);
      const seen: string[][] = [];
      const r = expectFailure(
        await readSnapshot(split ? watched(bytes, seen) : bytes, null, { diskInto: out }),
        'corrupt',
        `${what}${split ? ', split' : ''}`,
      );
      if (split && entries.length > 1) {
        assert.ok(
          seen.some((names) => names.length > 0),
          `${what}: the good entries were materialized first`,
        );
      }
      assert.match(r.message, message, what);
      assert.match(r.message, /the DISK frame at byte \d+/, what);
      // What was made is gone, and nothing reached the folder around the preopens or beyond.
      if (split) assert.ok(existsSync(out), what);
      assert.deepEqual(existsSync(out) ? readdirSync(out) : [], [], what);
      assert.deepEqual(
        readdirSync(SCRATCH)
          .filter((n) => !n.startsWith('escape-'))
          .sort(),
        before,
        what,
      );
    }
  }
  // The same entries, safe ones, are written where they belong.
  const ok = craft([Buffer.concat([linkEntry('l', '..'), dirEntry('m'), fileEntry('m/x', 'fine')])], {
    entries: 3,
    bytes: 4,
  });
  const r = await readSnapshot(ok, null, { diskInto: out });
  assert.ok(r.ok, describe(r));
  assertTree(join(out, '0'), { l: { link: '..' }, m: { dir: { x: { file: 'fine' } } } }, 'safe entries');
});

test("DISK entries out of order, repeated, or chunks that do not continue their file are 'corrupt'", async () => {
  const cases: [string, Buffer[], RegExp][] = [
    [
      'names out of order',
      [fileEntry('b', ''), fileEntry('a', '')],
      /the entry "a" is out of order: "b" came before it/,
    ],
    ['a name repeated', [fileEntry('a', ''), dirEntry('a')], /the entry "a" is out of order/],
    [
      'a child before its parent',
      [fileEntry('a/x', ''), dirEntry('a')],
      /does not follow its parent directory "a"/,
    ],
    [
      'a child after its parent was left',
      [dirEntry('a'), fileEntry('b', ''), fileEntry('a/x', '')],
      /the entry "a\/x" does not follow its parent directory "a"/,
    ],
    [
      'byte order, not code unit order',
      [fileEntry('\uFF5E', ''), fileEntry('\u{1F600}', ''), fileEntry('a', '')],
      /"a" is out of order/,
    ],
    [
      'preopens going back',
      [fileEntry('a', '', 0, 1), fileEntry('b', '', 0, 0)],
      /the entry "b" of preopen 0 follows entries of preopen 1/,
    ],
    ['a preopen not covered', [fileEntry('a', '', 0, 2)], /names preopen 2, but the disk covers 2 preopens/],
    [
      'a first chunk past 0',
      [fileEntry('a', 'xyz', 5)],
      /the chunk of "a" at offset 5 does not continue its file/,
    ],
    [
      'a gap',
      [fileEntry('a', 'abc'), fileEntry('a', 'def', 4)],
      /at offset 4 does not continue its file \(which ends at 3\)/,
    ],
    ['an overlap', [fileEntry('a', 'abc'), fileEntry('a', 'def', 2)], /which ends at 3/],
    [
      'a chunk of another file',
      [fileEntry('a', 'abc'), fileEntry('b', 'def', 3)],
      /the chunk of "b" at offset 3 does not continue/,
    ],
    [
      'a chunk after a directory',
      [fileEntry('a', 'abc'), dirEntry('b'), fileEntry('a', 'd', 3)],
      /does not continue its file/,
    ],
    [
      'a chunk of a file after an empty one',
      [fileEntry('a', ''), fileEntry('a', 'd', 0)],
      /the entry "a" is out of order/,
    ],
    [
      'an empty continuation',
      [fileEntry('a', 'abc'), fileEntry('a', '', 3)],
      /an empty chunk of "a" at offset 3/,
    ],
    ['an unknown entry type', [Buffer.from([0, 1, 0x61, 9])], /the entry "a" has unknown type 9/],
    [
      'a chunk cut short',
      [Buffer.from([0, 1, 0x61, DiskEntryType.FILE, 0, 5, 1, 2])],
      /the chunk of "a" at offset 0 is cut short/,
    ],
    ['an empty DISK frame', [Buffer.alloc(0)], /an empty DISK frame/],
  ];
  for (const [what, entries, message] of cases) {
    for (const split of [false, true]) {
      const bodies = split ? entries.filter((e) => e.byteLength > 0) : [Buffer.concat(entries)];
      if (bodies.length === 0) continue;
      const r = expectFailure(
        await readSnapshot(craft(bodies), null),
        'corrupt',
        `${what}${split ? ', split' : ''}`,
      );
      assert.match(r.message, message, what);
    }
  }
  // Well-formed: chunks of any size, in one frame or several, preopens sharing a frame.
  const good = [
    Buffer.concat([dirEntry('a'), fileEntry('a/f', 'ab'), fileEntry('a/f', 'c', 2)]),
    Buffer.concat([
      fileEntry('a/f', 'def', 3),
      fileEntry('a/g', ''),
      fileEntry('b', 'b'),
      fileEntry('a', 'z', 0, 1),
    ]),
  ];
  const r = await readSnapshot(craft(good, { entries: 5, bytes: 8 }), null);
  assert.ok(r.ok, describe(r));
  assert.deepEqual(
    r.disk.entries.map((e) => [e.preopen, e.path, e.type === 'file' ? e.bytes : e.type]),
    [
      [0, 'a', 'directory'],
      [0, 'a/f', 6],
      [0, 'a/g', 0],
      [0, 'b', 1],
      [1, 'a', 1],
    ],
  );
  // The trailer must agree with the disk: its counts, and the hash of the DISK bodies.
  const wrong: [string, Buffer][] = [
    ['one entry too many', craft(good, { entries: 6, bytes: 8 })],
    ['one byte too few', craft(good, { entries: 5, bytes: 7 })],
  ];
  for (const [what, bytes] of wrong) {
    const x = expectFailure(await readSnapshot(bytes, null), 'corrupt', what);
    assert.match(x.message, /counts \d+ disk entries and \d+ disk bytes but the snapshot holds 5 and 8/);
  }
  const badHash = craft(good, { entries: 5, bytes: 8 });
  const t = badHash.byteLength - 4 - 32; // the trailer's diskSha256
  badHash[t] = badHash[t]! ^ 1;
  const fixed = Buffer.concat([
    badHash.subarray(0, badHash.byteLength - 86),
    encodeSnapshotFrame(
      SnapshotFrameKind.TRAILER,
      badHash.subarray(badHash.byteLength - 84, badHash.byteLength - 4),
    ),
  ]);
  assert.match(
    expectFailure(await readSnapshot(fixed, null), 'corrupt', 'a wrong disk hash').message,
    /the disk frames hash to [0-9a-f]{64}, but the trailer at byte \d+ says/,
  );
  // A DISK frame longer than 1 MiB is refused as soon as its length is read.
  const reader = new SnapshotReader();
  const head = EMPTY_DISK.bytes.subarray(0, EMPTY_DISK.frames[2]!.end);
  const x = reader.push(
    Buffer.concat([head, Buffer.from([SnapshotFrameKind.DISK, ...leb(DISK_FRAME_BODY_BYTES_MAX + 1)])]),
  );
  assert.ok(
    !x.ok && x.code === 'corrupt' && /over the 1048576-byte limit/.test(x.message),
    JSON.stringify(x),
  );
});

test(`a multi-frame disk cut anywhere is 'truncated', damaged anywhere 'corrupt' (seed ${SEED})`, async () => {
  const p = new Prng(SEED, 12);
  const diskFrames = BIG.frames.filter((f) => f.kind === 'DISK');
  const out = scratchPath('damaged');
  // Cuts at, around and inside every DISK frame.
  const cuts = diskFrames.flatMap((f) => [
    f.start,
    f.start + 1,
    f.start + 2,
    f.start + 4,
    p.int(f.start + 5, f.end - 5),
    f.end - 1,
    f.end,
  ]);
  for (const cut of cuts) {
    const what = `cut at ${cut}`;
    const prefix = BIG.bytes.subarray(0, cut);
    expectFailure(await readSnapshot(prefix, null, { diskInto: out }), 'truncated', what);
    assert.deepEqual(readdirSync(out), [], `${what}: the materialized folders are removed`);
    expectFailure(
      await readSnapshot(
        chunked(prefix, () => p.int(1, 200_000)),
        null,
      ),
      'truncated',
      what,
    );
  }
  // Every bit of every DISK frame's prefix, random bits in their bodies and checksums.
  const flips: [number, number][] = [];
  for (const f of diskFrames) {
    for (let at = f.start; at < f.start + 4; at++) for (let bit = 0; bit < 8; bit++) flips.push([at, bit]);
    for (let k = 0; k < 12; k++) flips.push([p.int(f.start + 4, f.end - 1), p.int(0, 7)]);
  }
  for (const [at, bit] of flips) {
    const bad = Buffer.from(BIG.bytes);
    bad[at] = bad[at]! ^ (1 << bit);
    const what = `bit ${bit} of byte ${at} (seed ${SEED})`;
    expectFailure(await readSnapshot(bad, null, { diskInto: out }), 'corrupt', what);
    assert.deepEqual(readdirSync(out), [], `${what}: the materialized folders are removed`);
  }
  // Whole DISK frames dropped or repeated.
  const without = (i: number): Buffer =>
    Buffer.concat([BIG.bytes.subarray(0, diskFrames[i]!.start), BIG.bytes.subarray(diskFrames[i]!.end)]);
  for (let i = 0; i < diskFrames.length; i++) {
    expectFailure(await readSnapshot(without(i), null), 'corrupt', `DISK frame ${i} dropped`);
    const twice = Buffer.concat([
      BIG.bytes.subarray(0, diskFrames[i]!.end),
      BIG.bytes.subarray(diskFrames[i]!.start),
    ]);
    expectFailure(await readSnapshot(twice, null), 'corrupt', `DISK frame ${i} repeated`);
  }
  // A DISK length damaged to run past the end (within the DISK limit): corrupt, as the trailer
  // follows; the same bytes cut short are truncated.
  const last = diskFrames.at(-1)!;
  const len = BIG.bytes[last.start + 1]!;
  assert.ok(len < 0x80, 'the last DISK frame is short');
  const damaged = Buffer.concat([
    BIG.bytes.subarray(0, last.start + 1),
    Buffer.from(leb(BIG.bytes.byteLength - last.start)),
    BIG.bytes.subarray(last.start + 2),
  ]);
  for (const chunking of [null, (): number => 977]) {
    const r = await readSnapshot(chunking ? chunked(damaged, chunking) : damaged, null);
    assert.match(expectFailure(r, 'corrupt', 'a DISK length past the end').message, /past the trailer/);
  }
  expectFailure(await readSnapshot(damaged.subarray(0, -1), null), 'truncated', 'and cut');
});

test('a snapshot that fails after its disk was materialized leaves nothing; a folder already there is refused', async () => {
  const out = scratchPath('fail');
  const bytes = (await build({ ...BIG_PLAN, sha: new Uint8Array(32) })).bytes;
  expectFailure(await readSnapshot(bytes, null, { diskInto: out }), 'corrupt', 'a wrong memory hash');
  assert.deepEqual(readdirSync(out), []);
  // diskInto/i must not exist: a folder that is not the read's own is never written into or removed.
  writeTree(join(out, '1'), { 'mine.txt': { file: 'keep' } });
  await assert.rejects(readSnapshot(BIG.bytes, null, { diskInto: out }), /EEXIST/);
  assert.deepEqual(readdirSync(out), ['1']);
  assert.deepEqual(readTree(join(out, '1')), asBytes({ 'mine.txt': { file: 'keep' } }));
});

/** Writes `plan` with `sink` wrapping a copying sink; returns the bytes and what disk() said. */
async function buildWith(
  plan: Plan,
  hook: (pieces: readonly Uint8Array[]) => unknown,
): Promise<{ bytes: Buffer; stats: DiskStats[] }> {
  const calls: Buffer[] = [];
  const w = new SnapshotWriter((pieces) => {
    calls.push(Buffer.concat(pieces.map((x) => Buffer.from(x))));
    return hook(pieces);
  });
  w.header(plan.header);
  w.machine(plan.machine);
  w.host(plan.host);
  const stats: DiskStats[] = [];
  for (const [i, root] of (plan.disk ?? []).entries()) stats.push(await w.disk(i, root));
  w.blocks(plan.memory, plan.which);
  w.trailer(memorySha256(plan.memory));
  await w.settled();
  return { bytes: Buffer.concat(calls), stats };
}

const isDiskFrame = (pieces: readonly Uint8Array[]): boolean =>
  pieces.length > 1 && pieces[0]![0] === SnapshotFrameKind.DISK;

const SWAP_TREE: Tree = {
  'big.bin': { file: BIG_FILE },
  'z.txt': { file: 'after' },
};

test('a file replaced copy-on-write while the writer reads it is read again: the frozen content', async () => {
  const root = writeTree(scratchPath('swap'), SWAP_TREE);
  const plan: Plan = { ...SMALL_PLAN, disk: [root, writeTree(scratchPath('empty'), {})] };
  const reference = await buildWith(
    { ...plan, disk: [writeTree(scratchPath('ref'), SWAP_TREE), plan.disk![1]!] },
    () => {},
  );
  const bigPath = join(root, 'big.bin');
  const live = openSync(bigPath, 'r+'); // the guest's handle on the (shared) inode
  let swapped = false;
  const { bytes, stats } = await buildWith(plan, (pieces) => {
    if (swapped || !isDiskFrame(pieces)) return;
    swapped = true;
    // As FileSystem.unshare does: a private copy renamed over the frozen entry, then the guest's
    // write lands in the inode the writer has open.
    const tmp = scratchPath('cow');
    copyFileSync(bigPath, tmp);
    renameSync(tmp, bigPath);
    writeSync(live, Buffer.alloc(BIG_FILE.byteLength, 0xee), 0, BIG_FILE.byteLength, 0);
  });
  closeSync(live);
  assert.ok(swapped);
  assert.ok(stats[0]!.restarts >= 1, `restarts: ${stats[0]!.restarts}`);
  const out = scratchPath('out');
  const r = await readSnapshot(bytes, null, { diskInto: out });
  assert.ok(r.ok, describe(r));
  assertTree(join(out, '0'), SWAP_TREE, 'the frozen content');
  assert.ok(bytes.equals(reference.bytes), 'a restart does not change a byte of the snapshot');
});

test("a frozen tree from FileSystem.freeze, written by the guest during disk(), gives the freeze's content", async (t) => {
  const liveDir = writeTree(scratchPath('live'), SWAP_TREE);
  const fs = new FileSystem([{ guestPath: '/data', hostPath: liveDir }]);
  t.after(() => fs.closeAll());
  const root = fs.openPreopen(0);
  const opened = fs.pathOpen(root, 0, 'big.bin', 0, RIGHTS_FILE, 0n, 0);
  assert.ok(opened.ok);
  const h = opened.value as FileHandle;
  const frozen = scratchPath('frozen');
  const froze = fs.freeze(frozen);
  assert.ok(typeof froze !== 'string', String(froze));
  t.after(() => fs.thaw());
  let wrote = false;
  const plan: Plan = { ...SMALL_PLAN, disk: [join(frozen, '0'), writeTree(scratchPath('empty'), {})] };
  const { bytes, stats } = await buildWith(plan, (pieces) => {
    if (wrote || !isDiskFrame(pieces)) return;
    wrote = true;
    const w = fs.writev(h, [new Uint8Array(BIG_FILE.byteLength).fill(0xee)]);
    assert.ok(w.ok);
  });
  assert.ok(wrote);
  assert.equal(fs.unsharedFiles, 1);
  assert.ok(stats[0]!.restarts >= 1, `restarts: ${stats[0]!.restarts}`);
  assert.equal(readFileSync(join(liveDir, 'big.bin'))[0], 0xee, 'the guest wrote the live file');
  const out = scratchPath('out');
  const r = await readSnapshot(bytes, null, { diskInto: out });
  assert.ok(r.ok, describe(r));
  assertTree(join(out, '0'), SWAP_TREE, 'the content at the freeze');
});

test('a file unlinked and linked again while read (a frozen hard link being remade) is waited for', async () => {
  const root = writeTree(scratchPath('relink'), SWAP_TREE);
  const bigPath = join(root, 'big.bin');
  const copy = scratchPath('copy');
  copyFileSync(bigPath, copy);
  let done = false;
  const plan: Plan = { ...SMALL_PLAN, disk: [root, writeTree(scratchPath('empty'), {})] };
  const { bytes, stats } = await buildWith(plan, (pieces) => {
    if (done || !isDiskFrame(pieces)) return;
    done = true;
    rmSync(bigPath);
    setTimeout(() => renameSync(copy, bigPath), 30);
  });
  assert.ok(stats[0]!.restarts >= 1);
  const out = scratchPath('out');
  const r = await readSnapshot(bytes, null, { diskInto: out });
  assert.ok(r.ok, describe(r));
  assertTree(join(out, '0'), SWAP_TREE, 'the file as it was');
});

test('a file replaced by other content while read makes disk() throw, and the writer unusable', async () => {
  const root = writeTree(scratchPath('violate'), SWAP_TREE);
  const bigPath = join(root, 'big.bin');
  let swapped = false;
  const w = new SnapshotWriter((pieces) => {
    if (swapped || !isDiskFrame(pieces)) return;
    swapped = true;
    const tmp = scratchPath('other');
    writeFileSync(tmp, Buffer.alloc(BIG_FILE.byteLength, 1));
    renameSync(tmp, bigPath);
  });
  w.header(SMALL_PLAN.header);
  w.machine(SMALL_PLAN.machine);
  w.host(SMALL_PLAN.host);
  await assert.rejects(w.disk(0, root), /replaced while it was read by a file whose first \d+ bytes differ/);
  assert.throws(() => w.trailer(new Uint8Array(32)), /when nothing \(a disk\(\) call failed\) was due/);
});

test('the writer asserts when disk() is used out of order (host bugs), and throws on a bad folder', async () => {
  const sink = (): void => {};
  const h = SMALL_PLAN.header;
  const empty = writeTree(scratchPath('empty'), {});
  const started = (header = h): SnapshotWriter => {
    const w = new SnapshotWriter(sink);
    w.header(header);
    w.machine(SMALL_PLAN.machine);
    w.host(new Uint8Array(0));
    return w;
  };
  await assert.rejects(
    (async () => {
      const w = new SnapshotWriter(sink);
      w.header(h);
      await w.disk(0, empty);
    })(),
    /disk\(\) called when machine was due/,
  );
  await assert.rejects(
    started().disk(1, empty),
    /disk\(1\): the disk covers preopens 0..1, and preopen 0 is due/,
  );
  await assert.rejects(started({ ...h, diskPreopens: 0 }).disk(0, empty), /and none is due/);
  assert.throws(() => started().blocks(SMALL_MEMORY, 'all'), /blocks\(\) called when disk\(0\) was due/);
  assert.throws(() => started().trailer(new Uint8Array(32)), /trailer\(\) called when disk\(0\) was due/);
  const w = started();
  await w.disk(0, empty);
  assert.throws(() => w.blocks(SMALL_MEMORY, 'all'), /disk\(1\) was due/);
  const running = w.disk(1, empty);
  assert.throws(() => w.trailer(new Uint8Array(32)), /the end of the running disk\(\)/);
  await running;
  w.blocks(SMALL_MEMORY, 'all');
  await assert.rejects(w.disk(1, empty), /disk\(\) called when blocks or trailer was due/);
  assert.throws(() => new SnapshotWriter(sink).header({ ...h, diskPreopens: 3 }), /diskPreopens 3/);
  // A folder that is not one is an error (not a host bug), and leaves the writer unusable.
  const file = join(empty, '..', `file-${scratchCount++}`);
  writeFileSync(file, 'x');
  const w2 = started();
  await assert.rejects(w2.disk(0, file), /is not a directory/);
  await assert.rejects(started().disk(0, join(empty, 'missing')), /ENOENT/);
  assert.throws(() => w2.blocks(SMALL_MEMORY, 'all'), /a disk\(\) call failed/);
});

test('a sink that returns promises holds disk() back, and its failure reaches the caller', async () => {
  let inFlight = 0;
  let most = 0;
  let diskFramesSeen = 0;
  const calls: Buffer[] = [];
  const w = new SnapshotWriter((pieces) => {
    calls.push(Buffer.concat(pieces.map((x) => Buffer.from(x))));
    if (isDiskFrame(pieces)) diskFramesSeen++;
    inFlight++;
    most = Math.max(most, inFlight);
    return new Promise<void>((resolve) =>
      setTimeout(() => {
        inFlight--;
        resolve();
      }, 1),
    );
  });
  w.header(BIG_PLAN.header);
  w.machine(BIG_PLAN.machine);
  w.host(BIG_PLAN.host);
  for (const [i, root] of BIG_PLAN.disk!.entries()) await w.disk(i, root);
  assert.equal(most, 3, 'the header, machine and host frames do not wait; each DISK frame does');
  assert.ok(diskFramesSeen >= 4);
  w.blocks(BIG_PLAN.memory, BIG_PLAN.which);
  w.trailer(memorySha256(BIG_PLAN.memory));
  await w.settled();
  assert.equal(inFlight, 0);
  assert.ok(Buffer.concat(calls).equals(BIG.bytes));
  // A sink that fails: disk() rejects with its error, and so does settled().
  const failing = new SnapshotWriter((pieces) =>
    isDiskFrame(pieces) ? Promise.reject(new Error('connection reset')) : undefined,
  );
  failing.header(BIG_PLAN.header);
  failing.machine(BIG_PLAN.machine);
  failing.host(BIG_PLAN.host);
  await assert.rejects(failing.disk(0, BIG_PLAN.disk![0]!), /connection reset/);
  await assert.rejects(failing.settled(), /connection reset/);
});
