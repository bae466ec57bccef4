/**
 * The VM snapshot format: the persistent and wire form of a paused VM, for live clones,
 * migration, `lockstep vm snapshot --out FILE` and `lockstep run --from FILE`
 * (docs/SNAPSHOT-FORMAT.md draws it byte by byte).
 *
 *   file     := magic(8) version(u16) flags(u16) frame*
 *   frame    := kind(u8) bodyLen(varint) body crc32(u32, over kind..body), as in the event log
 *   frames   := HEADER MACHINE HOST BLOCKS* TRAILER, in exactly this order
 *   HEADER   := what the VM is (module, limits, args, env, listeners, preopens) and where the
 *               cut is (log position, memory size, block size, the base image of an increment)
 *   MACHINE  := mutable globals, the asyncify stack and region, the clocks as last seen
 *   HOST     := the WASI host's resource table, opaque here
 *   BLOCKS   := runs of consecutive memory blocks, in increasing block order
 *   TRAILER  := the block count and the SHA-256 of the whole memory image the snapshot yields
 *
 * Invariants:
 * - Streamable both ways: SnapshotWriter hands each frame to a sink as it is made (memory blocks
 *   as views, never a copy of the whole image), and SnapshotReader yields each frame as soon as
 *   its checksum holds, holding at most one frame (bounded by SNAPSHOT_FRAME_BODY_BYTES_MAX).
 * - A snapshot is usable only whole: the TRAILER's SHA-256 over the rebuilt memory is the final
 *   word, so readSnapshot never returns a partial image.
 * - Incremental snapshots chain by content: HEADER.base is the SHA-256 of the memory image the
 *   blocks apply to, which is the TRAILER hash of the snapshot before it.
 * - Expected failures (bad input) are values with a code and a message naming the byte offset;
 *   only host bugs (a writer used out of order, impossible values) throw.
 * - The damage rule: with the preamble intact, a file cut short is 'truncated' and a file with a
 *   flipped bit is 'corrupt' (see SnapshotReader.end for the one ambiguous case and its rule).
 */
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter, DecodeError } from '../core/bytes.js';
import { framePrefix } from '../ft/log/format.js';

export const SNAPSHOT_MAGIC = Uint8Array.of(0x89, 0x4c, 0x53, 0x53, 0x4e, 0x50, 0x0d, 0x0a); // "\x89LSSNP\r\n"
export const SNAPSHOT_VERSION = 1;
export const SNAPSHOT_PREAMBLE_BYTES = 12;

export const SnapshotFrameKind = { HEADER: 1, MACHINE: 2, HOST: 3, BLOCKS: 4, TRAILER: 5 } as const;
const KIND_NAMES: Record<number, string> = {
  1: 'HEADER',
  2: 'MACHINE',
  3: 'HOST',
  4: 'BLOCKS',
  5: 'TRAILER',
};

/** The wasm page: linear memory grows in these, so memoryBytes is always a multiple. */
export const WASM_PAGE_BYTES = 65536;
/** The block size writers use; the unit of incremental snapshots and of ShadowDiff. */
export const SNAPSHOT_BLOCK_BYTES = 4096;
/** Block sizes a reader accepts: powers of two from 4 KiB to one page, so pages hold whole blocks. */
const BLOCK_BYTES_MIN = 4096;
const BLOCK_BYTES_MAX = WASM_PAGE_BYTES;

/**
 * The largest frame body a reader accepts. BLOCKS frames stay near
 * BLOCKS_FRAME_BODY_BYTES_TARGET; the HOST frame (the resource table, socket buffers included)
 * is the one that can be large. The limit bounds what a damaged length can make a reader
 * buffer before the frame's checksum rejects it.
 */
export const SNAPSHOT_FRAME_BODY_BYTES_MAX = 64 * 1024 * 1024;
/** Writers close a BLOCKS frame once its block data reaches this size. */
export const BLOCKS_FRAME_BODY_BYTES_TARGET = 1024 * 1024;
/** The TRAILER body is fixed: blocks u32, memorySha256. A reader refuses any other length at once. */
export const TRAILER_BODY_BYTES = 4 + 32;
const TRAILER_FRAME_BYTES = 1 + 1 + TRAILER_BODY_BYTES + 4;
/** The guest clocks whose last values MACHINE carries: WASI clock ids 0..3. */
export const SNAPSHOT_CLOCK_COUNT = 4;
/**
 * asyncify's data header in front of its saved stack (i32 position, i32 end; see
 * src/vm/instrument/asyncify.ts): the region must hold it and the stack, or a rewind asserts.
 */
const ASYNCIFY_HEADER_BYTES = 8;

/** Limits on decoded lists and strings, so a well-checksummed but absurd frame cannot exhaust memory. */
const STRING_BYTES_MAX = 1 << 20;
const LIST_MAX = 1 << 16;
const GLOBALS_MAX = 1 << 16;

/** A host bug: the writer or a helper was used against its contract. */
function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`snapshot: assertion failed: ${message}`);
}

function isSha256(b: unknown): b is Uint8Array {
  return b instanceof Uint8Array && b.byteLength === 32;
}

/** A plain Uint8Array view of the same bytes (readers may be fed Buffers; frames hand out Uint8Arrays). */
function plain(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

/** SHA-256 of a memory image, hashed in slices (hash updates are not meant for multi-GiB buffers). */
export function memorySha256(memory: Uint8Array): Uint8Array {
  const h = createHash('sha256');
  const sliceBytes = 64 * 1024 * 1024;
  for (let at = 0; at < memory.byteLength; at += sliceBytes) {
    h.update(memory.subarray(at, Math.min(memory.byteLength, at + sliceBytes)));
  }
  return new Uint8Array(h.digest());
}

/**
 * CRC-32 of a frame's pieces as its 4-byte little-endian trailer. Empty pieces are skipped:
 * Node's zlib.crc32 returns 0, dropping the running value, for an empty view whose ArrayBuffer
 * has no backing store (seen on Node 20), which would make a frame with an empty body carry a
 * wrong checksum.
 */
function frameCrc(pieces: readonly Uint8Array[]): Uint8Array {
  let c = 0;
  for (const p of pieces) if (p.byteLength > 0) c = crc32(p, c);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, c >>> 0, true);
  return out;
}

