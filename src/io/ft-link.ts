/**
 * The FT logging channel's TCP transport: a listener on the primary's host
 * (FtLinkServer) that backups connect to (connectFtLink). Each connection is
 * one session of one VM: the backup's hello, the primary's welcome or
 * refusal, then the log stream one way and acks the other. The protocol is in
 * src/ft/channel.ts (pure) and docs/FT-CHANNEL.md; this file only moves frames
 * and keeps time.
 *
 * Why the backup connects: it is the side that knows when it is ready to
 * consume the stream and from where (its start position), one listener per
 * primary host serves every VM (the hello names the VM), and a primary never
 * waits on a connect to a host that may be down. The data still flows from the
 * primary to the backup, as in VMware FT.
 *
 * Invariants:
 * - Every frame that fails a check is logged through the injected logger and
 *   closes the connection; nothing of it reaches the caller. A broken
 *   connection is not retried: the backup is lost, and the caller decides.
 * - Memory is bounded on both sides: the primary pulls frames from its
 *   LogSender only while socket.write has room (backpressure reaches the
 *   sender, whose append refuses past bufferBytesMax); a receiver holds less
 *   than one frame plus one read, and a paused backup pauses its socket. Acks
 *   are cumulative, so one skipped on a full socket is made up by the next.
 * - The handshake has a deadline, and pending handshakes a bound.
 * - linkDelayMs and ackBeforeReceipt are for tests only: a delay line on
 *   received frames (frames in it when the connection breaks are lost, as in
 *   a network) and a planted bug.
 */
import net from 'node:net';
import {
  FRAME_BYTES_MAX,
  FT_NONCE_BYTES,
  FT_SESSION_ID_BYTES,
  FtRefuseCode,
  type HostFacts,
  type StreamPosition,
} from '../cluster/frame.js';
import {
  BackupHandshake,
  FrameSplitter,
  LogReceiver,
  LogSender,
  answerHello,
  v8FlagsOf,
  type AppendResult,
  type FtEndpoint,
  type FtRejectReason,
  type FtSession,
  type Lag,
  type LogChunk,
  type LogReceiverOptions,
  type LogSenderOptions,
  type OfferRefusal,
  type PrimaryOffer,
} from '../ft/channel.js';
import { realClock } from './clock.js';
import { realEntropy, type Entropy } from './entropy.js';

/** How long a connection may take to complete its handshake (the backup's first ack included). */
export const FT_HANDSHAKE_TIMEOUT_MS_DEFAULT = 5000;
/** The most connections a listener keeps in their handshake at once; more are closed at once. */
export const FT_HANDSHAKES_MAX_DEFAULT = 64;
/**
 * The largest frame a primary reads: a backup sends only FT_HELLO (with its
 * facts, well under 32 KiB) and FT_ACK (about 130 bytes).
 */
const PRIMARY_READ_FRAME_BYTES_MAX = 32 * 1024;
/** A test-only delay line pauses reading while it holds more than this. */
const DELAY_LINE_BYTES_MAX = 64 * 1024 * 1024;
/** After a graceful close, the socket is destroyed if the peer has not closed within this time. */
const CLOSE_GRACE_MS = 2000;

/** A pino-compatible logger: the channel logs every rejected frame and every refusal through it. */
export interface FtLogger {
  warn(fields: Record<string, unknown>, msg: string): void;
  info(fields: Record<string, unknown>, msg: string): void;
}

const silentLogger: FtLogger = { warn: () => {}, info: () => {} };

/** This process's facts for the join check. */
export function localHostFacts(): HostFacts {
  return {
    nodeVersion: process.version,
    arch: process.arch,
    v8Flags: v8FlagsOf(process.execArgv, process.env['NODE_OPTIONS']),
  };
}

/** Why a link closed. */
export interface FtCloseReason {
  code:
    | 'local' // close() was called
    | 'peer-closed' // the peer closed the connection
    | 'error' // a socket error
    | 'rejected' // a frame failed a check
    | 'handshake-timeout'
    | 'busy' // another session of the same VM was established first
    | 'withdrawn' // the primary stopped serving the VM
    | 'server-closed';
  message: string;
  /** For 'rejected': the check that failed. */
  reject?: FtRejectReason;
}

export interface FtAddress {
  host: string;
  port: number;
}

