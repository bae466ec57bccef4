/**
 * Membership: the heartbeat protocol and failure detector, as a pure state machine.
 *
 * Role: the host daemon feeds it ticks of its own monotonic clock, the
 * coordinator's list of registered hosts, and heartbeats that have already
 * been authenticated (src/cluster/frame.ts); it answers with the heartbeats to
 * send and with changes of each peer's state (up, suspect, down). It reads no
 * clock, does no I/O and draws no random numbers, so the seeded simulation
 * (sim.test.ts) runs it exactly as a host does. docs/CLUSTER-PROTOCOL.md
 * explains the protocol and the timings.
 *
 * Invariants:
 * - The peers are exactly the registered hosts that are 'up', other than this
 *   host. A host that left or is no longer registered is removed, never
 *   declared down. Each (name, incarnation) has its own life: a new
 *   incarnation removes the old one and starts fresh.
 * - A peer goes up -> suspect -> down only on silence, judged at ticks, and
 *   back to 'up' only on a heartbeat from its current incarnation.
 * - 'down' needs silence of at least failAfterMs at two consecutive ticks, so
 *   that the I/O layer has had a turn, between them, to deliver heartbeats
 *   that were already waiting in the socket when a late tick fired.
 * - A tick that comes more than selfPauseGapMs after the previous one means
 *   this host was paused or starved: it declares nobody down and gives every
 *   peer a fresh grace of failAfterMs from that tick, since its silence is
 *   ours, not theirs.
 * - Time never goes backwards: an event whose nowMs is below one already seen
 *   is handled as if it came at the latest time seen.
 */

export type PeerState = 'up' | 'suspect' | 'down';

/** The timings of the failure detector, all in milliseconds of the host's own monotonic clock. */
export interface MembershipTimings {
  /** How often each peer is sent a heartbeat. */
  heartbeatIntervalMs: number;
  /** Silence after which a peer is 'suspect' (reported, acted on by nothing). */
  suspectAfterMs: number;
  /** Silence after which a peer is 'down': the failure-detection time. */
  failAfterMs: number;
}

/**
 * The default profile: a failure is detected in 2.5 s, and a peer paused for
 * 1 s (SIGSTOP) on a loaded CI machine is never declared down. The worst
 * silence an observer sees of a healthy but paused peer is: one spacing of
 * its heartbeats before the pause (200 ms interval + a 50 ms tick + 20 ms of
 * timer lateness), the pause (1 s) plus up to 300 ms of scheduling delay
 * after it, the network delay (50 ms), and three heartbeats lost in a row
 * (one spacing each): 270 + 1300 + 50 + 3 x 270 = 2430 ms, under 2500 ms.
 * Suspicion after 1 s (five intervals) only informs people and logs.
 */
export const MEMBERSHIP_DEFAULT: Readonly<MembershipTimings> = Object.freeze({
  heartbeatIntervalMs: 200,
  suspectAfterMs: 1000,
  failAfterMs: 2500,
});

/**
 * The fast profile, for benchmarks of failover on a quiet machine: a failure
 * is detected in 300 ms (six intervals), with room for two heartbeats lost in
 * a row. A pause of more than about 200 ms is taken for a failure, so it can
 * flap under load; never use it where pauses are expected.
 */
export const MEMBERSHIP_FAST: Readonly<MembershipTimings> = Object.freeze({
  heartbeatIntervalMs: 50,
  suspectAfterMs: 150,
  failAfterMs: 300,
});

/** The profiles by the name `--profile` takes. */
export const MEMBERSHIP_PROFILES: Readonly<Record<'default' | 'fast', Readonly<MembershipTimings>>> =
  Object.freeze({ default: MEMBERSHIP_DEFAULT, fast: MEMBERSHIP_FAST });

/** A profile's timings plus the optional tuning; `new Membership()` also takes the host's own name. */
export interface MembershipConfig extends MembershipTimings {
  /**
   * A gap between two ticks longer than this means this host was paused or
   * starved (default 3 x heartbeatIntervalMs). It must be shorter than
   * failAfterMs, or a pause could declare peers down before it is noticed.
   */
  selfPauseGapMs?: number;
  /** Round-trip samples kept per peer for the median (default 16). */
  rttSamplesMax?: number;
}

/**
 * How often the I/O layer should tick: a quarter interval keeps each
 * heartbeat within a quarter interval of its time. Any period up to half the
 * interval works; the silence peers can see grows by about one tick period.
 */
export function tickIntervalMs(t: MembershipTimings): number {
  return t.heartbeatIntervalMs / 4;
}

