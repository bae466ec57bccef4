// A seeded simulation of whole clusters: 3 to 5 hosts, each a real Membership
// with a real ReplayGuard, exchanging real authenticated frames over a
// simulated network that delays, loses, duplicates and reorders datagrams,
// and that can be partitioned. Hosts pause (a paused host processes nothing,
// then gets what queued up and a late tick, in either order), stall all
// together for seconds (the whole machine stops), starve (their timers fire
// up to 300 ms late), crash, restart with a new incarnation, and leave. An
// attacker replays and redirects captured frames.
//
// Properties checked on every run:
// (a) a crashed host is declared down by every live peer within
//     failAfterMs + 2 x heartbeatIntervalMs + the largest network delay
//     (an observer's own pause postpones its deadline: it grants grace);
// (b) nobody is ever declared down without cause: only a crash or a cut
//     link justifies 'down'. With the default profile that covers pauses of
//     up to 1000 ms plus 300 ms of scheduling delay, stalls of the whole
//     cluster of up to 7 s, timers up to 300 ms late, and 10% loss with at
//     most 3 datagrams lost in a row on a link;
// (c) a partition is detected on both sides within the same bound as a
//     crash, and once healed every peer is up again within a few intervals;
// and at the end every live host sees every other live host, at its current
// incarnation, and every crashed one as down. Replayed and redirected frames
// are always refused.
//
// The model's limits are the protocol's promises: a host pauses at most once
// per 4 s, and a run ends with failAfterMs + 1.5 s of calm. Seeds: LOCKSTEP_TEST_SEED sets the
// first run's seed (run i uses seed + i), LOCKSTEP_SIM_RUNS the number of runs;
// a failure prints the command that replays exactly that run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Prng, testSeed } from '../core/prng.js';
import {
  MEMBERSHIP_DEFAULT,
  MEMBERSHIP_FAST,
  Membership,
  tickIntervalMs,
  type MembershipAction,
  type MembershipTimings,
  type PeerState,
  type RegistryHost,
} from './membership.js';
import {
  FrameKind,
  HEARTBEAT_CHANNEL,
  ReplayGuard,
  decodeFrame,
  decodeHeartbeat,
  encodeFrame,
  encodeHeartbeat,
} from './frame.js';

const KEY = Buffer.alloc(32, 0x3c);
const CLUSTER = 'c0ffee00c0ffee00c0ffee00c0ffee00';
const BASE_SEED = testSeed();
const RUNS = Number(process.env['LOCKSTEP_SIM_RUNS'] ?? 200);
/** A host pauses at most once per this long (end of one pause to start of the next). */
const PAUSE_SPACING_MS = 4000;

// ---------------------------------------------------------------------------
// The simulated world
// ---------------------------------------------------------------------------

/** A min-heap of timed callbacks; equal times run in scheduling order, so a run is a function of its seed. */
class EventQueue {
  private heap: { atMs: number; order: number; fn: () => void }[] = [];
  private order = 0;

  push(atMs: number, fn: () => void): void {
    const h = this.heap;
    h.push({ atMs, order: this.order++, fn });
    let i = h.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.less(i, parent)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  pop(): { atMs: number; fn: () => void } | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top === undefined || last === undefined || h.length === 0) return top;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && this.less(l, m)) m = l;
      if (r < h.length && this.less(r, m)) m = r;
      if (m === i) break;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
    return top;
  }

  private less(a: number, b: number): boolean {
    const x = this.heap[a]!;
    const y = this.heap[b]!;
    return x.atMs < y.atMs || (x.atMs === y.atMs && x.order < y.order);
  }
}

type Scenario = 'crash' | 'pause' | 'stall' | 'starve' | 'partition' | 'fast-crash';
const SCENARIOS: Scenario[] = ['crash', 'pause', 'stall', 'starve', 'partition', 'fast-crash'];

