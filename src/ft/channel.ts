/**
 * The FT logging channel, as pure state machines: the handshake (a backup's
 * hello, a primary's welcome or refusal), the primary's LogSender and the
 * backup's LogReceiver. docs/FT-CHANNEL.md describes the protocol and draws
 * every payload; src/cluster/frame.ts has the codecs; src/io/ft-link.ts is the
 * TCP transport that drives these machines.
 *
 * Role: turn frames received into decisions and data, and appended log bytes
 * into frames to send. Nothing here reads a clock (times come in as nowMs),
 * draws a random number (session ids and nonces come in as bytes) or does I/O,
 * so every rule is tested without sockets and a run replays from its seed.
 *
 * Invariants:
 * - The channel carries a byte stream (the event log exactly as
 *   docs/LOG-FORMAT.md defines it) cut into FT_LOG frames; a frame never needs
 *   to hold a whole log record, so records of any size pass.
 * - Every frame of a session carries the session's channel and the next
 *   sequence number of its direction, exactly: TCP delivers in order, so a gap
 *   is a lost or reordered frame and a repeat is a replay. FT_LOG and FT_ACK
 *   are authenticated by a key derived from both sides' random halves, so no
 *   frame of another session (another VM, an earlier connection) passes.
 * - Any frame that fails a check is rejected as a value, and nothing changes:
 *   no byte is delivered, no ack is counted, no sequence number moves. The
 *   machine is then failed (every later frame is refused with 'closed'), and
 *   the transport closes the connection.
 * - A receiver acknowledges only bytes it holds (it has validated them and
 *   handed them to its caller), except under the testing-only planted bug
 *   ackBeforeReceipt. Its acks never go backwards.
 * - A sender accepts an ack only at the end of a frame it sent, with that
 *   frame's event count, so ackedEventSeq never covers an event whose bytes
 *   were not all acknowledged. An event count passed to append may be an
 *   underestimate (acks then come later); it must never be an overestimate.
 * - Memory is bounded: a sender holds at most bufferBytesMax unacknowledged
 *   bytes (append refuses more; the unsent ones in 64 KiB blocks) and
 *   bookkeeping for at most framesInFlightMax frames and ENTRIES_MAX appends;
 *   a receiver holds nothing but counters.
 */
import {
  FRAME_BYTES_MAX,
  FRAME_BYTES_MIN,
  FT_ACK_PAYLOAD_BYTES,
  FT_LOG_HEADER_BYTES,
  FT_NONCE_BYTES,
  FT_SESSION_ID_BYTES,
  FrameKind,
  FtRefuseCode,
  decodeFrame,
  decodeFtAck,
  decodeFtHello,
  decodeFtLog,
  decodeFtRefuse,
  decodeFtWelcome,
  encodeFrame,
  encodeFtAck,
  encodeFtRefuse,
  encodeFtWelcome,
  encodeFtHello,
  ftChannelOf,
  ftSessionKey,
  peekFrameLength,
  writeFtLogHeader,
  type DecodedFrame,
  type FrameRejection,
  type FtHello,
  type HostFacts,
  type StreamPosition,
} from '../cluster/frame.js';

export type { HostFacts, StreamPosition } from '../cluster/frame.js';
export { FtRefuseCode } from '../cluster/frame.js';

function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`assertion: ${message}`);
}

// ---------------------------------------------------------------------------
// The join check
// ---------------------------------------------------------------------------

/**
 * The V8 flag families that can change what a guest computes or where it
 * stops (code generation tiers, WebAssembly features, stack and heap limits,
 * seeds), compared by the join check. Node's own options (--enable-source-maps,
 * --inspect, …) are not compared. Names are matched after `--no-` is stripped
 * and underscores become dashes, as V8 itself treats them.
 */
const V8_FLAG_FAMILIES = [
  'max-',
  'stack-size',
  'jitless',
  'opt',
  'always-opt',
  'turbo',
  'maglev',
  'sparkplug',
  'liftoff',
  'wasm',
  'experimental-wasm',
  'harmony',
  'predictable',
  'single-threaded',
  'random-seed',
  'hash-seed',
  'lazy',
];
/** The families whose value may follow as the next argument ("--max-old-space-size 512"). */
const V8_VALUE_FAMILIES = ['max-', 'stack-size', 'random-seed', 'hash-seed'];

function flagName(flag: string): string {
  const eq = flag.indexOf('=');
  const name = (eq < 0 ? flag : flag.slice(0, eq)).slice(2).replace(/_/g, '-');
  return name.startsWith('no-') ? name.slice(3) : name;
}

function inFamily(name: string, families: readonly string[]): boolean {
  return families.some((f) =>
    f.endsWith('-') ? name.startsWith(f) : name === f || name.startsWith(`${f}-`),
  );
}

/**
 * The V8 flags of a process, normalised for comparison: from NODE_OPTIONS
 * first and then execArgv (Node applies them in that order, so a later value of
 * the same flag wins), names with dashes, values joined with '=', sorted.
 * NODE_OPTIONS is split on whitespace (quoted values are not expected in V8
 * flags). Pure: src/io/ft-link.ts passes process.execArgv and NODE_OPTIONS.
 */
export function v8FlagsOf(execArgv: readonly string[], nodeOptions: string | undefined): string[] {
  const args = [...(nodeOptions ?? '').split(/\s+/).filter((s) => s !== ''), ...execArgv];
  const byName = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (!arg.startsWith('--') || arg.length === 2) continue;
    const name = flagName(arg);
    if (!inFamily(name, V8_FLAG_FAMILIES)) continue;
    const eq = arg.indexOf('=');
    const negated = arg.slice(2).replace(/_/g, '-').startsWith('no-');
    let value = eq < 0 ? null : arg.slice(eq + 1);
    const next = args[i + 1];
    if (
      value === null &&
      !negated &&
      inFamily(name, V8_VALUE_FAMILIES) &&
      next !== undefined &&
      !next.startsWith('-')
    ) {
      value = next;
      i++;
    }
    byName.set(name, `--${negated ? 'no-' : ''}${name}${value === null ? '' : `=${value}`}`);
  }
  return [...byName.values()].sort();
}

/**
 * Whether a backup with `backup`'s facts may pair with a primary with
 * `primary`'s: null when they agree, else a reason naming every difference,
 * for `vm show`. Replay is exact only when both sides run the same Node (so
 * the same V8), the same V8 flags and the same CPU architecture.
 */
export function joinCheck(primary: HostFacts, backup: HostFacts): null | string {
  const problems: string[] = [];
  if (primary.nodeVersion !== backup.nodeVersion) {
    problems.push(
      `Node version differs: the primary runs ${primary.nodeVersion}, the backup ${backup.nodeVersion}`,
    );
  }
  if (primary.arch !== backup.arch) {
    problems.push(`CPU architecture differs: the primary is ${primary.arch}, the backup ${backup.arch}`);
  }
  const p = new Set(primary.v8Flags);
  const b = new Set(backup.v8Flags);
  const onlyP = [...p].filter((f) => !b.has(f)).sort();
  const onlyB = [...b].filter((f) => !p.has(f)).sort();
  if (onlyP.length > 0 || onlyB.length > 0) {
    const parts: string[] = [];
    if (onlyP.length > 0) parts.push(`only the primary has ${onlyP.join(' ')}`);
    if (onlyB.length > 0) parts.push(`only the backup has ${onlyB.join(' ')}`);
    problems.push(`V8 flags differ: ${parts.join('; ')}`);
  }
  return problems.length === 0 ? null : problems.join('; ');
}

