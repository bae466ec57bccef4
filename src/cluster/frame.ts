/**
 * Host-to-host frames: the authenticated envelope of every message one host
 * sends another, heartbeats over UDP and the FT logging channel over TCP.
 * docs/CLUSTER-PROTOCOL.md draws the bytes; docs/FT-CHANNEL.md the FT payloads.
 *
 * Role: encode a frame, and decide about a received buffer whether it is a
 * genuine, current frame for this host, as a value and never by throwing.
 * ReplayGuard then refuses frames seen before and frames from a sender's
 * earlier incarnation. The heartbeat payload codec and the FT logging
 * channel's payload codecs (docs/FT-CHANNEL.md) live here too, so that every
 * byte on the wire is defined in one file.
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
 * What a frame carries. Kind 0 is never valid. Kinds 2 to 6 are the FT
 * logging channel's (docs/FT-CHANNEL.md; their payload codecs are at the end
 * of this file). A receiver drops kinds it does not expect on a channel.
 */
export const FrameKind = {
  HEARTBEAT: 1,
  /** Backup to primary: opens a logging-channel session (FtHello). */
  FT_HELLO: 2,
  /** Primary to backup: accepts the session (FtWelcome). */
  FT_WELCOME: 3,
  /** Primary to backup: refuses the session, with a reason (FtRefuse). */
  FT_REFUSE: 4,
  /** Primary to backup: a piece of the event log's byte stream (FtLog). */
  FT_LOG: 5,
  /** Backup to primary: how much of the stream the backup holds (FtAck). */
  FT_ACK: 6,
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

// ---------------------------------------------------------------------------
// The FT logging channel's payloads (docs/FT-CHANNEL.md draws them)
// ---------------------------------------------------------------------------

/**
 * The logging channel's protocol version, carried first in FT_HELLO,
 * FT_WELCOME and FT_REFUSE. FT_LOG and FT_ACK carry none: the version agreed
 * at the handshake governs the whole session.
 */
export const FT_VERSION = 1;
/** The random session id a backup draws for each connection. */
export const FT_SESSION_ID_BYTES = 16;
/** The random nonce a primary adds when it accepts, so that a session's key is fresh on both sides. */
export const FT_NONCE_BYTES = 16;
/** FT_LOG's fixed prefix: the stream offset and the event count, u64 each. */
export const FT_LOG_HEADER_BYTES = 16;
/** FT_ACK's payload: the offset and the event count held, and the events replayed, u64 each. */
export const FT_ACK_PAYLOAD_BYTES = 24;
/** Host facts are short strings; these bounds keep a hello small whatever a peer sends. */
export const FT_FACT_BYTES_MAX = 255;
export const FT_FLAGS_MAX = 64;
/** A refusal's reason is for people; longer ones are cut (at a character boundary) by the encoder. */
export const FT_REASON_BYTES_MAX = 1024;

/** What a backup's join check compares (docs/FT-CHANNEL.md, "Join check"). */
export interface HostFacts {
  /** process.version, e.g. "v20.15.0". */
  nodeVersion: string;
  /** process.arch, e.g. "x64". */
  arch: string;
  /** The V8 flags the process runs with, normalised and sorted (see v8FlagsOf in src/ft/channel.ts). */
  v8Flags: string[];
}

/** A place in the event log's byte stream. */
export interface StreamPosition {
  /** Byte offset in the log stream; 0 is the first byte of the log's preamble. */
  offset: number;
  /** How many events (host calls) are complete before `offset`: the seq of the next event. */
  events: number;
}

/** FT_HELLO: the backup (which connects) asks to receive a VM's log. */
export interface FtHello {
  /** Chosen by the backup, random; names the session (its frame channel is derived from it). */
  sessionId: Uint8Array;
  vm: string;
  /** The VM's placement generation the backup was placed in. */
  generation: number;
  /** The primary's incarnation as the backup knows it: a hello for an earlier process is refused. */
  primaryIncarnation: string;
  /** Where the backup wants the stream to start; {0, 0} is "from the first event". */
  start: StreamPosition;
  facts: HostFacts;
}

/** FT_WELCOME: the primary accepts. */
export interface FtWelcome {
  /** The hello's, echoed. */
  sessionId: Uint8Array;
  /** Chosen by the primary, random; enters the session key (ftSessionKey). */
  primaryNonce: Uint8Array;
  vm: string;
  generation: number;
  /** Where the stream will actually start. */
  start: StreamPosition;
  facts: HostFacts;
}

/** Why a primary refused a hello; the numbers are on the wire. */
export const FtRefuseCode = {
  /** The hello speaks another FT protocol version. */
  VERSION: 1,
  /** This host does not serve that VM as its primary. */
  VM: 2,
  /** The hello names another placement generation. */
  GENERATION: 3,
  /** The sender is not the VM's backup (another host, or another incarnation of it). */
  PEER: 4,
  /** The hello names another incarnation of this host: it comes from an earlier session. */
  INCARNATION: 5,
  /** The join check failed: Node version, V8 flags or CPU architecture differ. */
  JOIN: 6,
  /** The primary cannot give the stream from the position asked for. */
  START: 7,
  /** A session for this VM is already live. */
  BUSY: 8,
  /** Anything else; the reason says what. */
  OTHER: 255,
} as const;
export type FtRefuseCode = (typeof FtRefuseCode)[keyof typeof FtRefuseCode];

/** FT_REFUSE: the primary refuses, with a code and a reason for people. */
export interface FtRefuse {
  /** The hello's, echoed, so a refusal cannot be taken for another session's. */
  sessionId: Uint8Array;
  code: FtRefuseCode;
  reason: string;
}

/** FT_LOG: `data` are the stream's bytes from `offset` on. */
export interface FtLog {
  offset: number;
  /** Events complete in the stream at the end of `data` (repeats the previous frame's when none completes). */
  events: number;
  data: Uint8Array;
}

/** FT_ACK: the backup holds the stream's bytes up to `offset`, which complete `events` events. */
export interface FtAck {
  offset: number;
  events: number;
  /**
   * How many events the backup's replayer has executed (at most `events`):
   * progress for lag and for "protected", never for the Output Rule.
   */
  replayed: number;
}

/** A little writer and reader for the FT payloads, which never throw on input and never read past the end. */
class FtOut {
  private readonly parts: Buffer[] = [];
  u8(v: number): void {
    this.parts.push(Buffer.of(v));
  }
  u16(v: number): void {
    const b = Buffer.allocUnsafe(2);
    b.writeUInt16LE(v, 0);
    this.parts.push(b);
  }
  u64(v: number, what: string): void {
    assert(Number.isSafeInteger(v) && v >= 0, `${what} ${v} is not a safe non-negative integer`);
    this.parts.push(u64Bytes(v));
  }
  raw(b: Uint8Array): void {
    this.parts.push(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  }
  str8(s: string, what: string, min = 1): void {
    const b = utf8Encoder.encode(s);
    assert(
      b.byteLength >= min && b.byteLength <= FT_FACT_BYTES_MAX,
      `${what} has ${b.byteLength} bytes (${min}..${FT_FACT_BYTES_MAX})`,
    );
    this.u8(b.byteLength);
    this.raw(b);
  }
  facts(f: HostFacts): void {
    this.str8(f.nodeVersion, 'facts.nodeVersion');
    this.str8(f.arch, 'facts.arch');
    assert(
      f.v8Flags.length <= FT_FLAGS_MAX,
      `facts.v8Flags has ${f.v8Flags.length} flags (max ${FT_FLAGS_MAX})`,
    );
    this.u8(f.v8Flags.length);
    for (const flag of f.v8Flags) this.str8(flag, 'a V8 flag');
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** A u64 (below 2^53) as 8 little-endian bytes, written as two u32 halves so that no BigInt is needed. */
function u64Bytes(v: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32LE(v % 2 ** 32, 0);
  b.writeUInt32LE(Math.floor(v / 2 ** 32), 4);
  return b;
}

class FtIn {
  at = 0;
  private readonly view: Buffer;
  constructor(p: Uint8Array) {
    this.view = Buffer.from(p.buffer, p.byteOffset, p.byteLength);
  }
  get remaining(): number {
    return this.view.byteLength - this.at;
  }
  u8(): number | null {
    if (this.remaining < 1) return null;
    return this.view[this.at++]!;
  }
  u16(): number | null {
    if (this.remaining < 2) return null;
    const v = this.view.readUInt16LE(this.at);
    this.at += 2;
    return v;
  }
  /** A u64 that must be below 2^53, else null. */
  u64(): number | null {
    if (this.remaining < 8) return null;
    const lo = this.view.readUInt32LE(this.at);
    const hi = this.view.readUInt32LE(this.at + 4);
    this.at += 8;
    return hi >= 2 ** 21 ? null : hi * 2 ** 32 + lo;
  }
  bytes(n: number): Buffer | null {
    if (this.remaining < n) return null;
    const b = Buffer.from(this.view.subarray(this.at, this.at + n));
    this.at += n;
    return b;
  }
  utf8(n: number): string | null {
    const b = this.bytes(n);
    if (b === null) return null;
    try {
      return utf8Decoder.decode(b);
    } catch {
      return null;
    }
  }
  str8(min = 1): string | null {
    const n = this.u8();
    return n === null || n < min ? null : this.utf8(n);
  }
  hex(n: number): string | null {
    const b = this.bytes(n);
    return b === null ? null : b.toString('hex');
  }
  facts(): HostFacts | null {
    const nodeVersion = this.str8();
    const arch = this.str8();
    const count = this.u8();
    if (nodeVersion === null || arch === null || count === null || count > FT_FLAGS_MAX) return null;
    const v8Flags: string[] = [];
    for (let i = 0; i < count; i++) {
      const f = this.str8();
      if (f === null) return null;
      v8Flags.push(f);
    }
    return { nodeVersion, arch, v8Flags };
  }
}

function assertBytes(b: Uint8Array, n: number, what: string): void {
  assert(b.byteLength === n, `${what} has ${b.byteLength} bytes, not ${n}`);
}

function assertPosition(p: StreamPosition, what: string): void {
  assert(Number.isSafeInteger(p.offset) && p.offset >= 0, `${what}.offset ${p.offset}`);
  assert(Number.isSafeInteger(p.events) && p.events >= 0, `${what}.events ${p.events}`);
}

/** The payload of an FT_HELLO frame. A hello that cannot be encoded is the caller's bug (assertion). */
export function encodeFtHello(h: FtHello): Buffer {
  assertBytes(h.sessionId, FT_SESSION_ID_BYTES, 'hello sessionId');
  assert(HEX16_RE.test(h.primaryIncarnation), 'hello primaryIncarnation is not 16 hex digits');
  assertPosition(h.start, 'hello start');
  const o = new FtOut();
  o.u8(FT_VERSION);
  o.raw(h.sessionId);
  nameBytes(h.vm, 'hello vm'); // asserts the VM name's length, as for host names
  o.str8(h.vm, 'hello vm');
  o.u64(h.generation, 'hello generation');
  o.raw(Buffer.from(h.primaryIncarnation, 'hex'));
  o.u64(h.start.offset, 'hello start.offset');
  o.u64(h.start.events, 'hello start.events');
  o.facts(h.facts);
  return o.done();
}

export type FtHelloDecode =
  | { ok: true; hello: FtHello }
  /** A hello of another protocol version: its first 17 bytes keep this layout in every version, so it can be refused. */
  | { ok: false; reason: 'version'; version: number; sessionId: Buffer }
  | { ok: false; reason: 'malformed' };

/** The hello in a payload, as a value; never throws. */
export function decodeFtHello(payload: Uint8Array): FtHelloDecode {
  const r = new FtIn(payload);
  const version = r.u8();
  const sessionId = r.bytes(FT_SESSION_ID_BYTES);
  if (version === null || sessionId === null) return { ok: false, reason: 'malformed' };
  if (version !== FT_VERSION) return { ok: false, reason: 'version', version, sessionId };
  const vm = r.str8();
  const generation = r.u64();
  const primaryIncarnation = r.hex(8);
  const offset = r.u64();
  const events = r.u64();
  const facts = r.facts();
  if (
    vm === null ||
    utf8Encoder.encode(vm).byteLength > FRAME_NAME_BYTES_MAX ||
    generation === null ||
    primaryIncarnation === null ||
    offset === null ||
    events === null ||
    facts === null ||
    r.remaining !== 0
  ) {
    return { ok: false, reason: 'malformed' };
  }
  return {
    ok: true,
    hello: { sessionId, vm, generation, primaryIncarnation, start: { offset, events }, facts },
  };
}

/** The payload of an FT_WELCOME frame. */
export function encodeFtWelcome(w: FtWelcome): Buffer {
  assertBytes(w.sessionId, FT_SESSION_ID_BYTES, 'welcome sessionId');
  assertBytes(w.primaryNonce, FT_NONCE_BYTES, 'welcome primaryNonce');
  assertPosition(w.start, 'welcome start');
  const o = new FtOut();
  o.u8(FT_VERSION);
  o.raw(w.sessionId);
  o.raw(w.primaryNonce);
  nameBytes(w.vm, 'welcome vm');
  o.str8(w.vm, 'welcome vm');
  o.u64(w.generation, 'welcome generation');
  o.u64(w.start.offset, 'welcome start.offset');
  o.u64(w.start.events, 'welcome start.events');
  o.facts(w.facts);
  return o.done();
}

/** The welcome in a payload, or null if it is not a version-1 welcome; never throws. */
export function decodeFtWelcome(payload: Uint8Array): FtWelcome | null {
  const r = new FtIn(payload);
  if (r.u8() !== FT_VERSION) return null;
  const sessionId = r.bytes(FT_SESSION_ID_BYTES);
  const primaryNonce = r.bytes(FT_NONCE_BYTES);
  const vm = r.str8();
  const generation = r.u64();
  const offset = r.u64();
  const events = r.u64();
  const facts = r.facts();
  if (
    sessionId === null ||
    primaryNonce === null ||
    vm === null ||
    utf8Encoder.encode(vm).byteLength > FRAME_NAME_BYTES_MAX ||
    generation === null ||
    offset === null ||
    events === null ||
    facts === null ||
    r.remaining !== 0
  ) {
    return null;
  }
  return { sessionId, primaryNonce, vm, generation, start: { offset, events }, facts };
}

/** Cuts a string to at most `bytesMax` UTF-8 bytes without splitting a character. */
function cutUtf8(s: string, bytesMax: number): Uint8Array {
  const b = utf8Encoder.encode(s);
  if (b.byteLength <= bytesMax) return b;
  let end = bytesMax;
  // Back up over continuation bytes (10xxxxxx) so the cut falls between characters.
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

/** The payload of an FT_REFUSE frame; a reason longer than FT_REASON_BYTES_MAX is cut. */
export function encodeFtRefuse(r: FtRefuse): Buffer {
  assertBytes(r.sessionId, FT_SESSION_ID_BYTES, 'refuse sessionId');
  assert(Object.values(FtRefuseCode).includes(r.code), `refuse code ${r.code} is not an FtRefuseCode`);
  const reason = cutUtf8(r.reason, FT_REASON_BYTES_MAX);
  const o = new FtOut();
  o.u8(FT_VERSION);
  o.raw(r.sessionId);
  o.u8(r.code);
  o.u16(reason.byteLength);
  o.raw(reason);
  return o.done();
}

/**
 * The refusal in a payload, or null if it is not one; never throws. The
 * version byte is not required to be 1: a primary refuses a hello of a
 * version it does not speak with a refusal of its own version, and the
 * refusal's layout is the same in every version.
 */
export function decodeFtRefuse(payload: Uint8Array): FtRefuse | null {
  const r = new FtIn(payload);
  const version = r.u8();
  const sessionId = r.bytes(FT_SESSION_ID_BYTES);
  const code = r.u8();
  const n = r.u16();
  if (version === null || sessionId === null || code === null || n === null || n > FT_REASON_BYTES_MAX)
    return null;
  const reason = r.utf8(n);
  if (reason === null || r.remaining !== 0) return null;
  const known = (Object.values(FtRefuseCode) as number[]).includes(code);
  return { sessionId, code: (known ? code : FtRefuseCode.OTHER) as FtRefuseCode, reason };
}

/** The payload of an FT_LOG frame: at least one byte of data. */
export function encodeFtLog(m: FtLog): Buffer {
  assert(m.data.byteLength >= 1, 'an FT_LOG frame carries at least one byte');
  assert(Number.isSafeInteger(m.offset + m.data.byteLength), `FT_LOG ends past 2^53 (offset ${m.offset})`);
  const out = Buffer.allocUnsafe(FT_LOG_HEADER_BYTES + m.data.byteLength);
  writeFtLogHeader(out, m.offset, m.events);
  out.set(m.data, FT_LOG_HEADER_BYTES);
  return out;
}

/** Writes FT_LOG's 16-byte prefix at the start of `out` (for callers that assemble the data in place). */
export function writeFtLogHeader(out: Uint8Array, offset: number, events: number): void {
  assert(Number.isSafeInteger(offset) && offset >= 0, `FT_LOG offset ${offset}`);
  assert(Number.isSafeInteger(events) && events >= 0, `FT_LOG events ${events}`);
  out.set(u64Bytes(offset), 0);
  out.set(u64Bytes(events), 8);
}

/** The FT_LOG in a payload (its data a view into `payload`), or null: too short, no data, or past 2^53. */
export function decodeFtLog(payload: Uint8Array): FtLog | null {
  if (payload.byteLength <= FT_LOG_HEADER_BYTES) return null;
  const r = new FtIn(payload);
  const offset = r.u64();
  const events = r.u64();
  if (offset === null || events === null) return null;
  const data = payload.subarray(FT_LOG_HEADER_BYTES);
  if (!Number.isSafeInteger(offset + data.byteLength)) return null;
  return { offset, events, data };
}

/** The payload of an FT_ACK frame. */
export function encodeFtAck(a: FtAck): Buffer {
  const o = new FtOut();
  o.u64(a.offset, 'FT_ACK offset');
  o.u64(a.events, 'FT_ACK events');
  o.u64(a.replayed, 'FT_ACK replayed');
  return o.done();
}

/** The FT_ACK in a payload, or null if it is not exactly one. */
export function decodeFtAck(payload: Uint8Array): FtAck | null {
  if (payload.byteLength !== FT_ACK_PAYLOAD_BYTES) return null;
  const r = new FtIn(payload);
  const offset = r.u64();
  const events = r.u64();
  const replayed = r.u64();
  if (offset === null || events === null || replayed === null) return null;
  return { offset, events, replayed };
}

/**
 * The frame channel of a session: the session id's first four bytes (u32 LE),
 * never 0, which is the heartbeats' channel. Every frame of the session, both
 * ways, carries it.
 */
export function ftChannelOf(sessionId: Uint8Array): number {
  assertBytes(sessionId, FT_SESSION_ID_BYTES, 'sessionId');
  const c = (sessionId[0]! | (sessionId[1]! << 8) | (sessionId[2]! << 16) | (sessionId[3]! << 24)) >>> 0;
  return c === 0 ? 1 : c;
}

/**
 * The key that authenticates a session's FT_LOG and FT_ACK frames:
 * HMAC-SHA256(cluster key, "lockstep ft session v1" 0x00 sessionId primaryNonce).
 * Both random halves enter it, so no frame recorded in any other session (of
 * this VM or another, before or after a restart) authenticates in this one,
 * even if the backup's half is replayed.
 */
export function ftSessionKey(
  clusterKey: Uint8Array,
  sessionId: Uint8Array,
  primaryNonce: Uint8Array,
): Buffer {
  assertKey(clusterKey);
  assertBytes(sessionId, FT_SESSION_ID_BYTES, 'sessionId');
  assertBytes(primaryNonce, FT_NONCE_BYTES, 'primaryNonce');
  return createHmac('sha256', clusterKey)
    .update('lockstep ft session v1\0')
    .update(sessionId)
    .update(primaryNonce)
    .digest();
}
