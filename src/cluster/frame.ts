/**
 * Host-to-host frames: the authenticated envelope of every message one host
 * sends another, heartbeats over UDP today and the FT log channel over TCP
 * later. docs/CLUSTER-PROTOCOL.md draws the bytes.
 *
 * Role: encode a frame, and decide about a received buffer whether it is a
 * genuine, current frame for this host, as a value and never by throwing.
 * ReplayGuard then refuses frames seen before and frames from a sender's
 * earlier incarnation. The heartbeat payload codec lives here too, so that
 * every byte on the wire is defined in one file.
 *
 * Invariants:
 * - A frame is self-delimiting: its header says how long it is (peekFrameLength),
 *   so a byte stream can carry frames back to back. A datagram holds exactly one.
 * - Nothing is allocated for a frame before its claimed length has been checked
 *   against FRAME_BYTES_MAX.
 * - The MAC (HMAC-SHA256 with the cluster secret) covers every byte before it,
 *   and is compared in constant time. Only the magic, the version, the lengths
 *   and the cluster id are looked at before it is checked; everything a caller
 *   acts on (sender, receiver, sequence number, payload) is authenticated.
 * - decodeFrame never throws on any input; it throws only on a caller's bug
 *   (a short key, a malformed expected cluster id).
 * - A frame names its receiver, and the receiver checks that it is itself, so
 *   a frame cannot be redirected to another host.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { HeartbeatMsg } from './membership.js';

/** The first two bytes of every frame: "LS" (Lockstep). */
export const FRAME_MAGIC = Uint8Array.of(0x4c, 0x53);
/** The layout drawn in docs/CLUSTER-PROTOCOL.md. A receiver refuses any other version. */
export const FRAME_VERSION = 1;
/**
 * The largest frame, all bytes counted. Capping it keeps the memory a peer can
 * make us allocate bounded no matter what its header claims; 1 MiB leaves room
 * for the FT channel's batches of log records, whose writer closes a batch at
 * 64 KiB (docs/LOG-FORMAT.md).
 */
export const FRAME_BYTES_MAX = 1024 * 1024;
/** A host name's longest UTF-8 encoding, as NAME_RE in src/coord/records.ts allows. */
export const FRAME_NAME_BYTES_MAX = 63;
/** The HMAC-SHA256 tag at the end of every frame. */
export const FRAME_MAC_BYTES = 32;
/** The shortest key accepted: the cluster secret has 32 random bytes; a shorter one is a configuration bug. */
export const FRAME_KEY_BYTES_MIN = 16;
/** Bytes of a frame besides its two names and its payload. */
const FRAME_FIXED_BYTES = 2 + 1 + 1 + 16 + 1 + 8 + 1 + 4 + 8 + 4 + FRAME_MAC_BYTES;
/** The shortest possible frame: one-byte names and an empty payload. */
export const FRAME_BYTES_MIN = FRAME_FIXED_BYTES + 2;
/** The largest payload that fits in a frame whatever the names' lengths. */
export const FRAME_PAYLOAD_BYTES_MAX = FRAME_BYTES_MAX - FRAME_FIXED_BYTES - 2 * FRAME_NAME_BYTES_MAX;
/** Sequence numbers are safe integers (the high word of the u64 is below 2^21). */
export const FRAME_SEQ_MAX = Number.MAX_SAFE_INTEGER;

/**
 * What a frame carries. Kind 0 is never valid; the FT log channel assigns its
 * kinds from 2 on, and a receiver drops kinds it does not expect on a channel.
 */