// ---------------------------------------------------------------------------
// Sessions and rejections
// ---------------------------------------------------------------------------

/** Why a frame was rejected. Each rejection is logged by the transport, which then closes the connection. */
export type FtRejectReason =
  /** decodeFrame's verdicts: not a frame, not ours, not authentic (for FT_LOG and FT_ACK: not this session's key). */
  | FrameRejection
  /** Authentic, but from another host than the session's peer. */
  | 'peer'
  /** From another incarnation of the peer. */
  | 'incarnation'
  /** Another session's channel. */
  | 'channel'
  /** A sequence number already used in this session: a replayed or duplicated frame. */
  | 'replay'
  /** A sequence number beyond the next one: a frame is missing or the frames are reordered. */
  | 'reorder'
  /** A frame kind not expected at this point of the session. */
  | 'kind'
  /** The payload does not decode. */
  | 'payload'
  /** An FT_LOG frame that does not start where the stream has got to. */
  | 'offset'
  /** An event count that goes backwards, or disagrees with the frame an ack covers. */
  | 'events'
  /** An ack of bytes that were never sent. */
  | 'ack-unsent'
  /** An ack below one already accepted. */
  | 'ack-backwards'
  /** An ack that does not fall at the end of a frame sent. */
  | 'ack-boundary'
  /** A welcome or refusal that answers another hello (session id, VM or generation), or a start not accepted. */
  | 'session'
  /** The machine has already failed or been closed. */
  | 'closed';

export interface FtReject {
  ok: false;
  reason: FtRejectReason;
  /** For logs: what was expected and what came. */
  detail: string;
}

function reject(reason: FtRejectReason, detail: string): FtReject {
  return { ok: false, reason, detail };
}

/** One host's side of the channel: who it is and the cluster's key. */
export interface FtEndpoint {
  /** The cluster secret (32 bytes): HELLO, WELCOME and REFUSE are authenticated with it. */
  key: Uint8Array;
  clusterId: string;
  /** This host's name. */
  self: string;
  /** This host's incarnation (16 hex digits). */
  selfIncarnation: string;
  /** This host's facts for the join check. */
  facts: HostFacts;
}

/** An agreed session: what both LogSender and LogReceiver are built from. */
export interface FtSession {
  role: 'primary' | 'backup';
  clusterId: string;
  self: string;
  selfIncarnation: string;
  peer: string;
  peerIncarnation: string;
  vm: string;
  generation: number;
  sessionId: Buffer;
  /** The frame channel of every frame of this session (ftChannelOf(sessionId)). */
  channel: number;
  /** Authenticates FT_LOG and FT_ACK (ftSessionKey). */
  sessionKey: Buffer;
  /** Where the stream starts. */
  start: StreamPosition;
}

/**
 * The frame-level checks shared by both directions of an established session:
 * sequence numbers, channel, peer and incarnation. HELLO and WELCOME (or
 * REFUSE) are sequence number 0 of their directions, so the session's own
 * frames start at 1.
 */
class SessionFrames {
  private sendSeq = 1;
  private recvSeq = 1;

  constructor(private readonly s: FtSession) {}

  encode(kind: number, payload: Uint8Array): Buffer {
    return encodeFrame(
      {
        kind,
        clusterId: this.s.clusterId,
        from: this.s.self,
        fromIncarnation: this.s.selfIncarnation,
        to: this.s.peer,
        channel: this.s.channel,
        seq: this.sendSeq++,
        payload,
      },
      this.s.sessionKey,
    );
  }

  /** Checks a received frame; the caller then validates the payload and calls accepted(). */
  check(buf: Uint8Array, kind: number): { ok: true; frame: DecodedFrame } | FtReject {
    const d = decodeFrame(buf, this.s.sessionKey, { clusterId: this.s.clusterId, self: this.s.self });
    if (!d.ok) {
      if (d.reason !== 'mac') return reject(d.reason, `the frame is refused: ${d.reason}`);
      const head = peekRawHeader(buf);
      const other = head !== null && head.channel !== this.s.channel;
      return reject(
        'mac',
        other
          ? `not authenticated by this session's key: its channel ${head.channel} is not this session's ` +
              `${this.s.channel} (a frame of another session or VM, or a forgery)`
          : "not authenticated by this session's key (damage, a forgery, or a frame of another session)",
      );
    }
    const f = d.frame;
    if (f.from !== this.s.peer)
      return reject('peer', `from ${f.from}, not the session's peer ${this.s.peer}`);
    if (f.fromIncarnation !== this.s.peerIncarnation) {
      return reject('incarnation', `from incarnation ${f.fromIncarnation}, not ${this.s.peerIncarnation}`);
    }
    if (f.channel !== this.s.channel) return reject('channel', `channel ${f.channel}, not ${this.s.channel}`);
    if (f.seq < this.recvSeq)
      return reject('replay', `seq ${f.seq} was already used (next is ${this.recvSeq})`);
    if (f.seq > this.recvSeq) return reject('reorder', `seq ${f.seq} where ${this.recvSeq} was due`);
    if (f.kind !== kind) return reject('kind', `frame kind ${f.kind} where ${kind} was due`);
    return { ok: true, frame: f };
  }

  accepted(): void {
    this.recvSeq++;
  }
}

/** The fields of a frame's header, read without authenticating anything: for diagnostics and the planted bug only. */
function peekRawHeader(buf: Uint8Array): { kind: number; channel: number; payload: Uint8Array } | null {
  const p = peekFrameLength(buf);
  if (!p.ok || buf.byteLength < p.frameBytes) return null;
  const view = Buffer.from(buf.buffer, buf.byteOffset, p.frameBytes);
  const fromBytes = view[20]!;
  const toLenAt = 21 + fromBytes + 8;
  const channelAt = toLenAt + 1 + view[toLenAt]!;
  const payloadLenAt = channelAt + 12;
  const payloadAt = payloadLenAt + 4;
  const payloadBytes = view.readUInt32LE(payloadLenAt);
  return {
    kind: view[3]!,
    channel: view.readUInt32LE(channelAt),
    payload: view.subarray(payloadAt, payloadAt + payloadBytes),
  };
}

// ---------------------------------------------------------------------------
// The handshake
// ---------------------------------------------------------------------------

/** The backup's side of the handshake: what it asks for. */
export interface BackupHandshakeConfig extends FtEndpoint {
  /** The primary's host name and incarnation, from the coordinator's registry. */
  primary: string;
  primaryIncarnation: string;
  vm: string;
  generation: number;
  /** Where the backup wants the stream to start; {offset: 0, events: 0} is "from the first event". */
  start: StreamPosition;
  /** FT_SESSION_ID_BYTES random bytes from the caller's entropy. */
  sessionId: Uint8Array;
  /**
   * Whether to take a start other than the one asked for (the primary answers
   * with what it can give). The default takes only the position asked for.
   */
  acceptStart?: (offered: StreamPosition, asked: StreamPosition) => boolean;
}

