/**
 * The VM snapshot format: the persistent and wire form of a paused VM, for live clones,
 * migration, `lockstep vm snapshot --out FILE` and `lockstep run --from FILE`
 * (docs/SNAPSHOT-FORMAT.md draws it byte by byte).
 *
 *   file     := magic(8) version(u16) flags(u16) frame*
 *   frame    := kind(u8) bodyLen(varint) body crc32(u32, over kind..body), as in the event log
 *   frames   := HEADER MACHINE HOST DISK* BLOCKS* TRAILER, in exactly this order
 *   HEADER   := what the VM is (module, limits, args, env, listeners, preopens, how many preopens
 *               the disk covers) and where the cut is (log position, memory size, block size,
 *               the base image of an increment)
 *   MACHINE  := mutable globals, the asyncify stack and region, the clocks as last seen
 *   HOST     := the WASI host's resource table, opaque here
 *   DISK     := entries of the preopened folders as at the cut (directories, symlinks, chunks of
 *               regular files), depth first in byte order of names, parents before children
 *   BLOCKS   := runs of consecutive memory blocks, in increasing block order
 *   TRAILER  := the block count and SHA-256 of the memory image; the disk's entry and byte
 *               counts and the SHA-256 of its DISK bodies
 *
 * Invariants:
 * - Streamable both ways: SnapshotWriter hands each frame to a sink as it is made (memory blocks
 *   as views, never a copy of the whole image; files read in chunks of about 1 MiB), and
 *   SnapshotReader yields each frame as soon as its checksum holds and its entries obey the
 *   rules, holding at most one frame (bounded by SNAPSHOT_FRAME_BODY_BYTES_MAX, and by
 *   DISK_FRAME_BODY_BYTES_MAX for DISK frames).
 * - A snapshot is usable only whole: the TRAILER's SHA-256 over the rebuilt memory and over the
 *   disk stream is the final word, so readSnapshot never returns a partial image, and removes
 *   the folders it materialized when the snapshot turns out unusable.
 * - The disk cannot reach outside its folder: every DISK path is relative, made of plain names,
 *   and under a directory the same snapshot created before, checked before anything touches
 *   the file system.
 * - Incremental snapshots chain by content: HEADER.base is the SHA-256 of the memory image the
 *   blocks apply to, which is the TRAILER hash of the snapshot before it.
 * - Expected failures (bad input) are values with a code and a message naming the byte offset;
 *   only host bugs (a writer used out of order, impossible values) throw, and I/O errors
 *   (a stream, a folder) propagate as exceptions.
 * - The damage rule: with the preamble intact, a file cut short is 'truncated' and a file with a
 *   flipped bit is 'corrupt' (see SnapshotReader.end for the one ambiguous case and its rule).
 */
import { createHash, type Hash } from 'node:crypto';
import {
  closeSync,
  constants as fsConstants,
  mkdirSync,
  openSync,
  rmSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import { lstat, open, readdir, readlink, type FileHandle } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter, DecodeError } from '../core/bytes.js';
import { framePrefix } from '../ft/log/format.js';

export const SNAPSHOT_MAGIC = Uint8Array.of(0x89, 0x4c, 0x53, 0x53, 0x4e, 0x50, 0x0d, 0x0a); // "\x89LSSNP\r\n"
export const SNAPSHOT_VERSION = 1;
export const SNAPSHOT_PREAMBLE_BYTES = 12;