interface Params {
  seed: number;
  scenario: Scenario;
  hostCount: number;
  timings: MembershipTimings;
  tickMs: number;
  /** How late a normal host's timer fires, at most. */
  tickJitterMsMax: number;
  /** How late a starved host's timer fires, at most. */
  starvedJitterMsMax: number;
  delayMsMin: number;
  delayMsMax: number;
  lossRate: number;
  /** The most datagrams lost in a row on one link. */
  lossStreakMax: number;
  dupRate: number;
  registryDelayMsMax: number;
  durationMs: number;
  /** After a pause, the late tick runs before the queued datagrams (the harder order). */
  lateTickFirst: boolean;
}

interface SimHost {
  name: string;
  incarnation: string;
  m: Membership;
  guard: ReplayGuard;
  seq: number;
  status: 'running' | 'paused' | 'crashed' | 'left';
  inbox: (() => void)[];
  tickGen: number;
  starved: boolean;
  lastRegistryAtMs: number;
  /** The state of each peer as its actions say, to check that they are consistent. */
  view: Map<string, { incarnation: string; state: PeerState }>;
}

interface Verdict {
  atMs: number;
  observer: string;
  observerIncarnation: string;
  peer: string;
  incarnation: string;
  state: PeerState | 'removed';
}

interface Interval {
  startMs: number;
  endMs: number;
}

class World {
  nowMs = 0;
  readonly q = new EventQueue();
  readonly rng: Prng;
  readonly hosts = new Map<string, SimHost>();
  readonly registry = new Map<string, RegistryHost>();
  /** Directed links currently cut, "from>to", and every cut ever, for judging verdicts. */
  readonly cuts = new Set<string>();
  readonly cutLog = new Map<string, Interval[]>();
  readonly pauses = new Map<string, Interval[]>();
  /** Hosts whose timers fire up to starvedJitterMsMax late. */
  readonly starved = new Set<string>();
  /** Incarnation -> when it crashed. */
  readonly crashes = new Map<string, number>();
  readonly lossStreak = new Map<string, number>();
  readonly verdicts: Verdict[] = [];
  readonly trace: string[] = [];
  readonly captured: { buf: Buffer; to: string; toIncarnation: string }[] = [];
  readonly counts = { sent: 0, lost: 0, duplicated: 0, delivered: 0, refused: 0, attacks: 0, suspects: 0 };

  constructor(readonly p: Params) {
    this.rng = new Prng(p.seed, 7);
  }

  log(line: string): void {
    this.trace.push(`${this.nowMs.toFixed(1).padStart(8)} ${line}`);
    if (this.trace.length > 80) this.trace.shift();
  }

  at(atMs: number, fn: () => void): void {
    this.q.push(atMs, fn);
  }

  run(): void {
    for (;;) {
      const e = this.q.pop();
      if (e === undefined || e.atMs > this.p.durationMs) return;
      assert.ok(e.atMs >= this.nowMs, 'the simulated clock never goes backwards');
      this.nowMs = e.atMs;
      e.fn();
    }
  }

  newIncarnation(): string {
    return (
      this.rng.nextU32().toString(16).padStart(8, '0') + this.rng.nextU32().toString(16).padStart(8, '0')
    );
  }

  // ---- hosts ----

  startHost(name: string): void {
    const old = this.hosts.get(name);
    if (old !== undefined) old.tickGen++;
    const h: SimHost = {
      name,
      incarnation: this.newIncarnation(),
      m: new Membership({ self: name, ...this.p.timings }),
      guard: new ReplayGuard(),
      seq: 0,
      status: 'running',
      inbox: [],
      tickGen: 0,
      starved: this.starved.has(name),
      lastRegistryAtMs: this.nowMs,
      view: new Map(),
    };
    this.hosts.set(name, h);
    this.log(`${name} starts as ${h.incarnation}`);
    this.registry.set(name, {
      name,
      incarnation: h.incarnation,
      peer: `${name}#${h.incarnation}`,
      state: 'up',
    });
    // A host reads the registry as it starts; the others learn of it a little later.
    this.applyRegistry(h, [...this.registry.values()]);
    this.announceRegistry(h);
    this.scheduleTicks(h, this.nowMs + this.rng.next() * this.p.tickMs);
  }