export type BackupHandshakeResult =
  | { type: 'welcome'; session: FtSession; primaryFacts: HostFacts }
  /** The pairing is refused: by the primary (it sent FT_REFUSE), or by the backup's own join check of the primary's facts. */
  | { type: 'refused'; by: 'primary' | 'backup'; code: FtRefuseCode; reason: string }
  | { type: 'reject'; reason: FtRejectReason; detail: string };

/**
 * The backup's handshake: hello() is the first frame it sends; onFrame() takes
 * the primary's answer. The backup connects, because it is the side that knows
 * when it is ready to consume the stream and from where (docs/FT-CHANNEL.md).
 */
export class BackupHandshake {
  readonly channel: number;
  private done = false;

  constructor(private readonly cfg: BackupHandshakeConfig) {
    assert(cfg.sessionId.byteLength === FT_SESSION_ID_BYTES, 'sessionId must have 16 bytes');
    this.channel = ftChannelOf(cfg.sessionId);
  }

  /** The FT_HELLO frame: sequence number 0 of the backup's direction, authenticated with the cluster key. */
  hello(): Buffer {
    const c = this.cfg;
    return encodeFrame(
      {
        kind: FrameKind.FT_HELLO,
        clusterId: c.clusterId,
        from: c.self,
        fromIncarnation: c.selfIncarnation,
        to: c.primary,
        channel: this.channel,
        seq: 0,
        payload: encodeFtHello({
          sessionId: c.sessionId,
          vm: c.vm,
          generation: c.generation,
          primaryIncarnation: c.primaryIncarnation,
          start: c.start,
          facts: c.facts,
        }),
      },
      c.key,
    );
  }

  /** Decides about the primary's answer (the first frame it sends). */
  onFrame(buf: Uint8Array): BackupHandshakeResult {
    const c = this.cfg;
    if (this.done) return { type: 'reject', reason: 'closed', detail: 'the handshake is over' };
    const d = decodeFrame(buf, c.key, { clusterId: c.clusterId, self: c.self });
    const r = ((): BackupHandshakeResult => {
      if (!d.ok) return { type: 'reject', reason: d.reason, detail: `the answer to the hello: ${d.reason}` };
      const f = d.frame;
      if (f.from !== c.primary)
        return { type: 'reject', reason: 'peer', detail: `from ${f.from}, not ${c.primary}` };
      if (f.fromIncarnation !== c.primaryIncarnation.toLowerCase()) {
        return {
          type: 'reject',
          reason: 'incarnation',
          detail: `from incarnation ${f.fromIncarnation}, not ${c.primaryIncarnation}`,
        };
      }
      if (f.channel !== this.channel) {
        return { type: 'reject', reason: 'channel', detail: `channel ${f.channel}, not ${this.channel}` };
      }
      if (f.seq !== 0)
        return { type: 'reject', reason: f.seq > 0 ? 'reorder' : 'replay', detail: `seq ${f.seq}` };
      const sameSession = (id: Uint8Array): boolean => Buffer.compare(id, c.sessionId) === 0;
      if (f.kind === FrameKind.FT_REFUSE) {
        const r = decodeFtRefuse(f.payload);
        if (r === null) return { type: 'reject', reason: 'payload', detail: 'a malformed FT_REFUSE' };
        if (!sameSession(r.sessionId)) {
          return { type: 'reject', reason: 'session', detail: 'an FT_REFUSE for another session' };
        }
        return { type: 'refused', by: 'primary', code: r.code, reason: r.reason };
      }
      if (f.kind !== FrameKind.FT_WELCOME) {
        return { type: 'reject', reason: 'kind', detail: `frame kind ${f.kind} in answer to a hello` };
      }
      const w = decodeFtWelcome(f.payload);
      if (w === null) return { type: 'reject', reason: 'payload', detail: 'a malformed FT_WELCOME' };
      if (!sameSession(w.sessionId) || w.vm !== c.vm || w.generation !== c.generation) {
        return {
          type: 'reject',
          reason: 'session',
          detail: `a welcome for VM ${w.vm} generation ${w.generation} of another session`,
        };
      }
      const join = joinCheck(w.facts, c.facts);
      if (join !== null) return { type: 'refused', by: 'backup', code: FtRefuseCode.JOIN, reason: join };
      const sameStart = w.start.offset === c.start.offset && w.start.events === c.start.events;
      if (!sameStart && !(c.acceptStart?.(w.start, c.start) ?? false)) {
        return {
          type: 'refused',
          by: 'backup',
          code: FtRefuseCode.START,
          reason:
            `the primary offers the stream from offset ${w.start.offset} (event ${w.start.events}), ` +
            `not from ${c.start.offset} (event ${c.start.events}) as asked`,
        };
      }
      return {
        type: 'welcome',
        primaryFacts: w.facts,
        session: {
          role: 'backup',
          clusterId: c.clusterId,
          self: c.self,
          selfIncarnation: c.selfIncarnation.toLowerCase(),
          peer: c.primary,
          peerIncarnation: f.fromIncarnation,
          vm: c.vm,
          generation: c.generation,
          sessionId: Buffer.from(c.sessionId),
          channel: this.channel,
          sessionKey: ftSessionKey(c.key, c.sessionId, w.primaryNonce),
          start: w.start,
        },
      };
    })();
    this.done = true;
    return r;
  }
}

/** What a primary serves for one VM: the facts a hello is checked against. */
export interface PrimaryOffer {
  generation: number;
  /** The VM's backup as placed, and its registered incarnation. */
  backup: string;
  backupIncarnation: string;
  /** The position the primary can give the stream from, for a start asked for, or why it cannot. */
  startFrom(asked: StreamPosition): StreamPosition | string;
}

/** An answer to a hello for a VM that is not served, or not now. */
export interface OfferRefusal {
  refuse: FtRefuseCode;
  reason: string;
}

export type HelloAnswer =
  /** Send `frame` (FT_WELCOME); the session is established once the backup's first ack arrives (LogSender). */
  | { type: 'welcome'; frame: Buffer; session: FtSession; hello: FtHello }
  /** Send `frame` (FT_REFUSE), then close. */
  | { type: 'refuse'; frame: Buffer; code: FtRefuseCode; reason: string; vm: string | null; from: string }
  /** Not an authentic hello: close without answering. */
  | { type: 'reject'; reason: FtRejectReason; detail: string };

/**
 * The primary's answer to the first frame of a connection. `lookup` says what
 * is served for the VM the hello names; `primaryNonce` is FT_NONCE_BYTES
 * random bytes from the caller's entropy. Only an authentic hello is answered;
 * anything else is rejected without a word, so the listener is no oracle.
 */