/** One whole frame as bytes: the log's frame layout (kind, varint body length, body, CRC-32). */
export function encodeSnapshotFrame(kind: number, body: Uint8Array): Uint8Array {
  const prefix = framePrefix(kind, body.byteLength);
  const crc = frameCrc([prefix, body]);
  const out = new Uint8Array(prefix.byteLength + body.byteLength + 4);
  out.set(prefix, 0);
  out.set(body, prefix.byteLength);
  out.set(crc, prefix.byteLength + body.byteLength);
  return out;
}

function preamble(): Uint8Array {
  const w = new ByteWriter(SNAPSHOT_PREAMBLE_BYTES);
  w.bytes(SNAPSHOT_MAGIC);
  w.u16(SNAPSHOT_VERSION);
  w.u16(0);
  return w.take();
}

// ---------------------------------------------------------------- the frames' contents

export interface SnapshotHeader {
  /** SHA-256 of the instrumented module that ran (as in the log header). */
  moduleSha256: Uint8Array;
  /** The memory limit in 64 KiB pages, and the instrumentation's call-depth limit. */
  memoryMaxPages: number;
  callDepthMax: number;
  /** argv (argv[0] included) and "KEY=VALUE" environment strings, in order. */
  args: string[];
  env: string[];
  /** How many --listen sockets the VM has (fds 3 .. 3+n-1). */
  listenerCount: number;
  /** Guest paths of the preopened folders, in fd order. */
  preopenGuestPaths: string[];
  /**
   * The log position: host calls completed before the cut. The cut is at the entry of call
   * number `events`, which the resumed VM performs first.
   */
  events: number;
  /** Linear memory size at the cut: a multiple of WASM_PAGE_BYTES. */
  memoryBytes: number;
  /** The block size of BLOCKS frames (writers use SNAPSHOT_BLOCK_BYTES). */
  blockBytes: number;
  /** Null for a full snapshot; else the SHA-256 of the full memory image the blocks apply to. */
  base: Uint8Array | null;
  /** Wall clock at creation, for people only: nothing depends on it. */
  createdAtMs: number;
}

export type WasmValueType = 'i32' | 'i64' | 'f32' | 'f64';
/** The wasm value type bytes, used as the tags of globals. */
const VALUE_TYPE_TAGS: Record<WasmValueType, number> = { i32: 0x7f, i64: 0x7e, f32: 0x7d, f64: 0x7c };

/** One mutable global: i32, f32 and f64 values are numbers, i64 values bigints (as WebAssembly.Global gives them). */
export interface SnapshotGlobal {
  type: WasmValueType;
  value: number | bigint;
}

export interface SnapshotMachine {
  /** Every mutable global, in the instrumentation's globalExports order. */
  globals: SnapshotGlobal[];
  /** The unwound call stack as asyncify wrote it (Capture.stack). */
  stack: Uint8Array;
  /** Where asyncify's data region lay (Capture.regionStart/regionEnd); the rewind uses the same place. */
  regionStart: number;
  regionEnd: number;
  /** The last value each guest clock gave, by WASI clock id (SNAPSHOT_CLOCK_COUNT entries, signed 64-bit). */
  lastClockNs: bigint[];
}

export interface SnapshotTrailer {
  /** Blocks in all BLOCKS frames. */
  blocks: number;
  /** SHA-256 of the whole memory image: the base (or zeros) with every block applied. */
  memorySha256: Uint8Array;
}

/** Consecutive blocks firstBlock .. firstBlock+count-1; `bytes` holds count*blockBytes bytes. */
export interface BlockRun {
  firstBlock: number;
  count: number;
  bytes: Uint8Array;
}

function checkHeader(h: SnapshotHeader): void {
  check(isSha256(h.moduleSha256), 'moduleSha256 is 32 bytes');
  check(h.base === null || isSha256(h.base), 'base is null or 32 bytes');
  check(
    Number.isInteger(h.memoryMaxPages) && h.memoryMaxPages >= 0 && h.memoryMaxPages <= 65536,
    'memoryMaxPages',
  );
  check(
    Number.isInteger(h.callDepthMax) && h.callDepthMax >= 0 && h.callDepthMax <= 0xffffffff,
    'callDepthMax',
  );
  check(
    Number.isInteger(h.memoryBytes) &&
      h.memoryBytes >= 0 &&
      h.memoryBytes % WASM_PAGE_BYTES === 0 &&
      h.memoryBytes <= h.memoryMaxPages * WASM_PAGE_BYTES,
    `memoryBytes ${h.memoryBytes} is whole pages within memoryMaxPages`,
  );
  check(validBlockBytes(h.blockBytes), `blockBytes ${h.blockBytes} is a power of two in 4 KiB .. 64 KiB`);
  check(h.args.length <= LIST_MAX && h.env.length <= LIST_MAX, 'args and env are within the list limit');
  check(h.preopenGuestPaths.length <= LIST_MAX, 'preopens are within the list limit');
}

function validBlockBytes(n: number): boolean {
  return Number.isInteger(n) && n >= BLOCK_BYTES_MIN && n <= BLOCK_BYTES_MAX && (n & (n - 1)) === 0;
}