/** What both ends are given. */
export interface FtLinkCommon {
  /** The cluster secret (ClusterRecord.secretHex as bytes). */
  key: Uint8Array;
  clusterId: string;
  /** This host's name and incarnation. */
  self: string;
  selfIncarnation: string;
  /** This host's facts (default localHostFacts()). */
  facts?: HostFacts;
  log?: FtLogger;
  /** The monotonic clock in ms (default the real one). */
  nowMs?: () => number;
  /** Where session ids and nonces come from (default the real entropy). */
  entropy?: Entropy;
  handshakeTimeoutMs?: number;
  /** TESTING ONLY: delay every received frame by this long before it is processed (default 0). */
  linkDelayMs?: number;
}

function defaultNowMs(): number {
  return Number(realClock.monotonicNs()) / 1e6;
}

function randomBytesFrom(entropy: Entropy, n: number): Buffer {
  const b = Buffer.alloc(n);
  entropy.fill(b);
  return b;
}

// ---------------------------------------------------------------------------
// One connection carrying frames
// ---------------------------------------------------------------------------

interface FrameConnHooks {
  /** Every whole frame as it comes off the wire, before the delay line. */
  onArrival(frame: Buffer): void;
  /** Every frame after the delay line, in order. */
  onFrame(frame: Buffer): void;
  /** After a run of frames has been processed. */
  onBatchEnd(): void;
  /** The socket has room again. */
  onDrain(): void;
  onClose(reason: FtCloseReason): void;
  /** A stream that does not carry frames. */
  onBad(reason: 'magic' | 'version' | 'too-big' | 'malformed'): void;
}

/**
 * A socket carrying frames: splits them out of the stream, runs the optional
 * delay line, honours pauses, and closes once with one reason.
 */
class FrameConn {
  private readonly splitter: FrameSplitter;
  private readonly delayLine: { frame: Buffer; dueMs: number }[] = [];
  private delayLineBytes = 0;
  private delayTimer: NodeJS.Timeout | null = null;
  private pausedByUser = false;
  private closeReason: FtCloseReason | null = null;
  private hooks: FrameConnHooks | null = null;
  readonly closed: Promise<void>;

  constructor(
    readonly socket: net.Socket,
    frameBytesMax: number,
    private readonly linkDelayMs: number,
    private readonly nowMs: () => number,
  ) {
    this.splitter = new FrameSplitter(frameBytesMax);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 5000);
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => {
      if (this.closeReason !== null) return;
      this.splitter.push(chunk);
      this.pump();
    });
    socket.on('drain', () => {
      if (this.closeReason === null) this.hooks?.onDrain();
    });
    socket.on('end', () =>
      this.close({ code: 'peer-closed', message: 'the peer closed the connection' }, 'graceful'),
    );
    socket.on('error', (err) => this.close({ code: 'error', message: err.message }, 'abort'));
    socket.on('close', () => this.close({ code: 'peer-closed', message: 'the connection closed' }, 'abort'));
  }

  setHooks(h: FrameConnHooks): void {
    this.hooks = h;
  }

  get isClosed(): boolean {
    return this.closeReason !== null;
  }

  /** Whether a write now would be taken without exceeding the socket's buffer. */
  get writable(): boolean {
    return this.closeReason === null && !this.socket.writableNeedDrain;
  }

  write(frame: Uint8Array): void {
    if (this.closeReason !== null) return;
    this.socket.write(frame);
  }

  pause(): void {
    this.pausedByUser = true;
    this.socket.pause();
  }

  resume(): void {
    if (!this.pausedByUser) return;
    this.pausedByUser = false;
    this.pump();
  }

  /** Takes frames out of the splitter and the delay line for as long as nothing pauses or closes. */
  private pump(): void {
    if (this.hooks === null) return;
    let processed = false;
    while (this.closeReason === null && !this.pausedByUser) {
      // Read afresh each time: a frame's handler may hand the connection on (handshake to session).
      const h = this.hooks;
      if (this.linkDelayMs > 0) {
        // The delay line: frames leave the wire at once and are processed when due.
        if (this.delayLineBytes < DELAY_LINE_BYTES_MAX) {
          const r = this.splitter.next();
          if (r.type === 'bad') return h.onBad(r.reason);
          if (r.type === 'frame') {
            h.onArrival(r.frame);
            this.delayLine.push({ frame: r.frame, dueMs: this.nowMs() + this.linkDelayMs });
            this.delayLineBytes += r.frame.byteLength;
            continue;
          }
        }
        const head = this.delayLine[0];
        if (head !== undefined && head.dueMs <= this.nowMs()) {
          this.delayLine.shift();
          this.delayLineBytes -= head.frame.byteLength;
          h.onFrame(head.frame);
          processed = true;
          continue;
        }
        if (head !== undefined) this.armDelayTimer(head.dueMs);
        break;
      }
      const r = this.splitter.next();
      if (r.type === 'bad') return h.onBad(r.reason);
      if (r.type === 'more') break;
      h.onArrival(r.frame);
      h.onFrame(r.frame);
      processed = true;
    }
    if (processed && this.closeReason === null) this.hooks?.onBatchEnd();
    if (this.closeReason !== null) return;
    // Read more only when nothing is waiting: a pause, or a full delay line, holds the socket.
    const full = this.delayLineBytes >= DELAY_LINE_BYTES_MAX;
    if (this.pausedByUser || full) this.socket.pause();
    else this.socket.resume();
  }

  private armDelayTimer(dueMs: number): void {
    if (this.delayTimer !== null) return;
    this.delayTimer = setTimeout(
      () => {
        this.delayTimer = null;
        this.pump();
      },
      Math.max(0, dueMs - this.nowMs()),
    );
  }

  /** Closes once; 'graceful' lets written data go first, 'abort' drops it. */
  close(reason: FtCloseReason, mode: 'graceful' | 'abort'): void {
    if (this.closeReason !== null) return;
    this.closeReason = reason;
    if (this.delayTimer !== null) clearTimeout(this.delayTimer);
    this.delayLine.length = 0;
    this.delayLineBytes = 0;
    if (mode === 'abort') {
      this.socket.destroy();
    } else {
      this.socket.end();
      setTimeout(() => this.socket.destroy(), CLOSE_GRACE_MS).unref();
    }
    this.hooks?.onClose(reason);
  }
}

