// Tests of the membership state machine (membership.ts), one rule at a time,
// with hand-fed events: the heartbeat cadence, silence -> suspect -> down,
// the return to up, tolerance of our own pauses and of late ticks, the
// registry (left, unregistered, restarted), echoes and round trips. The
// seeded simulation of whole clusters is sim.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MEMBERSHIP_DEFAULT,
  MEMBERSHIP_FAST,
  MEMBERSHIP_PROFILES,
  Membership,
  tickIntervalMs,
  timingsProblem,
  type MembershipAction,
  type RegistryHost,
} from './membership.js';

const INC_A = 'aaaaaaaaaaaaaaaa';
const INC_B = 'bbbbbbbbbbbbbbbb';
const INC_C = 'cccccccccccccccc';

function hosts(...hs: [string, string, 'up' | 'left'][]): RegistryHost[] {
  return hs.map(([name, incarnation, state]) => ({
    name,
    incarnation,
    peer: `127.0.0.1:${name.length}`,
    state,
  }));
}

function states(actions: MembershipAction[]): string[] {
  return actions.flatMap((a) =>
    a.type === 'peer-state'
      ? [`${a.name}:${a.previous ?? 'new'}->${a.state}`]
      : a.type === 'peer-removed'
        ? [`${a.name}:removed(${a.reason})`]
        : [],
  );
}

function sends(actions: MembershipAction[]): string[] {
  return actions.flatMap((a) => (a.type === 'send' ? [a.to] : []));
}

/** A host 'me' with peers b and c, registered at time 0. */
function started(): Membership {
  const m = new Membership({ self: 'me', ...MEMBERSHIP_DEFAULT });
  const a = m.step({
    type: 'registry',
    nowMs: 0,
    hosts: hosts(['me', INC_A, 'up'], ['b', INC_B, 'up'], ['c', INC_C, 'up']),
  });
  assert.deepEqual(states(a), ['b:new->up', 'c:new->up']);
  return m;
}

/** Ticks every `everyMs` over (fromMs, toMs], feeding heartbeats from `alive` each tick; returns every state change with its time. */
function run(m: Membership, fromMs: number, toMs: number, everyMs: number, alive: string[] = []): string[] {
  const out: string[] = [];
  for (let t = fromMs + everyMs; t <= toMs; t += everyMs) {
    for (const name of alive) {
      const inc = name === 'b' ? INC_B : INC_C;
      out.push(
        ...states(
          m.step({ type: 'heartbeat', nowMs: t, from: name, incarnation: inc, sentMs: t, echoMs: null }),
        ),
      );
    }
    out.push(...states(m.step({ type: 'tick', nowMs: t })).map((s) => `${t} ${s}`));
  }
  return out;
}

test('profiles and timing rules', () => {
  assert.equal(timingsProblem(MEMBERSHIP_DEFAULT), null);
  assert.equal(timingsProblem(MEMBERSHIP_FAST), null);
  assert.equal(MEMBERSHIP_PROFILES.default, MEMBERSHIP_DEFAULT);
  assert.equal(MEMBERSHIP_PROFILES.fast, MEMBERSHIP_FAST);
  assert.deepEqual(
    { ...MEMBERSHIP_DEFAULT },
    { heartbeatIntervalMs: 200, suspectAfterMs: 1000, failAfterMs: 2500 },
  );
  assert.equal(tickIntervalMs(MEMBERSHIP_DEFAULT), 50);
  const bad = [
    { heartbeatIntervalMs: 0, suspectAfterMs: 1000, failAfterMs: 2500 },
    { heartbeatIntervalMs: 200, suspectAfterMs: 200, failAfterMs: 2500 },
    { heartbeatIntervalMs: 200, suspectAfterMs: 1000, failAfterMs: 1000 },
    { heartbeatIntervalMs: 200, suspectAfterMs: 1000, failAfterMs: NaN },
    { heartbeatIntervalMs: 200, suspectAfterMs: 1000, failAfterMs: 2500, selfPauseGapMs: 2500 },
  ];
  for (const t of bad) {
    assert.notEqual(timingsProblem(t), null, JSON.stringify(t));
    assert.throws(() => new Membership({ self: 'me', ...t }), RangeError);
  }
  assert.throws(() => new Membership({ self: 'me', ...MEMBERSHIP_DEFAULT, rttSamplesMax: 0 }), RangeError);
});