/** Why a set of timings cannot work, or null when it can. */
export function timingsProblem(t: MembershipTimings & { selfPauseGapMs?: number }): string | null {
  const { heartbeatIntervalMs: hb, suspectAfterMs: suspect, failAfterMs: fail } = t;
  if (!(Number.isFinite(hb) && hb > 0)) return `heartbeatIntervalMs must be > 0 (got ${hb})`;
  if (!(Number.isFinite(suspect) && suspect > hb)) {
    return `suspectAfterMs (${suspect}) must exceed heartbeatIntervalMs (${hb})`;
  }
  if (!(Number.isFinite(fail) && fail > suspect))
    return `failAfterMs (${fail}) must exceed suspectAfterMs (${suspect})`;
  const gap = t.selfPauseGapMs ?? 3 * hb;
  if (!(Number.isFinite(gap) && gap > hb && gap < fail)) {
    return `selfPauseGapMs (${gap}) must lie between heartbeatIntervalMs (${hb}) and failAfterMs (${fail})`;
  }
  return null;
}

/** A heartbeat's content (the payload codec is in frame.ts). */
export interface HeartbeatMsg {
  /** The sender's monotonic clock when it sent this heartbeat. */
  sentMs: number;
  /**
   * The receiver's own clock reflected back: the sentMs of the newest
   * heartbeat the sender had from the receiver, plus how long the sender held
   * it, so that receiver's now - echoMs is the network round trip alone.
   * Null when the sender has heard nothing new from the receiver since its
   * previous heartbeat to it.
   */
  echoMs: number | null;
}

/** One host as the coordinator lists it (a subset of HostRecord). */
export interface RegistryHost {
  name: string;
  incarnation: string;
  /** The heartbeat endpoint, "HOST:PORT". */
  peer: string;
  state: 'up' | 'left';
}

export type MembershipEvent =
  | { type: 'tick'; nowMs: number }
  /** The full list of registered hosts, each time it changes (and whenever the daemon re-reads it). */
  | { type: 'registry'; nowMs: number; hosts: readonly RegistryHost[] }
  /** A heartbeat whose frame was authenticated, addressed to us, and not a replay. */
  | {
      type: 'heartbeat';
      nowMs: number;
      from: string;
      incarnation: string;
      sentMs: number;
      echoMs: number | null;
    };

export type MembershipAction =
  /** Send this heartbeat to `to`, whose heartbeat endpoint is `peer`. */
  | { type: 'send'; to: string; peer: string; msg: HeartbeatMsg }
  /**
   * A peer changed state. `previous` is null when this (name, incarnation)
   * has just appeared; `silentMs` is how long it had been silent (for a
   * return to 'up', before the heartbeat that brought it back).
   */
  | {
      type: 'peer-state';
      name: string;
      incarnation: string;
      state: PeerState;
      previous: PeerState | null;
      silentMs: number;
    }
  /**
   * A peer is no longer watched: it left cleanly, its record disappeared, or a
   * new incarnation replaced this one (the old process is gone, and anything
   * it ran with it).
   */
  | {
      type: 'peer-removed';
      name: string;
      incarnation: string;
      state: PeerState;
      reason: 'left' | 'unregistered' | 'restarted';
    };

export interface PeerInfo {
  name: string;
  incarnation: string;
  peer: string;
  state: PeerState;
  /** When its last heartbeat arrived, on our clock; null if none has yet. */
  lastHeardMs: number | null;
  /** The median of the last round-trip samples, or null before the first. Informational: nothing decides on it. */
  rttMsMedian: number | null;
  heartbeatsReceived: number;
}

export interface MembershipStats {
  /** Ticks that came so late that this host must have been paused or starved. */
  selfPauses: number;
  /** The longest gap between two ticks seen. */
  tickGapMsMax: number;
  /** Heartbeats from hosts that are not peers, or from another incarnation than the registered one. */
  heartbeatsIgnored: number;
}

interface Peer {
  name: string;
  incarnation: string;
  peer: string;
  state: PeerState;
  lastHeardMs: number | null;
  /** Silence is counted from max(lastHeardMs, graceFromMs): registration and our own pauses grant grace. */
  graceFromMs: number;
  /** Silence had reached failAfterMs at the previous tick: one more such tick makes it 'down'. */
  failPending: boolean;
  /** The newest sentMs heard from it, when we received it, and whether it still needs echoing. */
  peerSentMs: number | null;
  peerSentAtMs: number;
  echoDue: boolean;
  /** Our first heartbeat to this incarnation: an echo older than that is not ours. */
  firstSentMs: number | null;
  rttSamplesMs: number[];
  rttNext: number;
  heartbeatsReceived: number;
}

function assert(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(`assertion: ${message}`);
}