  announceRegistry(except: SimHost | null): void {
    const snapshot = [...this.registry.values()].map((r) => ({ ...r }));
    for (const h of this.hosts.values()) {
      if (h === except || h.status === 'crashed' || h.status === 'left') continue;
      // A watch delivers changes in order: never before an earlier snapshot.
      const atMs = Math.max(h.lastRegistryAtMs, this.nowMs + this.rng.next() * this.p.registryDelayMsMax);
      h.lastRegistryAtMs = atMs;
      const inc = h.incarnation;
      this.at(atMs, () => this.deliver(h, inc, () => this.applyRegistry(h, snapshot)));
    }
  }

  applyRegistry(h: SimHost, snapshot: RegistryHost[]): void {
    h.guard.syncRegistry(snapshot, h.name);
    this.handle(h, h.m.step({ type: 'registry', nowMs: this.nowMs, hosts: snapshot }));
  }

  /** Runs `fn` on host h (of incarnation inc) now, or when it resumes; drops it if h is gone. */
  deliver(h: SimHost, inc: string, fn: () => void): void {
    if (h.incarnation !== inc || this.hosts.get(h.name) !== h) return;
    if (h.status === 'running') fn();
    else if (h.status === 'paused') h.inbox.push(fn);
  }

  scheduleTicks(h: SimHost, firstAtMs: number): void {
    const gen = ++h.tickGen;
    const tick = (): void => {
      if (h.tickGen !== gen || h.status !== 'running') return;
      this.tickNow(h);
      const lateMs = this.rng.next() * (h.starved ? this.p.starvedJitterMsMax : this.p.tickJitterMsMax);
      this.at(this.nowMs + this.p.tickMs + lateMs, tick);
    };
    this.at(firstAtMs, tick);
  }

  tickNow(h: SimHost): void {
    this.handle(h, h.m.step({ type: 'tick', nowMs: this.nowMs }));
  }

  pause(name: string, durationMs: number): void {
    const h = this.hosts.get(name)!;
    if (h.status !== 'running') return;
    h.status = 'paused';
    h.tickGen++;
    this.log(`${name} pauses for ${durationMs.toFixed(0)} ms`);
    const inc = h.incarnation;
    this.at(this.nowMs + durationMs, () => {
      if (h.status !== 'paused' || h.incarnation !== inc) return;
      h.status = 'running';
      this.log(`${name} resumes with ${h.inbox.length} queued`);
      const queued = h.inbox;
      h.inbox = [];
      if (this.p.lateTickFirst) this.tickNow(h);
      for (const fn of queued) fn();
      if (!this.p.lateTickFirst) this.tickNow(h);
      this.scheduleTicks(h, this.nowMs + this.p.tickMs);
    });
  }

  crash(name: string): void {
    const h = this.hosts.get(name)!;
    h.status = 'crashed';
    h.tickGen++;
    h.inbox = [];
    this.crashes.set(h.incarnation, this.nowMs);
    this.log(`${name} crashes`);
  }

  leave(name: string): void {
    const h = this.hosts.get(name)!;
    this.registry.set(name, { ...this.registry.get(name)!, state: 'left' });
    this.announceRegistry(h);
    h.status = 'left';
    h.tickGen++;
    this.log(`${name} leaves`);
  }

  cut(a: string, b: string, cut: boolean): void {
    for (const key of [`${a}>${b}`, `${b}>${a}`]) {
      const log = this.cutLog.get(key) ?? [];
      this.cutLog.set(key, log);
      if (cut && !this.cuts.has(key)) {
        this.cuts.add(key);
        log.push({ startMs: this.nowMs, endMs: Infinity });
      } else if (!cut && this.cuts.has(key)) {
        this.cuts.delete(key);
        log.at(-1)!.endMs = this.nowMs;
      }
    }
  }

  // ---- the network ----