export const FrameKind = {
  HEARTBEAT: 1,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** The heartbeat channel: heartbeats are stream 0 of every sender incarnation. */
export const HEARTBEAT_CHANNEL = 0;

export interface Frame {
  /** 1..255; see FrameKind. */
  kind: number;
  /** The cluster's id, 32 hex digits (ClusterRecord.clusterId). */
  clusterId: string;
  /** The sender's host name, 1..63 UTF-8 bytes. */
  from: string;
  /** The sender's incarnation, 16 hex digits (HostRecord.incarnation). Decoded frames give lower case. */
  fromIncarnation: string;
  /** The receiver's host name, 1..63 UTF-8 bytes. */
  to: string;
  /** A stream id (u32); sequence numbers count per channel. */
  channel: number;
  /** Strictly increasing per (from, fromIncarnation, channel); 0..FRAME_SEQ_MAX. */
  seq: number;
  /** At most FRAME_PAYLOAD_BYTES_MAX bytes. A decoded frame's payload is its own copy. */
  payload: Uint8Array;
}

export type FrameRejection =
  /** Fewer bytes than the frame needs (truncated, or a stream that has not delivered it all yet). */
  | 'short'
  /** Not a Lockstep frame. */
  | 'magic'
  /** A Lockstep frame of another format version. */
  | 'version'
  /** The MAC does not match: a wrong key, a forgery or damage. */
  | 'mac'
  /** A frame of another cluster (possibly sharing this port by mistake). */
  | 'cluster'
  /** A genuine frame addressed to another host: misrouted, or redirected by someone. */
  | 'not-for-me'
  /** The buffer, or the length its header claims, exceeds FRAME_BYTES_MAX. */
  | 'too-big'
  /** Impossible field values, or bytes after the frame's end. */
  | 'malformed';

/** A received frame: its payload is a Buffer of its own (a copy), so callers may keep it and read it with Buffer's methods. */
export type DecodedFrame = Frame & { payload: Buffer };

export type DecodeResult = { ok: true; frame: DecodedFrame } | { ok: false; reason: FrameRejection };

export interface FrameExpect {
  /** This cluster's id, 32 hex digits. */
  clusterId: string;
  /** This host's name: frames for anyone else are refused. */
  self: string;
}

const HEX32_RE = /^[0-9a-fA-F]{32}$/;
const HEX16_RE = /^[0-9a-fA-F]{16}$/;
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`assertion: ${message}`);
}

function assertKey(key: Uint8Array): void {
  assert(
    key.byteLength >= FRAME_KEY_BYTES_MIN,
    `frame key has ${key.byteLength} bytes, fewer than ${FRAME_KEY_BYTES_MIN}`,
  );
}

function nameBytes(name: string, what: string): Uint8Array {
  const b = utf8Encoder.encode(name);
  assert(
    b.byteLength >= 1 && b.byteLength <= FRAME_NAME_BYTES_MAX,
    `frame ${what} name has ${b.byteLength} bytes (1..${FRAME_NAME_BYTES_MAX})`,
  );
  return b;
}

/**
 * Encodes a frame and appends its MAC. Every field is checked: a frame that
 * cannot be encoded is the caller's bug, so it throws an assertion error.
 */
export function encodeFrame(f: Frame, key: Uint8Array): Buffer {
  assertKey(key);
  assert(Number.isInteger(f.kind) && f.kind >= 1 && f.kind <= 255, `frame kind ${f.kind} is not 1..255`);
  assert(HEX32_RE.test(f.clusterId), 'frame clusterId is not 32 hex digits');
  assert(HEX16_RE.test(f.fromIncarnation), 'frame fromIncarnation is not 16 hex digits');
  assert(
    Number.isInteger(f.channel) && f.channel >= 0 && f.channel <= 0xffffffff,
    `frame channel ${f.channel} is not a u32`,
  );
  assert(Number.isSafeInteger(f.seq) && f.seq >= 0, `frame seq ${f.seq} is not a safe non-negative integer`);
  assert(
    f.payload.byteLength <= FRAME_PAYLOAD_BYTES_MAX,
    `frame payload of ${f.payload.byteLength} bytes exceeds ${FRAME_PAYLOAD_BYTES_MAX}`,
  );
  const from = nameBytes(f.from, 'from');
  const to = nameBytes(f.to, 'to');
  const total = FRAME_FIXED_BYTES + from.byteLength + to.byteLength + f.payload.byteLength;
  const out = Buffer.allocUnsafe(total);
  let at = 0;
  out[at++] = FRAME_MAGIC[0]!;
  out[at++] = FRAME_MAGIC[1]!;
  out[at++] = FRAME_VERSION;
  out[at++] = f.kind;
  at += out.write(f.clusterId, at, 16, 'hex');
  out[at++] = from.byteLength;
  out.set(from, at);
  at += from.byteLength;
  at += out.write(f.fromIncarnation, at, 8, 'hex');
  out[at++] = to.byteLength;
  out.set(to, at);
  at += to.byteLength;
  at = out.writeUInt32LE(f.channel, at);
  // The u64 is written as two u32 halves so that no BigInt is needed; seq < 2^53.
  at = out.writeUInt32LE(f.seq % 2 ** 32, at);
  at = out.writeUInt32LE(Math.floor(f.seq / 2 ** 32), at);
  at = out.writeUInt32LE(f.payload.byteLength, at);
  out.set(f.payload, at);
  at += f.payload.byteLength;
  createHmac('sha256', key).update(out.subarray(0, at)).digest().copy(out, at);
  at += FRAME_MAC_BYTES;
  assert(at === total, `frame encoder wrote ${at} bytes of ${total}`);
  return out;
}

