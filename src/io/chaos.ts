/**
 * ChaosPolicy: what a hostile network does to one VM's connections, decided by
 * a seeded generator (testing only: `--io-chaos SEED`).
 *
 * Role: the NetDevice asks this policy, at fixed points, whether to delay the
 * bytes it received, in how many pieces to hand them to the guest, whether to
 * leave the guest's sent bytes in the tx ring a while longer, in how many
 * writes to put them on the wire, how large each connection's rings are, and
 * when to reset a connection as a peer's RST would. The policy decides; the
 * NetDevice acts (timers, flags, sockets). Seen from the guest:
 * - delays: received bytes reach the rx ring up to RX_DELAY_MS_MAX later, and
 *   new connections are offered to the guest up to as much later;
 * - short reads: a chunk from the wire reaches the ring in 2 to 4 pieces, with
 *   a gap between them, so a recv returns fewer bytes than the peer sent;
 * - short writes and EAGAIN: small rings (128 B to 64 KiB, a power of two
 *   each way) and tx stalls (the ring is drained up to TX_STALL_MS_MAX late,
 *   then freely for a while), so a non-blocking send accepts fewer bytes than
 *   asked, or none;
 * - resets: some connections are destroyed with an RST at a random time in
 *   their first RESET_WINDOW_MS; the guest sees CONNRESET, PIPE and HANGUP.
 *
 * Invariants:
 * - Every decision comes from Prng streams derived from the seed: stream 0
 *   sets the run's intensities, and connection N draws from stream N, so the
 *   decisions of one connection do not depend on the traffic of the others.
 *   Which event a decision lands on still depends on timing; the seed fixes
 *   the distribution, and the event log is what makes a run replayable.
 * - Every delay is bounded (at most 20 ms per step), and the chaos never
 *   loses, duplicates or reorders a byte, except on a connection it resets.
 */
import { Prng } from '../core/prng.js';

/** Longest wait before a received chunk (or the next piece of one) may enter the rx ring. */
export const RX_DELAY_MS_MAX = 20;
/** Longest gap between two pieces of one received chunk (a short read). */
export const RX_PIECE_GAP_MS_MAX = 3;
/** Longest time the tx ring is left undrained by one stall. */
export const TX_STALL_MS_MAX = 20;
/**
 * After a stall, the tx ring drains freely for a random quiet time in this range (ms): a ring of
 * 128 bytes drains hundreds of times a second, and a stall drawn at each drain would slow a
 * large reply to a crawl instead of making it bumpy.
 */
const TX_QUIET_MS_MIN = 10;
const TX_QUIET_MS_MAX = 100;
/** Resets land within this many milliseconds of the connection's arrival. */
export const RESET_WINDOW_MS = 3000;
/**
 * Ring sizes are 2^k bytes with k in [RING_LOG2_MIN, RING_LOG2_MAX], drawn each way per
 * connection; half of them are at most 2^RING_LOG2_SMALL (1 KiB), so that ordinary replies
 * already overflow them.
 */
const RING_LOG2_MIN = 7;
const RING_LOG2_SMALL = 10;
const RING_LOG2_MAX = 16;

function ringBytes(rng: Prng): number {
  return (
    2 **
    (rng.chance(0.5) ? rng.int(RING_LOG2_MIN, RING_LOG2_SMALL) : rng.int(RING_LOG2_SMALL + 1, RING_LOG2_MAX))
  );
}

/** How hard this run's network is, drawn once from the seed. */
export interface ChaosIntensity {
  /** Probability that a received chunk is delayed. */
  rxDelayP: number;
  /** Probability that a received chunk is cut into pieces (short reads). */
  rxShortP: number;
  /** Probability that a drain of the tx ring is put off (a stall). */
  txStallP: number;
  /** Probability that the bytes taken from the tx ring go out in several writes. */
  wireSplitP: number;
  /** Probability that a connection is reset at some point in its first RESET_WINDOW_MS. */
  resetP: number;
}

/** What the chaos did during a run; printed when the NetDevice closes. */
export interface ChaosStats {
  connections: number;
  delays: number;
  shortReads: number;
  txStalls: number;
  splitWrites: number;
  resets: number;
}

/** One piece of received data: its length, and how long to wait before it may enter the ring. */
export interface RxPiece {
  bytes: number;
  delayMs: number;
}

/** The chaos decisions of one connection, from its own Prng stream. */
export class ConnChaos {
  readonly rxCapBytes: number;
  readonly txCapBytes: number;
  /** When to reset this connection (ms after its arrival), or null for never. */
  readonly resetAfterMs: number | null;
  /** No tx stall starts before this time (ms, the caller's monotonic clock). */
  private txQuietUntilMs = 0;