  handle(h: SimHost, actions: MembershipAction[]): void {
    for (const a of actions) {
      if (a.type === 'send') {
        this.send(h, a.to, a.peer, encodeHeartbeat(a.msg));
        continue;
      }
      const before = h.view.get(a.name);
      if (a.type === 'peer-state') {
        if (a.previous === null) assert.equal(before, undefined, `${h.name}: ${a.name} appeared twice`);
        else
          assert.deepEqual(before, { incarnation: a.incarnation, state: a.previous }, `${h.name}: ${a.name}`);
        h.view.set(a.name, { incarnation: a.incarnation, state: a.state });
        if (a.state === 'suspect') this.counts.suspects++;
        if (a.state !== 'suspect')
          this.log(`${h.name} sees ${a.name} ${a.state} (silent ${a.silentMs.toFixed(0)} ms)`);
      } else {
        assert.deepEqual(
          before,
          { incarnation: a.incarnation, state: a.state },
          `${h.name}: ${a.name} removed`,
        );
        h.view.delete(a.name);
        this.log(`${h.name} removes ${a.name} (${a.reason})`);
      }
      assert.notEqual(a.name, h.name, 'a host is never its own peer');
      this.verdicts.push({
        atMs: this.nowMs,
        observer: h.name,
        observerIncarnation: h.incarnation,
        peer: a.name,
        incarnation: a.incarnation,
        state: a.type === 'peer-state' ? a.state : 'removed',
      });
    }
  }

  send(from: SimHost, to: string, peerAddress: string, payload: Buffer): void {
    const buf = encodeFrame(
      {
        kind: FrameKind.HEARTBEAT,
        clusterId: CLUSTER,
        from: from.name,
        fromIncarnation: from.incarnation,
        to,
        channel: HEARTBEAT_CHANNEL,
        seq: ++from.seq,
        payload,
      },
      KEY,
    );
    this.counts.sent++;
    const link = `${from.name}>${to}`;
    if (this.cuts.has(link)) return;
    const streak = this.lossStreak.get(link) ?? 0;
    if (streak < this.p.lossStreakMax && this.rng.chance(this.p.lossRate)) {
      this.lossStreak.set(link, streak + 1);
      this.counts.lost++;
      return;
    }
    this.lossStreak.set(link, 0);
    const copies = this.rng.chance(this.p.dupRate) ? 2 : 1;
    if (copies === 2) this.counts.duplicated++;
    for (let i = 0; i < copies; i++) {
      const delayMs = this.p.delayMsMin + this.rng.next() * (this.p.delayMsMax - this.p.delayMsMin);
      this.at(this.nowMs + delayMs, () => this.arrive(link, peerAddress, buf));
    }
  }

  arrive(link: string, peerAddress: string, buf: Buffer): void {
    if (this.cuts.has(link)) return; // cut while in flight
    const [name, inc] = peerAddress.split('#') as [string, string];
    const h = this.hosts.get(name);
    // An address of an older incarnation is a closed port.
    if (h === undefined || h.incarnation !== inc) return;
    this.deliver(h, inc, () => this.receive(h, buf, false));
  }

  receive(h: SimHost, buf: Buffer, attack: boolean): void {
    const d = decodeFrame(buf, KEY, { clusterId: CLUSTER, self: h.name });
    if (!d.ok) {
      assert.ok(attack, `${h.name} refused a genuine frame: ${d.reason}`);
      assert.equal(d.reason, 'not-for-me', 'a redirected frame is refused as not for this host');
      this.counts.refused++;
      return;
    }
    const f = d.frame;
    const verdict = h.guard.accept(f.from, f.fromIncarnation, f.channel, f.seq);
    if (attack) assert.notEqual(verdict, 'ok', `${h.name} accepted a replayed frame ${f.from}#${f.seq}`);
    if (verdict !== 'ok') {
      this.counts.refused++;
      return;
    }
    this.counts.delivered++;
    if (this.captured.length < 400 && this.rng.chance(0.05)) {
      this.captured.push({ buf, to: h.name, toIncarnation: h.incarnation });
    }
    const hb = decodeHeartbeat(f.payload);
    assert.ok(hb !== null, 'a genuine heartbeat payload decodes');
    this.handle(
      h,
      h.m.step({
        type: 'heartbeat',
        nowMs: this.nowMs,
        from: f.from,
        incarnation: f.fromIncarnation,
        sentMs: hb.sentMs,
        echoMs: hb.echoMs,
      }),
    );
  }