export function answerHello(
  buf: Uint8Array,
  self: FtEndpoint,
  lookup: (vm: string) => PrimaryOffer | OfferRefusal,
  primaryNonce: Uint8Array,
): HelloAnswer {
  assert(primaryNonce.byteLength === FT_NONCE_BYTES, 'primaryNonce must have 16 bytes');
  const d = decodeFrame(buf, self.key, { clusterId: self.clusterId, self: self.self });
  if (!d.ok) return { type: 'reject', reason: d.reason, detail: `a hello: ${d.reason}` };
  const f = d.frame;
  if (f.kind !== FrameKind.FT_HELLO) {
    return { type: 'reject', reason: 'kind', detail: `frame kind ${f.kind} where FT_HELLO was due` };
  }
  if (f.seq !== 0) return { type: 'reject', reason: 'reorder', detail: `a hello with seq ${f.seq}, not 0` };
  const h = decodeFtHello(f.payload);
  if (!h.ok && h.reason === 'malformed')
    return { type: 'reject', reason: 'payload', detail: 'a malformed FT_HELLO' };
  const sessionId = h.ok ? h.hello.sessionId : h.sessionId;
  if (f.channel !== ftChannelOf(sessionId)) {
    return {
      type: 'reject',
      reason: 'channel',
      detail: `a hello on channel ${f.channel}, not its session's`,
    };
  }
  const refuse = (code: FtRefuseCode, reason: string, vm: string | null): HelloAnswer => ({
    type: 'refuse',
    code,
    reason,
    vm,
    from: f.from,
    frame: encodeFrame(
      {
        kind: FrameKind.FT_REFUSE,
        clusterId: self.clusterId,
        from: self.self,
        fromIncarnation: self.selfIncarnation,
        to: f.from,
        channel: f.channel,
        seq: 0,
        payload: encodeFtRefuse({ sessionId, code, reason }),
      },
      self.key,
    ),
  });
  if (!h.ok)
    return refuse(FtRefuseCode.VERSION, `FT protocol version ${h.version} is not spoken here (1 is)`, null);
  const hello = h.hello;
  if (hello.primaryIncarnation !== self.selfIncarnation.toLowerCase()) {
    return refuse(
      FtRefuseCode.INCARNATION,
      `the hello names incarnation ${hello.primaryIncarnation} of ${self.self}, which is now ` +
        `${self.selfIncarnation.toLowerCase()} (a hello from an earlier session, or a stale registry)`,
      hello.vm,
    );
  }
  const offer = lookup(hello.vm);
  if ('refuse' in offer) return refuse(offer.refuse, offer.reason, hello.vm);
  if (hello.generation !== offer.generation) {
    return refuse(
      FtRefuseCode.GENERATION,
      `VM ${hello.vm} is at generation ${offer.generation}, not ${hello.generation}`,
      hello.vm,
    );
  }
  if (f.from !== offer.backup || f.fromIncarnation !== offer.backupIncarnation.toLowerCase()) {
    return refuse(
      FtRefuseCode.PEER,
      `VM ${hello.vm}'s backup is ${offer.backup} (incarnation ${offer.backupIncarnation.toLowerCase()}), ` +
        `not ${f.from} (incarnation ${f.fromIncarnation})`,
      hello.vm,
    );
  }
  const join = joinCheck(self.facts, hello.facts);
  if (join !== null) return refuse(FtRefuseCode.JOIN, join, hello.vm);
  const start = offer.startFrom(hello.start);
  if (typeof start === 'string') return refuse(FtRefuseCode.START, start, hello.vm);
  const frame = encodeFrame(
    {
      kind: FrameKind.FT_WELCOME,
      clusterId: self.clusterId,
      from: self.self,
      fromIncarnation: self.selfIncarnation,
      to: f.from,
      channel: f.channel,
      seq: 0,
      payload: encodeFtWelcome({
        sessionId,
        primaryNonce,
        vm: hello.vm,
        generation: hello.generation,
        start,
        facts: self.facts,
      }),
    },
    self.key,
  );
  return {
    type: 'welcome',
    frame,
    hello,
    session: {
      role: 'primary',
      clusterId: self.clusterId,
      self: self.self,
      selfIncarnation: self.selfIncarnation.toLowerCase(),
      peer: f.from,
      peerIncarnation: f.fromIncarnation,
      vm: hello.vm,
      generation: hello.generation,
      sessionId: Buffer.from(sessionId),
      channel: f.channel,
      sessionKey: ftSessionKey(self.key, sessionId, primaryNonce),
      start,
    },
  };
}

// ---------------------------------------------------------------------------
// The sender (primary)
// ---------------------------------------------------------------------------

/** The default largest FT_LOG frame, every byte counted: big enough that framing costs nothing, small enough to interleave. */
export const FT_FRAME_BYTES_DEFAULT = 256 * 1024;
/** The default bound on unacknowledged bytes: the lag in bytes a primary tolerates before append refuses. */
export const FT_BUFFER_BYTES_DEFAULT = 64 * 1024 * 1024;
/** The default bound on frames sent and not acknowledged: keeps bookkeeping bounded when frames are tiny. */
export const FT_FRAMES_IN_FLIGHT_DEFAULT = 4096;
/**
 * The most append records kept for bytes not yet sent. Beyond it the newest is
 * merged into the one before (keeping the older time and the newer event
 * count), which can only make a frame's event count lower and the lag in ms
 * higher: both safe.
 */
const ENTRIES_MAX = 4096;

export interface LogSenderOptions {
  /** The largest FT_LOG frame, every byte counted (default FT_FRAME_BYTES_DEFAULT, at most FRAME_BYTES_MAX). */
  frameBytesMax?: number;
  /** How long appended bytes may wait for more to fill a frame; 0 (the default) sends them at once. */
  flushDelayMs?: number;
  /**
   * The most unacknowledged bytes (sent or not); append refuses bytes beyond
   * it (default FT_BUFFER_BYTES_DEFAULT). Only bytes not yet handed to the
   * transport are held in memory.
   */
  bufferBytesMax?: number;
  /** Above this many unacknowledged bytes append reports overHighWater (default bufferBytesMax / 2). */
  highWaterBytes?: number;
  /** The most frames sent and not yet acknowledged (default FT_FRAMES_IN_FLIGHT_DEFAULT). */
  framesInFlightMax?: number;
}

export type AppendResult =
  | {
      ok: true;
      /** Unacknowledged bytes after this append. */
      bufferedBytes: number;
      /** Whether bufferedBytes is above highWaterBytes: the caller should slow the primary down. */
      overHighWater: boolean;
    }
  /** Nothing was appended: it would exceed bufferBytesMax (append at most spaceBytes), or the sender has failed. */
  | { ok: false; reason: 'buffer-full' | 'closed'; spaceBytes: number };

export type AckResult =
  | {
      ok: true;
      /** True on the first valid ack: the backup is ready and the stream may flow. */
      established: boolean;
      /** Whether the ack moved ackedBytes on. */
      advanced: boolean;
      /** Whether the ack moved replayedEventSeq on. */
      replayAdvanced: boolean;
      ackedBytes: number;
      ackedEventSeq: number;
      replayedEventSeq: number;
    }
  | FtReject;