// ---------------------------------------------------------------------------
// The primary: a listener serving VMs to their backups
// ---------------------------------------------------------------------------

export interface FtServerOptions extends FtLinkCommon {
  /** The most connections in their handshake at once (default FT_HANDSHAKES_MAX_DEFAULT). */
  handshakesMax?: number;
}

/** What the primary knows about one VM it serves, and where the link's events go. */
export interface FtOffer extends PrimaryOffer {
  sender?: LogSenderOptions;
  /** A session is established (the backup's first ack came): start appending from link.start. */
  onSession(link: FtPrimaryLink): void;
  /** The backup's acks moved ackedEventSeq on (the Output Rule releases outputs up to it). */
  onAck?(link: FtPrimaryLink, ack: FtAckEvent): void;
  /** An established session closed: the backup is lost. */
  onClose?(link: FtPrimaryLink, reason: FtCloseReason): void;
  /** A hello for this VM was refused; the reason is for `vm show`. */
  onRefused?(refusal: { from: string; code: FtRefuseCode; reason: string }): void;
}

export interface FtAckEvent {
  /** Outputs of host calls up to this one may be released (the Output Rule). */
  ackedEventSeq: number;
  ackedBytes: number;
  /** The backup's replay progress (informational: lag, "protected"). */
  replayedEventSeq: number;
  bufferedBytes: number;
  overHighWater: boolean;
}

export interface FtServerStats {
  connectionsAccepted: number;
  handshakesPending: number;
  sessionsEstablished: number;
  refusals: number;
  rejections: number;
}

export class FtLinkServer {
  private readonly offers = new Map<string, FtOffer>();
  private readonly links = new Map<string, FtPrimaryLink>();
  private readonly pending = new Set<FrameConn>();
  private readonly endpoint: FtEndpoint;
  private readonly log: FtLogger;
  private readonly nowMs: () => number;
  private readonly entropy: Entropy;
  private readonly handshakeTimeoutMs: number;
  private readonly handshakesMax: number;
  private readonly linkDelayMs: number;
  private closing = false;
  private readonly counters = { connectionsAccepted: 0, sessionsEstablished: 0, refusals: 0, rejections: 0 };