export function encodeHeader(h: SnapshotHeader): Uint8Array {
  checkHeader(h);
  const w = new ByteWriter(1024);
  w.bytes(h.moduleSha256);
  w.u32(h.memoryMaxPages);
  w.u32(h.callDepthMax);
  for (const list of [h.args, h.env]) {
    w.varint(list.length);
    for (const s of list) w.string(s);
  }
  w.varint(h.listenerCount);
  w.varint(h.preopenGuestPaths.length);
  for (const s of h.preopenGuestPaths) w.string(s);
  w.varint(h.events);
  w.varint(h.memoryBytes);
  w.varint(h.blockBytes);
  if (h.base === null) {
    w.u8(0);
  } else {
    w.u8(1);
    w.bytes(h.base);
  }
  w.varint(h.createdAtMs);
  return w.take();
}

/** Decodes a HEADER body; throws DecodeError on anything a writer cannot have produced. */
export function decodeHeader(body: Uint8Array): SnapshotHeader {
  const r = new ByteReader(body);
  const moduleSha256 = new Uint8Array(r.bytes(32));
  const memoryMaxPages = r.u32();
  const callDepthMax = r.u32();
  const lists: string[][] = [];
  for (let k = 0; k < 2; k++) lists.push(stringList(r));
  const listenerCount = r.varint();
  const preopenGuestPaths = stringList(r);
  const events = r.varint();
  const memoryBytes = r.varint();
  const blockBytes = r.varint();
  const hasBase = r.u8();
  if (hasBase > 1) throw new DecodeError(`base flag ${hasBase} is neither 0 nor 1`);
  const base = hasBase === 1 ? new Uint8Array(r.bytes(32)) : null;
  const createdAtMs = r.varint();
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in the header');
  if (memoryMaxPages > 65536) throw new DecodeError(`memory limit of ${memoryMaxPages} pages exceeds 65536`);
  if (memoryBytes % WASM_PAGE_BYTES !== 0 || memoryBytes > memoryMaxPages * WASM_PAGE_BYTES) {
    throw new DecodeError(
      `memory size ${memoryBytes} is not whole pages within the limit of ${memoryMaxPages} pages`,
    );
  }
  if (!validBlockBytes(blockBytes)) throw new DecodeError(`block size ${blockBytes} is not supported`);
  return {
    moduleSha256,
    memoryMaxPages,
    callDepthMax,
    args: lists[0]!,
    env: lists[1]!,
    listenerCount,
    preopenGuestPaths,
    events,
    memoryBytes,
    blockBytes,
    base,
    createdAtMs,
  };
}

function stringList(r: ByteReader): string[] {
  const n = r.varint();
  if (n > LIST_MAX) throw new DecodeError(`a list of ${n} strings exceeds ${LIST_MAX}`);
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(r.string(STRING_BYTES_MAX));
  return out;
}

function checkMachine(m: SnapshotMachine, memoryBytes: number): void {
  check(m.globals.length <= GLOBALS_MAX, 'globals are within the limit');
  for (const [i, g] of m.globals.entries()) {
    const v = g.value;
    switch (g.type) {
      case 'i32':
        check(
          typeof v === 'number' && Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31,
          `global ${i} is an i32`,
        );
        break;
      case 'i64':
        check(typeof v === 'bigint' && v === BigInt.asIntN(64, v), `global ${i} is an i64`);
        break;
      case 'f32':
        check(
          typeof v === 'number' && (Number.isNaN(v) || Object.is(Math.fround(v), v)),
          `global ${i} is an f32`,
        );
        break;
      case 'f64':
        check(typeof v === 'number', `global ${i} is an f64`);
        break;
      default:
        check(false, `global ${i} has a known type`);
    }
  }
  check(
    Number.isInteger(m.regionStart) &&
      Number.isInteger(m.regionEnd) &&
      m.regionStart >= 0 &&
      m.regionEnd <= memoryBytes &&
      m.regionEnd - m.regionStart >= ASYNCIFY_HEADER_BYTES + m.stack.byteLength,
    'the asyncify region lies in memory and holds the stack',
  );
  check(m.lastClockNs.length === SNAPSHOT_CLOCK_COUNT, `lastClockNs has ${SNAPSHOT_CLOCK_COUNT} entries`);
  for (const t of m.lastClockNs) check(t === BigInt.asIntN(64, t), 'clock values are signed 64-bit');
}

export function encodeMachine(m: SnapshotMachine, memoryBytes: number): Uint8Array {
  checkMachine(m, memoryBytes);
  const w = new ByteWriter(64 + m.globals.length * 9 + m.stack.byteLength);
  w.varint(m.globals.length);
  const scratch = new DataView(new ArrayBuffer(8));
  for (const g of m.globals) {
    w.u8(VALUE_TYPE_TAGS[g.type]);
    switch (g.type) {
      case 'i32':
        w.u32((g.value as number) >>> 0);
        break;
      case 'i64':
        w.u64(g.value as bigint);
        break;
      case 'f32':
        // Through a DataView so the bits are the ones the engine holds (NaN payloads where it keeps them).
        scratch.setFloat32(0, g.value as number, true);
        w.u32(scratch.getUint32(0, true));
        break;
      case 'f64':
        scratch.setFloat64(0, g.value as number, true);
        w.u64(scratch.getBigUint64(0, true));
        break;
    }
  }
  w.lenBytes(m.stack);
  w.varint(m.regionStart);
  w.varint(m.regionEnd);
  for (const t of m.lastClockNs) w.u64(t);
  return w.take();
}