/** Where a frame's fields are, found from its header alone (nothing authenticated yet). */
interface FrameLayout {
  fromAt: number;
  fromBytes: number;
  incarnationAt: number;
  toAt: number;
  toBytes: number;
  channelAt: number;
  payloadAt: number;
  payloadBytes: number;
  macAt: number;
  frameBytes: number;
}

type LayoutResult =
  | { ok: true; layout: FrameLayout }
  | { ok: false; reason: 'short' | 'magic' | 'version' | 'too-big' | 'malformed' };

/**
 * Reads the header of the frame at the start of `buf` far enough to know its
 * length. 'short' means the header itself is cut off.
 */
function readLayout(buf: Uint8Array): LayoutResult {
  const n = buf.byteLength;
  if (n < 1) return { ok: false, reason: 'short' };
  if (buf[0] !== FRAME_MAGIC[0]) return { ok: false, reason: 'magic' };
  if (n < 2) return { ok: false, reason: 'short' };
  if (buf[1] !== FRAME_MAGIC[1]) return { ok: false, reason: 'magic' };
  if (n < 3) return { ok: false, reason: 'short' };
  if (buf[2] !== FRAME_VERSION) return { ok: false, reason: 'version' };
  const fromLenAt = 20;
  if (n < fromLenAt + 1) return { ok: false, reason: 'short' };
  const fromBytes = buf[fromLenAt]!;
  if (fromBytes < 1 || fromBytes > FRAME_NAME_BYTES_MAX) return { ok: false, reason: 'malformed' };
  const fromAt = fromLenAt + 1;
  const incarnationAt = fromAt + fromBytes;
  const toLenAt = incarnationAt + 8;
  if (n < toLenAt + 1) return { ok: false, reason: 'short' };
  const toBytes = buf[toLenAt]!;
  if (toBytes < 1 || toBytes > FRAME_NAME_BYTES_MAX) return { ok: false, reason: 'malformed' };
  const toAt = toLenAt + 1;
  const channelAt = toAt + toBytes;
  const payloadLenAt = channelAt + 4 + 8;
  if (n < payloadLenAt + 4) return { ok: false, reason: 'short' };
  const payloadBytes =
    (buf[payloadLenAt]! | (buf[payloadLenAt + 1]! << 8) | (buf[payloadLenAt + 2]! << 16)) +
    buf[payloadLenAt + 3]! * 2 ** 24;
  const payloadAt = payloadLenAt + 4;
  // Compared before any use of the length: a hostile header can claim up to 4 GiB.
  const frameBytes = payloadAt + payloadBytes + FRAME_MAC_BYTES;
  if (frameBytes > FRAME_BYTES_MAX) return { ok: false, reason: 'too-big' };
  return {
    ok: true,
    layout: {
      fromAt,
      fromBytes,
      incarnationAt,
      toAt,
      toBytes,
      channelAt,
      payloadAt,
      payloadBytes,
      macAt: payloadAt + payloadBytes,
      frameBytes,
    },
  };
}

export type PeekResult =
  | { ok: true; frameBytes: number }
  | { ok: false; reason: 'short' | 'magic' | 'version' | 'too-big' | 'malformed' };

/**
 * The length of the frame that starts at the beginning of `buf`, for readers of
 * a byte stream: 'short' means "read more" (at most 172 header bytes are needed
 * to know the length); any other rejection means the stream is not carrying
 * frames and must be closed. The frame itself is checked by decodeFrame on
 * exactly `frameBytes` bytes.
 */
export function peekFrameLength(buf: Uint8Array): PeekResult {
  const r = readLayout(buf);
  return r.ok ? { ok: true, frameBytes: r.layout.frameBytes } : r;
}

/**
 * Decides whether `buf` is exactly one genuine frame of this cluster for this
 * host. Checks, in order: size, magic, version, lengths, cluster id, MAC, then
 * field values and the receiver. It never throws on any input.
 */