export class Membership {
  readonly config: Readonly<Required<MembershipConfig> & { self: string }>;
  private readonly peerMap = new Map<string, Peer>();
  private lastNowMs = -Infinity;
  private lastTickMs: number | null = null;
  private nextSendMs: number | null = null;
  private readonly counters: MembershipStats = { selfPauses: 0, tickGapMsMax: 0, heartbeatsIgnored: 0 };

  /** `self` is this host's name: its own registry entry is not a peer. */
  constructor(config: MembershipConfig & { self: string }) {
    const full: Required<MembershipConfig> & { self: string } = {
      self: config.self,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      suspectAfterMs: config.suspectAfterMs,
      failAfterMs: config.failAfterMs,
      selfPauseGapMs: config.selfPauseGapMs ?? 3 * config.heartbeatIntervalMs,
      rttSamplesMax: config.rttSamplesMax ?? 16,
    };
    const problem = timingsProblem(full);
    if (problem !== null) throw new RangeError(`membership: ${problem}`);
    if (!(Number.isInteger(full.rttSamplesMax) && full.rttSamplesMax >= 1)) {
      throw new RangeError(`membership: rttSamplesMax must be a positive integer`);
    }
    this.config = Object.freeze(full);
  }

  /** Handles one event and returns what the host should do, in order. */
  step(event: MembershipEvent): MembershipAction[] {
    assert(Number.isFinite(event.nowMs), `membership event at nowMs ${event.nowMs}`);
    const nowMs = Math.max(event.nowMs, this.lastNowMs);
    this.lastNowMs = nowMs;
    switch (event.type) {
      case 'tick':
        return this.tick(nowMs);
      case 'registry':
        return this.registry(nowMs, event.hosts);
      case 'heartbeat':
        return this.heartbeat(nowMs, event.from, event.incarnation, event.sentMs, event.echoMs);
    }
  }

  /** Every peer, sorted by name. */
  peers(): PeerInfo[] {
    return [...this.peerMap.values()]
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
      .map((p) => ({
        name: p.name,
        incarnation: p.incarnation,
        peer: p.peer,
        state: p.state,
        lastHeardMs: p.lastHeardMs,
        rttMsMedian: median(p.rttSamplesMs),
        heartbeatsReceived: p.heartbeatsReceived,
      }));
  }

  /** The state of a peer, or null if `name` is not a peer (unknown, left, or this host). */
  stateOf(name: string): PeerState | null {
    return this.peerMap.get(name)?.state ?? null;
  }

  stats(): MembershipStats {
    return { ...this.counters };
  }

  private tick(nowMs: number): MembershipAction[] {
    const c = this.config;
    const out: MembershipAction[] = [];
    const gapMs = this.lastTickMs === null ? 0 : nowMs - this.lastTickMs;
    this.lastTickMs = nowMs;
    this.counters.tickGapMsMax = Math.max(this.counters.tickGapMsMax, gapMs);
    const selfPaused = gapMs > c.selfPauseGapMs;
    if (selfPaused) this.counters.selfPauses++;

    for (const p of this.peerMap.values()) {
      if (selfPaused) {
        // Our silence, not theirs: whatever they sent meanwhile is still in the
        // socket, or was sent while we could not listen. Start counting afresh.
        p.graceFromMs = Math.max(p.graceFromMs, nowMs);
        p.failPending = false;
      }
      const silentMs = nowMs - silenceFromMs(p);
      if (silentMs >= c.failAfterMs) {
        if (p.state !== 'down') {
          if (p.failPending) {
            out.push(this.setState(p, 'down', silentMs));
          } else {
            p.failPending = true;
            if (p.state === 'up') out.push(this.setState(p, 'suspect', silentMs));
          }
        }
      } else {
        p.failPending = false;
        if (silentMs >= c.suspectAfterMs && p.state === 'up') out.push(this.setState(p, 'suspect', silentMs));
      }
    }

    // A tick a little early for the next heartbeat sends it rather than leave
    // it to the following tick, which would stretch the spacing by a whole
    // tick period: early heartbeats only shorten the silence peers see.
    if (this.nextSendMs === null || nowMs >= this.nextSendMs - c.heartbeatIntervalMs / 10) {
      // Keep a steady cadence, but after a long gap start again from now rather
      // than sending a burst to catch up.
      const next = (this.nextSendMs ?? nowMs) + c.heartbeatIntervalMs;
      this.nextSendMs = next > nowMs ? next : nowMs + c.heartbeatIntervalMs;
      for (const p of this.peerMap.values()) {
        let echoMs: number | null = null;
        if (p.echoDue && p.peerSentMs !== null) {
          echoMs = p.peerSentMs + (nowMs - p.peerSentAtMs);
          p.echoDue = false;
        }
        if (p.firstSentMs === null) p.firstSentMs = nowMs;
        out.push({ type: 'send', to: p.name, peer: p.peer, msg: { sentMs: nowMs, echoMs } });
      }
    }
    return out;
  }