/** Decodes a MACHINE body against the header's memory size; throws DecodeError. */
export function decodeMachine(body: Uint8Array, memoryBytes: number): SnapshotMachine {
  const r = new ByteReader(body);
  const n = r.varint();
  if (n > GLOBALS_MAX) throw new DecodeError(`${n} globals exceed ${GLOBALS_MAX}`);
  const globals: SnapshotGlobal[] = [];
  const scratch = new DataView(new ArrayBuffer(8));
  for (let i = 0; i < n; i++) {
    const tag = r.u8();
    switch (tag) {
      case VALUE_TYPE_TAGS.i32:
        globals.push({ type: 'i32', value: r.u32() | 0 });
        break;
      case VALUE_TYPE_TAGS.i64:
        globals.push({ type: 'i64', value: BigInt.asIntN(64, r.u64()) });
        break;
      case VALUE_TYPE_TAGS.f32:
        scratch.setUint32(0, r.u32(), true);
        globals.push({ type: 'f32', value: scratch.getFloat32(0, true) });
        break;
      case VALUE_TYPE_TAGS.f64:
        scratch.setBigUint64(0, r.u64(), true);
        globals.push({ type: 'f64', value: scratch.getFloat64(0, true) });
        break;
      default:
        throw new DecodeError(`global ${i} has unknown type tag 0x${tag.toString(16)}`);
    }
  }
  const stack = plain(r.lenBytes(SNAPSHOT_FRAME_BODY_BYTES_MAX));
  const regionStart = r.varint();
  const regionEnd = r.varint();
  const lastClockNs: bigint[] = [];
  for (let i = 0; i < SNAPSHOT_CLOCK_COUNT; i++) lastClockNs.push(BigInt.asIntN(64, r.u64()));
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in the machine frame');
  if (regionEnd > memoryBytes || regionStart > regionEnd) {
    throw new DecodeError(
      `the asyncify region ${regionStart}..${regionEnd} is not in ${memoryBytes} bytes of memory`,
    );
  }
  if (regionEnd - regionStart < ASYNCIFY_HEADER_BYTES + stack.byteLength) {
    throw new DecodeError(
      `a stack of ${stack.byteLength} bytes does not fit the asyncify region of ${regionEnd - regionStart}`,
    );
  }
  return { globals, stack, regionStart, regionEnd, lastClockNs };
}

export function encodeTrailer(t: SnapshotTrailer): Uint8Array {
  check(isSha256(t.memorySha256), 'memorySha256 is 32 bytes');
  check(Number.isInteger(t.blocks) && t.blocks >= 0 && t.blocks <= 0xffffffff, 'block count is a u32');
  const w = new ByteWriter(TRAILER_BODY_BYTES);
  w.u32(t.blocks);
  w.bytes(t.memorySha256);
  return w.take();
}

export function decodeTrailer(body: Uint8Array): SnapshotTrailer {
  const r = new ByteReader(body);
  const blocks = r.u32();
  const memorySha256 = new Uint8Array(r.bytes(32));
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in the trailer');
  return { blocks, memorySha256 };
}

/**
 * Decodes a BLOCKS body: runs in increasing block order, starting at or after `nextBlock`, inside
 * `blockCount` blocks. Throws DecodeError.
 */
export function decodeBlocks(
  body: Uint8Array,
  blockBytes: number,
  nextBlock: number,
  blockCount: number,
): BlockRun[] {
  const r = new ByteReader(body);
  const runs: BlockRun[] = [];
  if (body.byteLength === 0) throw new DecodeError('an empty BLOCKS frame');
  while (r.remaining > 0) {
    const firstBlock = r.varint();
    const count = r.varint();
    if (count === 0) throw new DecodeError(`an empty run at block ${firstBlock}`);
    if (firstBlock < nextBlock) {
      throw new DecodeError(
        `a run starts at block ${firstBlock}, before block ${nextBlock} (blocks go in increasing order)`,
      );
    }
    if (firstBlock + count > blockCount) {
      throw new DecodeError(
        `blocks ${firstBlock}..${firstBlock + count - 1} lie outside the ${blockCount} blocks of memory`,
      );
    }
    if (count * blockBytes > r.remaining)
      throw new DecodeError(`the run at block ${firstBlock} is cut short`);
    runs.push({ firstBlock, count, bytes: plain(r.bytes(count * blockBytes)) });
    nextBlock = firstBlock + count;
  }
  return runs;
}

// ---------------------------------------------------------------- writer

export type SnapshotSink = (pieces: readonly Uint8Array[]) => void;

type WriterStep = 'header' | 'machine' | 'host' | 'blocks' | 'done';

/**
 * Writes a snapshot frame by frame into `sink`, one call per frame (the first one with the
 * preamble). Methods go in the format's order: header, machine, host, blocks (any number of
 * calls, each listing blocks after the previous call's), trailer. Anything else is a host bug
 * and throws.
 *
 * BLOCKS pieces are views of the memory given to blocks(): the sink must write or copy them
 * before the memory changes (keep the guest paused until the sink is done with them).
 */
export class SnapshotWriter {
  private step: WriterStep = 'header';
  private head: SnapshotHeader | null = null;
  private nextBlock = 0;
  private blocksWritten = 0;
  private written = 0;

  constructor(private readonly sink: SnapshotSink) {}

  /** Bytes handed to the sink so far. */
  get bytesWritten(): number {
    return this.written;
  }

  /** Blocks written so far. */
  get blockCount(): number {
    return this.blocksWritten;
  }

  header(h: SnapshotHeader): void {
    this.expect('header', 'header');
    const frame = encodeSnapshotFrame(SnapshotFrameKind.HEADER, encodeHeader(h));
    this.head = h;
    this.emit([preamble(), frame]);
    this.step = 'machine';
  }

  machine(m: SnapshotMachine): void {
    this.expect('machine', 'machine');
    this.emit([encodeSnapshotFrame(SnapshotFrameKind.MACHINE, encodeMachine(m, this.head!.memoryBytes))]);
    this.step = 'host';
  }

