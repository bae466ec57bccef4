/**
 * The event log's byte format (docs/LOG-FORMAT.md draws it byte by byte).
 *
 *   file    := magic(8) version(u16) reserved(u16) frame*
 *   frame   := kind(u8) bodyLen(varint) body crc32(u32, over kind..body)
 *   HEADER  := what the VM started with; exactly one, first
 *   RECORDS := firstSeq(varint) count(varint) record*
 *   TRAILER := the summary of a clean stop; last, at most one
 *
 * Invariants:
 * - The format is append-only and streamable: a reader can act on each frame
 *   as soon as its CRC checks, before the rest of the log exists.
 * - Records are numbered from 0 without gaps: each RECORDS frame starts where
 *   the previous one ended.
 * - Nothing here does I/O; encoders return bytes and decoders take bytes.
 */
import { crc32 } from 'node:zlib';
import { ByteReader, ByteWriter, DecodeError } from '../../core/bytes.js';

export const LOG_MAGIC = Uint8Array.of(0x89, 0x4c, 0x53, 0x4c, 0x4f, 0x47, 0x0d, 0x0a); // "\x89LSLOG\r\n"
export const LOG_VERSION = 1;
export const PREAMBLE_BYTES = 12;

export const FrameKind = { HEADER: 1, RECORDS: 2, TRAILER: 3 } as const;

/**
 * The largest frame body a reader accepts. A record holds at most one host
 * call's input (a socket read is bounded by its 64 KiB ring, random_get by
 * RANDOM_BYTES_PER_CALL_MAX), so 64 MiB leaves room and still bounds what a
 * corrupt length field can make a reader allocate.
 */
export const FRAME_BODY_BYTES_MAX = 64 * 1024 * 1024;
/** Writers close a RECORDS frame once its body reaches this size. */
export const FRAME_BODY_BYTES_TARGET = 64 * 1024;
/** Limits on header fields, so a corrupt header cannot make a reader allocate without bound. */
const HEADER_STRING_BYTES_MAX = 1 << 20;
const HEADER_LIST_MAX = 1 << 16;

export function preamble(): Uint8Array {
  const w = new ByteWriter(PREAMBLE_BYTES);
  w.bytes(LOG_MAGIC);
  w.u16(LOG_VERSION);
  w.u16(0);
  return w.take();
}

/** The frame prefix (kind and body length); the caller appends the body and then frameCrc(). */
export function framePrefix(kind: number, bodyBytes: number): Uint8Array {
  const w = new ByteWriter(8);
  w.u8(kind);
  w.varint(bodyBytes);
  return w.take();
}

/** CRC32 over a frame's prefix and body pieces, as a 4-byte little-endian trailer. */
export function frameCrc(pieces: readonly Uint8Array[]): Uint8Array {
  let c = 0;
  for (const p of pieces) c = crc32(p, c);
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, c >>> 0, true);
  return out;
}

/** One whole frame as bytes. */
export function encodeFrame(kind: number, body: Uint8Array): Uint8Array {
  const prefix = framePrefix(kind, body.byteLength);
  const crc = frameCrc([prefix, body]);
  const out = new Uint8Array(prefix.byteLength + body.byteLength + 4);
  out.set(prefix, 0);
  out.set(body, prefix.byteLength);
  out.set(crc, prefix.byteLength + body.byteLength);
  return out;
}

// ---------------------------------------------------------------- header

export interface LogPreopen {
  guestPath: string;
  /** SHA-256 of the folder's content manifest (src/io/manifest.ts). */
  manifestSha256: Uint8Array;
}

export interface LogHeader {
  /** SHA-256 of the instrumented module that ran. */
  moduleSha256: Uint8Array;
  /** SHA-256 of the module as given, before instrumentation (for messages). */
  sourceSha256: Uint8Array;
  memoryMaxPages: number;
  callDepthMax: number;
  /** CPU budget in fuel units, or null for none. */
  fuelBudget: bigint | null;
  args: string[];
  env: string[];
  /** Listener addresses as given to --listen; fds 3.. in this order. */
  listeners: string[];
  preopens: LogPreopen[];
  /** Whether the guest's stdin was connected. */
  stdin: boolean;
  /** Where it was recorded (informational; a backup's join check compares them). */
  nodeVersion: string;
  arch: string;
  createdAtMs: number;
}