/** Lag, all on the primary's clock. */
export interface Lag {
  /** Events appended and not yet acknowledged. */
  events: number;
  /** Bytes appended and not yet acknowledged. */
  bytes: number;
  /** How long ago the oldest unacknowledged byte was appended; 0 when everything is acknowledged. */
  ms: number;
  /** Events appended and not yet replayed by the backup (as its last ack said). */
  replayEvents: number;
}

/** The block size of the sender's queue of unsent bytes. */
const QUEUE_BLOCK_BYTES = 64 * 1024;

/**
 * A FIFO of bytes in fixed-size blocks: appends of any size are copied in,
 * frames are copied out. Its memory is the bytes it holds plus at most two
 * blocks, however small the appends (a list of appended buffers would cost an
 * object per append).
 */
class ByteQueue {
  private readonly blocks: Buffer[] = [];
  /** Where reading resumes in blocks[0]. */
  private headAt = 0;
  /** Where writing resumes in the last block. */
  private tailAt = 0;
  private bytes = 0;

  get length(): number {
    return this.bytes;
  }

  push(src: Uint8Array): void {
    let at = 0;
    while (at < src.byteLength) {
      if (this.blocks.length === 0 || this.tailAt === QUEUE_BLOCK_BYTES) {
        this.blocks.push(Buffer.allocUnsafe(QUEUE_BLOCK_BYTES));
        this.tailAt = 0;
      }
      const n = Math.min(src.byteLength - at, QUEUE_BLOCK_BYTES - this.tailAt);
      this.blocks[this.blocks.length - 1]!.set(src.subarray(at, at + n), this.tailAt);
      this.tailAt += n;
      at += n;
    }
    this.bytes += src.byteLength;
  }

  /** Moves the first dst.byteLength bytes into dst. */
  take(dst: Uint8Array): void {
    assert(dst.byteLength <= this.bytes, `taking ${dst.byteLength} bytes of ${this.bytes}`);
    let at = 0;
    while (at < dst.byteLength) {
      const block = this.blocks[0]!;
      const end = this.blocks.length === 1 ? this.tailAt : QUEUE_BLOCK_BYTES;
      const n = Math.min(end - this.headAt, dst.byteLength - at);
      dst.set(block.subarray(this.headAt, this.headAt + n), at);
      at += n;
      this.headAt += n;
      if (this.headAt === end) {
        // An emptied last block is kept and rewound; an emptied earlier one is dropped.
        if (this.blocks.length === 1) this.tailAt = 0;
        else this.blocks.shift();
        this.headAt = 0;
      }
    }
    this.bytes -= dst.byteLength;
  }

  clear(): void {
    this.blocks.length = 0;
    this.headAt = this.tailAt = 0;
    this.bytes = 0;
  }
}

/** An append not yet wholly sent: where it ends, the events complete there, and when it came. */
interface Entry {
  end: number;
  events: number;
  atMs: number;
}

/** A frame sent and not yet acknowledged. */
interface InFlight {
  end: number;
  events: number;
  /** When the frame's first byte was appended: the lag in ms once everything before it is acknowledged. */
  firstAtMs: number;
}

/**
 * The primary's side of an established session: appended log bytes in,
 * FT_LOG frames out (pollFrame), acks in (onFrame).
 *
 * Offsets are the log stream's; everything is counted from session.start.
 * The transport calls pollFrame while its socket takes more, and again at
 * nextDeadlineMs(), on drain, and after every append and ack.
 */
export class LogSender {
  readonly frameBytesMax: number;
  readonly flushDelayMs: number;
  readonly bufferBytesMax: number;
  readonly highWaterBytes: number;
  readonly framesInFlightMax: number;
  /** Log bytes per FT_LOG frame: frameBytesMax less the frame's envelope and FT_LOG's prefix. */
  readonly frameDataBytesMax: number;

  private readonly frames: SessionFrames;
  private readonly pending = new ByteQueue();
  private readonly entries: Entry[] = [];
  private readonly inflight: InFlight[] = [];
  private appended: number;
  private appendedEvents: number;
  private sent: number;
  private sentEvents: number;
  private acked: number;
  private ackedEvents: number;
  private replayedEvents: number;
  private flushTo: number;
  private isEstablished = false;
  private failure: FtReject | null = null;
  private closed = false;
  private latestMs = -Infinity;

  constructor(
    readonly session: FtSession,
    opts: LogSenderOptions = {},
  ) {
    assert(session.role === 'primary', 'a LogSender runs on the primary');
    this.frameBytesMax = opts.frameBytesMax ?? FT_FRAME_BYTES_DEFAULT;
    this.flushDelayMs = opts.flushDelayMs ?? 0;
    this.bufferBytesMax = opts.bufferBytesMax ?? FT_BUFFER_BYTES_DEFAULT;
    this.highWaterBytes = opts.highWaterBytes ?? Math.floor(this.bufferBytesMax / 2);
    this.framesInFlightMax = opts.framesInFlightMax ?? FT_FRAMES_IN_FLIGHT_DEFAULT;
    const envelope =
      FRAME_BYTES_MIN -
      2 +
      Buffer.byteLength(session.self) +
      Buffer.byteLength(session.peer) +
      FT_LOG_HEADER_BYTES;
    this.frameDataBytesMax = this.frameBytesMax - envelope;
    assert(
      Number.isInteger(this.frameBytesMax) &&
        this.frameBytesMax <= FRAME_BYTES_MAX &&
        this.frameDataBytesMax >= 1,
      `frameBytesMax ${this.frameBytesMax} must leave room for data and be at most ${FRAME_BYTES_MAX}`,
    );
    assert(Number.isFinite(this.flushDelayMs) && this.flushDelayMs >= 0, `flushDelayMs ${this.flushDelayMs}`);
    assert(
      Number.isSafeInteger(this.bufferBytesMax) && this.bufferBytesMax >= 1,
      'bufferBytesMax must be >= 1',
    );
    assert(
      Number.isSafeInteger(this.highWaterBytes) &&
        this.highWaterBytes >= 0 &&
        this.highWaterBytes <= this.bufferBytesMax,
      'highWaterBytes must lie in 0..bufferBytesMax',
    );
    assert(
      Number.isSafeInteger(this.framesInFlightMax) && this.framesInFlightMax >= 1,
      'framesInFlightMax >= 1',
    );
    this.frames = new SessionFrames(session);
    this.appended = this.sent = this.acked = this.flushTo = session.start.offset;
    this.appendedEvents = this.sentEvents = this.ackedEvents = this.replayedEvents = session.start.events;
  }