export const SnapshotFrameKind = { HEADER: 1, MACHINE: 2, HOST: 3, BLOCKS: 4, TRAILER: 5, DISK: 6 } as const;
const KIND_NAMES: Record<number, string> = {
  1: 'HEADER',
  2: 'MACHINE',
  3: 'HOST',
  4: 'BLOCKS',
  5: 'TRAILER',
  6: 'DISK',
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
/**
 * The TRAILER body is fixed: blocks u32, memorySha256, diskEntries u32, diskBytes u64,
 * diskSha256. A reader refuses any other length at once.
 */
export const TRAILER_BODY_BYTES = 4 + 32 + 4 + 8 + 32;
const TRAILER_FRAME_BYTES = 1 + 1 + TRAILER_BODY_BYTES + 4;
/** The guest clocks whose last values MACHINE carries: WASI clock ids 0..3. */
export const SNAPSHOT_CLOCK_COUNT = 4;
/**
 * asyncify's data header in front of its saved stack (i32 position, i32 end; see
 * src/vm/instrument/asyncify.ts): the region must hold it and the stack, or a rewind asserts.
 */
const ASYNCIFY_HEADER_BYTES = 8;

/**
 * The largest DISK frame body: writers fill DISK frames up to it and a reader refuses a longer
 * one as soon as it reads the length, so a reader holds at most 1 MiB of a file at once.
 */
export const DISK_FRAME_BODY_BYTES_MAX = 1024 * 1024;
/** The longest DISK path, in UTF-8 bytes (Linux's PATH_MAX; the guest itself reaches 3072). */
export const DISK_PATH_BYTES_MAX = 4096;
/** The longest name (path component) in a DISK path, in UTF-8 bytes (Linux's NAME_MAX). */
export const DISK_NAME_BYTES_MAX = 255;
/** The longest symlink target, in UTF-8 bytes (the guest's own limit, PATH_BYTES_MAX). */
export const DISK_SYMLINK_TARGET_BYTES_MAX = 4096;
/** The largest regular file (8 TiB, the guest's FILE_SIZE_MAX_BYTES). */
export const DISK_FILE_BYTES_MAX = 2 ** 43;
/** The entry types of DISK entries. */
export const DiskEntryType = { DIRECTORY: 1, FILE: 2, SYMLINK: 3 } as const;
/**
 * A writer starts a new DISK frame rather than put a file chunk smaller than this at the end of
 * a frame (unless the file's rest is that small), so big files go in chunks of about 1 MiB.
 */
const DISK_CHUNK_BYTES_MIN = 64 * 1024;
/** Restarts of one file's read (its inode replaced each time) before the writer gives up. */
const DISK_FILE_RESTARTS_MAX = 100;

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

/**
 * Strict UTF-8 that keeps a leading U+FEFF: the default TextDecoder drops a byte order mark, so
 * a name or argument starting with one would not come back as it went.
 */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A varint-length-prefixed UTF-8 string of at most maxBytes bytes; throws DecodeError. */
function readString(r: ByteReader, maxBytes: number): string {
  const b = r.lenBytes(maxBytes);
  try {
    return utf8.decode(b);
  } catch {
    throw new DecodeError('invalid UTF-8');
  }
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
 * memorySha256, in 4 MiB slices with the event loop let in between: a host
 * hashing a clone's 64 MiB must go on answering heartbeats meanwhile.
 */
export async function memorySha256Async(memory: Uint8Array): Promise<Uint8Array> {
  const h = createHash('sha256');
  const sliceBytes = 4 * 1024 * 1024;
  for (let at = 0; at < memory.byteLength; at += sliceBytes) {
    h.update(memory.subarray(at, Math.min(memory.byteLength, at + sliceBytes)));
    await yieldToLoop();
  }
  return new Uint8Array(h.digest());
}

/** Lets timers and I/O run (setImmediate), between slices of long work on the main thread. */
export function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Which blocks in [fromBlock, toBlock) hold a non-zero byte (a full snapshot leaves zero blocks out). */
export function nonZeroBlocksIn(
  memory: Uint8Array,
  blockBytes: number,
  fromBlock: number,
  toBlock: number,
): number[] {
  const buf = Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength);
  const zero = Buffer.alloc(blockBytes);
  const out: number[] = [];
  for (let b = fromBlock; b < toBlock; b++) {
    const at = b * blockBytes;
    if (buf.compare(zero, 0, blockBytes, at, at + blockBytes) !== 0) out.push(b);
  }
  return out;
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
   * How many preopens the DISK frames cover: preopens 0 .. diskPreopens-1, at most
   * preopenGuestPaths.length. 0 for a snapshot without a disk.
   */
  diskPreopens: number;
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
  /** Directories, regular files and symlinks in all DISK frames (a file counts once, however many chunks). */
  diskEntries: number;
  /** Bytes of file content in all DISK frames. */
  diskBytes: number;
  /** SHA-256 of the DISK frames' bodies, concatenated in order (of the empty string without a disk). */
  diskSha256: Uint8Array;
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
  check(
    Number.isInteger(h.diskPreopens) && h.diskPreopens >= 0 && h.diskPreopens <= h.preopenGuestPaths.length,
    `diskPreopens ${h.diskPreopens} is at most the ${h.preopenGuestPaths.length} preopens`,
  );
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
  w.varint(h.diskPreopens);
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
  const diskPreopens = r.varint();
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
  if (diskPreopens > preopenGuestPaths.length) {
    throw new DecodeError(
      `the disk covers ${diskPreopens} preopens but the VM has ${preopenGuestPaths.length}`,
    );
  }
  return {
    moduleSha256,
    memoryMaxPages,
    callDepthMax,
    args: lists[0]!,
    env: lists[1]!,
    listenerCount,
    preopenGuestPaths,
    diskPreopens,
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
  for (let i = 0; i < n; i++) out.push(readString(r, STRING_BYTES_MAX));
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
  check(isSha256(t.diskSha256), 'diskSha256 is 32 bytes');
  check(Number.isInteger(t.blocks) && t.blocks >= 0 && t.blocks <= 0xffffffff, 'block count is a u32');
  check(
    Number.isInteger(t.diskEntries) && t.diskEntries >= 0 && t.diskEntries <= 0xffffffff,
    'disk entry count is a u32',
  );
  check(Number.isSafeInteger(t.diskBytes) && t.diskBytes >= 0, 'disk byte count is a safe integer');
  const w = new ByteWriter(TRAILER_BODY_BYTES);
  w.u32(t.blocks);
  w.bytes(t.memorySha256);
  w.u32(t.diskEntries);
  w.u64(BigInt(t.diskBytes));
  w.bytes(t.diskSha256);
  return w.take();
}

export function decodeTrailer(body: Uint8Array): SnapshotTrailer {
  const r = new ByteReader(body);
  const blocks = r.u32();
  const memorySha256 = new Uint8Array(r.bytes(32));
  const diskEntries = r.u32();
  const diskBytes = r.u64();
  const diskSha256 = new Uint8Array(r.bytes(32));
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in the trailer');
  if (diskBytes > BigInt(Number.MAX_SAFE_INTEGER))
    throw new DecodeError(`${diskBytes} disk bytes exceed 2^53`);
  return { blocks, memorySha256, diskEntries, diskBytes: Number(diskBytes), diskSha256 };
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

// ---------------------------------------------------------------- the disk

/**
 * One DISK entry as a reader yields it. A regular file is one or more 'file' entries: the first
 * at offset 0 (with no bytes for an empty file), each next one continuing the previous one at
 * the offset where it ended. `bytes` is a view into the frame.
 */
export type DiskEntry =
  | { preopen: number; path: string; type: 'directory' }
  | { preopen: number; path: string; type: 'file'; offset: number; bytes: Uint8Array }
  | { preopen: number; path: string; type: 'symlink'; target: string };

/**
 * Why `path` cannot be a DISK path, or null when it can: a DISK path is relative, '/'-separated,
 * at most DISK_PATH_BYTES_MAX bytes of UTF-8, and each of its names is non-empty, not '.' or
 * '..', without NUL and at most DISK_NAME_BYTES_MAX bytes. Under a folder, such a path can only
 * name something inside it (the reader also checks that its parents are directories).
 */
export function diskPathProblem(path: string): string | null {
  if (path.length === 0) return 'is empty';
  if (path.startsWith('/')) return 'is absolute';
  if (path.includes('\0')) return 'contains NUL';
  if (Buffer.byteLength(path, 'utf8') > DISK_PATH_BYTES_MAX) {
    return `is longer than ${DISK_PATH_BYTES_MAX} bytes`;
  }
  for (const name of path.split('/')) {
    if (name === '') return 'has an empty name';
    if (name === '.' || name === '..') return `has a '${name}' name`;
    if (Buffer.byteLength(name, 'utf8') > DISK_NAME_BYTES_MAX) {
      return `has a name longer than ${DISK_NAME_BYTES_MAX} bytes`;
    }
  }
  return null;
}

/** Why `target` cannot be a symlink target, or null: non-empty, no NUL, at most 4096 bytes. */
function symlinkTargetProblem(target: string): string | null {
  if (target.length === 0) return 'is empty';
  if (target.includes('\0')) return 'contains NUL';
  if (Buffer.byteLength(target, 'utf8') > DISK_SYMLINK_TARGET_BYTES_MAX) {
    return `is longer than ${DISK_SYMLINK_TARGET_BYTES_MAX} bytes`;
  }
  return null;
}

/** A DISK entry's encoding up to its data: preopen, path, type, and the type's fields. */
function diskEntryHead(
  preopen: number,
  pathBytes: Uint8Array,
  e:
    | { type: 'directory' }
    | { type: 'file'; offset: number; length: number }
    | { type: 'symlink'; target: Uint8Array },
): Uint8Array {
  const w = new ByteWriter(32 + pathBytes.byteLength);
  w.varint(preopen);
  w.lenBytes(pathBytes);
  switch (e.type) {
    case 'directory':
      w.u8(DiskEntryType.DIRECTORY);
      break;
    case 'file':
      w.u8(DiskEntryType.FILE);
      w.varint(e.offset);
      w.varint(e.length);
      break;
    case 'symlink':
      w.u8(DiskEntryType.SYMLINK);
      w.lenBytes(e.target);
      break;
  }
  return w.take();
}

/**
 * Checks DISK entries against everything before them, as a reader meets them. Memory is the
 * depth of the tree: the entries of a preopen come depth first with the names in each
 * directory in increasing byte order, so the directories still open are a stack.
 */
class DiskStream {
  /** The preopen of the entries so far (-1 before the first). */
  private preopen = -1;
  /** The open directories of the current preopen, its root first: path and the last name listed in it. */
  private dirs: { path: string; last: Buffer | null }[] = [];
  /** The file the next chunk may continue: its path and where its last chunk ended. */
  private file: { path: string; end: number } | null = null;
  entries = 0;
  bytes = 0;
  private readonly sha: Hash = createHash('sha256');

  constructor(private readonly preopens: number) {}

  /** SHA-256 of the DISK bodies so far. */
  digest(): Uint8Array {
    return new Uint8Array(this.sha.copy().digest());
  }

  /** Decodes a DISK body and checks its entries; throws DecodeError naming the first wrong one. */
  take(body: Uint8Array): DiskEntry[] {
    if (body.byteLength === 0) throw new DecodeError('an empty DISK frame');
    const r = new ByteReader(body);
    const out: DiskEntry[] = [];
    while (r.remaining > 0) out.push(this.entry(r));
    this.sha.update(body);
    return out;
  }

  private entry(r: ByteReader): DiskEntry {
    const preopen = r.varint();
    let path: string;
    try {
      path = readString(r, DISK_PATH_BYTES_MAX);
    } catch (e) {
      throw new DecodeError(`a path that cannot be read: ${(e as Error).message}`);
    }
    const shown = JSON.stringify(path);
    const problem = diskPathProblem(path);
    if (problem !== null) throw new DecodeError(`the path ${shown} ${problem}`);
    const type = r.u8();
    let e: DiskEntry;
    switch (type) {
      case DiskEntryType.DIRECTORY:
        e = { preopen, path, type: 'directory' };
        break;
      case DiskEntryType.FILE: {
        const offset = r.varint();
        const n = r.varint();
        if (n > r.remaining) throw new DecodeError(`the chunk of ${shown} at offset ${offset} is cut short`);
        if (offset + n > DISK_FILE_BYTES_MAX) {
          throw new DecodeError(`the file ${shown} runs past ${DISK_FILE_BYTES_MAX} bytes`);
        }
        e = { preopen, path, type: 'file', offset, bytes: plain(r.bytes(n)) };
        break;
      }
      case DiskEntryType.SYMLINK: {
        const target = readString(r, DISK_SYMLINK_TARGET_BYTES_MAX);
        const bad = symlinkTargetProblem(target);
        if (bad !== null) throw new DecodeError(`the target of the symlink ${shown} ${bad}`);
        e = { preopen, path, type: 'symlink', target };
        break;
      }
      default:
        throw new DecodeError(`the entry ${shown} has unknown type ${type}`);
    }
    if (preopen >= this.preopens) {
      throw new DecodeError(
        `the entry ${shown} names preopen ${preopen}, but the disk covers ${this.preopens} preopens`,
      );
    }
    if (preopen < this.preopen) {
      throw new DecodeError(
        `the entry ${shown} of preopen ${preopen} follows entries of preopen ${this.preopen}`,
      );
    }
    if (preopen > this.preopen) {
      this.preopen = preopen;
      this.dirs = [{ path: '', last: null }];
      this.file = null;
    }
    if (e.type === 'file' && e.offset > 0) {
      // A continuation: the same file, right where its last chunk ended, with bytes.
      const f = this.file;
      if (f === null || f.path !== path || f.end !== e.offset) {
        throw new DecodeError(
          `the chunk of ${shown} at offset ${e.offset} does not continue its file` +
            (f !== null && f.path === path ? ` (which ends at ${f.end})` : ''),
        );
      }
      if (e.bytes.byteLength === 0) throw new DecodeError(`an empty chunk of ${shown} at offset ${e.offset}`);
      f.end += e.bytes.byteLength;
      this.bytes += e.bytes.byteLength;
      return e;
    }
    // A new entry: its parent is an open directory, and its name follows its last sibling's.
    const cut = path.lastIndexOf('/');
    const parent = cut < 0 ? '' : path.slice(0, cut);
    const name = Buffer.from(cut < 0 ? path : path.slice(cut + 1), 'utf8');
    while (this.dirs.length > 0 && this.dirs[this.dirs.length - 1]!.path !== parent) this.dirs.pop();
    const dir = this.dirs[this.dirs.length - 1];
    if (dir === undefined) {
      throw new DecodeError(
        `the entry ${shown} does not follow its parent directory ${JSON.stringify(parent)} (parents come first, depth first)`,
      );
    }
    if (dir.last !== null && Buffer.compare(name, dir.last) <= 0) {
      throw new DecodeError(
        `the entry ${shown} is out of order: ${JSON.stringify(dir.last.toString('utf8'))} came before it in the same directory`,
      );
    }
    dir.last = name;
    this.entries++;
    this.file = null;
    if (e.type === 'directory') this.dirs.push({ path, last: null });
    if (e.type === 'file') {
      this.file = { path, end: e.bytes.byteLength };
      this.bytes += e.bytes.byteLength;
    }
    return e;
  }
}

// ---------------------------------------------------------------- writer

/**
 * Where a writer's frames go: one call per frame, its pieces in order. A sink may return a
 * promise (any thenable) to hold the writer back, a socket's drain say: disk() waits for it
 * before reading on; the other methods are synchronous and do not wait, and settled() waits for
 * all of them. Any other return value is ignored, so `(p) => chunks.push(...p)` is a sink.
 */
export type SnapshotSink = (pieces: readonly Uint8Array[]) => unknown;

type WriterStep = 'header' | 'machine' | 'host' | 'disk' | 'disk-busy' | 'blocks' | 'done' | 'broken';

/** What one disk() call wrote. */
export interface DiskStats {
  /** Directories, regular files and symlinks written. */
  entries: number;
  /** Bytes of file content written. */
  bytes: number;
  /** Sockets, FIFOs and devices left out (freeze() does not copy them either). */
  skipped: number;
  /** File reads started again because the file's inode was replaced while it was read. */
  restarts: number;
}

/**
 * Writes a snapshot frame by frame into `sink`, one call per frame (the first one with the
 * preamble). Methods go in the format's order: header, machine, host, disk (once per covered
 * preopen, in index order, awaited), blocks (any number of calls, each listing blocks after the
 * previous call's), trailer. Anything else is a host bug and throws.
 *
 * BLOCKS pieces are views of the memory given to blocks(): the sink must write or copy them
 * before the memory changes (keep the guest paused until the sink is done with them). DISK
 * pieces are the writer's own buffers, never reused: the sink may keep them.
 */
export class SnapshotWriter {
  private step: WriterStep = 'header';
  private head: SnapshotHeader | null = null;
  private nextBlock = 0;
  private blocksWritten = 0;
  private written = 0;
  private nextPreopen = 0;
  /** The DISK frame being filled: its body pieces and their size. */
  private diskBody: Uint8Array[] = [];
  private diskBodyBytes = 0;
  private diskEntries = 0;
  private diskBytes = 0;
  private readonly diskSha: Hash = createHash('sha256');
  /** The sink's promises from the synchronous methods, and the first failure among them. */
  private pending: Promise<void> = Promise.resolve();
  private sinkFailure: { error: unknown } | null = null;

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
    this.step = 'disk';
  }

  /**
   * Writes the folder `root` as preopen `preopenIndex` of the disk: every directory, regular
   * file and symlink under it, depth first, names in byte order, so the same tree always gives
   * the same bytes. Sockets, FIFOs and devices are skipped. Call it once for each preopen the
   * header's diskPreopens covers, in index order, awaiting each call.
   *
   * `root` is a tree nothing changes, or a frozen tree (FileSystem.freeze) that the guest goes on
   * changing copy-on-write: a file's frozen entry is replaced by a rename before the live inode
   * is written. So each read of a file is followed by an lstat of its path: a chunk goes into a
   * frame only when the path still names the inode that was read. When it does not, the read
   * starts again from the start of the new file, checking (by CRC-32) that its first bytes are
   * the ones already written, then goes on where it was. Bytes held: about one frame
   * (DISK_FRAME_BODY_BYTES_MAX), plus what the sink keeps.
   *
   * Names and symlink targets must be UTF-8 and paths within the DISK limits, or it throws; it
   * throws too on I/O errors and on a file that changes other than by the copy-on-write
   * protocol. After a throw the writer is unusable (the sink has part of the disk).
   */
  async disk(preopenIndex: number, root: string): Promise<DiskStats> {
    this.expect('disk', 'disk');
    const h = this.head!;
    check(
      preopenIndex === this.nextPreopen && preopenIndex < h.diskPreopens,
      `disk(${preopenIndex}): the disk covers preopens 0..${h.diskPreopens - 1}, and ${this.nextPreopen < h.diskPreopens ? `preopen ${this.nextPreopen}` : 'none'} is due`,
    );
    this.step = 'disk-busy';
    const stats: DiskStats = { entries: 0, bytes: 0, skipped: 0, restarts: 0 };
    try {
      await this.settled();
      const st = await lstat(root);
      if (!st.isDirectory()) throw new Error(`snapshot: the disk folder ${root} is not a directory`);
      await this.walk(preopenIndex, root, '', stats);
      await this.flushDisk();
    } catch (e) {
      this.step = 'broken';
      throw e;
    }
    this.nextPreopen++;
    this.step = 'disk';
    return stats;
  }

  /**
   * Writes blocks of `memory` (the whole linear memory at the cut): 'all' for a full snapshot
   * (all-zero blocks are left out, since a reader starts from zeros), or the given block indexes
   * (any order, duplicates ignored; each call's blocks must follow the previous call's).
   */
  blocks(memory: Uint8Array, which: 'all' | Iterable<number>): void {
    this.expectAfterDisk('blocks');
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
    this.step = 'blocks';
    this.writeRuns(memory, indexes);
  }

  trailer(memorySha256: Uint8Array): void {
    this.expectAfterDisk('trailer');
    this.emit([
      encodeSnapshotFrame(
        SnapshotFrameKind.TRAILER,
        encodeTrailer({
          blocks: this.blocksWritten,
          memorySha256,
          diskEntries: this.diskEntries,
          diskBytes: this.diskBytes,
          diskSha256: new Uint8Array(this.diskSha.copy().digest()),
        }),
      ),
    ]);
    this.step = 'done';
  }

  /**
   * Resolves once the sink has taken every frame so far (for a sink that returns promises);
   * rejects with the sink's first failure.
   */
  async settled(): Promise<void> {
    await this.pending;
    if (this.sinkFailure !== null) throw this.sinkFailure.error;
  }

  /** Asserts that `method` may run now: `step` is the writer's state it needs. */
  private expect(method: string, step: WriterStep): void {
    check(this.step === step, `snapshot writer: ${method}() called when ${this.due()} was due`);
  }

  /** Asserts that blocks() or trailer() may run: after the host and every covered preopen's disk. */
  private expectAfterDisk(method: string): void {
    const ready =
      this.step === 'blocks' || (this.step === 'disk' && this.nextPreopen === this.head!.diskPreopens);
    check(ready, `snapshot writer: ${method}() called when ${this.due()} was due`);
  }

  private due(): string {
    switch (this.step) {
      case 'disk':
        return this.nextPreopen < this.head!.diskPreopens ? `disk(${this.nextPreopen})` : 'blocks or trailer';
      case 'disk-busy':
        return 'the end of the running disk()';
      case 'blocks':
        return 'blocks or trailer';
      case 'done':
        return 'nothing';
      case 'broken':
        return 'nothing (a disk() call failed)';
      default:
        return this.step;
    }
  }

  /** Hands a frame to the sink; returns the sink's promise, if any, having recorded its failure. */
  private emit(pieces: Uint8Array[]): Promise<void> | undefined {
    if (this.sinkFailure !== null) throw this.sinkFailure.error;
    for (const p of pieces) this.written += p.byteLength;
    const r = this.sink(pieces);
    if (!isThenable(r)) return undefined;
    const caught = Promise.resolve(r).then(
      () => undefined,
      (error: unknown) => {
        this.sinkFailure ??= { error };
      },
    );
    this.pending = this.pending.then(() => caught);
    return caught;
  }

  /** Emits the DISK frame being filled, if any, and waits for the sink to take it. */
  private async flushDisk(): Promise<void> {
    if (this.diskBodyBytes === 0) return;
    const body = this.diskBody;
    const prefix = framePrefix(SnapshotFrameKind.DISK, this.diskBodyBytes);
    const crc = frameCrc([prefix, ...body]);
    for (const p of body) this.diskSha.update(p);
    this.diskBody = [];
    this.diskBodyBytes = 0;
    await this.emit([prefix, ...body, crc]);
    if (this.sinkFailure !== null) throw this.sinkFailure.error;
  }

  /** Adds an entry's pieces to the DISK frame being filled (the caller made room). */
  private addDisk(...pieces: Uint8Array[]): void {
    for (const p of pieces) {
      if (p.byteLength === 0) continue;
      this.diskBody.push(p);
      this.diskBodyBytes += p.byteLength;
    }
    check(this.diskBodyBytes <= DISK_FRAME_BODY_BYTES_MAX, 'a DISK frame body stays within its limit');
  }

  /** Adds a directory or symlink entry, in a new frame if it does not fit this one. */
  private async addSmallEntry(head: Uint8Array, stats: DiskStats): Promise<void> {
    if (this.diskBodyBytes + head.byteLength > DISK_FRAME_BODY_BYTES_MAX) await this.flushDisk();
    this.addDisk(head);
    this.diskEntries++;
    stats.entries++;
  }

  /** Writes the entries under host directory `dir`, whose DISK path is `rel` ('' for the root). */
  private async walk(preopen: number, dir: string, rel: string, stats: DiskStats): Promise<void> {
    const names = await readdir(dir, { encoding: 'buffer' });
    names.sort(Buffer.compare);
    for (const raw of names) {
      let name: string;
      try {
        name = utf8.decode(raw);
      } catch {
        throw new Error(`snapshot: cannot carry ${dir}/${raw.toString('utf8')}: its name is not UTF-8`);
      }
      const path = rel === '' ? name : `${rel}/${name}`;
      const host = `${dir}/${name}`;
      const problem = diskPathProblem(path);
      if (problem !== null) {
        throw new Error(`snapshot: cannot carry ${host}: its path ${JSON.stringify(path)} ${problem}`);
      }
      const pathBytes = Buffer.from(path, 'utf8');
      const st = await lstat(host);
      if (st.isDirectory()) {
        await this.addSmallEntry(diskEntryHead(preopen, pathBytes, { type: 'directory' }), stats);
        await this.walk(preopen, host, path, stats);
      } else if (st.isSymbolicLink()) {
        const raw = await readlink(host, { encoding: 'buffer' });
        let target: string;
        try {
          target = utf8.decode(raw);
        } catch {
          throw new Error(`snapshot: cannot carry the symlink ${host}: its target is not UTF-8`);
        }
        const bad = symlinkTargetProblem(target);
        if (bad !== null) throw new Error(`snapshot: cannot carry the symlink ${host}: its target ${bad}`);
        await this.addSmallEntry(diskEntryHead(preopen, pathBytes, { type: 'symlink', target: raw }), stats);
      } else if (st.isFile()) {
        await this.writeFile(preopen, pathBytes, host, stats);
      } else {
        stats.skipped++;
      }
    }
  }

  /**
   * Writes one regular file in chunks, each checked against its path after it was read (see
   * disk()). The chunk sizes depend only on where the frame being filled stands, so a file read
   * again after a restart gives the same bytes as a read without one.
   */
  private async writeFile(
    preopen: number,
    pathBytes: Uint8Array,
    host: string,
    stats: DiskStats,
  ): Promise<void> {
    let file: OpenFile | null = await openStable(host, 0, 0);
    let offset = 0;
    let crc = 0; // CRC-32 of bytes 0..offset, already in frames
    let restarts = 0;
    try {
      for (;;) {
        const headMax = diskEntryHead(preopen, pathBytes, { type: 'file', offset, length: 0 }).byteLength + 2;
        const room = DISK_FRAME_BODY_BYTES_MAX - this.diskBodyBytes - headMax;
        if (this.diskBodyBytes > 0 && room < DISK_CHUNK_BYTES_MIN) {
          await this.flushDisk();
          continue;
        }
        // Sized by the file's size (one byte more, to see its end in the same read), so that a
        // small file does not pin a frame-sized buffer; the size is only a hint.
        const want = Math.min(room, Math.max(0, file.size - offset) + 1);
        const buf = Buffer.allocUnsafe(want);
        const n = await readFull(file.handle, buf, offset);
        if (!(await sameInode(host, file.ino, file.dev))) {
          // Replaced while read: what was read may hold the guest's writes. Start again.
          if (++restarts > DISK_FILE_RESTARTS_MAX) {
            throw new Error(`snapshot: ${host} kept changing while it was read (${restarts} restarts)`);
          }
          stats.restarts++;
          const old = file;
          file = null;
          await old.handle.close();
          file = await openStable(host, offset, crc);
          continue;
        }
        if (n === 0 && offset > 0) break;
        const chunk = buf.subarray(0, n);
        if (offset + n > DISK_FILE_BYTES_MAX) {
          throw new Error(`snapshot: cannot carry ${host}: it is larger than ${DISK_FILE_BYTES_MAX} bytes`);
        }
        this.addDisk(diskEntryHead(preopen, pathBytes, { type: 'file', offset, length: n }), chunk);
        if (offset === 0) {
          this.diskEntries++;
          stats.entries++;
        }
        crc = crc32(chunk, crc);
        offset += n;
        this.diskBytes += n;
        stats.bytes += n;
        if (n < want) break; // readFull stopped at the end of the file
      }
    } finally {
      await file?.handle.close();
    }
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

function isThenable(x: unknown): x is PromiseLike<unknown> {
  return (
    (typeof x === 'object' || typeof x === 'function') &&
    x !== null &&
    typeof (x as { then?: unknown }).then === 'function'
  );
}

/** Reads into `buf` from `position` until it is full or a read returns nothing (the end of the file). */
async function readFull(handle: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let got = 0;
  while (got < buf.byteLength) {
    const { bytesRead } = await handle.read(buf, got, buf.byteLength - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/** Whether `path` still names the inode (ino, dev); false when it names nothing (mid-replacement). */
async function sameInode(path: string, ino: bigint, dev: bigint): Promise<boolean> {
  try {
    const st = await lstat(path, { bigint: true });
    return st.ino === ino && st.dev === dev;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * Opens the file at `path` (not following a symlink) and checks that its first `prefix` bytes
 * have CRC-32 `crc`, i.e. are the bytes already written from the inode it replaced. Opens again
 * when the path is replaced meanwhile, and waits out the moment a frozen tree's hard link is
 * being remade (unlinked, then linked to the new copy).
 */
/** A file being read by the writer: its handle, the inode it is, and its size when opened (a hint). */
interface OpenFile {
  handle: FileHandle;
  ino: bigint;
  dev: bigint;
  size: number;
}

async function openStable(path: string, prefix: number, crc: number): Promise<OpenFile> {
  for (let attempt = 0; ; attempt++) {
    let handle: FileHandle;
    try {
      handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && attempt < DISK_FILE_RESTARTS_MAX) {
        await new Promise((resolve) => setTimeout(resolve, 5));
        continue;
      }
      throw e;
    }
    try {
      const st = await handle.stat({ bigint: true });
      if (!st.isFile()) throw new Error(`snapshot: ${path} is no longer a regular file`);
      let c = 0;
      let at = 0;
      const buf = Buffer.allocUnsafe(Math.min(prefix, DISK_FRAME_BODY_BYTES_MAX));
      while (at < prefix) {
        const n = await readFull(handle, buf.subarray(0, Math.min(buf.byteLength, prefix - at)), at);
        if (n === 0) break;
        c = crc32(buf.subarray(0, n), c);
        at += n;
      }
      if (await sameInode(path, st.ino, st.dev)) {
        if (at !== prefix || c >>> 0 !== crc >>> 0) {
          throw new Error(
            `snapshot: ${path} was replaced while it was read by a file whose first ${prefix} bytes differ; ` +
              'only a frozen tree written copy-on-write (FileSystem.freeze) may change under disk()',
          );
        }
        return { handle, ino: st.ino, dev: st.dev, size: Number(st.size) };
      }
      if (attempt >= DISK_FILE_RESTARTS_MAX) {
        throw new Error(`snapshot: ${path} kept changing while it was read`);
      }
    } catch (e) {
      await handle.close();
      throw e;
    }
    await handle.close();
  }
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
  | { type: 'disk'; offset: number; entries: DiskEntry[] }
  | { type: 'blocks'; offset: number; runs: BlockRun[] }
  | { type: 'trailer'; offset: number; trailer: SnapshotTrailer };

function failure(code: SnapshotErrorCode, message: string, offset: number): SnapshotFailure {
  return { ok: false, code, message, offset };
}

type ReaderStep = 'preamble' | 'header' | 'machine' | 'host' | 'disk' | 'blocks' | 'done';

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
 *   bytes, a body over the limit, a DISK body over DISK_FRAME_BODY_BYTES_MAX, a TRAILER not
 *   TRAILER_BODY_BYTES long), an unknown kind, a frame out of order or that does not decode,
 *   a DISK entry that breaks a rule (a path that could leave its folder, a parent not listed
 *   before, names out of order, a chunk that does not continue its file), a block count or disk
 *   count or disk hash that differs from the trailer's, and any byte after the trailer.
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
  /** The disk's entries so far, checked (created with the header). */
  private disk: DiskStream | null = null;
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
          `the snapshot is truncated: it ends at byte ${this.offset}, before its ${this.step === 'blocks' || this.step === 'disk' ? 'trailer' : `${this.step} frame`}`,
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
      if (kind === SnapshotFrameKind.DISK && len > DISK_FRAME_BODY_BYTES_MAX) {
        return failure(
          'corrupt',
          `corrupt snapshot: the DISK frame at byte ${at} claims ${len} bytes, over the ${DISK_FRAME_BODY_BYTES_MAX}-byte limit`,
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
    const expected: Record<Exclude<ReaderStep, 'preamble' | 'done'>, [number[], string]> = {
      header: [[SnapshotFrameKind.HEADER], 'the HEADER'],
      machine: [[SnapshotFrameKind.MACHINE], 'the MACHINE'],
      host: [[SnapshotFrameKind.HOST], 'the HOST'],
      disk: [
        [SnapshotFrameKind.DISK, SnapshotFrameKind.BLOCKS, SnapshotFrameKind.TRAILER],
        'DISK, BLOCKS or the TRAILER',
      ],
      blocks: [[SnapshotFrameKind.BLOCKS, SnapshotFrameKind.TRAILER], 'BLOCKS or the TRAILER'],
    };
    const [kinds, due] = expected[this.step as keyof typeof expected];
    if (!kinds.includes(kind)) {
      return failure(
        'corrupt',
        `corrupt snapshot: a ${KIND_NAMES[kind]} frame at byte ${at} where ${due} was due`,
        at,
      );
    }
    switch (kind) {
      case SnapshotFrameKind.HEADER:
        this.head = decodeHeader(body);
        this.disk = new DiskStream(this.head.diskPreopens);
        this.step = 'machine';
        return { type: 'header', offset: at, header: this.head };
      case SnapshotFrameKind.MACHINE:
        this.step = 'host';
        return { type: 'machine', offset: at, machine: decodeMachine(body, this.head!.memoryBytes) };
      case SnapshotFrameKind.HOST:
        this.step = 'disk';
        return { type: 'host', offset: at, host: plain(body) };
      case SnapshotFrameKind.DISK:
        return { type: 'disk', offset: at, entries: this.disk!.take(body) };
      case SnapshotFrameKind.BLOCKS: {
        this.step = 'blocks';
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
        const disk = this.disk!;
        if (trailer.diskEntries !== disk.entries || trailer.diskBytes !== disk.bytes) {
          return failure(
            'corrupt',
            `corrupt snapshot: the trailer at byte ${at} counts ${trailer.diskEntries} disk entries and ${trailer.diskBytes} disk bytes but the snapshot holds ${disk.entries} and ${disk.bytes}`,
            at,
          );
        }
        const diskSha = disk.digest();
        if (Buffer.compare(diskSha, trailer.diskSha256) !== 0) {
          return failure(
            'corrupt',
            `corrupt snapshot: the disk frames hash to ${hex(diskSha)}, but the trailer at byte ${at} says ${hex(trailer.diskSha256)}`,
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

/** One directory, regular file or symlink of a snapshot's disk, as readSnapshot reports it. */
export type DiskEntryInfo =
  | { preopen: number; path: string; type: 'directory' }
  | { preopen: number; path: string; type: 'file'; bytes: number }
  | { preopen: number; path: string; type: 'symlink'; target: string };

/** The disk of a snapshot read back whole. */
export interface SnapshotDisk {
  /** The preopens it covers (the header's diskPreopens): 0 .. preopens-1. */
  preopens: number;
  /** Every directory, file and symlink, in the snapshot's order (depth first, names in byte order). */
  entries: DiskEntryInfo[];
  /** Bytes of file content in all. */
  bytes: number;
  /** SHA-256 of the DISK frames' bodies, as the trailer has it. */
  sha256: Uint8Array;
}

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
  /** The disk's entries (materialized under diskInto when it was given). */
  disk: SnapshotDisk;
}

export interface ReadSnapshotOptions {
  /**
   * A folder to materialize the disk in: preopen i goes to `diskInto/i`, which must not exist
   * yet (diskInto itself may). Directories are made with mode 0700, files with 0600, symlinks
   * as they were. Without it the disk is checked and its content dropped.
   */
  diskInto?: string;
}

/**
 * Reads a whole snapshot from bytes or a stream of chunks (a file or socket stream), rebuilds
 * the memory (from zeros, or from `base` for an incremental snapshot), checks the trailer's
 * SHA-256s, and materializes the disk under `opts.diskInto` if given. `base` must be the memory
 * image the increment applies to (its SHA-256 is compared with the header's); it is ignored for
 * a full snapshot.
 *
 * Everything wrong with the bytes comes back as a SnapshotFailure; I/O errors from the stream or
 * while materializing (diskInto/i already there, a full disk) propagate. Either way the folders
 * diskInto/i made so far are removed: a failed read leaves nothing behind. A DISK entry is
 * written only after the reader has checked it (relative, plain names, under a directory this
 * read created), so nothing is ever written outside diskInto.
 */
/** How long a snapshot read works on the main thread before it lets the event loop in. */
const READ_YIELD_MS = 15;

export async function readSnapshot(
  source: Uint8Array | AsyncIterable<Uint8Array>,
  base: Uint8Array | null,
  opts: ReadSnapshotOptions = {},
): Promise<({ ok: true } & Snapshot) | SnapshotFailure> {
  const reader = new SnapshotReader();
  const into = opts.diskInto;
  // What the frames have given so far; a holder object, since take() fills it in.
  const got: {
    header: SnapshotHeader | null;
    machine: SnapshotMachine | null;
    host: Uint8Array | null;
    memory: Uint8Array | null;
    snapshot: Snapshot | null;
  } = { header: null, machine: null, host: null, memory: null, snapshot: null };
  const entries: DiskEntryInfo[] = [];
  let diskBytes = 0;
  /** The preopen folders made under diskInto, removed if the read fails. */
  const made: string[] = [];
  /** The file being materialized, open until an entry other than its next chunk. */
  let out: number | null = null;
  const closeOut = (): void => {
    if (out !== null) {
      const fd = out;
      out = null;
      closeSync(fd);
    }
  };

  const materialize = (e: DiskEntry): void => {
    // The reader checked the path: plain names under a directory made here before.
    const target = `${into}/${e.preopen}/${e.path}`;
    switch (e.type) {
      case 'directory':
        closeOut();
        mkdirSync(target, { mode: 0o700 });
        break;
      case 'symlink':
        closeOut();
        symlinkSync(e.target, target);
        break;
      case 'file':
        if (e.offset === 0) {
          closeOut();
          const flags =
            fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
          out = openSync(target, flags, 0o600);
        }
        for (let at = 0; at < e.bytes.byteLength;) at += writeSync(out!, e.bytes, at);
        break;
    }
  };

  // Long reads (a 64 MiB clone) let the event loop in every so often: the host's heartbeats
  // must go on while it restores.
  let lastYieldMs = performance.now();
  const take = async (frames: SnapshotFrame[]): Promise<SnapshotFailure | null> => {
    for (const f of frames) {
      if (performance.now() - lastYieldMs > READ_YIELD_MS) {
        await yieldToLoop();
        lastYieldMs = performance.now();
      }
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
          if (into !== undefined && h.diskPreopens > 0) {
            mkdirSync(into, { recursive: true, mode: 0o700 });
            for (let i = 0; i < h.diskPreopens; i++) {
              const dir = `${into}/${i}`;
              mkdirSync(dir, { mode: 0o700 }); // throws if it exists: never write into a folder not ours
              made.push(dir);
            }
          }
          break;
        }
        case 'machine':
          got.machine = f.machine;
          break;
        case 'host':
          got.host = f.host;
          break;
        case 'disk':
          for (const e of f.entries) {
            if (e.type === 'file') {
              diskBytes += e.bytes.byteLength;
              if (e.offset === 0) entries.push({ preopen: e.preopen, path: e.path, type: 'file', bytes: 0 });
              const last = entries[entries.length - 1]!;
              if (last.type === 'file') last.bytes += e.bytes.byteLength;
            } else {
              entries.push(
                e.type === 'directory'
                  ? { preopen: e.preopen, path: e.path, type: 'directory' }
                  : { preopen: e.preopen, path: e.path, type: 'symlink', target: e.target },
              );
            }
            if (into !== undefined) materialize(e);
          }
          break;
        case 'blocks':
          closeOut();
          for (const run of f.runs) got.memory!.set(run.bytes, run.firstBlock * got.header!.blockBytes);
          break;
        case 'trailer': {
          closeOut();
          const sha = await memorySha256Async(got.memory!);
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
            disk: {
              preopens: got.header!.diskPreopens,
              entries,
              bytes: diskBytes,
              sha256: f.trailer.diskSha256,
            },
          };
          break;
        }
      }
    }
    return null;
  };

  const read = async (): Promise<({ ok: true } & Snapshot) | SnapshotFailure> => {
    const chunks: AsyncIterable<Uint8Array> | Uint8Array[] = source instanceof Uint8Array ? [source] : source;
    for await (const chunk of chunks) {
      const r = reader.push(chunk);
      if (!r.ok) return r;
      const bad = await take(r.frames);
      if (bad !== null) return bad;
    }
    const end = reader.end();
    if (!end.ok) return end;
    return { ok: true, ...got.snapshot! };
  };

  let result: ({ ok: true } & Snapshot) | SnapshotFailure | null = null;
  try {
    result = await read();
    return result;
  } finally {
    try {
      closeOut();
    } finally {
      if (result === null || !result.ok) {
        for (const dir of made) rmSync(dir, { recursive: true, force: true });
      }
    }
  }
}