test('a silent peer: suspect after suspectAfterMs, down after failAfterMs confirmed at the next tick', () => {
  const m = started();
  const changes = run(m, 0, 4000, 50, ['c']);
  assert.deepEqual(changes, ['1000 b:up->suspect', '2550 b:suspect->down']);
  assert.equal(m.stateOf('b'), 'down');
  assert.equal(m.stateOf('c'), 'up');
  // One heartbeat brings it back, with how long it was silent.
  const back = m.step({
    type: 'heartbeat',
    nowMs: 4010,
    from: 'b',
    incarnation: INC_B,
    sentMs: 1,
    echoMs: null,
  });
  assert.deepEqual(back, [
    { type: 'peer-state', name: 'b', incarnation: INC_B, state: 'up', previous: 'down', silentMs: 4010 },
  ]);
});

test('a peer heard from stays up; heard once then silent is judged from the last heartbeat', () => {
  const m = started();
  assert.deepEqual(run(m, 0, 3000, 50, ['b', 'c']), []);
  m.step({ type: 'heartbeat', nowMs: 3020, from: 'c', incarnation: INC_C, sentMs: 9, echoMs: null });
  const changes = run(m, 3000, 6000, 50, ['c']);
  assert.deepEqual(changes, ['4000 b:up->suspect', '5550 b:suspect->down']);
  const b = m.peers().find((p) => p.name === 'b')!;
  assert.equal(b.lastHeardMs, 3000);
  assert.equal(b.heartbeatsReceived, 60);
});

test('heartbeats go to every peer (down ones too) once per interval, whatever the tick period', () => {
  for (const tickMs of [10, 50, 100, 199, 200]) {
    const m = started();
    const sentAt: number[] = [];
    for (let t = 0; t <= 10_000; t += tickMs) {
      const a = m.step({ type: 'tick', nowMs: t });
      if (sends(a).length > 0) {
        assert.deepEqual(sends(a), ['b', 'c']);
        sentAt.push(t);
      }
    }
    const gaps = sentAt.slice(1).map((t, i) => t - sentAt[i]!);
    assert.ok(Math.max(...gaps) <= 200 + tickMs, `tick ${tickMs}: gaps ${gaps}`);
    // The cadence holds on average: no drift by a tick per heartbeat.
    const mean = (sentAt.at(-1)! - sentAt[0]!) / gaps.length;
    assert.ok(Math.abs(mean - 200) <= tickMs / 2 + 1, `tick ${tickMs}: mean ${mean}`);
  }
  // A tick a little early (timer rounding) still sends on time rather than a tick later.
  const m = started();
  m.step({ type: 'tick', nowMs: 0 });
  assert.deepEqual(sends(m.step({ type: 'tick', nowMs: 195 })), ['b', 'c']);
  assert.deepEqual(sends(m.step({ type: 'tick', nowMs: 390 })), ['b', 'c']);
});

test('our own pause: a late tick declares nobody down, and every peer gets failAfterMs afresh', () => {
  const m = started();
  m.step({ type: 'tick', nowMs: 0 });
  m.step({ type: 'heartbeat', nowMs: 100, from: 'b', incarnation: INC_B, sentMs: 1, echoMs: null });
  m.step({ type: 'tick', nowMs: 100 });
  // Paused for 10 s: b's last heartbeat is 10 s old, but the silence was ours.
  const late = m.step({ type: 'tick', nowMs: 10_100 });
  assert.deepEqual(states(late), []);
  assert.deepEqual(sends(late), ['b', 'c'], 'and it heartbeats at once');
  assert.equal(m.stats().selfPauses, 1);
  assert.equal(m.stats().tickGapMsMax, 10_000);
  // Heard again in time: nothing happens.
  m.step({ type: 'heartbeat', nowMs: 10_150, from: 'b', incarnation: INC_B, sentMs: 2, echoMs: null });
  // c stays silent: judged from the resume, it is down failAfterMs later.
  const changes = run(m, 10_100, 14_000, 50, ['b']);
  assert.deepEqual(changes, ['11100 c:up->suspect', '12650 c:suspect->down']);
});

test('a suspect peer stays suspect through our pause, but is not declared down by it', () => {
  const m = started();
  assert.deepEqual(run(m, 0, 1500, 50, ['c']), ['1000 b:up->suspect']);
  assert.deepEqual(states(m.step({ type: 'tick', nowMs: 5000 })), []);
  assert.equal(m.stateOf('b'), 'suspect');
  assert.deepEqual(run(m, 5000, 8000, 50, ['c']), ['7550 b:suspect->down']);
});