  /** Whether the backup's first ack has come: until then no FT_LOG frame is sent. */
  get established(): boolean {
    return this.isEstablished;
  }
  /** The highest host call whose record the backup holds entirely; start.events - 1 before any. */
  get ackedEventSeq(): number {
    return this.ackedEvents - 1;
  }
  /** The highest host call the backup's replayer has executed, as its last ack said (informational). */
  get replayedEventSeq(): number {
    return this.replayedEvents - 1;
  }
  /** The stream offset up to which the backup holds every byte. */
  get ackedBytes(): number {
    return this.acked;
  }
  /** The stream offset up to which bytes were handed to the transport. */
  get sentBytes(): number {
    return this.sent;
  }
  /** The stream offset up to which bytes were appended. */
  get appendedBytes(): number {
    return this.appended;
  }
  /** The highest event seq appended (as the caller declared it). */
  get lastEventSeq(): number {
    return this.appendedEvents - 1;
  }
  /** Appended and not yet acknowledged. */
  get bufferedBytes(): number {
    return this.appended - this.acked;
  }
  /** How many more bytes append takes now. */
  get spaceBytes(): number {
    return this.failure !== null || this.closed ? 0 : this.bufferBytesMax - this.bufferedBytes;
  }
  get overHighWater(): boolean {
    return this.bufferedBytes > this.highWaterBytes;
  }
  /** Appended bytes not yet handed to the transport (the bytes this sender holds in memory). */
  get unsentBytes(): number {
    return this.appended - this.sent;
  }
  get framesInFlight(): number {
    return this.inflight.length;
  }
  /** Why the sender failed (a rejected frame), or null. */
  get failed(): FtReject | null {
    return this.failure;
  }

  /**
   * Appends log bytes (copied) that continue the stream. `lastEventSeq` is the
   * highest host call whose record is complete at the end of these bytes (the
   * same as before when they complete none); it may lag behind the truth,
   * never run ahead of it, and never goes backwards. Refuses, as a value,
   * bytes beyond spaceBytes.
   */
  append(bytes: Uint8Array, lastEventSeq: number, nowMs: number): AppendResult {
    const now = this.clock(nowMs);
    assert(Number.isSafeInteger(lastEventSeq), `lastEventSeq ${lastEventSeq} is not an integer`);
    const events = lastEventSeq + 1;
    assert(
      events >= this.appendedEvents,
      `lastEventSeq ${lastEventSeq} goes back from ${this.appendedEvents - 1}`,
    );
    assert(
      bytes.byteLength > 0 || events === this.appendedEvents,
      'an event completes only with bytes: an empty append cannot move lastEventSeq',
    );
    if (this.failure !== null || this.closed) return { ok: false, reason: 'closed', spaceBytes: 0 };
    if (bytes.byteLength > this.spaceBytes)
      return { ok: false, reason: 'buffer-full', spaceBytes: this.spaceBytes };
    if (bytes.byteLength > 0) {
      assert(Number.isSafeInteger(this.appended + bytes.byteLength), 'the stream passes 2^53 bytes');
      this.pending.push(bytes);
      this.appended += bytes.byteLength;
      this.appendedEvents = events;
      const last = this.entries[this.entries.length - 1];
      if (this.entries.length >= ENTRIES_MAX && last !== undefined) {
        last.end = this.appended;
        last.events = events;
      } else {
        this.entries.push({ end: this.appended, events, atMs: now });
      }
    }
    return { ok: true, bufferedBytes: this.bufferedBytes, overHighWater: this.overHighWater };
  }

  /** Makes every byte appended so far due at once, whatever flushDelayMs says. */
  flush(): void {
    this.flushTo = this.appended;
  }

  /**
   * The next FT_LOG frame to send, or null: nothing is due, the session is not
   * established yet, framesInFlightMax frames await acks, or it has failed. A
   * frame is due when a whole frame's worth is waiting, when the oldest
   * waiting byte is flushDelayMs old, or after flush().
   */
  pollFrame(nowMs: number): Buffer | null {
    const now = this.clock(nowMs);
    if (!this.isEstablished || this.failure !== null || this.closed) return null;
    const unsent = this.appended - this.sent;
    if (unsent === 0 || this.inflight.length >= this.framesInFlightMax) return null;
    const first = this.entries[0];
    assert(first !== undefined, 'unsent bytes without an append record');
    const due =
      unsent >= this.frameDataBytesMax || this.flushTo > this.sent || first.atMs + this.flushDelayMs <= now;
    if (!due) return null;
    const n = Math.min(unsent, this.frameDataBytesMax);
    const end = this.sent + n;
    let events = this.sentEvents;
    while (this.entries.length > 0 && this.entries[0]!.end <= end) events = this.entries.shift()!.events;
    const payload = Buffer.allocUnsafe(FT_LOG_HEADER_BYTES + n);
    writeFtLogHeader(payload, this.sent, events);
    this.pending.take(payload.subarray(FT_LOG_HEADER_BYTES));
    this.inflight.push({ end, events, firstAtMs: first.atMs });
    this.sent = end;
    this.sentEvents = events;
    return this.frames.encode(FrameKind.FT_LOG, payload);
  }

  /**
   * When pollFrame will next have a frame without anything else happening (it
   * may be now or past), or null when it waits for an append, an ack or
   * establishment.
   */
  nextDeadlineMs(): number | null {
    if (!this.isEstablished || this.failure !== null || this.closed) return null;
    if (this.appended === this.sent || this.inflight.length >= this.framesInFlightMax) return null;
    if (this.appended - this.sent >= this.frameDataBytesMax || this.flushTo > this.sent) return this.latestMs;
    return this.entries[0]!.atMs + this.flushDelayMs;
  }

  /** Takes a frame from the backup: an FT_ACK of the stream up to the end of a frame sent. */
  onFrame(buf: Uint8Array, nowMs: number): AckResult {
    this.clock(nowMs);
    if (this.failure !== null || this.closed) return reject('closed', 'the sender has failed or closed');
    const r = this.checkAck(buf);
    if (!r.ok) {
      this.failure = r;
      return r;
    }
    return r;
  }

  private checkAck(buf: Uint8Array): AckResult {
    const c = this.frames.check(buf, FrameKind.FT_ACK);
    if (!c.ok) return c;
    const a = decodeFtAck(c.frame.payload);
    if (a === null) {
      return reject(
        'payload',
        `an FT_ACK payload of ${c.frame.payload.byteLength} bytes (not ${FT_ACK_PAYLOAD_BYTES})`,
      );
    }
    if (a.offset > this.sent)
      return reject('ack-unsent', `an ack of offset ${a.offset}; only ${this.sent} was sent`);
    if (a.replayed > a.events || a.replayed < this.replayedEvents) {
      return reject(
        'events',
        `an ack with ${a.replayed} events replayed (held ${a.events}, replayed before ${this.replayedEvents})`,
      );
    }
    if (a.offset < this.acked)
      return reject('ack-backwards', `an ack of offset ${a.offset} after ${this.acked}`);
    let covered = 0;
    if (a.offset === this.acked) {
      if (a.events !== this.ackedEvents) {
        return reject(
          'events',
          `an ack of ${a.events} events at offset ${a.offset}, where ${this.ackedEvents} are`,
        );
      }
    } else {
      while (covered < this.inflight.length && this.inflight[covered]!.end < a.offset) covered++;
      const f = this.inflight[covered];
      if (f === undefined || f.end !== a.offset) {
        return reject('ack-boundary', `an ack of offset ${a.offset}, which is not the end of a frame sent`);
      }
      if (f.events !== a.events) {
        return reject(
          'events',
          `an ack of ${a.events} events at offset ${a.offset}, where the frame had ${f.events}`,
        );
      }
      covered++;
    }
    this.frames.accepted();
    this.inflight.splice(0, covered);
    const advanced = a.offset > this.acked;
    const replayAdvanced = a.replayed > this.replayedEvents;
    this.acked = a.offset;
    this.ackedEvents = a.events;
    this.replayedEvents = a.replayed;
    const established = !this.isEstablished;
    this.isEstablished = true;
    return {
      ok: true,
      established,
      advanced,
      replayAdvanced,
      ackedBytes: this.acked,
      ackedEventSeq: this.ackedEvents - 1,
      replayedEventSeq: this.replayedEvents - 1,
    };
  }