  private constructor(
    private readonly server: net.Server,
    opts: FtServerOptions,
  ) {
    this.endpoint = {
      key: opts.key,
      clusterId: opts.clusterId,
      self: opts.self,
      selfIncarnation: opts.selfIncarnation,
      facts: opts.facts ?? localHostFacts(),
    };
    this.log = opts.log ?? silentLogger;
    this.nowMs = opts.nowMs ?? defaultNowMs;
    this.entropy = opts.entropy ?? realEntropy;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? FT_HANDSHAKE_TIMEOUT_MS_DEFAULT;
    this.handshakesMax = opts.handshakesMax ?? FT_HANDSHAKES_MAX_DEFAULT;
    this.linkDelayMs = opts.linkDelayMs ?? 0;
    server.on('connection', (socket) => this.onConnection(socket));
  }

  /** Listens on addr (port 0 picks a free one); rejects if the address cannot be bound. */
  static listen(addr: FtAddress, opts: FtServerOptions): Promise<FtLinkServer> {
    const server = net.createServer({ noDelay: true });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(addr.port, addr.host, () => {
        server.off('error', reject);
        const s = new FtLinkServer(server, opts);
        // A listener error after binding (EMFILE on accept, say) must not crash the host.
        server.on('error', (err) => s.log.warn({ err: err.message }, `ft listener error: ${err.message}`));
        resolve(s);
      });
    });
  }

  address(): FtAddress {
    const a = this.server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** Serves `vm` to its backup (replacing an earlier offer; a live session is kept). */
  offer(vm: string, offer: FtOffer): void {
    this.offers.set(vm, offer);
  }

  /** Stops serving `vm`; its live session, if any, closes with 'withdrawn'. */
  withdraw(vm: string): void {
    this.offers.delete(vm);
    this.links.get(vm)?.closeWith({ code: 'withdrawn', message: `VM ${vm} is no longer served here` });
  }

  /** The live session of `vm`, or null. */
  link(vm: string): FtPrimaryLink | null {
    return this.links.get(vm) ?? null;
  }

  stats(): FtServerStats {
    return { ...this.counters, handshakesPending: this.pending.size };
  }

  /** Stops listening and closes every connection. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed: Promise<void>[] = [];
    for (const c of this.pending) {
      closed.push(c.closed);
      c.close({ code: 'server-closed', message: 'the listener closed' }, 'abort');
    }
    for (const l of this.links.values()) {
      closed.push(l.conn.closed);
      l.closeWith({ code: 'server-closed', message: 'the listener closed' });
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all(closed);
  }

  private lookup(vm: string): PrimaryOffer | OfferRefusal {
    const offer = this.offers.get(vm);
    if (offer === undefined) {
      return { refuse: FtRefuseCode.VM, reason: `${this.endpoint.self} is not the primary of VM ${vm}` };
    }
    if (this.links.has(vm))
      return { refuse: FtRefuseCode.BUSY, reason: `VM ${vm} already has a live backup session` };
    return offer;
  }

  private onConnection(socket: net.Socket): void {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    if (this.closing || this.pending.size >= this.handshakesMax) {
      this.log.warn(
        { remote, pending: this.pending.size },
        `ft: too many handshakes; closed a connection from ${remote}`,
      );
      socket.destroy();
      return;
    }
    this.counters.connectionsAccepted++;
    const conn = new FrameConn(socket, PRIMARY_READ_FRAME_BYTES_MAX, this.linkDelayMs, this.nowMs);
    this.pending.add(conn);
    const timer = setTimeout(() => {
      this.log.warn({ remote }, `ft: handshake from ${remote} timed out`);
      conn.close({ code: 'handshake-timeout', message: 'the handshake did not complete in time' }, 'abort');
    }, this.handshakeTimeoutMs);
    let sender: LogSender | null = null;
    let offer: FtOffer | null = null;
    const rejectFrame = (reason: FtRejectReason, detail: string): void => {
      this.counters.rejections++;
      this.log.warn({ remote, reason, detail }, `ft: rejected a frame from ${remote}: ${reason} (${detail})`);
      conn.close({ code: 'rejected', reject: reason, message: `${reason}: ${detail}` }, 'abort');
    };
    conn.setHooks({
      onArrival: () => {},
      onBatchEnd: () => {},
      onDrain: () => {},
      onBad: (reason) => rejectFrame(reason, 'not a frame stream'),
      onClose: (reason) => {
        clearTimeout(timer);
        this.pending.delete(conn);
        if (sender !== null && !sender.established) {
          this.log.info(
            { remote, reason: reason.message },
            `ft: a handshake from ${remote} ended: ${reason.message}`,
          );
        }
      },
      onFrame: (frame) => {
        if (sender === null) {
          const a = answerHello(
            frame,
            this.endpoint,
            (vm) => this.lookup(vm),
            randomBytesFrom(this.entropy, FT_NONCE_BYTES),
          );
          if (a.type === 'reject') return rejectFrame(a.reason, a.detail);
          if (a.type === 'refuse') {
            this.counters.refusals++;
            this.log.info(
              { remote, from: a.from, vm: a.vm, code: a.code, reason: a.reason },
              `ft: refused ${a.from}'s hello for VM ${a.vm ?? '?'}: ${a.reason}`,
            );
            if (a.vm !== null)
              this.offers.get(a.vm)?.onRefused?.({ from: a.from, code: a.code, reason: a.reason });
            conn.write(a.frame);
            conn.close({ code: 'local', message: `refused: ${a.reason}` }, 'graceful');
            return;
          }
          offer = this.offers.get(a.session.vm)!;
          sender = new LogSender(a.session, offer.sender);
          conn.write(a.frame);
          return;
        }
        const r = sender.onFrame(frame, this.nowMs());
        if (!r.ok) return rejectFrame(r.reason, r.detail);
        if (!r.established) return;
        // The backup's first ack: the session is live, unless another one of this VM won the race.
        clearTimeout(timer);
        this.pending.delete(conn);
        const vm = sender.session.vm;
        if (this.links.has(vm) || this.offers.get(vm) !== offer) {
          conn.close(
            { code: 'busy', message: `VM ${vm} already has a live session, or its offer changed` },
            'abort',
          );
          return;
        }
        const link = new FtPrimaryLink(conn, sender, offer!, this.nowMs, this.log, () =>
          this.links.delete(vm),
        );
        this.links.set(vm, link);
        this.counters.sessionsEstablished++;
        this.log.info(
          { vm, backup: sender.session.peer, start: sender.session.start },
          `ft: VM ${vm} streams to ${sender.session.peer}`,
        );
        offer!.onSession(link);
      },
    });
  }
}

export interface FtPrimaryStats {
  ackedBytes: number;
  ackedEventSeq: number;
  sentBytes: number;
  appendedBytes: number;
  unsentBytes: number;
  bufferedBytes: number;
  framesInFlight: number;
  /** Bytes written to the socket that the kernel has not taken yet. */
  socketBufferedBytes: number;
}