test('a late tick that fires before the heartbeats waiting in the socket does not declare down', () => {
  const m = started();
  assert.deepEqual(run(m, 0, 2000, 50, ['c']), ['1000 b:up->suspect']);
  // Our ticks stall for 550 ms (under the self-pause gap of 600 ms), during
  // which b's heartbeat arrived and waits in the socket. The late tick comes
  // first: b's silence is over failAfterMs, but one tick is not enough.
  assert.deepEqual(states(m.step({ type: 'tick', nowMs: 2550 })), []);
  // The waiting heartbeat is delivered next, and clears the pending verdict.
  assert.deepEqual(
    states(
      m.step({ type: 'heartbeat', nowMs: 2551, from: 'b', incarnation: INC_B, sentMs: 1, echoMs: null }),
    ),
    ['b:suspect->up'],
  );
  assert.deepEqual(run(m, 2551, 3000, 50, ['b', 'c']), []);
  assert.equal(m.stats().selfPauses, 0);
});

test('the registry: left and unregistered peers are removed, never down; a new incarnation starts afresh', () => {
  const m = started();
  run(m, 0, 2000, 50, ['b', 'c']);
  // c restarts: the old incarnation is removed and the new one is up.
  const restart = m.step({
    type: 'registry',
    nowMs: 2000,
    hosts: hosts(['b', INC_B, 'up'], ['c', 'dddddddddddddddd', 'up'], ['me', INC_A, 'up']),
  });
  assert.deepEqual(states(restart), ['c:removed(restarted)', 'c:new->up']);
  assert.equal(m.peers().find((p) => p.name === 'c')!.incarnation, 'dddddddddddddddd');
  // Heartbeats of c's old incarnation are ignored (counted).
  const old = m.step({
    type: 'heartbeat',
    nowMs: 2010,
    from: 'c',
    incarnation: INC_C,
    sentMs: 1,
    echoMs: null,
  });
  assert.deepEqual(old, []);
  assert.equal(m.peers().find((p) => p.name === 'c')!.heartbeatsReceived, 0);
  m.step({ type: 'heartbeat', nowMs: 2010, from: 'zed', incarnation: INC_C, sentMs: 1, echoMs: null });
  assert.equal(m.stats().heartbeatsIgnored, 2);
  // b leaves and c disappears from the registry: both removed, neither down.
  const gone = m.step({
    type: 'registry',
    nowMs: 2100,
    hosts: hosts(['b', INC_B, 'left'], ['me', INC_A, 'up']),
  });
  assert.deepEqual(states(gone), ['b:removed(left)', 'c:removed(unregistered)']);
  assert.deepEqual(m.peers(), []);
  assert.equal(m.stateOf('b'), null);
  assert.equal(m.stateOf('me'), null);
  assert.deepEqual(run(m, 2100, 6000, 50), []);
  assert.deepEqual(sends(m.step({ type: 'tick', nowMs: 6100 })), []);
  // The same registry twice changes nothing; an address change is taken.
  const m2 = started();
  assert.deepEqual(
    m2.step({ type: 'registry', nowMs: 10, hosts: hosts(['b', INC_B, 'up'], ['c', INC_C, 'up']) }),
    [],
  );
  m2.step({
    type: 'registry',
    nowMs: 20,
    hosts: [
      ...hosts(['b', INC_B, 'up']),
      { name: 'c', incarnation: INC_C.toUpperCase(), peer: '10.0.0.9:7', state: 'up' },
    ],
  });
  const to = m2.step({ type: 'tick', nowMs: 30 }).find((a) => a.type === 'send' && a.to === 'c');
  assert.equal(to?.type === 'send' ? to.peer : null, '10.0.0.9:7');
});

test('a newly registered peer has failAfterMs from its registration to be heard', () => {
  const m = started();
  run(m, 0, 1000, 50, ['b', 'c']);
  m.step({
    type: 'registry',
    nowMs: 1000,
    hosts: hosts(['b', INC_B, 'up'], ['c', INC_C, 'up'], ['dd', 'dddddddddddddddd', 'up']),
  });
  assert.deepEqual(run(m, 1000, 5000, 50, ['b', 'c']), ['2000 dd:up->suspect', '3550 dd:suspect->down']);
});