  /** Lag in events, bytes and ms, on the primary's clock. */
  lag(nowMs: number): Lag {
    const now = this.clock(nowMs);
    const oldest = this.inflight[0]?.firstAtMs ?? this.entries[0]?.atMs;
    return {
      events: this.appendedEvents - this.ackedEvents,
      bytes: this.appended - this.acked,
      ms: oldest === undefined ? 0 : Math.max(0, now - oldest),
      replayEvents: this.appendedEvents - this.replayedEvents,
    };
  }

  /** Stops the sender: later appends are refused and no more frames come out. Held bytes are dropped. */
  close(): void {
    this.closed = true;
    this.pending.clear();
  }

  /** Time never goes backwards: an earlier nowMs is taken as the latest seen. */
  private clock(nowMs: number): number {
    assert(Number.isFinite(nowMs), `nowMs ${nowMs} is not finite`);
    if (nowMs > this.latestMs) this.latestMs = nowMs;
    return this.latestMs;
  }
}

// ---------------------------------------------------------------------------
// The receiver (backup)
// ---------------------------------------------------------------------------

/** By default an ack goes at once once it would cover this many new bytes, however ackDelayMs is set. */
export const FT_ACK_EVERY_BYTES_DEFAULT = 1024 * 1024;
/** By default replay progress alone sends an ack at most this often: 50 a second while a backup catches up. */
export const FT_REPLAY_REPORT_MS_DEFAULT = 20;

export interface LogReceiverOptions {
  /**
   * Coalesces acks: an ack waits at most this long after the oldest byte it
   * would newly cover arrived. 0 (the default) acks every batch at once: the
   * transport asks for an ack after each read from the socket.
   */
  ackDelayMs?: number;
  /** An ack goes at once when it would newly cover at least this many bytes (default FT_ACK_EVERY_BYTES_DEFAULT). */
  ackEveryBytes?: number;
  /** Replay progress with nothing new to acknowledge is reported at most this often (default FT_REPLAY_REPORT_MS_DEFAULT). */
  replayReportMs?: number;
  /**
   * TESTING ONLY, a planted bug: acknowledge a frame's bytes when it comes off
   * the wire (onArrival), from its unauthenticated header, before it is
   * validated or held. The crash suite must catch it (docs/FT-CHANNEL.md).
   */
  ackBeforeReceipt?: boolean;
}

/** A piece of the stream, validated and in order: hand it to the replayer. */
export interface LogChunk {
  /** Its first byte's stream offset. */
  offset: number;
  bytes: Buffer;
  /** The highest host call complete at its end (start.events - 1 before any). */
  lastEventSeq: number;
}

export type ReceiveResult = { ok: true; chunk: LogChunk } | FtReject;

/**
 * The backup's side of an established session: FT_LOG frames in (onFrame),
 * validated chunks out, acks out (pollAck). Its first ack, of the start
 * position, is due at once: it tells the primary the backup is ready.
 */
export class LogReceiver {
  readonly ackDelayMs: number;
  readonly ackEveryBytes: number;
  readonly ackBeforeReceipt: boolean;
  readonly replayReportMs: number;

  private readonly frames: SessionFrames;
  private held: number;
  private heldEvents: number;
  private ackSent = -1;
  private ackSentEvents = -1;
  private replayed: number;
  private replayedSent: number;
  private lastAckAtMs = -Infinity;
  /** When the oldest byte not yet covered by an ack arrived, or null. */
  private unackedSinceMs: number | null = null;
  /** The planted bug's claim: the end of the latest frame seen on the wire, whether held or not. */
  private claimed: StreamPosition | null = null;
  private failure: FtReject | null = null;
  private closed = false;
  private latestMs = -Infinity;

  constructor(
    readonly session: FtSession,
    opts: LogReceiverOptions = {},
  ) {
    assert(session.role === 'backup', 'a LogReceiver runs on the backup');
    this.ackDelayMs = opts.ackDelayMs ?? 0;
    this.ackEveryBytes = opts.ackEveryBytes ?? FT_ACK_EVERY_BYTES_DEFAULT;
    this.ackBeforeReceipt = opts.ackBeforeReceipt ?? false;
    this.replayReportMs = opts.replayReportMs ?? FT_REPLAY_REPORT_MS_DEFAULT;
    assert(
      Number.isFinite(this.replayReportMs) && this.replayReportMs >= 0,
      `replayReportMs ${this.replayReportMs}`,
    );
    assert(Number.isFinite(this.ackDelayMs) && this.ackDelayMs >= 0, `ackDelayMs ${this.ackDelayMs}`);
    assert(Number.isSafeInteger(this.ackEveryBytes) && this.ackEveryBytes >= 1, 'ackEveryBytes must be >= 1');
    this.frames = new SessionFrames(session);
    this.held = session.start.offset;
    this.heldEvents = this.replayed = this.replayedSent = session.start.events;
  }

  /** The stream offset up to which every byte was received, validated and handed over. */
  get heldBytes(): number {
    return this.held;
  }
  /** The highest host call whose record was received entirely. */
  get heldEventSeq(): number {
    return this.heldEvents - 1;
  }
  /** The highest offset acknowledged so far (-1 before the first ack). */
  get ackedBytes(): number {
    return this.ackSent;
  }
  /** The replayer's progress as last reported with setReplayed. */
  get replayedEventSeq(): number {
    return this.replayed - 1;
  }
  get failed(): FtReject | null {
    return this.failure;
  }

  /**
   * The transport calls this for every whole frame as it comes off the wire,
   * before onFrame (and before any test-only link delay). It does nothing,
   * except under the planted bug ackBeforeReceipt.
   */
  onArrival(buf: Uint8Array, nowMs: number): void {
    this.clock(nowMs);
    if (!this.ackBeforeReceipt || this.failure !== null || this.closed) return;
    const head = peekRawHeader(buf);
    if (head === null || head.kind !== FrameKind.FT_LOG) return;
    const log = decodeFtLog(head.payload);
    if (log === null) return;
    const end = log.offset + log.data.byteLength;
    if (end > (this.claimed?.offset ?? -1)) this.claimed = { offset: end, events: log.events };
  }

  /** Validates the next frame of the session; on success the chunk is held, and will be acknowledged. */
  onFrame(buf: Uint8Array, nowMs: number): ReceiveResult {
    const now = this.clock(nowMs);
    if (this.failure !== null || this.closed) return reject('closed', 'the receiver has failed or closed');
    const r = this.checkLog(buf, now);
    if (!r.ok) this.failure = r;
    return r;
  }