/**
 * One established session on the primary: append log bytes, watch acks and
 * lag. Times are the primary's clock (the server's nowMs).
 */
export class FtPrimaryLink {
  private readonly timer = new DeadlineTimer(() => this.pump());
  private closedWith: FtCloseReason | null = null;

  /** @internal Built by FtLinkServer when a backup's first ack arrives. */
  constructor(
    readonly conn: FrameConn,
    private readonly sender: LogSender,
    private readonly offer: FtOffer,
    private readonly nowMs: () => number,
    private readonly log: FtLogger,
    private readonly unregister: () => void,
  ) {
    conn.setHooks({
      onArrival: () => {},
      onBatchEnd: () => {},
      onDrain: () => this.pump(),
      onBad: (reason) => this.rejectFrame(reason, 'not a frame stream'),
      onClose: (reason) => this.onClosed(reason),
      onFrame: (frame) => {
        const r = this.sender.onFrame(frame, this.nowMs());
        if (!r.ok) return this.rejectFrame(r.reason, r.detail);
        if (r.advanced || r.replayAdvanced) {
          this.offer.onAck?.(this, {
            ackedEventSeq: r.ackedEventSeq,
            ackedBytes: r.ackedBytes,
            replayedEventSeq: r.replayedEventSeq,
            bufferedBytes: this.sender.bufferedBytes,
            overHighWater: this.sender.overHighWater,
          });
        }
        this.pump();
      },
    });
  }

  get session(): FtSession {
    return this.sender.session;
  }
  get vm(): string {
    return this.sender.session.vm;
  }
  get backup(): string {
    return this.sender.session.peer;
  }
  /** Where the stream starts: the first byte to append is at start.offset. */
  get start(): StreamPosition {
    return this.sender.session.start;
  }
  get ackedEventSeq(): number {
    return this.sender.ackedEventSeq;
  }
  get replayedEventSeq(): number {
    return this.sender.replayedEventSeq;
  }
  get ackedBytes(): number {
    return this.sender.ackedBytes;
  }
  get bufferedBytes(): number {
    return this.sender.bufferedBytes;
  }
  get spaceBytes(): number {
    return this.sender.spaceBytes;
  }
  get overHighWater(): boolean {
    return this.sender.overHighWater;
  }
  get isClosed(): boolean {
    return this.closedWith !== null;
  }