  host(bytes: Uint8Array): void {
    this.expect('host', 'host');
    check(bytes.byteLength <= SNAPSHOT_FRAME_BODY_BYTES_MAX, 'the host state fits one frame');
    this.emit([encodeSnapshotFrame(SnapshotFrameKind.HOST, bytes)]);
    this.step = 'blocks';
  }

  /**
   * Writes blocks of `memory` (the whole linear memory at the cut): 'all' for a full snapshot
   * (all-zero blocks are left out, since a reader starts from zeros), or the given block indexes
   * (any order, duplicates ignored; each call's blocks must follow the previous call's).
   */
  blocks(memory: Uint8Array, which: 'all' | Iterable<number>): void {
    this.expect('blocks', 'blocks');
    const h = this.head!;
    check(memory.byteLength === h.memoryBytes, `memory is ${h.memoryBytes} bytes as the header says`);
    const blockCount = h.memoryBytes / h.blockBytes;
    let indexes: number[];
    if (which === 'all') {
      // An increment must list its blocks: leaving out zero blocks would keep the base's bytes there.
      check(h.base === null, "'all' is for full snapshots");
      check(this.blocksWritten === 0, "'all' comes before any other blocks");
      indexes = nonZeroBlocks(memory, h.blockBytes);
    } else {
      indexes = [...new Set(which)].sort((a, b) => a - b);
      for (const b of indexes)
        check(Number.isInteger(b) && b >= 0 && b < blockCount, `block ${b} is in memory`);
      check(
        indexes.length === 0 || indexes[0]! >= this.nextBlock,
        'blocks() calls go in increasing block order',
      );
    }
    this.writeRuns(memory, indexes);
  }

  trailer(memorySha256: Uint8Array): void {
    this.expect('trailer', 'blocks');
    this.emit([
      encodeSnapshotFrame(
        SnapshotFrameKind.TRAILER,
        encodeTrailer({ blocks: this.blocksWritten, memorySha256 }),
      ),
    ]);
    this.step = 'done';
  }

  /** Asserts that `method` may run now: `step` is the writer's state it needs. */
  private expect(method: string, step: WriterStep): void {
    const due = this.step === 'blocks' ? 'blocks or trailer' : this.step === 'done' ? 'nothing' : this.step;
    check(this.step === step, `snapshot writer: ${method}() called when ${due} was due`);
  }

  private emit(pieces: Uint8Array[]): void {
    for (const p of pieces) this.written += p.byteLength;
    this.sink(pieces);
  }

  /** Groups sorted indexes into runs and frames, each frame's block data near the target size. */
  private writeRuns(memory: Uint8Array, indexes: readonly number[]): void {
    const blockBytes = this.head!.blockBytes;
    const blocksPerFrame = Math.max(1, Math.floor(BLOCKS_FRAME_BODY_BYTES_TARGET / blockBytes));
    let body: Uint8Array[] = [];
    let bodyBytes = 0;
    let inFrame = 0;
    const flush = (): void => {
      if (inFrame === 0) return;
      const prefix = framePrefix(SnapshotFrameKind.BLOCKS, bodyBytes);
      const crc = frameCrc([prefix, ...body]);
      this.emit([prefix, ...body, crc]);
      body = [];
      bodyBytes = 0;
      inFrame = 0;
    };
    let i = 0;
    while (i < indexes.length) {
      let first = indexes[i]!;
      let count = 1;
      while (i + count < indexes.length && indexes[i + count] === first + count) count++;
      i += count;
      while (count > 0) {
        const take = Math.min(count, blocksPerFrame - inFrame);
        const w = new ByteWriter(16);
        w.varint(first);
        w.varint(take);
        const runHead = w.take();
        const data = memory.subarray(first * blockBytes, (first + take) * blockBytes);
        body.push(runHead, data);
        bodyBytes += runHead.byteLength + data.byteLength;
        inFrame += take;
        this.blocksWritten += take;
        first += take;
        count -= take;
        if (inFrame === blocksPerFrame) flush();
      }
    }
    flush();
    if (indexes.length > 0) this.nextBlock = indexes[indexes.length - 1]! + 1;
  }
}

/** Indexes of the blocks of `memory` that hold any non-zero byte. */
function nonZeroBlocks(memory: Uint8Array, blockBytes: number): number[] {
  const buf = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
  const zero = Buffer.alloc(blockBytes);
  const out: number[] = [];
  for (let b = 0, at = 0; at < memory.byteLength; b++, at += blockBytes) {
    // Buffer.compare with ranges is a memcmp without allocating a view per block.
    if (buf.compare(zero, 0, blockBytes, at, at + blockBytes) !== 0) out.push(b);
  }
  return out;
}

// ---------------------------------------------------------------- reader

export type SnapshotErrorCode = 'not-a-snapshot' | 'version' | 'truncated' | 'corrupt' | 'base-mismatch';

/** An unusable snapshot: a value, never thrown. `offset` is the byte the message names. */
export interface SnapshotFailure {
  ok: false;
  code: SnapshotErrorCode;
  message: string;
  offset: number;
}

export type SnapshotFrame =
  | { type: 'header'; offset: number; header: SnapshotHeader }
  | { type: 'machine'; offset: number; machine: SnapshotMachine }
  | { type: 'host'; offset: number; host: Uint8Array }
  | { type: 'blocks'; offset: number; runs: BlockRun[] }
  | { type: 'trailer'; offset: number; trailer: SnapshotTrailer };

function failure(code: SnapshotErrorCode, message: string, offset: number): SnapshotFailure {
  return { ok: false, code, message, offset };
}

type ReaderStep = 'preamble' | 'header' | 'machine' | 'host' | 'blocks' | 'done';