  /** Replays a captured frame to its receiver, or redirects it to another host; both must be refused. */
  attack(): void {
    const c = this.captured[this.rng.int(0, this.captured.length - 1)];
    if (c === undefined) return;
    const names = [...this.hosts.keys()];
    const redirect = this.rng.chance(0.3);
    const target = this.hosts.get(redirect ? names[this.rng.int(0, names.length - 1)]! : c.to)!;
    // A restarted receiver has forgotten what it saw (docs/CLUSTER-PROTOCOL.md, "Replays").
    if (target.name === c.to && target.incarnation !== c.toIncarnation) return;
    this.counts.attacks++;
    this.deliver(target, target.incarnation, () => this.receive(target, c.buf, true));
  }
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/** Scenarios drawn by weight: the fast profile sends four times the heartbeats, so it runs less often and shorter. */
const SCENARIO_WEIGHTS: [Scenario, number][] = [
  ['crash', 3],
  ['pause', 3],
  ['stall', 2],
  ['starve', 2],
  ['partition', 3],
  ['fast-crash', 1],
];

function paramsFor(seed: number): Params {
  const rng = new Prng(seed, 1);
  let pick = rng.int(
    1,
    SCENARIO_WEIGHTS.reduce((n, [, w]) => n + w, 0),
  );
  const scenario = SCENARIO_WEIGHTS.find(([, w]) => (pick -= w) <= 0)![0];
  const fast = scenario === 'fast-crash';
  const timings = fast ? MEMBERSHIP_FAST : MEMBERSHIP_DEFAULT;
  const durationMs = {
    crash: 12_500 + rng.int(0, 1000),
    pause: 9_000 + rng.int(0, 4000),
    stall: 16_000,
    starve: 8_000 + rng.int(0, 3000),
    partition: 13_000,
    'fast-crash': 5_000 + rng.int(0, 2000),
  }[scenario];
  return {
    seed,
    scenario,
    hostCount: rng.int(3, 5),
    timings,
    tickMs: tickIntervalMs(timings),
    tickJitterMsMax: fast ? 5 : 20,
    starvedJitterMsMax: 300,
    delayMsMin: fast ? 0.05 : 0.2,
    delayMsMax: fast ? 1 + rng.next() * 9 : 1 + rng.next() * 49,
    lossRate: rng.next() * 0.1,
    // The fast profile's 300 ms budget has room for two losses in a row, the default's for three.
    lossStreakMax: fast ? 2 : 3,
    dupRate: 0.02,
    registryDelayMsMax: fast ? 30 : 100,
    durationMs,
    lateTickFirst: rng.chance(0.5),
  };
}

/** Quiet time at the end of every run, so that the final views must have settled. */
function calmMs(p: Params): number {
  return p.timings.failAfterMs + 1500;
}

interface Plan {
  world: World;
  /** Crashes: host, time, and whether (and when) it restarts. */
  crashes: { name: string; atMs: number; restartAtMs: number | null }[];
  partition: { a: string[]; b: string[]; startMs: number; endMs: number } | null;
  leaves: { name: string; atMs: number }[];
}

function plan(p: Params): Plan {
  const w = new World(p);
  const rng = new Prng(p.seed, 2);
  const names = Array.from({ length: p.hostCount }, (_, i) => `h${i + 1}`);
  // Hosts start within the first second, in random order.
  for (const name of names) w.at(rng.next() * 1000, () => w.startHost(name));
  const endCalmMs = p.durationMs - calmMs(p);
  const out: Plan = { world: w, crashes: [], partition: null, leaves: [] };

  const gone = new Map<string, number>(); // host -> time it crashes or leaves for good
  if (p.scenario === 'crash' || p.scenario === 'fast-crash') {
    const name = names[rng.int(0, names.length - 1)]!;
    const atMs = (p.scenario === 'crash' ? 2000 : 1500) + rng.next() * (p.scenario === 'crash' ? 2000 : 1000);
    const bound = detectionBoundMs(p);
    const restartAtMs = rng.chance(0.5) ? atMs + bound + 200 + rng.next() * 1000 : null;
    if (restartAtMs === null || restartAtMs > endCalmMs) gone.set(name, atMs);
    out.crashes.push({
      name,
      atMs,
      restartAtMs: restartAtMs !== null && restartAtMs <= endCalmMs ? restartAtMs : null,
    });
    const c = out.crashes[0]!;
    w.at(c.atMs, () => w.crash(name));
    if (c.restartAtMs !== null) w.at(c.restartAtMs, () => w.startHost(name));
  }
  if (p.scenario !== 'partition' && p.hostCount >= 4 && rng.chance(0.4)) {
    const candidates = names.filter((n) => !gone.has(n) && !out.crashes.some((c) => c.name === n));
    const name = candidates[rng.int(0, candidates.length - 1)]!;
    const atMs = 2000 + rng.next() * (endCalmMs - 2000);
    gone.set(name, atMs);
    out.leaves.push({ name, atMs });
    w.at(atMs, () => w.leave(name));
  }
  if (p.scenario === 'crash' || p.scenario === 'pause') {
    for (const name of names) {
      if (!rng.chance(p.scenario === 'pause' ? 0.8 : 0.5)) continue;
      const intervals: Interval[] = [];
      for (let t = 1500 + rng.next() * 2000; ;) {
        // A SIGSTOP of up to 1 s, then up to 300 ms more before the host is scheduled again.
        const durationMs = 20 + rng.next() * 980 + rng.next() * 300;
        if (t + durationMs > endCalmMs || t + durationMs > (gone.get(name) ?? Infinity)) break;
        intervals.push({ startMs: t, endMs: t + durationMs });
        w.at(t, () => w.pause(name, durationMs));
        t += durationMs + PAUSE_SPACING_MS + rng.next() * 3000;
      }
      w.pauses.set(name, intervals);
    }
  }
  if (p.scenario === 'stall') {
    // The whole machine stops (a VM host's hiccup, a suspended laptop): every
    // host pauses at once for up to 7 s, and they resume within 300 ms of each
    // other. Nobody was silent by choice, so nobody may be declared down.
    const atMs = 2000 + rng.next() * 2000;
    const durationMs = 1000 + rng.next() * 6000;
    for (const name of names) {
      const own = durationMs + rng.next() * 300;
      w.pauses.set(name, [{ startMs: atMs, endMs: atMs + own }]);
      w.at(atMs, () => w.pause(name, own));
    }
  }
  if (p.scenario === 'starve') {
    for (const name of names) if (rng.chance(0.6)) w.starved.add(name);
  }
  if (p.scenario === 'partition') {
    const shuffled = [...names].sort(() => rng.next() - 0.5);
    const k = rng.int(1, names.length - 1);
    const a = shuffled.slice(0, k);
    const b = shuffled.slice(k);
    const startMs = 2000 + rng.next() * 1500;
    const endMs = Math.min(startMs + detectionBoundMs(p) + 300 + rng.next() * 2000, endCalmMs);
    out.partition = { a, b, startMs, endMs };
    w.at(startMs, () => {
      w.log(`partition ${a.join(',')} | ${b.join(',')}`);
      for (const x of a) for (const y of b) w.cut(x, y, true);
    });
    w.at(endMs, () => {
      w.log('partition heals');
      for (const x of a) for (const y of b) w.cut(x, y, false);
    });
  }
  // The attacker replays or redirects a captured frame now and then.
  for (let t = 2000; t < p.durationMs; t += 100 + rng.next() * 400) w.at(t, () => w.attack());
  return out;
}

/** The promised detection time: failAfterMs + 2 heartbeat intervals + the largest network delay. */
function detectionBoundMs(p: Params): number {
  return p.timings.failAfterMs + 2 * p.timings.heartbeatIntervalMs + p.delayMsMax;
}

/** How soon after a partition heals every peer must be heard again: the longest run of losses, plus a delay. */
function healBoundMs(p: Params): number {
  const spacingMs = p.timings.heartbeatIntervalMs + p.tickMs + p.tickJitterMsMax;
  return (p.lossStreakMax + 1) * spacingMs + p.delayMsMax;
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

function overlaps(intervals: readonly Interval[] | undefined, fromMs: number, toMs: number): boolean {
  return (intervals ?? []).some((i) => i.startMs <= toMs && i.endMs >= fromMs);
}

function check(pl: Plan): void {
  const w = pl.world;
  const p = w.p;
  const bound = detectionBoundMs(p);

  // (b) Every 'down' has a cause: the peer's incarnation crashed, or the link
  // from it to the observer was cut within the silence that led to the verdict.
  for (const v of w.verdicts) {
    if (v.state !== 'down') continue;
    const crashedAtMs = w.crashes.get(v.incarnation);
    if (crashedAtMs !== undefined && crashedAtMs <= v.atMs) continue;
    if (overlaps(w.cutLog.get(`${v.peer}>${v.observer}`), v.atMs - p.timings.failAfterMs, v.atMs)) continue;
    assert.fail(`${v.observer} declared ${v.peer} down at ${v.atMs.toFixed(1)} ms without cause`);
  }

  // (a) Every crash is detected by every live observer in time.
  for (const c of pl.crashes) {
    const inc = [...w.crashes].find(([, atMs]) => atMs === c.atMs)![0];
    for (const o of w.hosts.values()) {
      if (o.name === c.name || o.status === 'crashed') continue;
      const leftAtMs = pl.leaves.find((l) => l.name === o.name)?.atMs ?? Infinity;
      let deadlineMs = c.atMs + bound;
      // The observer's own pauses grant grace, which postpones its verdict.
      for (let changed = true; changed;) {
        changed = false;
        for (const ps of w.pauses.get(o.name) ?? []) {
          if (ps.startMs < deadlineMs && ps.endMs > c.atMs && ps.endMs + bound > deadlineMs) {
            deadlineMs = ps.endMs + bound;
            changed = true;
          }
        }
      }
      if (leftAtMs <= deadlineMs || deadlineMs > p.durationMs) continue;
      const seen = w.verdicts.find(
        (v) =>
          v.observer === o.name &&
          v.peer === c.name &&
          v.incarnation === inc &&
          (v.state === 'down' || v.state === 'removed') &&
          v.atMs >= c.atMs,
      );
      assert.ok(seen !== undefined, `${o.name} never declared the crashed ${c.name} down`);
      assert.ok(
        seen.atMs <= deadlineMs,
        `${o.name} declared the crashed ${c.name} down at ${seen.atMs.toFixed(1)} ms, after ${deadlineMs.toFixed(1)} ms`,
      );
      const back = w.verdicts.find(
        (v) => v.observer === o.name && v.incarnation === inc && v.state === 'up' && v.atMs > seen.atMs,
      );
      assert.equal(back, undefined, `a crashed incarnation came back up at ${o.name}`);
    }
  }

  // (c) A partition is detected on both sides, and healing brings everyone back.
  if (pl.partition !== null) {
    const { a, b, startMs, endMs } = pl.partition;
    const healMs = healBoundMs(p);
    for (const [side, other] of [
      [a, b],
      [b, a],
    ] as const) {
      for (const o of side) {
        for (const peer of other) {
          const of = (v: Verdict): boolean => v.observer === o && v.peer === peer;
          const down = w.verdicts.find((v) => of(v) && v.state === 'down' && v.atMs >= startMs);
          assert.ok(
            down !== undefined && down.atMs <= startMs + bound,
            `${o} did not see ${peer} down in time`,
          );
          const up = w.verdicts.find((v) => of(v) && v.state === 'up' && v.atMs > startMs);
          assert.ok(up !== undefined && up.atMs >= endMs, `${o} saw ${peer} up during the partition`);
          assert.ok(up.atMs <= endMs + healMs, `${o} saw ${peer} up only at ${up.atMs.toFixed(1)} ms`);
        }
      }
    }
  }

  // At the end, after the calm: live hosts see each other at their current
  // incarnations; crashed hosts are down; hosts that left are gone.
  for (const o of w.hosts.values()) {
    if (o.status !== 'running') continue;
    for (const [name, rec] of w.registry) {
      if (name === o.name) continue;
      const seen = o.view.get(name);
      const peer = w.hosts.get(name)!;
      if (rec.state === 'left') assert.equal(seen, undefined, `${o.name} still watches ${name}, which left`);
      else if (peer.status === 'crashed')
        assert.equal(seen?.state, 'down', `${o.name} sees the crashed ${name}`);
      else {
        assert.equal(seen?.incarnation, peer.incarnation, `${o.name} knows ${name}'s current incarnation`);
        assert.notEqual(seen?.state, 'down', `${o.name} sees the live ${name} down at the end`);
      }
    }
  }
}

function runOnce(seed: number): { p: Params; w: World } {
  const p = paramsFor(seed);
  const pl = plan(p);
  try {
    pl.world.run();
    check(pl);
  } catch (e) {
    const detail = [
      `simulation failed: seed ${seed}, scenario ${p.scenario}, ${p.hostCount} hosts`,
      `replay: LOCKSTEP_TEST_SEED=${seed} LOCKSTEP_SIM_RUNS=1 node --test dist/src/cluster/sim.test.js`,
      `params: ${JSON.stringify(p)}`,
      `last events:`,
      ...pl.world.trace,
    ].join('\n');
    if (e instanceof Error) e.message = `${e.message}\n${detail}`;
    throw e;
  }
  return { p, w: pl.world };
}

test('membership simulation: many seeded runs of crashes, pauses, starvation, partitions and replays', (t) => {
  t.diagnostic(`seed ${BASE_SEED} (runs ${RUNS}; run i uses seed + i)`);
  const started = performance.now();
  const byScenario = new Map<Scenario, number>();
  const totals = { sent: 0, lost: 0, duplicated: 0, delivered: 0, refused: 0, attacks: 0, suspects: 0 };
  for (let i = 0; i < RUNS; i++) {
    const { p, w } = runOnce(BASE_SEED + i);
    byScenario.set(p.scenario, (byScenario.get(p.scenario) ?? 0) + 1);
    for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += w.counts[k];
  }
  const elapsedMs = performance.now() - started;
  t.diagnostic(`runs by scenario: ${JSON.stringify(Object.fromEntries(byScenario))}`);
  t.diagnostic(`traffic: ${JSON.stringify(totals)}`);
  t.diagnostic(`${RUNS} runs in ${elapsedMs.toFixed(0)} ms`);
  if (RUNS >= 50) {
    assert.ok(byScenario.size === SCENARIOS.length, 'every scenario ran');
    assert.ok(totals.attacks > 0 && totals.lost > 0 && totals.duplicated > 0);
  }
});

test('simulation sanity: a pause beyond the budget is detected, and the host comes back up', (t) => {
  // If the simulation could not produce a 'down', property (b) would prove nothing.
  t.diagnostic(`seed ${BASE_SEED}`);
  const p: Params = {
    ...paramsFor(BASE_SEED),
    scenario: 'pause',
    hostCount: 3,
    lossRate: 0,
    durationMs: 12_000,
  };
  const w = new World(p);
  for (const name of ['h1', 'h2', 'h3']) w.at(0, () => w.startHost(name));
  w.at(3000, () => w.pause('h2', 3500));
  w.run();
  const downs = w.verdicts.filter((v) => v.peer === 'h2' && v.state === 'down').map((v) => v.observer);
  assert.deepEqual(downs.sort(), ['h1', 'h3']);
  assert.ok(
    w.verdicts.every((v) => v.peer === 'h2' || v.state !== 'down'),
    'h2 itself declares nobody down',
  );
  for (const o of ['h1', 'h3']) assert.equal(w.hosts.get(o)!.view.get('h2')?.state, 'up');
});