  /** Appends log bytes (see LogSender.append); frames go out as the socket takes them. */
  append(bytes: Uint8Array, lastEventSeq: number): AppendResult {
    const r = this.sender.append(bytes, lastEventSeq, this.nowMs());
    if (r.ok) this.pump();
    return r;
  }

  /** Sends every byte appended so far without waiting for flushDelayMs. */
  flush(): void {
    this.sender.flush();
    this.pump();
  }

  lag(): Lag {
    return this.sender.lag(this.nowMs());
  }

  stats(): FtPrimaryStats {
    return {
      ackedBytes: this.sender.ackedBytes,
      ackedEventSeq: this.sender.ackedEventSeq,
      sentBytes: this.sender.sentBytes,
      appendedBytes: this.sender.appendedBytes,
      unsentBytes: this.sender.unsentBytes,
      bufferedBytes: this.sender.bufferedBytes,
      framesInFlight: this.sender.framesInFlight,
      socketBufferedBytes: this.conn.socket.writableLength,
    };
  }

  /** Closes the session (bytes not yet sent are dropped); resolves once the socket has closed. */
  close(): Promise<void> {
    this.closeWith({ code: 'local', message: 'closed by the primary' });
    return this.conn.closed;
  }

  /** @internal */
  closeWith(reason: FtCloseReason): void {
    this.conn.close(reason, 'graceful');
  }

  private rejectFrame(reason: FtRejectReason, detail: string): void {
    this.log.warn(
      { vm: this.vm, backup: this.backup, reason, detail },
      `ft: rejected a frame from ${this.backup} for VM ${this.vm}: ${reason} (${detail})`,
    );
    this.conn.close({ code: 'rejected', reject: reason, message: `${reason}: ${detail}` }, 'abort');
  }

  private onClosed(reason: FtCloseReason): void {
    if (this.closedWith !== null) return;
    this.closedWith = reason;
    this.timer.clear();
    this.sender.close();
    this.unregister();
    this.log.info(
      { vm: this.vm, backup: this.backup, reason: reason.message },
      `ft: VM ${this.vm}'s session closed`,
    );
    this.offer.onClose?.(this, reason);
  }

  /** Hands frames to the socket while it has room, and arms the flush timer. */
  private pump(): void {
    if (this.closedWith !== null) return;
    const now = this.nowMs();
    while (this.conn.writable) {
      const f = this.sender.pollFrame(now);
      if (f === null) break;
      this.conn.write(f);
    }
    // A full socket resumes on 'drain'; otherwise a flush delay may be pending.
    if (!this.conn.writable) return;
    this.timer.arm(this.sender.nextDeadlineMs(), now);
  }
}

// ---------------------------------------------------------------------------
// The backup: connecting to a primary
// ---------------------------------------------------------------------------

export interface FtConnectOptions extends FtLinkCommon {
  /** The primary's host name and incarnation, from the coordinator's registry. */
  primary: string;
  primaryIncarnation: string;
  vm: string;
  generation: number;
  /** Where the stream should start (default {offset: 0, events: 0}: the first event). */
  start?: StreamPosition;
  /** Whether to take another start than the one asked for (default: no). */
  acceptStart?: (offered: StreamPosition, asked: StreamPosition) => boolean;
  receiver?: LogReceiverOptions;
  /**
   * Each validated piece of the stream, in order, as soon as it is received;
   * it is acknowledged right after this returns. To slow the stream down, call
   * link.pause() (from here or later) and link.resume().
   */
  onLog(link: FtBackupLink, chunk: LogChunk): void;
  /** The established link closed: the primary is lost, or the channel failed. */
  onClose?(link: FtBackupLink, reason: FtCloseReason): void;
}

export type FtConnectResult =
  | { ok: true; link: FtBackupLink; primaryFacts: HostFacts }
  | {
      ok: false;
      /** True when the pairing was refused (by the primary, or by this backup's check of its answer). */
      refused: boolean;
      code: FtRefuseCode | null;
      reason: string;
    };