/**
 * A queue of pushed chunks that hands out contiguous ranges, merging chunks only when a range
 * spans several. Each byte is copied at most twice (a frame prefix, then its frame), so reading
 * in 1-byte chunks stays linear.
 */
class ChunkQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  bytes = 0;

  push(c: Uint8Array): void {
    this.chunks.push(c);
    this.bytes += c.byteLength;
  }

  /** The first n bytes (n <= bytes), contiguous. */
  peek(n: number): Uint8Array {
    const first = this.chunks[this.head]!;
    if (first.byteLength >= n) return first.subarray(0, n);
    let have = 0;
    let k = this.head;
    while (have < n) have += this.chunks[k++]!.byteLength;
    const merged = new Uint8Array(have);
    for (let i = this.head, at = 0; i < k; i++) {
      merged.set(this.chunks[i]!, at);
      at += this.chunks[i]!.byteLength;
    }
    this.chunks.splice(this.head, k - this.head, merged);
    return merged.subarray(0, n);
  }

  drop(n: number): void {
    this.bytes -= n;
    while (n > 0) {
      const c = this.chunks[this.head]!;
      if (c.byteLength > n) {
        this.chunks[this.head] = c.subarray(n);
        break;
      }
      n -= c.byteLength;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}

/**
 * Reads a snapshot pushed chunk by chunk, yielding each frame once its checksum holds and its
 * place in the order is right. It keeps views of the pushed chunks (and frames point into
 * them), so a caller must not modify a chunk after pushing it.
 *
 * Classification, decided from the bytes alone (not from how they were chunked):
 * - 'not-a-snapshot': the magic differs. 'version': another format version. A preamble with
 *   non-zero flags is 'corrupt' (the preamble has no checksum; version 1 writes 0).
 * - 'corrupt': a checksum mismatch in a whole frame, an impossible length (a varint over 4
 *   bytes, a body over the limit, a TRAILER not TRAILER_BODY_BYTES long), an unknown kind, a
 *   frame out of order or that does not decode, a block count that differs from the trailer's,
 *   and any byte after the trailer.
 * - 'truncated': the input ends inside the preamble or a frame, or after a whole frame that is
 *   not the TRAILER; see end() for a frame whose (damaged) length runs past the end.
 */
export class SnapshotReader {
  private readonly q = new ChunkQueue();
  /** Stream offset of the queue's first byte. */
  private offset = 0;
  private step: ReaderStep = 'preamble';
  private failed: SnapshotFailure | null = null;
  private head: SnapshotHeader | null = null;
  private trailerSeen: SnapshotTrailer | null = null;
  private nextBlock = 0;
  private blocksRead = 0;
  /** The frame being read once its prefix is known: its kind and whole size. */
  private frame: { kind: number; prefixBytes: number; totalBytes: number } | null = null;

  /** The header, once read. */
  get header(): SnapshotHeader | null {
    return this.head;
  }

  /** Bytes consumed as the preamble and whole frames. */
  get consumedBytes(): number {
    return this.offset;
  }

  /** Feeds bytes; returns the frames they complete, or the failure (again on later calls). */
  push(chunk: Uint8Array): { ok: true; frames: SnapshotFrame[] } | SnapshotFailure {
    if (this.failed !== null) return this.failed;
    const frames: SnapshotFrame[] = [];
    if (chunk.byteLength === 0) return { ok: true, frames };
    this.q.push(chunk);
    for (;;) {
      const r = this.step === 'preamble' ? this.readPreamble() : this.nextFrame();
      if (r === null) break;
      if (r === true) continue;
      if ('ok' in r) {
        this.failed = r;
        return r;
      }
      frames.push(r);
    }
    return { ok: true, frames };
  }

  /**
   * Declares the end of input: ok with the trailer when the snapshot ended cleanly after it.
   *
   * The one ambiguous case is a frame whose length runs past the end of the input: a file cut
   * short inside that frame, or a whole file whose length field took a bit flip. A whole file
   * ends with its TRAILER, a frame of fixed size, so when the input's last TRAILER_FRAME_BYTES
   * bytes are a well-formed TRAILER frame the verdict is 'corrupt', else 'truncated'. (A guest
   * can plant such bytes in its memory so that a snapshot cut right after them reads as
   * corrupt rather than truncated; either way it is refused.)
   */
  end(): { ok: true; trailer: SnapshotTrailer } | SnapshotFailure {
    if (this.failed !== null) return this.failed;
    const fail = (f: SnapshotFailure): SnapshotFailure => (this.failed = f);
    if (this.step === 'preamble') {
      return fail(
        failure(
          'truncated',
          this.q.bytes === 0
            ? 'the snapshot is empty'
            : `the snapshot is truncated: it ends inside its preamble, after ${this.q.bytes} of ${SNAPSHOT_PREAMBLE_BYTES} bytes`,
          this.q.bytes,
        ),
      );
    }
    if (this.q.bytes > 0) {
      const tail = this.q.peek(this.q.bytes);
      const kind = KIND_NAMES[tail[0]!] ?? `kind ${tail[0]}`;
      const size = this.frame === null ? '' : ` ${this.frame.totalBytes}`;
      if (endsWithTrailer(tail)) {
        return fail(
          failure(
            'corrupt',
            `corrupt snapshot: the ${kind} frame at byte ${this.offset} claims${size} bytes, past the trailer that ends the file at byte ${this.offset + tail.byteLength} (a damaged length)`,
            this.offset,
          ),
        );
      }
      return fail(
        failure(
          'truncated',
          `the snapshot is truncated: it ends inside the ${kind} frame at byte ${this.offset} (${tail.byteLength}${size ? ` of${size}` : ''} bytes present)`,
          this.offset + tail.byteLength,
        ),
      );
    }
    if (this.trailerSeen === null) {
      return fail(
        failure(
          'truncated',
          `the snapshot is truncated: it ends at byte ${this.offset}, before its ${this.step === 'blocks' ? 'trailer' : `${this.step} frame`}`,
          this.offset,
        ),
      );
    }
    return { ok: true, trailer: this.trailerSeen };
  }

  /** Checks the preamble as its bytes arrive: true once whole, null to wait, or a failure. */
  private readPreamble(): true | null | SnapshotFailure {
    const have = Math.min(this.q.bytes, SNAPSHOT_PREAMBLE_BYTES);
    if (have === 0) return null;
    const p = this.q.peek(have);
    for (let i = 0; i < Math.min(have, SNAPSHOT_MAGIC.byteLength); i++) {
      if (p[i] !== SNAPSHOT_MAGIC[i]) {
        return failure('not-a-snapshot', `not a Lockstep snapshot (bad magic bytes at byte ${i})`, i);
      }
    }
    if (have < SNAPSHOT_PREAMBLE_BYTES) return null;
    const version = p[8]! | (p[9]! << 8);
    if (version !== SNAPSHOT_VERSION) {
      return failure(
        'version',
        `snapshot format version ${version} is not supported (this Lockstep reads version ${SNAPSHOT_VERSION})`,
        8,
      );
    }
    const flags = p[10]! | (p[11]! << 8);
    if (flags !== 0) {
      return failure(
        'corrupt',
        `corrupt snapshot: damaged preamble at byte 10 (flags 0x${flags.toString(16)}, version ${SNAPSHOT_VERSION} writes 0)`,
        10,
      );
    }
    this.consume(SNAPSHOT_PREAMBLE_BYTES);
    this.step = 'header';
    return true;
  }

  private consume(n: number): void {
    this.q.drop(n);
    this.offset += n;
  }

  /** The next whole frame, null to wait for more bytes, or a failure. */
  private nextFrame(): SnapshotFrame | null | SnapshotFailure {
    if (this.q.bytes === 0) return null;
    const at = this.offset;
    if (this.step === 'done') {
      return failure('corrupt', `corrupt snapshot: data follows the trailer at byte ${at}`, at);
    }
    if (this.frame === null) {
      const p = this.q.peek(Math.min(this.q.bytes, 5));
      const kind = p[0]!;
      if (KIND_NAMES[kind] === undefined) {
        return failure('corrupt', `corrupt snapshot: unknown frame kind ${kind} at byte ${at}`, at);
      }
      // The body length: a varint of at most 4 bytes (the limit is below 2^28).
      let len = 0;
      let i = 1;
      let mul = 1;
      for (;;) {
        if (i >= p.byteLength) return null;
        const b = p[i++]!;
        len += (b & 0x7f) * mul;
        if ((b & 0x80) === 0) break;
        mul *= 128;
        if (i > 4) return failure('corrupt', `corrupt snapshot: impossible frame length at byte ${at}`, at);
      }
      if (len > SNAPSHOT_FRAME_BODY_BYTES_MAX) {
        return failure(
          'corrupt',
          `corrupt snapshot: frame at byte ${at} claims ${len} bytes, over the limit`,
          at,
        );
      }
      if (kind === SnapshotFrameKind.TRAILER && len !== TRAILER_BODY_BYTES) {
        return failure(
          'corrupt',
          `corrupt snapshot: the TRAILER frame at byte ${at} claims ${len} bytes (it has ${TRAILER_BODY_BYTES})`,
          at,
        );
      }
      this.frame = { kind, prefixBytes: i, totalBytes: i + len + 4 };
    }
    const { kind, prefixBytes, totalBytes } = this.frame;
    if (this.q.bytes < totalBytes) return null;
    const bytes = this.q.peek(totalBytes);
    if (!crcHolds(bytes)) {
      return failure(
        'corrupt',
        `corrupt snapshot: checksum mismatch in the ${KIND_NAMES[kind]} frame at byte ${at}`,
        at,
      );
    }
    this.frame = null;
    this.consume(totalBytes);
    try {
      return this.interpret(kind, bytes.subarray(prefixBytes, totalBytes - 4), at);
    } catch (e) {
      if (e instanceof DecodeError) {
        return failure(
          'corrupt',
          `corrupt snapshot: the ${KIND_NAMES[kind]} frame at byte ${at} does not decode: ${e.message}`,
          at,
        );
      }
      throw e;
    }
  }

  private interpret(kind: number, body: Uint8Array, at: number): SnapshotFrame | SnapshotFailure {
    const expected: Record<Exclude<ReaderStep, 'preamble' | 'done'>, number[]> = {
      header: [SnapshotFrameKind.HEADER],
      machine: [SnapshotFrameKind.MACHINE],
      host: [SnapshotFrameKind.HOST],
      blocks: [SnapshotFrameKind.BLOCKS, SnapshotFrameKind.TRAILER],
    };
    const step = this.step as keyof typeof expected;
    if (!expected[step].includes(kind)) {
      return failure(
        'corrupt',
        `corrupt snapshot: a ${KIND_NAMES[kind]} frame at byte ${at} where ${step === 'blocks' ? 'BLOCKS or the TRAILER' : `the ${step.toUpperCase()}`} was due`,
        at,
      );
    }
    switch (kind) {
      case SnapshotFrameKind.HEADER:
        this.head = decodeHeader(body);
        this.step = 'machine';
        return { type: 'header', offset: at, header: this.head };
      case SnapshotFrameKind.MACHINE:
        this.step = 'host';
        return { type: 'machine', offset: at, machine: decodeMachine(body, this.head!.memoryBytes) };
      case SnapshotFrameKind.HOST:
        this.step = 'blocks';
        return { type: 'host', offset: at, host: plain(body) };
      case SnapshotFrameKind.BLOCKS: {
        const h = this.head!;
        const runs = decodeBlocks(body, h.blockBytes, this.nextBlock, h.memoryBytes / h.blockBytes);
        for (const run of runs) this.blocksRead += run.count;
        this.nextBlock = runs[runs.length - 1]!.firstBlock + runs[runs.length - 1]!.count;
        return { type: 'blocks', offset: at, runs };
      }
      default: {
        const trailer = decodeTrailer(body);
        if (trailer.blocks !== this.blocksRead) {
          return failure(
            'corrupt',
            `corrupt snapshot: the trailer at byte ${at} counts ${trailer.blocks} blocks but the snapshot holds ${this.blocksRead}`,
            at,
          );
        }
        this.trailerSeen = trailer;
        this.step = 'done';
        return { type: 'trailer', offset: at, trailer };
      }
    }
  }
}

/** Whether `tail` ends with a well-formed TRAILER frame (kind, fixed length, matching checksum). */
function endsWithTrailer(tail: Uint8Array): boolean {
  if (tail.byteLength < TRAILER_FRAME_BYTES) return false;
  const f = tail.subarray(tail.byteLength - TRAILER_FRAME_BYTES);
  return f[0] === SnapshotFrameKind.TRAILER && f[1] === TRAILER_BODY_BYTES && crcHolds(f);
}

/** Whether a whole frame's last 4 bytes are the CRC-32 of the rest. */
function crcHolds(frame: Uint8Array): boolean {
  const n = frame.byteLength;
  const want = new DataView(frame.buffer, frame.byteOffset, n).getUint32(n - 4, true);
  return crc32(frame.subarray(0, n - 4)) >>> 0 === want;
}

// ---------------------------------------------------------------- whole snapshots

/** A snapshot read back whole: everything a VM resumes from. */
export interface Snapshot {
  header: SnapshotHeader;
  machine: SnapshotMachine;
  /** The HOST frame's bytes, for the WASI host's own decoder. */
  host: Uint8Array;
  /** The whole linear memory at the cut (header.memoryBytes long). */
  memory: Uint8Array;
  /** Its SHA-256, checked against the trailer: the `base` of the next increment. */
  memorySha256: Uint8Array;
}

/**
 * Reads a whole snapshot from bytes or a stream of chunks (a file or socket stream), rebuilds
 * the memory (from zeros, or from `base` for an incremental snapshot) and checks the trailer's
 * SHA-256. `base` must be the memory image the increment applies to (its SHA-256 is compared
 * with the header's); it is ignored for a full snapshot. I/O errors from the stream propagate;
 * everything wrong with the bytes comes back as a SnapshotFailure.
 */
export async function readSnapshot(
  source: Uint8Array | AsyncIterable<Uint8Array>,
  base: Uint8Array | null,
): Promise<({ ok: true } & Snapshot) | SnapshotFailure> {
  const reader = new SnapshotReader();
  // What the frames have given so far; a holder object, since take() fills it in.
  const got: {
    header: SnapshotHeader | null;
    machine: SnapshotMachine | null;
    host: Uint8Array | null;
    memory: Uint8Array | null;
    snapshot: Snapshot | null;
  } = { header: null, machine: null, host: null, memory: null, snapshot: null };

  const take = (frames: SnapshotFrame[]): SnapshotFailure | null => {
    for (const f of frames) {
      switch (f.type) {
        case 'header': {
          const h = f.header;
          got.header = h;
          if (h.base !== null) {
            if (base === null) {
              return failure(
                'base-mismatch',
                `the snapshot is incremental (its base image has SHA-256 ${hex(h.base)}) and no base was given`,
                f.offset,
              );
            }
            const baseSha256 = memorySha256(base);
            if (Buffer.compare(baseSha256, h.base) !== 0) {
              return failure(
                'base-mismatch',
                `the snapshot applies to a base image with SHA-256 ${hex(h.base)}, but the given base has SHA-256 ${hex(baseSha256)}`,
                f.offset,
              );
            }
            // Memory never shrinks, so an increment claiming less than its base cannot be right.
            if (base.byteLength > h.memoryBytes) {
              return failure(
                'corrupt',
                `corrupt snapshot: its memory of ${h.memoryBytes} bytes is smaller than its ${base.byteLength}-byte base`,
                f.offset,
              );
            }
          }
          got.memory = new Uint8Array(h.memoryBytes);
          if (h.base !== null) got.memory.set(base!);
          break;
        }
        case 'machine':
          got.machine = f.machine;
          break;
        case 'host':
          got.host = f.host;
          break;
        case 'blocks':
          for (const run of f.runs) got.memory!.set(run.bytes, run.firstBlock * got.header!.blockBytes);
          break;
        case 'trailer': {
          const sha = memorySha256(got.memory!);
          if (Buffer.compare(sha, f.trailer.memorySha256) !== 0) {
            return failure(
              'corrupt',
              `corrupt snapshot: the memory image hashes to ${hex(sha)}, but the trailer at byte ${f.offset} says ${hex(f.trailer.memorySha256)}`,
              f.offset,
            );
          }
          got.snapshot = {
            header: got.header!,
            machine: got.machine!,
            host: got.host!,
            memory: got.memory!,
            memorySha256: sha,
          };
          break;
        }
      }
    }
    return null;
  };

  const chunks: AsyncIterable<Uint8Array> | Uint8Array[] = source instanceof Uint8Array ? [source] : source;
  for await (const chunk of chunks) {
    const r = reader.push(chunk);
    if (!r.ok) return r;
    const bad = take(r.frames);
    if (bad !== null) return bad;
  }
  const end = reader.end();
  if (!end.ok) return end;
  return { ok: true, ...got.snapshot! };
}