  constructor(
    private readonly rng: Prng,
    private readonly k: ChaosIntensity,
    private readonly stats: ChaosStats,
  ) {
    this.rxCapBytes = ringBytes(rng);
    this.txCapBytes = ringBytes(rng);
    this.resetAfterMs = rng.chance(k.resetP) ? rng.int(0, RESET_WINDOW_MS) : null;
    stats.connections++;
  }

  /** How long the guest does not see this new connection (ms, 0: at once), as if its handshake were slow. */
  acceptDelayMs(): number {
    if (!this.rng.chance(this.k.rxDelayP)) return 0;
    this.stats.delays++;
    return this.rng.int(1, RX_DELAY_MS_MAX);
  }

  /**
   * How a chunk of `len` received bytes reaches the ring: the pieces, in order,
   * whose lengths add up to `len`. The first piece may wait up to
   * RX_DELAY_MS_MAX; later pieces always wait at least 1 ms, so that the guest
   * can read one piece before the next arrives.
   */
  rxPieces(len: number): RxPiece[] {
    const first = this.rng.chance(this.k.rxDelayP) ? this.rng.int(1, RX_DELAY_MS_MAX) : 0;
    if (first > 0) this.stats.delays++;
    if (len < 2 || !this.rng.chance(this.k.rxShortP)) return [{ bytes: len, delayMs: first }];
    // Cut at 1 to 3 distinct points; small first pieces are as likely as large ones.
    const cuts = new Set<number>();
    const want = this.rng.int(1, Math.min(3, len - 1));
    while (cuts.size < want) cuts.add(this.rng.int(1, len - 1));
    const sorted = [...cuts].sort((a, b) => a - b);
    const out: RxPiece[] = [];
    let at = 0;
    for (const cut of [...sorted, len]) {
      out.push({ bytes: cut - at, delayMs: out.length === 0 ? first : this.rng.int(1, RX_PIECE_GAP_MS_MAX) });
      at = cut;
    }
    this.stats.shortReads += sorted.length;
    return out;
  }

  /** How long to put off draining the tx ring, in ms, at monotonic time `nowMs`; 0 drains now. */
  txStallMs(nowMs: number): number {
    if (nowMs < this.txQuietUntilMs || !this.rng.chance(this.k.txStallP)) return 0;
    this.stats.txStalls++;
    const ms = this.rng.int(1, TX_STALL_MS_MAX);
    this.txQuietUntilMs = nowMs + ms + this.rng.int(TX_QUIET_MS_MIN, TX_QUIET_MS_MAX);
    return ms;
  }

  /** Where to cut `len` bytes taken from the tx ring into separate socket writes (empty: one write). */
  wireCuts(len: number): number[] {
    if (len < 2 || !this.rng.chance(this.k.wireSplitP)) return [];
    this.stats.splitWrites++;
    const a = this.rng.int(1, len - 1);
    if (len < 3 || !this.rng.chance(0.5)) return [a];
    const b = this.rng.int(1, len - 1);
    return a === b ? [a] : [Math.min(a, b), Math.max(a, b)];
  }

  /** Counts a reset that was carried out. */
  noteReset(): void {
    this.stats.resets++;
  }
}

/** The chaos of one VM's network: the run's intensities and one ConnChaos per connection. */
export class ChaosPolicy {
  readonly intensity: ChaosIntensity;
  readonly stats: ChaosStats = {
    connections: 0,
    delays: 0,
    shortReads: 0,
    txStalls: 0,
    splitWrites: 0,
    resets: 0,
  };

  constructor(readonly seed: number) {
    const rng = new Prng(seed, 0);
    // Every run gets some of each kind of trouble; the seed picks how much.
    this.intensity = {
      rxDelayP: 0.05 + 0.35 * rng.next(),
      rxShortP: 0.1 + 0.4 * rng.next(),
      txStallP: 0.05 + 0.25 * rng.next(),
      wireSplitP: 0.05 + 0.3 * rng.next(),
      resetP: 0.05 + 0.2 * rng.next(),
    };
  }

  /** The decisions for connection `connId` (1, 2, …), from stream `connId` of the seed. */
  forConnection(connId: number): ConnChaos {
    return new ConnChaos(new Prng(this.seed, connId), this.intensity, this.stats);
  }

  /** One line for stderr: what the chaos did. */
  describeStats(): string {
    const s = this.stats;
    return (
      `io chaos (seed ${this.seed}): ${s.connections} connections, ${s.delays} delays, ` +
      `${s.shortReads} short reads, ${s.txStalls} tx stalls, ${s.splitWrites} split writes, ` +
      `${s.resets} resets`
    );
  }
}