export function encodeHeader(h: LogHeader): Uint8Array {
  const w = new ByteWriter(1024);
  w.bytes(h.moduleSha256);
  w.bytes(h.sourceSha256);
  w.varint(h.memoryMaxPages);
  w.varint(h.callDepthMax);
  w.varbig(h.fuelBudget ?? 0n);
  for (const list of [h.args, h.env, h.listeners]) {
    w.varint(list.length);
    for (const s of list) w.string(s);
  }
  w.varint(h.preopens.length);
  for (const p of h.preopens) {
    w.string(p.guestPath);
    w.bytes(p.manifestSha256);
  }
  w.u8(h.stdin ? 1 : 0);
  w.string(h.nodeVersion);
  w.string(h.arch);
  w.varint(h.createdAtMs);
  return w.take();
}

export function decodeHeader(body: Uint8Array): LogHeader {
  const r = new ByteReader(body);
  const moduleSha256 = r.bytes(32).slice();
  const sourceSha256 = r.bytes(32).slice();
  const memoryMaxPages = r.varint();
  const callDepthMax = r.varint();
  const fuel = r.varbig();
  const lists: string[][] = [];
  for (let k = 0; k < 3; k++) {
    const n = r.varint();
    if (n > HEADER_LIST_MAX) throw new DecodeError('header list too long');
    const list: string[] = [];
    for (let i = 0; i < n; i++) list.push(r.string(HEADER_STRING_BYTES_MAX));
    lists.push(list);
  }
  const np = r.varint();
  if (np > HEADER_LIST_MAX) throw new DecodeError('too many preopens');
  const preopens: LogPreopen[] = [];
  for (let i = 0; i < np; i++) {
    preopens.push({ guestPath: r.string(HEADER_STRING_BYTES_MAX), manifestSha256: r.bytes(32).slice() });
  }
  const stdin = r.u8() === 1;
  const nodeVersion = r.string(256);
  const arch = r.string(256);
  const createdAtMs = r.varint();
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in header');
  return {
    moduleSha256,
    sourceSha256,
    memoryMaxPages,
    callDepthMax,
    fuelBudget: fuel === 0n ? null : fuel,
    args: lists[0]!,
    env: lists[1]!,
    listeners: lists[2]!,
    preopens,
    stdin,
    nodeVersion,
    arch,
    createdAtMs,
  };
}

// ---------------------------------------------------------------- trailer and summary

export type StopKind = 'exit' | 'trap' | 'signal' | 'budget' | 'end-of-log';
const STOP_CODES: readonly StopKind[] = ['exit', 'trap', 'signal', 'budget', 'end-of-log'];

/** The summary object of DESIGN.md §5, printed by record and replay and kept in the trailer. */
export interface Summary {
  events: number;
  memorySha256: string;
  outputSha256: string;
  exitCode: number | null;
  stop: StopKind;
}

export interface Trailer extends Summary {
  /** Number of outputs and their total bytes (informational). */
  outputs: number;
  outputBytes: number;
}

export function encodeTrailer(t: Trailer): Uint8Array {
  if (!STOP_CODES.includes(t.stop)) throw new Error(`unknown stop kind ${t.stop}`);
  if (!/^[0-9a-f]{64}$/.test(t.memorySha256) || !/^[0-9a-f]{64}$/.test(t.outputSha256)) {
    throw new Error('trailer hashes must be 64 lowercase hex digits');
  }
  const w = new ByteWriter(128);
  w.varint(t.events);
  w.u8(STOP_CODES.indexOf(t.stop));
  w.varint(t.exitCode === null ? 0 : t.exitCode + 1);
  w.bytes(Buffer.from(t.memorySha256, 'hex'));
  w.bytes(Buffer.from(t.outputSha256, 'hex'));
  w.varint(t.outputs);
  w.varint(t.outputBytes);
  return w.take();
}

export function decodeTrailer(body: Uint8Array): Trailer {
  const r = new ByteReader(body);
  const events = r.varint();
  const stop = STOP_CODES[r.u8()];
  if (stop === undefined) throw new DecodeError('unknown stop kind');
  const ec = r.varint();
  const memorySha256 = Buffer.from(r.bytes(32)).toString('hex');
  const outputSha256 = Buffer.from(r.bytes(32)).toString('hex');
  const outputs = r.varint();
  const outputBytes = r.varint();
  if (r.remaining !== 0) throw new DecodeError('trailing bytes in trailer');
  return {
    events,
    stop,
    exitCode: ec === 0 ? null : ec - 1,
    memorySha256,
    outputSha256,
    outputs,
    outputBytes,
  };
}

/** The RECORDS frame body prefix. */
export function recordsPrefix(firstSeq: number, count: number): Uint8Array {
  const w = new ByteWriter(16);
  w.varint(firstSeq);
  w.varint(count);
  return w.take();
}