export interface FtBackupStats {
  heldBytes: number;
  heldEventSeq: number;
  ackedBytes: number;
  framesReceived: number;
  acksSent: number;
}

/**
 * Connects to a primary's listener and asks for a VM's log. Resolves once the
 * primary welcomed the session (the backup's first ack is then on its way),
 * or with the reason it did not: a refusal, a rejected answer, a connection
 * error or the handshake deadline. Never rejects.
 */
export function connectFtLink(addr: FtAddress, opts: FtConnectOptions): Promise<FtConnectResult> {
  const log = opts.log ?? silentLogger;
  const nowMs = opts.nowMs ?? defaultNowMs;
  const start = opts.start ?? { offset: 0, events: 0 };
  const hs = new BackupHandshake({
    key: opts.key,
    clusterId: opts.clusterId,
    self: opts.self,
    selfIncarnation: opts.selfIncarnation,
    facts: opts.facts ?? localHostFacts(),
    primary: opts.primary,
    primaryIncarnation: opts.primaryIncarnation,
    vm: opts.vm,
    generation: opts.generation,
    start,
    sessionId: randomBytesFrom(opts.entropy ?? realEntropy, FT_SESSION_ID_BYTES),
    ...(opts.acceptStart === undefined ? {} : { acceptStart: opts.acceptStart }),
  });
  const socket = net.connect({ host: addr.host, port: addr.port, noDelay: true });
  const conn = new FrameConn(socket, FRAME_BYTES_MAX, opts.linkDelayMs ?? 0, nowMs);
  const where = `${opts.primary} (${addr.host}:${addr.port})`;
  return new Promise((resolve) => {
    let settled = false;
    const settle = (r: FtConnectResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const fail = (reason: string, refused = false, code: FtRefuseCode | null = null): void => {
      settle({ ok: false, refused, code, reason });
    };
    const timer = setTimeout(() => {
      log.warn({ primary: where, vm: opts.vm }, `ft: the handshake with ${where} timed out`);
      // Settled first: closing reports a close, which would otherwise become the reason.
      fail(`the handshake with ${where} timed out`);
      conn.close({ code: 'handshake-timeout', message: 'the handshake did not complete in time' }, 'abort');
    }, opts.handshakeTimeoutMs ?? FT_HANDSHAKE_TIMEOUT_MS_DEFAULT);
    socket.once('connect', () => conn.write(hs.hello()));
    conn.setHooks({
      onArrival: () => {},
      onBatchEnd: () => {},
      onDrain: () => {},
      onBad: (reason) => {
        log.warn({ primary: where, vm: opts.vm, reason }, `ft: ${where} does not speak frames (${reason})`);
        fail(`${where} does not speak frames (${reason})`);
        conn.close({ code: 'rejected', reject: reason, message: `not a frame stream (${reason})` }, 'abort');
      },
      onClose: (reason) => fail(`connection to ${where}: ${reason.message}`),
      onFrame: (frame) => {
        const r = hs.onFrame(frame);
        if (r.type === 'reject') {
          log.warn(
            { primary: where, vm: opts.vm, reason: r.reason, detail: r.detail },
            `ft: rejected the answer of ${where}: ${r.reason} (${r.detail})`,
          );
          fail(`rejected the answer of ${where}: ${r.reason} (${r.detail})`);
          return conn.close(
            { code: 'rejected', reject: r.reason, message: `${r.reason}: ${r.detail}` },
            'abort',
          );
        }
        if (r.type === 'refused') {
          log.info(
            { primary: where, vm: opts.vm, by: r.by, code: r.code, reason: r.reason },
            `ft: pairing with ${where} refused by the ${r.by}: ${r.reason}`,
          );
          fail(r.reason, true, r.code);
          return conn.close(
            { code: 'local', message: `refused: ${r.reason}` },
            r.by === 'primary' ? 'graceful' : 'abort',
          );
        }
        const receiver = new LogReceiver(r.session, opts.receiver);
        const link = new FtBackupLink(conn, receiver, opts, nowMs, log);
        settle({ ok: true, link, primaryFacts: r.primaryFacts });
        link.sendAck();
      },
    });
  });
}

/** One established session on the backup: the stream comes in through opts.onLog. */
export class FtBackupLink {
  private readonly timer = new DeadlineTimer(() => this.sendAck());
  private closedWith: FtCloseReason | null = null;
  private framesReceived = 0;
  private acksSent = 0;

  /** @internal Built by connectFtLink once the primary has welcomed the session. */
  constructor(
    private readonly conn: FrameConn,
    private readonly receiver: LogReceiver,
    private readonly opts: FtConnectOptions,
    private readonly nowMs: () => number,
    private readonly log: FtLogger,
  ) {
    conn.setHooks({
      onArrival: (frame) => {
        this.receiver.onArrival(frame, this.nowMs());
        // Only the planted bug has anything to ack here: bytes not yet received.
        if (this.receiver.ackBeforeReceipt) this.sendAck();
      },
      onBatchEnd: () => this.sendAck(),
      onDrain: () => this.sendAck(),
      onBad: (reason) => this.rejectFrame(reason, 'not a frame stream'),
      onClose: (reason) => this.onClosed(reason),
      onFrame: (frame) => {
        const r = this.receiver.onFrame(frame, this.nowMs());
        if (!r.ok) return this.rejectFrame(r.reason, r.detail);
        this.framesReceived++;
        this.opts.onLog(this, r.chunk);
      },
    });
  }

  get session(): FtSession {
    return this.receiver.session;
  }
  get start(): StreamPosition {
    return this.receiver.session.start;
  }
  get heldBytes(): number {
    return this.receiver.heldBytes;
  }
  get heldEventSeq(): number {
    return this.receiver.heldEventSeq;
  }
  get isClosed(): boolean {
    return this.closedWith !== null;
  }

  /** Stops taking the stream (the socket is paused, so the primary's sender fills up and throttles). */
  pause(): void {
    this.conn.pause();
  }

  resume(): void {
    this.conn.resume();
  }

  /**
   * Reports the replayer's progress (the highest host call executed, never
   * past heldEventSeq); it reaches the primary with the next ack, or on its
   * own within replayReportMs.
   */
  reportReplayed(lastEventSeq: number): void {
    this.receiver.setReplayed(lastEventSeq, this.nowMs());
    this.sendAck();
  }

  stats(): FtBackupStats {
    return {
      heldBytes: this.receiver.heldBytes,
      heldEventSeq: this.receiver.heldEventSeq,
      ackedBytes: this.receiver.ackedBytes,
      framesReceived: this.framesReceived,
      acksSent: this.acksSent,
    };
  }

  close(): Promise<void> {
    this.conn.close({ code: 'local', message: 'closed by the backup' }, 'graceful');
    return this.conn.closed;
  }

  /** @internal Sends the ack due now, if the socket has room, and arms the timer for a coalesced one. */
  sendAck(): void {
    if (this.closedWith !== null) return;
    const now = this.nowMs();
    if (this.conn.writable) {
      const ack = this.receiver.pollAck(now);
      if (ack !== null) {
        this.conn.write(ack);
        this.acksSent++;
      }
    }
    if (!this.conn.writable) return;
    this.timer.arm(this.receiver.nextDeadlineMs(), now);
  }

  private rejectFrame(reason: FtRejectReason, detail: string): void {
    this.log.warn(
      { vm: this.session.vm, primary: this.session.peer, reason, detail },
      `ft: rejected a frame from ${this.session.peer} for VM ${this.session.vm}: ${reason} (${detail})`,
    );
    this.conn.close({ code: 'rejected', reject: reason, message: `${reason}: ${detail}` }, 'abort');
  }

  private onClosed(reason: FtCloseReason): void {
    if (this.closedWith !== null) return;
    this.closedWith = reason;
    this.timer.clear();
    this.receiver.close();
    this.opts.onClose?.(this, reason);
  }
}

/**
 * One timer for the earliest pending deadline of a protocol state machine: arming it for a later
 * deadline than the one already set does nothing, so a burst of events costs one timer.
 */
class DeadlineTimer {
  private timer: NodeJS.Timeout | null = null;
  private atMs = Infinity;
  constructor(private readonly fire: () => void) {}

  /** Makes sure `fire` runs at `dueMs` (monotonic ms; null: nothing pending). */
  arm(dueMs: number | null, nowMs: number): void {
    if (dueMs === null || dueMs >= this.atMs) return;
    this.clear();
    this.atMs = dueMs;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.atMs = Infinity;
        this.fire();
      },
      Math.max(0, dueMs - nowMs),
    );
  }

  clear(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.atMs = Infinity;
  }
}