export function decodeFrame(buf: Uint8Array, key: Uint8Array, expect: FrameExpect): DecodeResult {
  assertKey(key);
  assert(HEX32_RE.test(expect.clusterId), 'expected clusterId is not 32 hex digits');
  if (buf.byteLength > FRAME_BYTES_MAX) return { ok: false, reason: 'too-big' };
  const r = readLayout(buf);
  if (!r.ok) return r;
  const l = r.layout;
  if (buf.byteLength < l.frameBytes) return { ok: false, reason: 'short' };
  if (buf.byteLength > l.frameBytes) return { ok: false, reason: 'malformed' };
  // The cluster id is compared before the MAC so that another cluster's traffic
  // (which carries another key) is reported as such rather than as forgeries.
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (!view.subarray(4, 20).equals(Buffer.from(expect.clusterId, 'hex'))) {
    return { ok: false, reason: 'cluster' };
  }
  const mac = createHmac('sha256', key).update(view.subarray(0, l.macAt)).digest();
  if (!timingSafeEqual(mac, view.subarray(l.macAt, l.frameBytes))) return { ok: false, reason: 'mac' };

  // Authenticated from here on. The values below can still be impossible only
  // if a peer with the key has a bug; they are refused, never trusted.
  const kind = view[3]!;
  if (kind === 0) return { ok: false, reason: 'malformed' };
  let from: string;
  let to: string;
  try {
    from = utf8Decoder.decode(view.subarray(l.fromAt, l.fromAt + l.fromBytes));
    to = utf8Decoder.decode(view.subarray(l.toAt, l.toAt + l.toBytes));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  const channel = view.readUInt32LE(l.channelAt);
  const seqLo = view.readUInt32LE(l.channelAt + 4);
  const seqHi = view.readUInt32LE(l.channelAt + 8);
  if (seqHi >= 2 ** 21) return { ok: false, reason: 'malformed' };
  if (to !== expect.self) return { ok: false, reason: 'not-for-me' };
  return {
    ok: true,
    frame: {
      kind,
      clusterId: view.toString('hex', 4, 20),
      from,
      fromIncarnation: view.toString('hex', l.incarnationAt, l.incarnationAt + 8),
      to,
      channel,
      seq: seqHi * 2 ** 32 + seqLo,
      payload: Buffer.from(view.subarray(l.payloadAt, l.macAt)),
    },
  };
}

// ---------------------------------------------------------------------------
// Replay protection
// ---------------------------------------------------------------------------

export type ReplayVerdict =
  /** New: act on it. */
  | 'ok'
  /** Seen before, or older than the window: drop it. */
  | 'replay'
  /** The sender's incarnation is not the one registered (or the sender is not registered at all). */
  | 'stale-incarnation'
  /** The sender already uses channelsPerPeerMax channels: a peer's bug; dropped to keep memory bounded. */
  | 'channels-full';

/** How far behind the highest sequence number a reordered frame may arrive and still be accepted. */
export const REPLAY_WINDOW = 64;

/** The state of one (sender, incarnation, channel): the highest seq and which of the 64 below it were seen. */
interface Window {
  highest: number;
  /** Bit i of (hi:lo) is set when seq `highest - i` was accepted; bit 0 is `highest` itself. */
  lo: number;
  hi: number;
}

interface PeerWindows {
  incarnation: string;
  channels: Map<number, Window>;
}

/**
 * Refuses replayed frames: per (sender, incarnation, channel) it keeps the
 * highest sequence number accepted and a 64-entry bitmap below it, as IPsec
 * does, because UDP may reorder. Memory is bounded: state exists only for
 * peers the caller has declared (setIncarnation), at most channelsPerPeerMax
 * channels each.
 *
 * A restarted receiver starts with empty windows, so until the sender moves
 * on to a new incarnation, a frame it sent to the receiver's previous
 * incarnation can be accepted once more; docs/CLUSTER-PROTOCOL.md discusses
 * why that is harmless for heartbeats.
 */
export class ReplayGuard {
  private readonly peers = new Map<string, PeerWindows>();

  constructor(readonly channelsPerPeerMax = 1024) {
    assert(
      Number.isInteger(channelsPerPeerMax) && channelsPerPeerMax >= 1,
      'channelsPerPeerMax must be >= 1',
    );
  }

  /** Declares the current incarnation of a peer (from the coordinator); a new one discards the old state. */
  setIncarnation(name: string, incarnation: string): void {
    const inc = incarnation.toLowerCase();
    const p = this.peers.get(name);
    if (p !== undefined && p.incarnation === inc) return;
    this.peers.set(name, { incarnation: inc, channels: new Map() });
  }

  /** Forgets a peer (it left, or is no longer registered): its frames are refused from now on. */
  forget(name: string): void {
    this.peers.delete(name);
  }

  /**
   * Makes the known peers exactly the registered hosts that are 'up' (except
   * `self`), with their incarnations: the usual way to keep the guard in step
   * with the coordinator.
   */
  syncRegistry(
    hosts: readonly { name: string; incarnation: string; state: 'up' | 'left' }[],
    self: string | null = null,
  ): void {
    const keep = new Set<string>();
    for (const h of hosts) {
      if (h.state !== 'up' || h.name === self) continue;
      keep.add(h.name);
      this.setIncarnation(h.name, h.incarnation);
    }
    for (const name of [...this.peers.keys()]) if (!keep.has(name)) this.peers.delete(name);
  }

  /** The incarnation declared for `name`, or null. */
  incarnationOf(name: string): string | null {
    return this.peers.get(name)?.incarnation ?? null;
  }

  /** Decides about one authenticated frame, and remembers it if it is new. */
  accept(from: string, incarnation: string, channel: number, seq: number): ReplayVerdict {
    assert(Number.isSafeInteger(seq) && seq >= 0, `replay guard given seq ${seq}`);
    const p = this.peers.get(from);
    if (p === undefined || p.incarnation !== incarnation.toLowerCase()) return 'stale-incarnation';
    const w = p.channels.get(channel);
    if (w === undefined) {
      if (p.channels.size >= this.channelsPerPeerMax) return 'channels-full';
      p.channels.set(channel, { highest: seq, lo: 1, hi: 0 });
      return 'ok';
    }
    if (seq > w.highest) {
      const shift = seq - w.highest;
      if (shift >= REPLAY_WINDOW) {
        w.lo = 1;
        w.hi = 0;
      } else if (shift >= 32) {
        w.hi = (w.lo << (shift - 32)) >>> 0;
        w.lo = 1;
      } else {
        w.hi = ((w.hi << shift) | (w.lo >>> (32 - shift))) >>> 0;
        w.lo = ((w.lo << shift) | 1) >>> 0;
      }
      w.highest = seq;
      return 'ok';
    }
    const behind = w.highest - seq;
    if (behind >= REPLAY_WINDOW) return 'replay';
    if (behind < 32) {
      const bit = (1 << behind) >>> 0;
      if ((w.lo & bit) !== 0) return 'replay';
      w.lo = (w.lo | bit) >>> 0;
    } else {
      const bit = (1 << (behind - 32)) >>> 0;
      if ((w.hi & bit) !== 0) return 'replay';
      w.hi = (w.hi | bit) >>> 0;
    }
    return 'ok';
  }
}

// ---------------------------------------------------------------------------
// The heartbeat payload
// ---------------------------------------------------------------------------

/** sentMs (f64 LE), then echoMs (f64 LE; -1 when there is no echo). */
export const HEARTBEAT_PAYLOAD_BYTES = 16;

/** The payload of a FrameKind.HEARTBEAT frame. Times are the monotonic clock's ms, never negative. */
export function encodeHeartbeat(msg: HeartbeatMsg): Buffer {
  assert(Number.isFinite(msg.sentMs) && msg.sentMs >= 0, `heartbeat sentMs ${msg.sentMs}`);
  assert(
    msg.echoMs === null || (Number.isFinite(msg.echoMs) && msg.echoMs >= 0),
    `heartbeat echoMs ${msg.echoMs}`,
  );
  const out = Buffer.alloc(HEARTBEAT_PAYLOAD_BYTES);
  out.writeDoubleLE(msg.sentMs, 0);
  out.writeDoubleLE(msg.echoMs ?? -1, 8);
  return out;
}

/** The heartbeat in a payload, or null if the payload is not one (wrong size, non-finite or negative sentMs). */
export function decodeHeartbeat(payload: Uint8Array): HeartbeatMsg | null {
  if (payload.byteLength !== HEARTBEAT_PAYLOAD_BYTES) return null;
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const sentMs = dv.getFloat64(0, true);
  const echoMs = dv.getFloat64(8, true);
  if (!Number.isFinite(sentMs) || sentMs < 0 || !Number.isFinite(echoMs)) return null;
  return { sentMs, echoMs: echoMs < 0 ? null : echoMs };
}