  private registry(nowMs: number, hosts: readonly RegistryHost[]): MembershipAction[] {
    const out: MembershipAction[] = [];
    // The coordinator keys hosts by name, so a name appears once; should it not,
    // the last entry wins, as a later write would.
    const listed = new Map<string, RegistryHost>();
    for (const h of hosts) if (h.name !== this.config.self) listed.set(h.name, h);

    for (const p of [...this.peerMap.values()]) {
      const h = listed.get(p.name);
      if (h === undefined) out.push(this.remove(p, 'unregistered'));
      else if (h.state === 'left') out.push(this.remove(p, 'left'));
      else if (h.incarnation.toLowerCase() !== p.incarnation) out.push(this.remove(p, 'restarted'));
    }
    for (const h of listed.values()) {
      if (h.state !== 'up') continue;
      const existing = this.peerMap.get(h.name);
      if (existing !== undefined) {
        existing.peer = h.peer;
        continue;
      }
      // A peer newly seen is 'up' and has failAfterMs from now to be heard:
      // it registered moments ago, or we just started and know nothing yet.
      const p: Peer = {
        name: h.name,
        incarnation: h.incarnation.toLowerCase(),
        peer: h.peer,
        state: 'up',
        lastHeardMs: null,
        graceFromMs: nowMs,
        failPending: false,
        peerSentMs: null,
        peerSentAtMs: nowMs,
        echoDue: false,
        firstSentMs: null,
        rttSamplesMs: [],
        rttNext: 0,
        heartbeatsReceived: 0,
      };
      this.peerMap.set(p.name, p);
      out.push({
        type: 'peer-state',
        name: p.name,
        incarnation: p.incarnation,
        state: 'up',
        previous: null,
        silentMs: 0,
      });
    }
    return out;
  }

  private heartbeat(
    nowMs: number,
    from: string,
    incarnation: string,
    sentMs: number,
    echoMs: number | null,
  ): MembershipAction[] {
    const p = this.peerMap.get(from);
    if (p === undefined || p.incarnation !== incarnation.toLowerCase() || !Number.isFinite(sentMs)) {
      // The frame layer checks incarnations too; here the registry may simply
      // not have caught up with a restart yet. Either way it says nothing about
      // the peer we watch.
      this.counters.heartbeatsIgnored++;
      return [];
    }
    const out: MembershipAction[] = [];
    const silentMs = nowMs - silenceFromMs(p);
    p.lastHeardMs = nowMs;
    p.failPending = false;
    p.heartbeatsReceived++;
    if (p.state !== 'up') out.push(this.setState(p, 'up', silentMs));

    // A reordered older heartbeat must not replace the newest one as the echo.
    if (p.peerSentMs === null || sentMs > p.peerSentMs) {
      p.peerSentMs = sentMs;
      p.peerSentAtMs = nowMs;
      p.echoDue = true;
    }
    // An echo is our own clock reflected back; one outside [our first
    // heartbeat to this incarnation, now] cannot be ours (it may come from our
    // previous incarnation, which the peer has not yet noticed ended).
    if (echoMs !== null && Number.isFinite(echoMs) && p.firstSentMs !== null) {
      if (echoMs >= p.firstSentMs && echoMs <= nowMs) {
        const rttMs = nowMs - echoMs;
        if (p.rttSamplesMs.length < this.config.rttSamplesMax) p.rttSamplesMs.push(rttMs);
        else p.rttSamplesMs[p.rttNext] = rttMs;
        p.rttNext = (p.rttNext + 1) % this.config.rttSamplesMax;
      }
    }
    return out;
  }

  private setState(p: Peer, state: PeerState, silentMs: number): MembershipAction {
    assert(p.state !== state, `peer ${p.name} set to its own state ${state}`);
    const previous = p.state;
    p.state = state;
    return { type: 'peer-state', name: p.name, incarnation: p.incarnation, state, previous, silentMs };
  }

  private remove(p: Peer, reason: 'left' | 'unregistered' | 'restarted'): MembershipAction {
    this.peerMap.delete(p.name);
    return { type: 'peer-removed', name: p.name, incarnation: p.incarnation, state: p.state, reason };
  }
}

function silenceFromMs(p: Peer): number {
  return p.lastHeardMs === null ? p.graceFromMs : Math.max(p.lastHeardMs, p.graceFromMs);
}

function median(xs: readonly number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