  private checkLog(buf: Uint8Array, now: number): ReceiveResult {
    const c = this.frames.check(buf, FrameKind.FT_LOG);
    if (!c.ok) return c;
    const log = decodeFtLog(c.frame.payload);
    if (log === null) return reject('payload', 'a malformed FT_LOG payload');
    if (log.offset !== this.held) {
      return reject('offset', `an FT_LOG at offset ${log.offset}, where the stream is at ${this.held}`);
    }
    if (log.events < this.heldEvents) {
      return reject('events', `an FT_LOG with ${log.events} events after ${this.heldEvents}`);
    }
    this.frames.accepted();
    const chunk: LogChunk = {
      offset: log.offset,
      bytes: Buffer.from(log.data.buffer, log.data.byteOffset, log.data.byteLength),
      lastEventSeq: log.events - 1,
    };
    this.held += log.data.byteLength;
    this.heldEvents = log.events;
    this.unackedSinceMs ??= now;
    return { ok: true, chunk };
  }

  /**
   * Reports the replayer's progress: the highest host call it has executed,
   * which cannot be past what is held. It travels in acks (with the next one,
   * or on its own at most every replayReportMs) for the primary's lag and its
   * "protected" state; the Output Rule never depends on it.
   */
  setReplayed(lastEventSeq: number, nowMs: number): void {
    this.clock(nowMs);
    const events = lastEventSeq + 1;
    assert(
      Number.isSafeInteger(events) && events >= this.replayed,
      `replay progress goes back to ${lastEventSeq}`,
    );
    assert(
      events <= this.heldEvents,
      `the replayer is at ${lastEventSeq}, past what is held (${this.heldEvents - 1})`,
    );
    this.replayed = events;
  }

  /**
   * The ack to send now, or null: the first ack (of the start) at once; then
   * one when held bytes are not yet acknowledged and ackDelayMs has passed, or
   * ackEveryBytes are waiting, or when replay progress has not been reported
   * for replayReportMs. An ack covers everything held, so one skipped (the
   * socket was full) is made up by the next.
   */
  pollAck(nowMs: number): Buffer | null {
    const now = this.clock(nowMs);
    if (this.failure !== null || this.closed) return null;
    let target: StreamPosition = { offset: this.held, events: this.heldEvents };
    const bug = this.claimed !== null && this.claimed.offset > target.offset;
    if (bug) target = this.claimed!;
    const fresh = target.offset > this.ackSent;
    const dataDue =
      fresh &&
      (this.ackSent < 0 ||
        bug ||
        this.ackDelayMs === 0 ||
        target.offset - this.ackSent >= this.ackEveryBytes ||
        (this.unackedSinceMs !== null && this.unackedSinceMs + this.ackDelayMs <= now));
    const replayDue = this.replayed > this.replayedSent && this.lastAckAtMs + this.replayReportMs <= now;
    if (!dataDue && !replayDue) return null;
    // An ack for replay progress also covers whatever is held: acknowledging held bytes early is always right.
    if (fresh) {
      this.ackSent = target.offset;
      this.ackSentEvents = target.events;
      this.unackedSinceMs = null;
    }
    this.replayedSent = Math.min(this.replayed, this.ackSentEvents);
    this.lastAckAtMs = now;
    return this.frames.encode(
      FrameKind.FT_ACK,
      encodeFtAck({ offset: this.ackSent, events: this.ackSentEvents, replayed: this.replayedSent }),
    );
  }

  /** When pollAck will next have an ack without anything else happening, or null. */
  nextDeadlineMs(): number | null {
    if (this.failure !== null || this.closed) return null;
    let due: number | null = null;
    if (Math.max(this.held, this.claimed?.offset ?? -1) > this.ackSent) {
      due =
        this.ackSent < 0 || this.ackDelayMs === 0 || this.unackedSinceMs === null
          ? this.latestMs
          : this.unackedSinceMs + this.ackDelayMs;
    }
    if (this.replayed > this.replayedSent) {
      const replayDueMs = this.lastAckAtMs + this.replayReportMs;
      due = due === null ? replayDueMs : Math.min(due, replayDueMs);
    }
    return due;
  }

  /** The last ack sent, as {offset, events}, or null before the first. */
  lastAck(): StreamPosition | null {
    return this.ackSent < 0 ? null : { offset: this.ackSent, events: this.ackSentEvents };
  }

  close(): void {
    this.closed = true;
  }

  private clock(nowMs: number): number {
    assert(Number.isFinite(nowMs), `nowMs ${nowMs} is not finite`);
    if (nowMs > this.latestMs) this.latestMs = nowMs;
    return this.latestMs;
  }
}

// ---------------------------------------------------------------------------
// Frames out of a byte stream
// ---------------------------------------------------------------------------

/** The most header bytes peekFrameLength needs to know a frame's length. */
const FRAME_PEEK_BYTES = 172;

export type SplitResult =
  | { type: 'frame'; frame: Buffer }
  /** Read more bytes first. */
  | { type: 'more' }
  /** The stream is not carrying frames (or carries one too big for this reader): close it. */
  | { type: 'bad'; reason: 'magic' | 'version' | 'too-big' | 'malformed' };

/**
 * Cuts a TCP byte stream into frames with peekFrameLength. It holds what it
 * was given until the frames are taken, so a reader that calls next() after
 * each push holds less than one frame (at most frameBytesMax) plus one read.
 */
export class FrameSplitter {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;

  constructor(readonly frameBytesMax: number = FRAME_BYTES_MAX) {
    assert(
      Number.isInteger(frameBytesMax) && frameBytesMax >= FRAME_BYTES_MIN && frameBytesMax <= FRAME_BYTES_MAX,
      `frameBytesMax ${frameBytesMax} is not in ${FRAME_BYTES_MIN}..${FRAME_BYTES_MAX}`,
    );
  }

  get bufferedBytes(): number {
    return this.buffered;
  }

  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.buffered += chunk.byteLength;
  }

  next(): SplitResult {
    if (this.buffered === 0) return { type: 'more' };
    // The header must be contiguous for peekFrameLength; a few small reads are joined.
    const peekBytes = Math.min(FRAME_PEEK_BYTES, this.buffered);
    if (this.chunks[0]!.byteLength < peekBytes) this.join(peekBytes);
    const p = peekFrameLength(this.chunks[0]!);
    if (!p.ok) return p.reason === 'short' ? { type: 'more' } : { type: 'bad', reason: p.reason };
    if (p.frameBytes > this.frameBytesMax) return { type: 'bad', reason: 'too-big' };
    if (this.buffered < p.frameBytes) return { type: 'more' };
    if (this.chunks[0]!.byteLength < p.frameBytes) this.join(p.frameBytes);
    const head = this.chunks[0]!;
    const frame = head.subarray(0, p.frameBytes);
    if (head.byteLength === p.frameBytes) this.chunks.shift();
    else this.chunks[0] = head.subarray(p.frameBytes);
    this.buffered -= p.frameBytes;
    return { type: 'frame', frame };
  }

  /** Makes the first chunk at least n bytes long by joining the following ones. */
  private join(n: number): void {
    let have = 0;
    let k = 0;
    while (have < n) have += this.chunks[k++]!.byteLength;
    this.chunks.splice(0, k, Buffer.concat(this.chunks.slice(0, k), have));
  }
}