test('echoes measure the network round trip, not how long the peer held our heartbeat', () => {
  const a = new Membership({ self: 'a', ...MEMBERSHIP_DEFAULT });
  const b = new Membership({ self: 'b', ...MEMBERSHIP_DEFAULT });
  const reg = {
    type: 'registry' as const,
    nowMs: 0,
    hosts: [
      { name: 'a', incarnation: INC_A, peer: 'a', state: 'up' as const },
      { name: 'b', incarnation: INC_B, peer: 'b', state: 'up' as const },
    ],
  };
  a.step(reg);
  b.step(reg);
  // b's clock runs 1e6 ms ahead of a's; the one-way delay is 10 ms each way; b ticks 30 ms out of phase with a.
  const OFFSET = 1e6;
  const DELAY = 10;
  type Msg = { at: number; to: Membership; from: string; inc: string; sentMs: number; echoMs: number | null };
  const inFlight: Msg[] = [];
  for (let t = 0; t <= 5000; t += 10) {
    for (const msg of inFlight.filter((x) => x.at === t)) {
      const now = msg.to === a ? t : t + OFFSET;
      msg.to.step({
        type: 'heartbeat',
        nowMs: now,
        from: msg.from,
        incarnation: msg.inc,
        sentMs: msg.sentMs,
        echoMs: msg.echoMs,
      });
    }
    if (t % 50 === 0) {
      for (const act of a.step({ type: 'tick', nowMs: t })) {
        if (act.type === 'send') inFlight.push({ at: t + DELAY, to: b, from: 'a', inc: INC_A, ...act.msg });
      }
    }
    if (t % 50 === 30) {
      for (const act of b.step({ type: 'tick', nowMs: t + OFFSET })) {
        if (act.type === 'send') inFlight.push({ at: t + DELAY, to: a, from: 'b', inc: INC_B, ...act.msg });
      }
    }
  }
  const rttA = a.peers()[0]!.rttMsMedian;
  const rttB = b.peers()[0]!.rttMsMedian;
  assert.equal(rttA, 20);
  assert.equal(rttB, 20);
  // Echoes are sent once per heartbeat heard; the first heartbeat has none.
  const fresh = new Membership({ self: 'a', ...MEMBERSHIP_DEFAULT });
  fresh.step(reg);
  const first = fresh.step({ type: 'tick', nowMs: 0 })[0]!;
  assert.deepEqual(first.type === 'send' ? first.msg : null, { sentMs: 0, echoMs: null });
  fresh.step({ type: 'heartbeat', nowMs: 50, from: 'b', incarnation: INC_B, sentMs: 5000, echoMs: 0 });
  const second = fresh.step({ type: 'tick', nowMs: 200 })[0]!;
  assert.deepEqual(second.type === 'send' ? second.msg : null, { sentMs: 200, echoMs: 5150 });
  const third = fresh.step({ type: 'tick', nowMs: 400 })[0]!;
  assert.deepEqual(third.type === 'send' ? third.msg : null, { sentMs: 400, echoMs: null });
  // An echo that cannot be ours (older than our first heartbeat, or in the future) is no sample.
  fresh.step({ type: 'heartbeat', nowMs: 410, from: 'b', incarnation: INC_B, sentMs: 5001, echoMs: -100 });
  fresh.step({ type: 'heartbeat', nowMs: 420, from: 'b', incarnation: INC_B, sentMs: 5002, echoMs: 999 });
  assert.equal(fresh.peers()[0]!.rttMsMedian, 50);
  // A reordered older heartbeat does not replace the newest as the echo.
  fresh.step({ type: 'heartbeat', nowMs: 430, from: 'b', incarnation: INC_B, sentMs: 4000, echoMs: null });
  const fourth = fresh.step({ type: 'tick', nowMs: 600 })[0]!;
  assert.deepEqual(fourth.type === 'send' ? fourth.msg : null, { sentMs: 600, echoMs: 5002 + 180 });
});

test('time that goes backwards is taken as no time passing', () => {
  const m = started();
  m.step({ type: 'tick', nowMs: 1000 });
  m.step({ type: 'heartbeat', nowMs: 500, from: 'b', incarnation: INC_B, sentMs: 1, echoMs: null });
  assert.equal(m.peers().find((p) => p.name === 'b')!.lastHeardMs, 1000);
  assert.throws(() => m.step({ type: 'tick', nowMs: NaN }), /assertion/);
});
