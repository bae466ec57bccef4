// Tests of the FT logging channel's pure protocol (channel.ts): the join
// check, the handshake and each refusal, the stream through LogSender and
// LogReceiver with acks (seeded property tests against a model), lag on an
// injected clock, flow control, every kind of bad input (each rejected with
// no state change), the planted ackBeforeReceipt bug, and FrameSplitter.
//
// The randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  BackupHandshake,
  FrameSplitter,
  FtRefuseCode,
  LogReceiver,
  LogSender,
  answerHello,
  joinCheck,
  v8FlagsOf,
  type FtEndpoint,
  type FtSession,
  type HostFacts,
  type LogReceiverOptions,
  type LogSenderOptions,
  type OfferRefusal,
  type PrimaryOffer,
  type StreamPosition,
} from './channel.js';
import {
  FRAME_BYTES_MAX,
  FrameKind,
  encodeFrame,
  encodeFtAck,
  encodeFtHello,
  encodeFtLog,
  encodeFtWelcome,
  ftChannelOf,
} from '../cluster/frame.js';
import { Prng, testSeed } from '../core/prng.js';

const SEED = testSeed();
const KEY = Buffer.alloc(32, 0x5a);
const CLUSTER = '00112233445566778899aabbccddeeff';
const INC_P = '0123456789abcdef';
const INC_B = 'fedcba9876543210';
const FACTS: HostFacts = { nodeVersion: 'v20.15.0', arch: 'x64', v8Flags: ['--max-old-space-size=512'] };

const PRIMARY: FtEndpoint = {
  key: KEY,
  clusterId: CLUSTER,
  self: 'p1',
  selfIncarnation: INC_P,
  facts: FACTS,
};

function bytesOf(prng: Prng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = prng.nextU32() & 0xff;
  return b;
}

function sessionIdFrom(n: number): Buffer {
  return createHash('sha256').update(`session ${n}`).digest().subarray(0, 16);
}

function nonceFrom(n: number): Buffer {
  return createHash('sha256').update(`nonce ${n}`).digest().subarray(0, 16);
}

interface PairConfig {
  vm?: string;
  generation?: number;
  start?: StreamPosition;
  backupFacts?: HostFacts;
  sender?: LogSenderOptions;
  receiver?: LogReceiverOptions;
  n?: number;
}

function offerFor(generation = 7): PrimaryOffer {
  return { generation, backup: 'b1', backupIncarnation: INC_B, startFrom: (asked) => asked };
}

function backupHandshake(c: PairConfig = {}): BackupHandshake {
  return new BackupHandshake({
    key: KEY,
    clusterId: CLUSTER,
    self: 'b1',
    selfIncarnation: INC_B,
    facts: c.backupFacts ?? FACTS,
    primary: 'p1',
    primaryIncarnation: INC_P,
    vm: c.vm ?? 'kv',
    generation: c.generation ?? 7,
    start: c.start ?? { offset: 0, events: 0 },
    sessionId: sessionIdFrom(c.n ?? 1),
  });
}

/** Runs the handshake and the first ack: an established sender and receiver. */
function pair(c: PairConfig = {}): {
  sender: LogSender;
  receiver: LogReceiver;
  ps: FtSession;
  bs: FtSession;
} {
  const hs = backupHandshake(c);
  const a = answerHello(hs.hello(), PRIMARY, () => offerFor(c.generation), nonceFrom(c.n ?? 1));
  assert.equal(a.type, 'welcome');
  if (a.type !== 'welcome') throw new Error('unreachable');
  const b = hs.onFrame(a.frame);
  assert.equal(b.type, 'welcome');
  if (b.type !== 'welcome') throw new Error('unreachable');
  const sender = new LogSender(a.session, c.sender);
  const receiver = new LogReceiver(b.session, c.receiver);
  assert.equal(sender.pollFrame(0), null, 'nothing is sent before the backup is ready');
  const first = receiver.pollAck(0);
  assert.ok(first !== null, 'the first ack is due at once');
  const r = sender.onFrame(first, 0);
  assert.ok(r.ok && r.established && !r.advanced);
  return { sender, receiver, ps: a.session, bs: b.session };
}

/** A frame authenticated with a session's key, with any fields: how a buggy or hostile peer with the key looks. */
function forge(
  s: FtSession,
  kind: number,
  seq: number,
  payload: Uint8Array,
  over: { from?: string; fromIncarnation?: string; channel?: number } = {},
): Buffer {
  return encodeFrame(
    {
      kind,
      clusterId: s.clusterId,
      from: over.from ?? s.peer,
      fromIncarnation: over.fromIncarnation ?? s.peerIncarnation,
      to: s.self,
      channel: over.channel ?? s.channel,
      seq,
      payload,
    },
    s.sessionKey,
  );
}

// ---------------------------------------------------------------------------
// The join check
// ---------------------------------------------------------------------------

test('joinCheck: equal facts pair; each difference is named, flags in any order', () => {
  assert.equal(joinCheck(FACTS, { ...FACTS }), null);
  assert.equal(
    joinCheck({ ...FACTS, v8Flags: ['--a', '--b'] }, { ...FACTS, v8Flags: ['--b', '--a'] }),
    null,
    'flag order does not matter',
  );
  assert.match(
    joinCheck(FACTS, { ...FACTS, nodeVersion: 'v22.3.0' })!,
    /Node version differs: the primary runs v20\.15\.0, the backup v22\.3\.0/,
  );
  assert.match(
    joinCheck(FACTS, { ...FACTS, arch: 'arm64' })!,
    /CPU architecture differs: the primary is x64, the backup arm64/,
  );
  const flags = joinCheck(FACTS, { ...FACTS, v8Flags: ['--jitless'] })!;
  assert.match(
    flags,
    /V8 flags differ: only the primary has --max-old-space-size=512; only the backup has --jitless/,
  );
  const all = joinCheck(FACTS, { nodeVersion: 'v21.0.0', arch: 'ia32', v8Flags: [] })!;
  assert.match(all, /Node version.*; CPU architecture.*; V8 flags differ: only the primary has/);
});

test('v8FlagsOf keeps V8 flags only, normalised, NODE_OPTIONS first and execArgv winning', () => {
  assert.deepEqual(v8FlagsOf([], undefined), []);
  assert.deepEqual(
    v8FlagsOf(
      ['--enable-source-maps', '--max_old_space_size=256', '--inspect', '--jitless', 'script.js'],
      undefined,
    ),
    ['--jitless', '--max-old-space-size=256'],
  );
  assert.deepEqual(
    v8FlagsOf(['--max-old-space-size=1024'], '--max-old-space-size=256 --no-opt  --require foo.js'),
    ['--max-old-space-size=1024', '--no-opt'],
    'execArgv wins over NODE_OPTIONS for the same flag',
  );
  assert.deepEqual(v8FlagsOf(['--stack-size', '900', '--experimental-wasm-simd'], undefined), [
    '--experimental-wasm-simd',
    '--stack-size=900',
  ]);
  assert.deepEqual(
    v8FlagsOf(['--no-liftoff', '--liftoff'], undefined),
    ['--liftoff'],
    'the last one of a flag wins',
  );
  assert.deepEqual(
    v8FlagsOf(['--optimize-for-size', '--opt'], undefined),
    ['--opt'],
    'prefixes match whole words',
  );
});

// ---------------------------------------------------------------------------
// The handshake
// ---------------------------------------------------------------------------

test('the handshake agrees on one session: channel, key, start, facts; the stream flows only after the first ack', () => {
  const hs = backupHandshake({ start: { offset: 0, events: 0 } });
  const a = answerHello(hs.hello(), PRIMARY, () => offerFor(), nonceFrom(1));
  assert.ok(a.type === 'welcome');
  assert.equal(a.hello.vm, 'kv');
  assert.deepEqual(a.hello.facts, FACTS);
  const b = hs.onFrame(a.frame);
  assert.ok(b.type === 'welcome');
  assert.deepEqual(b.primaryFacts, FACTS);
  assert.equal(a.session.channel, b.session.channel);
  assert.equal(a.session.channel, ftChannelOf(sessionIdFrom(1)));
  assert.notEqual(a.session.channel, 0);
  assert.deepEqual(a.session.sessionKey, b.session.sessionKey);
  assert.notDeepEqual(a.session.sessionKey, KEY);
  assert.deepEqual(a.session.start, b.session.start);
  assert.equal(a.session.peer, 'b1');
  assert.equal(b.session.peer, 'p1');
  assert.equal(a.session.peerIncarnation, INC_B);
  assert.equal(b.session.peerIncarnation, INC_P);
  // Another nonce gives another key: the primary's half makes every session's key fresh.
  const a2 = answerHello(backupHandshake().hello(), PRIMARY, () => offerFor(), nonceFrom(2));
  assert.ok(a2.type === 'welcome');
  assert.notDeepEqual(a2.session.sessionKey, a.session.sessionKey);
  // A second answer to the same handshake is refused.
  assert.equal(hs.onFrame(a.frame).type, 'reject');
});

test('every refusal of a hello reaches the backup with its code and reason', () => {
  const cases: {
    name: string;
    code: FtRefuseCode;
    match: RegExp;
    hs?: BackupHandshake;
    lookup?: (vm: string) => PrimaryOffer | OfferRefusal;
    self?: FtEndpoint;
  }[] = [
    {
      name: 'a VM not served here',
      code: FtRefuseCode.VM,
      match: /not the primary of VM kv/,
      lookup: (vm) => ({ refuse: FtRefuseCode.VM, reason: `p1 is not the primary of VM ${vm}` }),
    },
    {
      name: 'another generation',
      code: FtRefuseCode.GENERATION,
      match: /generation 7, not 6/,
      hs: backupHandshake({ generation: 6 }),
    },
    {
      name: 'a host that is not the backup',
      code: FtRefuseCode.PEER,
      match: /backup is b2/,
      lookup: () => ({ ...offerFor(), backup: 'b2' }),
    },
    {
      name: 'an earlier incarnation of the backup',
      code: FtRefuseCode.PEER,
      match: /incarnation 1111111111111111\), not b1/,
      lookup: () => ({ ...offerFor(), backupIncarnation: '1111111111111111' }),
    },
    {
      name: 'a hello naming an earlier incarnation of the primary (a replayed connection)',
      code: FtRefuseCode.INCARNATION,
      match: /names incarnation 0123456789abcdef of p1, which is now 2222222222222222/,
      self: { ...PRIMARY, selfIncarnation: '2222222222222222' },
    },
    {
      name: 'another Node version',
      code: FtRefuseCode.JOIN,
      match: /Node version differs/,
      hs: backupHandshake({ backupFacts: { ...FACTS, nodeVersion: 'v22.0.0' } }),
    },
    {
      name: 'another CPU architecture',
      code: FtRefuseCode.JOIN,
      match: /CPU architecture differs/,
      hs: backupHandshake({ backupFacts: { ...FACTS, arch: 'arm64' } }),
    },
    {
      name: 'other V8 flags',
      code: FtRefuseCode.JOIN,
      match: /V8 flags differ/,
      hs: backupHandshake({ backupFacts: { ...FACTS, v8Flags: [] } }),
    },
    {
      name: 'a start the primary cannot give',
      code: FtRefuseCode.START,
      match: /only from offset 0/,
      hs: backupHandshake({ start: { offset: 5000, events: 40 } }),
      lookup: () => ({ ...offerFor(), startFrom: () => 'the log is kept only from offset 0' }),
    },
    {
      name: 'a busy VM',
      code: FtRefuseCode.BUSY,
      match: /already/,
      lookup: () => ({ refuse: FtRefuseCode.BUSY, reason: 'VM kv already has a live backup session' }),
    },
  ];
  for (const c of cases) {
    const hs = c.hs ?? backupHandshake();
    const a = answerHello(hs.hello(), c.self ?? PRIMARY, c.lookup ?? (() => offerFor()), nonceFrom(1));
    assert.equal(a.type, 'refuse', c.name);
    if (a.type !== 'refuse') continue;
    assert.equal(a.code, c.code, c.name);
    assert.match(a.reason, c.match, c.name);
    assert.equal(a.from, 'b1');
    // The refusal answers from the primary's current incarnation; the backup expects INC_P.
    if (c.self !== undefined) continue;
    const b = hs.onFrame(a.frame);
    assert.deepEqual(b, { type: 'refused', by: 'primary', code: c.code, reason: a.reason }, c.name);
  }
});

test('a hello of another protocol version is refused with VERSION', () => {
  const payload = encodeFtHello({
    sessionId: sessionIdFrom(3),
    vm: 'kv',
    generation: 7,
    primaryIncarnation: INC_P,
    start: { offset: 0, events: 0 },
    facts: FACTS,
  });
  payload[0] = 2;
  const hello = encodeFrame(
    {
      kind: FrameKind.FT_HELLO,
      clusterId: CLUSTER,
      from: 'b1',
      fromIncarnation: INC_B,
      to: 'p1',
      channel: ftChannelOf(sessionIdFrom(3)),
      seq: 0,
      payload,
    },
    KEY,
  );
  const a = answerHello(hello, PRIMARY, () => offerFor(), nonceFrom(1));
  assert.ok(a.type === 'refuse');
  assert.equal(a.code, FtRefuseCode.VERSION);
  assert.match(a.reason, /version 2/);
});

test('answerHello rejects, without answering, anything but an authentic hello', () => {
  const hs = backupHandshake();
  const hello = hs.hello();
  const flipped = Buffer.from(hello);
  flipped[60] = flipped[60]! ^ 1;
  const frameOf = (over: {
    kind?: number;
    seq?: number;
    channel?: number;
    payload?: Uint8Array;
    key?: Buffer;
  }): Buffer =>
    encodeFrame(
      {
        kind: over.kind ?? FrameKind.FT_HELLO,
        clusterId: CLUSTER,
        from: 'b1',
        fromIncarnation: INC_B,
        to: 'p1',
        channel: over.channel ?? ftChannelOf(sessionIdFrom(1)),
        seq: over.seq ?? 0,
        payload: over.payload ?? Uint8Array.of(1, 2, 3),
      },
      over.key ?? KEY,
    );
  const helloPayload = encodeFtHello({
    sessionId: sessionIdFrom(1),
    vm: 'kv',
    generation: 7,
    primaryIncarnation: INC_P,
    start: { offset: 0, events: 0 },
    facts: FACTS,
  });
  const cases: [string, Uint8Array, string][] = [
    ['garbage', Buffer.from('GET / HTTP/1.1\r\n\r\n'), 'magic'],
    ['a flipped bit', flipped, 'mac'],
    ['another key', frameOf({ key: Buffer.alloc(32, 1), payload: helloPayload }), 'mac'],
    ['an ack first', frameOf({ kind: FrameKind.FT_ACK }), 'kind'],
    ['a hello with seq 1', frameOf({ seq: 1, payload: helloPayload }), 'reorder'],
    ['a malformed payload', frameOf({}), 'payload'],
    [
      'a hello with trailing bytes',
      frameOf({ payload: Buffer.concat([helloPayload, Uint8Array.of(0)]) }),
      'payload',
    ],
    ['a hello on another channel', frameOf({ channel: 12345, payload: helloPayload }), 'channel'],
  ];
  for (const [name, buf, reason] of cases) {
    const a = answerHello(buf, PRIMARY, () => offerFor(), nonceFrom(1));
    assert.equal(a.type, 'reject', name);
    if (a.type === 'reject') assert.equal(a.reason, reason, name);
  }
});

test("the backup checks the primary's answer: sender, incarnation, session, facts and start", () => {
  const welcomeFrom = (
    hs: BackupHandshake,
    over: {
      from?: string;
      inc?: string;
      sessionId?: Buffer;
      vm?: string;
      facts?: HostFacts;
      start?: StreamPosition;
      seq?: number;
    },
  ): Buffer =>
    encodeFrame(
      {
        kind: FrameKind.FT_WELCOME,
        clusterId: CLUSTER,
        from: over.from ?? 'p1',
        fromIncarnation: over.inc ?? INC_P,
        to: 'b1',
        channel: hs.channel,
        seq: over.seq ?? 0,
        payload: encodeFtWelcome({
          sessionId: over.sessionId ?? sessionIdFrom(1),
          primaryNonce: nonceFrom(1),
          vm: over.vm ?? 'kv',
          generation: 7,
          start: over.start ?? { offset: 0, events: 0 },
          facts: over.facts ?? FACTS,
        }),
      },
      KEY,
    );
  const verdict = (over: Parameters<typeof welcomeFrom>[1]): string => {
    const hs = backupHandshake();
    const r = hs.onFrame(welcomeFrom(hs, over));
    return r.type === 'reject'
      ? `reject ${r.reason}`
      : r.type === 'refused'
        ? `refused ${r.by} ${r.code}`
        : 'welcome';
  };
  assert.equal(verdict({}), 'welcome');
  assert.equal(verdict({ from: 'p9' }), 'reject peer');
  assert.equal(verdict({ inc: '9999999999999999' }), 'reject incarnation');
  assert.equal(verdict({ sessionId: sessionIdFrom(2) }), 'reject session');
  assert.equal(verdict({ vm: 'other' }), 'reject session');
  assert.equal(verdict({ seq: 1 }), 'reject reorder');
  assert.equal(verdict({ facts: { ...FACTS, arch: 'riscv64' } }), `refused backup ${FtRefuseCode.JOIN}`);
  assert.equal(verdict({ start: { offset: 100, events: 3 } }), `refused backup ${FtRefuseCode.START}`);
  // A backup may accept another start when it says so.
  const hs = new BackupHandshake({
    key: KEY,
    clusterId: CLUSTER,
    self: 'b1',
    selfIncarnation: INC_B,
    facts: FACTS,
    primary: 'p1',
    primaryIncarnation: INC_P,
    vm: 'kv',
    generation: 7,
    start: { offset: 0, events: 0 },
    sessionId: sessionIdFrom(1),
    acceptStart: (offered) => offered.offset === 100,
  });
  const r = hs.onFrame(welcomeFrom(hs, { start: { offset: 100, events: 3 } }));
  assert.ok(r.type === 'welcome');
  assert.deepEqual(r.session.start, { offset: 100, events: 3 });
});

// ---------------------------------------------------------------------------
// The stream
// ---------------------------------------------------------------------------

/** The model of what was appended: every append's end and the events complete there. */
interface Model {
  bytes: Buffer[];
  ends: { end: number; events: number }[];
}

function eventsAt(m: Model, offset: number, startEvents: number): number {
  let e = startEvents;
  for (const x of m.ends) if (x.end <= offset) e = x.events;
  return e;
}

test('property: random appends, flushes, delays and ack timings arrive byte-exact, with exact event counts and acks never ahead', (t) => {
  t.diagnostic(`seed ${SEED}`);
  for (let run = 0; run < 60; run++) {
    const prng = new Prng(SEED, run);
    const frameBytesMax = prng.int(200, 4000);
    const flushDelayMs = prng.chance(0.3) ? 0 : prng.int(1, 20);
    const start = prng.chance(0.2)
      ? { offset: prng.int(1, 1000), events: prng.int(1, 50) }
      : { offset: 0, events: 0 };
    const { sender, receiver } = pair({
      n: run + 10,
      start,
      sender: {
        frameBytesMax,
        flushDelayMs,
        bufferBytesMax: prng.int(5000, 50000),
        framesInFlightMax: prng.int(1, 20),
      },
      receiver: { ackDelayMs: prng.chance(0.5) ? 0 : prng.int(1, 10), ackEveryBytes: prng.int(100, 20000) },
    });
    const where = `seed ${SEED} run ${run}`;
    const model: Model = { bytes: [], ends: [] };
    const got: Buffer[] = [];
    let events = start.events;
    let now = 0;
    const toReceiver: Buffer[] = [];
    const toSender: Buffer[] = [];
    let appended = start.offset;
    for (let step = 0; step < 400; step++) {
      now += prng.int(0, 3);
      const what = prng.int(0, 9);
      if (what <= 3) {
        const n = prng.chance(0.1) ? prng.int(frameBytesMax, 3 * frameBytesMax) : prng.int(1, 300);
        const completes = prng.chance(0.7);
        const b = bytesOf(prng, Math.min(n, sender.spaceBytes));
        if (b.byteLength === 0) continue;
        const r = sender.append(b, (completes ? ++events : events) - 1, now);
        assert.ok(r.ok, where);
        assert.equal(r.overHighWater, sender.bufferedBytes > sender.highWaterBytes);
        model.bytes.push(b);
        appended += b.byteLength;
        model.ends.push({ end: appended, events });
      } else if (what === 4) {
        if (prng.chance(0.5)) sender.flush();
        // The backup's replayer moves on, never past what it holds.
        else receiver.setReplayed(prng.int(receiver.replayedEventSeq, receiver.heldEventSeq), now);
      } else if (what <= 6) {
        for (let f = sender.pollFrame(now); f !== null; f = sender.pollFrame(now)) toReceiver.push(f);
      } else if (what === 7) {
        // The network delivers some frames; the receiver validates them and acks when due.
        for (let k = prng.int(0, toReceiver.length); k > 0; k--) {
          const r = receiver.onFrame(toReceiver.shift()!, now);
          assert.ok(r.ok, `${where}: ${!r.ok && r.detail}`);
          got.push(r.chunk.bytes);
          const end = r.chunk.offset + r.chunk.bytes.byteLength;
          assert.equal(
            r.chunk.lastEventSeq,
            eventsAt(model, end, start.events) - 1,
            `${where}: the frame's event count`,
          );
        }
        const ack = receiver.pollAck(now);
        if (ack !== null) toSender.push(ack);
      } else {
        for (let k = prng.int(0, toSender.length); k > 0; k--) {
          const r = sender.onFrame(toSender.shift()!, now);
          assert.ok(r.ok, `${where}: ${!r.ok && r.detail}`);
          assert.ok(sender.ackedBytes <= receiver.heldBytes, `${where}: an ack beyond what the backup holds`);
          assert.equal(sender.ackedEventSeq, eventsAt(model, sender.ackedBytes, start.events) - 1, where);
          assert.ok(sender.replayedEventSeq <= sender.ackedEventSeq, where);
          assert.ok(sender.replayedEventSeq <= receiver.replayedEventSeq, where);
        }
      }
      const lag = sender.lag(now);
      assert.equal(lag.bytes, appended - sender.ackedBytes, where);
      assert.equal(lag.events, events - 1 - sender.ackedEventSeq, where);
      assert.ok(lag.ms >= 0 && (lag.bytes > 0 || lag.ms === 0), where);
      assert.equal(lag.replayEvents, events - 1 - sender.replayedEventSeq, where);
      assert.ok(sender.bufferedBytes <= sender.bufferBytesMax, where);
      assert.ok(sender.framesInFlight <= sender.framesInFlightMax, where);
      // nextDeadlineMs is honest: when it says a frame is due, pollFrame has one (kept for delivery).
      const due = sender.nextDeadlineMs();
      if (due !== null && due <= now) {
        const f = sender.pollFrame(now);
        assert.ok(f !== null, `${where}: a deadline passed without a frame`);
        toReceiver.push(f);
      }
    }
    // Drain everything: flush, deliver, ack, until quiet.
    sender.flush();
    for (
      let round = 0;
      round < 10000 && (sender.ackedBytes < appended || sender.replayedEventSeq < events - 1);
      round++
    ) {
      now += 25;
      receiver.setReplayed(receiver.heldEventSeq, now);
      for (let f = sender.pollFrame(now); f !== null; f = sender.pollFrame(now)) toReceiver.push(f);
      while (toReceiver.length > 0) {
        const r = receiver.onFrame(toReceiver.shift()!, now);
        assert.ok(r.ok, where);
        got.push(r.chunk.bytes);
      }
      const ack = receiver.pollAck(now);
      if (ack !== null) toSender.push(ack);
      while (toSender.length > 0) assert.ok(sender.onFrame(toSender.shift()!, now).ok, where);
    }
    assert.equal(
      sender.ackedBytes,
      appended,
      `${where}: everything is acked in the end (${JSON.stringify({ sent: sender.sentBytes, inflight: sender.framesInFlight, held: receiver.heldBytes, acked: receiver.ackedBytes, failed: sender.failed, rfailed: receiver.failed })})`,
    );
    assert.equal(sender.ackedEventSeq, events - 1, where);
    assert.deepEqual(
      Buffer.concat(got),
      Buffer.concat(model.bytes),
      `${where}: the stream arrives byte-exact`,
    );
    assert.deepEqual(sender.lag(now), { events: 0, bytes: 0, ms: 0, replayEvents: 0 }, where);
  }
});

test('a record bigger than a frame crosses in pieces; only the last piece completes its event', () => {
  const { sender, receiver } = pair({ sender: { frameBytesMax: 1000 } });
  const data = 1000 - (78 + 2 + 2 + 16);
  assert.equal(sender.frameDataBytesMax, data);
  assert.ok(sender.append(Buffer.alloc(2 * data + 10, 7), 0, 0).ok);
  const frames = [sender.pollFrame(0), sender.pollFrame(0), sender.pollFrame(0), sender.pollFrame(0)];
  assert.equal(frames[3], null);
  const chunks = frames.slice(0, 3).map((f) => {
    const r = receiver.onFrame(f!, 0);
    assert.ok(r.ok);
    assert.ok(f!.byteLength <= 1000);
    return r.chunk;
  });
  assert.deepEqual(
    chunks.map((c) => [c.offset, c.bytes.byteLength, c.lastEventSeq]),
    [
      [0, data, -1],
      [data, data, -1],
      [2 * data, 10, 0],
    ],
  );
  // One ack covers the three pieces, and so event 0.
  const ack = receiver.pollAck(0)!;
  const r = sender.onFrame(ack, 0);
  assert.ok(r.ok && r.advanced);
  assert.equal(sender.ackedEventSeq, 0);
});

test('flushDelayMs: small appends wait to fill a frame, at most that long; a full frame or flush() goes at once', () => {
  const { sender } = pair({ sender: { frameBytesMax: 500, flushDelayMs: 10 } });
  sender.append(Buffer.alloc(50), 0, 100);
  assert.equal(sender.pollFrame(100), null);
  assert.equal(sender.nextDeadlineMs(), 110);
  sender.append(Buffer.alloc(50), 1, 105);
  assert.equal(sender.pollFrame(109), null);
  assert.equal(sender.nextDeadlineMs(), 110, 'the oldest waiting byte decides');
  const f = sender.pollFrame(110);
  assert.ok(f !== null);
  assert.equal(sender.sentBytes, 100);
  assert.equal(sender.nextDeadlineMs(), null);
  // A whole frame's worth goes at once.
  sender.append(Buffer.alloc(sender.frameDataBytesMax + 5), 2, 120);
  assert.ok(sender.pollFrame(120) !== null);
  assert.equal(sender.pollFrame(120), null, 'the 5-byte rest waits');
  assert.equal(sender.nextDeadlineMs(), 130);
  sender.flush();
  assert.ok(sender.pollFrame(121) !== null);
  assert.equal(sender.unsentBytes, 0);
});

test('lag in events, bytes and ms on the primary clock (injected)', () => {
  const { sender, receiver } = pair({ sender: { frameBytesMax: 1000 } });
  assert.deepEqual(sender.lag(0), { events: 0, bytes: 0, ms: 0, replayEvents: 0 });
  sender.append(Buffer.alloc(100), 0, 1000); // event 0 at t=1000
  sender.append(Buffer.alloc(100), 1, 1010); // event 1 at t=1010
  assert.deepEqual(
    sender.lag(1015),
    { events: 2, bytes: 200, ms: 15, replayEvents: 2 },
    'unsent bytes lag too',
  );
  const f1 = sender.pollFrame(1020)!; // carries both appends
  sender.append(Buffer.alloc(50), 1, 1030); // part of event 2, no event completes
  sender.append(Buffer.alloc(50), 2, 1040); // event 2 completes
  const f2 = sender.pollFrame(1040)!;
  assert.deepEqual(sender.lag(1050), { events: 3, bytes: 300, ms: 50, replayEvents: 3 });
  assert.ok(receiver.onFrame(f1, 1051).ok);
  receiver.setReplayed(0, 1051); // the backup has executed event 0
  assert.ok(sender.onFrame(receiver.pollAck(1051)!, 1060).ok);
  // The oldest unacked byte is the first of f2, appended at 1030.
  assert.deepEqual(sender.lag(1060), { events: 1, bytes: 100, ms: 30, replayEvents: 2 });
  assert.ok(receiver.onFrame(f2, 1061).ok);
  assert.ok(sender.onFrame(receiver.pollAck(1061)!, 1070).ok);
  assert.deepEqual(sender.lag(1070), { events: 0, bytes: 0, ms: 0, replayEvents: 2 });
  // Replay progress alone is reported, at most every replayReportMs (20 ms by default).
  receiver.setReplayed(1, 1075);
  assert.equal(receiver.pollAck(1075), null, 'the last ack went at 1061');
  assert.equal(receiver.nextDeadlineMs(), 1081);
  receiver.setReplayed(2, 1080);
  const progress = receiver.pollAck(1081)!;
  const pr = sender.onFrame(progress, 1082);
  assert.ok(pr.ok && !pr.advanced && pr.replayAdvanced && pr.replayedEventSeq === 2);
  assert.deepEqual(sender.lag(1082), { events: 0, bytes: 0, ms: 0, replayEvents: 0 });
  assert.equal(receiver.pollAck(2000), null, 'nothing new to say');
  assert.throws(() => receiver.setReplayed(3, 2000), /assertion: the replayer is at 3, past what is held/);
  assert.throws(() => receiver.setReplayed(1, 2000), /assertion: replay progress goes back/);
  // A clock that goes back is taken as the latest seen.
  sender.append(Buffer.alloc(1), 3, 2000);
  assert.deepEqual(sender.lag(1500), { events: 1, bytes: 1, ms: 0, replayEvents: 1 });
});

test('flow control: append refuses past bufferBytesMax, reports high water, and frames in flight are bounded', () => {
  const { sender, receiver } = pair({
    sender: { frameBytesMax: 300, bufferBytesMax: 1000, highWaterBytes: 600, framesInFlightMax: 2 },
  });
  let r = sender.append(Buffer.alloc(600), 0, 0);
  assert.deepEqual(r, { ok: true, bufferedBytes: 600, overHighWater: false });
  r = sender.append(Buffer.alloc(1), 1, 0);
  assert.deepEqual(r, { ok: true, bufferedBytes: 601, overHighWater: true });
  assert.equal(sender.spaceBytes, 399);
  r = sender.append(Buffer.alloc(400), 2, 0);
  assert.deepEqual(r, { ok: false, reason: 'buffer-full', spaceBytes: 399 });
  assert.equal(sender.appendedBytes, 601, 'a refused append changes nothing');
  const f1 = sender.pollFrame(0)!;
  const f2 = sender.pollFrame(0)!;
  assert.equal(sender.pollFrame(0), null, 'two frames in flight is the limit');
  assert.equal(sender.nextDeadlineMs(), null, 'it waits for an ack, not for time');
  assert.ok(receiver.onFrame(f1, 0).ok);
  assert.ok(receiver.onFrame(f2, 0).ok);
  const ack = sender.onFrame(receiver.pollAck(0)!, 0);
  assert.ok(ack.ok && ack.advanced);
  assert.ok(sender.pollFrame(0) !== null, 'an ack opens the window');
  assert.ok(sender.spaceBytes > 399);
  assert.throws(() => sender.append(Buffer.alloc(1), 0, 0), /assertion: lastEventSeq 0 goes back/);
  assert.throws(() => sender.append(Buffer.alloc(0), 5, 0), /assertion: an event completes only with bytes/);
  sender.close();
  assert.deepEqual(sender.append(Buffer.alloc(1), 2, 0), { ok: false, reason: 'closed', spaceBytes: 0 });
});

test('acks coalesce with ackDelayMs and ackEveryBytes, and never cover bytes not held', () => {
  const { sender, receiver } = pair({
    receiver: { ackDelayMs: 5, ackEveryBytes: 1000 },
    sender: { frameBytesMax: 400 },
  });
  sender.append(Buffer.alloc(100), 0, 0);
  assert.ok(receiver.onFrame(sender.pollFrame(0)!, 10).ok);
  assert.equal(receiver.pollAck(12), null, 'the ack waits up to 5 ms');
  assert.equal(receiver.nextDeadlineMs(), 15);
  sender.append(Buffer.alloc(100), 1, 13);
  assert.ok(receiver.onFrame(sender.pollFrame(13)!, 13).ok);
  const ack = receiver.pollAck(15);
  assert.ok(ack !== null, 'one ack covers both frames');
  const r = sender.onFrame(ack, 15);
  assert.ok(r.ok && r.ackedBytes === 200 && r.ackedEventSeq === 1);
  assert.equal(receiver.pollAck(100), null, 'nothing new, no ack');
  // ackEveryBytes sends at once.
  for (let i = 0; i < 5; i++) {
    sender.append(Buffer.alloc(sender.frameDataBytesMax), 2 + i, 20);
    assert.ok(receiver.onFrame(sender.pollFrame(20)!, 20).ok);
  }
  assert.ok(receiver.pollAck(20) !== null, 'over 1000 bytes waiting: ack at once');
  assert.equal(receiver.lastAck()!.offset, receiver.heldBytes);
});

test('many small appends waiting at once are merged: event counts only lag, the last is exact, lag in ms only grows', () => {
  const { sender, receiver } = pair({ sender: { frameBytesMax: 1000, flushDelayMs: 1e9 } });
  const n = 5000;
  for (let i = 0; i < n; i++) assert.ok(sender.append(Uint8Array.of(i & 0xff), i, i).ok);
  assert.deepEqual(sender.lag(n), { events: n, bytes: n, ms: n, replayEvents: n });
  const labels: [number, number][] = [];
  for (let f = sender.pollFrame(n); f !== null; f = sender.pollFrame(n)) {
    const r = receiver.onFrame(f, n);
    assert.ok(r.ok);
    const end = r.chunk.offset + r.chunk.bytes.byteLength;
    labels.push([end, r.chunk.lastEventSeq + 1]);
  }
  sender.flush();
  for (let f = sender.pollFrame(n); f !== null; f = sender.pollFrame(n)) {
    const r = receiver.onFrame(f, n);
    assert.ok(r.ok);
    labels.push([r.chunk.offset + r.chunk.bytes.byteLength, r.chunk.lastEventSeq + 1]);
  }
  // Each append of one byte completes one event, so the truth at offset x is x events.
  for (const [end, events] of labels) assert.ok(events <= end, `${events} events claimed at offset ${end}`);
  assert.deepEqual(labels[labels.length - 1], [n, n]);
  assert.ok(
    labels.some(([end, events]) => events < end),
    'some counts lagged behind (merged appends)',
  );
  assert.ok(sender.onFrame(receiver.pollAck(n)!, n).ok);
  assert.equal(sender.ackedEventSeq, n - 1);
});

// ---------------------------------------------------------------------------
// Bad input: each is rejected, and nothing changes
// ---------------------------------------------------------------------------

test('the receiver rejects garbage, forgeries, replays, reordering, other sessions and VMs, and bad offsets, changing nothing', () => {
  const base = (): { sender: LogSender; receiver: LogReceiver; bs: FtSession; frames: Buffer[] } => {
    const p = pair({ sender: { frameBytesMax: 300 } });
    p.sender.append(Buffer.alloc(500, 1), 0, 0);
    const frames: Buffer[] = [];
    for (let f = p.sender.pollFrame(0); f !== null; f = p.sender.pollFrame(0)) frames.push(f);
    assert.equal(frames.length, 3);
    assert.ok(p.receiver.onFrame(frames[0]!, 0).ok);
    return { ...p, frames };
  };
  // Frames of another session: the same hosts, the same VM (an earlier connection), and another VM.
  const other = pair({ n: 99, sender: { frameBytesMax: 300 } });
  other.sender.append(Buffer.alloc(500, 2), 0, 0);
  other.sender.pollFrame(0);
  const otherSessionSecond = other.sender.pollFrame(0)!;
  const otherVm = pair({ n: 98, vm: 'other-vm', sender: { frameBytesMax: 300 } });
  otherVm.sender.append(Buffer.alloc(500, 3), 0, 0);
  otherVm.sender.pollFrame(0);
  const otherVmSecond = otherVm.sender.pollFrame(0)!;

  const cases: [string, (b: ReturnType<typeof base>) => Buffer, string][] = [
    [
      'garbage',
      () =>
        Buffer.from(
          '\x00\x01garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage garbage',
        ),
      'magic',
    ],
    [
      'a flipped payload bit',
      (b) => {
        const f = Buffer.from(b.frames[1]!);
        f[150] = f[150]! ^ 0x10;
        return f;
      },
      'mac',
    ],
    ['a truncated frame', (b) => b.frames[1]!.subarray(0, 200), 'short'],
    ['a replayed frame', (b) => b.frames[0]!, 'replay'],
    ['a reordered frame', (b) => b.frames[2]!, 'reorder'],
    ['a frame of an earlier session of the same VM', () => otherSessionSecond, 'mac'],
    ['a frame of another VM', () => otherVmSecond, 'mac'],
    [
      'a frame from another host with the key',
      (b) =>
        forge(b.bs, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 202, events: 0, data: Buffer.alloc(1) }), {
          from: 'p2',
        }),
      'peer',
    ],
    [
      'a frame from another incarnation',
      (b) =>
        forge(b.bs, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 202, events: 0, data: Buffer.alloc(1) }), {
          fromIncarnation: '5555555555555555',
        }),
      'incarnation',
    ],
    [
      'a frame on another channel',
      (b) =>
        forge(b.bs, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 202, events: 0, data: Buffer.alloc(1) }), {
          channel: 77,
        }),
      'channel',
    ],
    [
      'an ack sent to the backup',
      (b) => forge(b.bs, FrameKind.FT_ACK, 2, encodeFtAck({ offset: 0, events: 0, replayed: 0 })),
      'kind',
    ],
    ['an empty FT_LOG', (b) => forge(b.bs, FrameKind.FT_LOG, 2, Buffer.alloc(16)), 'payload'],
    [
      'an FT_LOG with a gap',
      (b) => forge(b.bs, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 999, events: 0, data: Buffer.alloc(1) })),
      'offset',
    ],
    [
      'an FT_LOG that overlaps',
      (b) => forge(b.bs, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 10, events: 0, data: Buffer.alloc(1) })),
      'offset',
    ],
  ];
  for (const [name, make, reason] of cases) {
    const b = base();
    const held = b.receiver.heldBytes;
    const heldSeq = b.receiver.heldEventSeq;
    const r = b.receiver.onFrame(make(b), 1);
    assert.ok(!r.ok, name);
    assert.equal(r.reason, reason, `${name}: ${r.detail}`);
    assert.ok(r.detail.length > 0);
    assert.equal(b.receiver.heldBytes, held, `${name}: nothing delivered`);
    assert.equal(b.receiver.heldEventSeq, heldSeq, name);
    assert.ok(b.receiver.failed !== null);
    // The failed receiver takes nothing more, not even the genuine next frame, and acks nothing.
    const next = b.receiver.onFrame(b.frames[1]!, 2);
    assert.ok(!next.ok && next.reason === 'closed', name);
    assert.equal(b.receiver.heldBytes, held, name);
  }
  // Events going backwards need a frame with a later event count first.
  const p = pair();
  const s = p.bs;
  assert.ok(
    p.receiver.onFrame(
      forge(s, FrameKind.FT_LOG, 1, encodeFtLog({ offset: 0, events: 5, data: Buffer.alloc(3) })),
      0,
    ).ok,
  );
  const back = p.receiver.onFrame(
    forge(s, FrameKind.FT_LOG, 2, encodeFtLog({ offset: 3, events: 4, data: Buffer.alloc(3) })),
    0,
  );
  assert.ok(!back.ok && back.reason === 'events');
  assert.equal(p.receiver.heldBytes, 3);
});

test('the sender rejects acks of unsent bytes, backwards, off a frame boundary, with wrong events, replayed or malformed', () => {
  const base = (): { sender: LogSender; receiver: LogReceiver; ps: FtSession; bs: FtSession } => {
    const p = pair({ sender: { frameBytesMax: 300 } });
    p.sender.append(Buffer.alloc(200), 0, 0);
    p.sender.append(Buffer.alloc(300), 1, 0);
    for (let f = p.sender.pollFrame(0); f !== null; f = p.sender.pollFrame(0))
      assert.ok(p.receiver.onFrame(f, 0).ok);
    // 202 log bytes fit a 300-byte frame: frames end at 202 (events 1), 404 (events 1) and 500 (events 2).
    assert.equal(p.sender.frameDataBytesMax, 202);
    const first = forge(p.ps, FrameKind.FT_ACK, 2, encodeFtAck({ offset: 202, events: 1, replayed: 0 }));
    assert.ok(p.sender.onFrame(first, 0).ok);
    return p;
  };
  const cases: [string, (ps: FtSession) => Buffer, string][] = [
    [
      'an ack of bytes never sent',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 501, events: 2, replayed: 0 })),
      'ack-unsent',
    ],
    [
      'an ack going backwards',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 100, events: 0, replayed: 0 })),
      'ack-backwards',
    ],
    [
      'an ack off a frame boundary',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 400, events: 1, replayed: 0 })),
      'ack-boundary',
    ],
    [
      'an ack claiming more events than its bytes',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 404, events: 2, replayed: 0 })),
      'events',
    ],
    [
      'a repeated ack with other events',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 202, events: 2, replayed: 0 })),
      'events',
    ],
    [
      'a replayed ack',
      (ps) => forge(ps, FrameKind.FT_ACK, 2, encodeFtAck({ offset: 202, events: 1, replayed: 0 })),
      'replay',
    ],
    [
      'a reordered ack',
      (ps) => forge(ps, FrameKind.FT_ACK, 4, encodeFtAck({ offset: 500, events: 2, replayed: 0 })),
      'reorder',
    ],
    ['a malformed ack', (ps) => forge(ps, FrameKind.FT_ACK, 3, Buffer.alloc(15)), 'payload'],
    [
      'an ack claiming more replayed than held',
      (ps) => forge(ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 500, events: 2, replayed: 3 })),
      'events',
    ],
    [
      'a log frame sent to the primary',
      (ps) => forge(ps, FrameKind.FT_LOG, 3, encodeFtLog({ offset: 0, events: 0, data: Buffer.alloc(1) })),
      'kind',
    ],
    ['garbage', () => Buffer.alloc(100, 0x4c), 'magic'],
  ];
  for (const [name, make, reason] of cases) {
    const p = base();
    const r = p.sender.onFrame(make(p.ps), 1);
    assert.ok(!r.ok, name);
    assert.equal(r.reason, reason, `${name}: ${r.detail}`);
    assert.equal(p.sender.ackedBytes, 202, `${name}: nothing acked`);
    assert.equal(p.sender.ackedEventSeq, 0, name);
    assert.equal(p.sender.pollFrame(1), null, `${name}: a failed sender sends nothing`);
  }
  // A right ack of the rest is accepted (the receiver holds it all).
  const p = base();
  assert.equal(p.receiver.heldBytes, 500);
  const ok = p.sender.onFrame(
    forge(p.ps, FrameKind.FT_ACK, 3, encodeFtAck({ offset: 500, events: 2, replayed: 0 })),
    0,
  );
  assert.ok(ok.ok && ok.advanced && ok.ackedBytes === 500 && ok.ackedEventSeq === 1);
  // A repeated ack of the same position (same events) is harmless: it advances nothing.
  const again = forge(p.ps, FrameKind.FT_ACK, 4, encodeFtAck({ offset: 500, events: 2, replayed: 0 }));
  const same = p.sender.onFrame(again, 0);
  assert.ok(same.ok && !same.advanced);
});

test('the planted bug ackBeforeReceipt acknowledges bytes the backup does not hold (and the sender cannot tell)', () => {
  for (const bug of [false, true]) {
    const { sender, receiver } = pair({
      sender: { frameBytesMax: 300 },
      receiver: { ackBeforeReceipt: bug },
    });
    sender.append(Buffer.alloc(200, 9), 0, 0);
    const f = sender.pollFrame(0)!;
    // The frame comes off the wire; before it is validated or held, an ack is asked for.
    receiver.onArrival(f, 0);
    const early = receiver.pollAck(0);
    if (!bug) {
      assert.equal(early, null, 'a correct receiver has nothing to ack before receipt');
      continue;
    }
    assert.ok(early !== null);
    assert.equal(receiver.heldBytes, 0, 'nothing is held yet');
    const r = sender.onFrame(early, 0);
    assert.ok(r.ok && r.advanced);
    assert.equal(sender.ackedBytes, 200, 'the primary believes the backup holds 200 bytes');
    assert.equal(sender.ackedEventSeq, 0, 'and releases event 0');
    assert.ok(sender.ackedBytes > receiver.heldBytes, 'an ack of bytes not received');
    // Even a frame that then fails validation was acknowledged.
    sender.append(Buffer.alloc(50), 1, 0);
    const g = Buffer.from(sender.pollFrame(0)!);
    g[g.byteLength - 40] = g[g.byteLength - 40]! ^ 1; // damaged in transit
    assert.ok(receiver.onFrame(f, 0).ok);
    receiver.onArrival(g, 0);
    const bad = receiver.pollAck(0)!;
    assert.ok(sender.onFrame(bad, 0).ok);
    assert.equal(sender.ackedEventSeq, 1);
    const r2 = receiver.onFrame(g, 0);
    assert.ok(!r2.ok && r2.reason === 'mac');
    assert.equal(receiver.heldBytes, 200, 'event 1 never arrived, yet it was acknowledged');
  }
});

// ---------------------------------------------------------------------------
// FrameSplitter
// ---------------------------------------------------------------------------

test('FrameSplitter reassembles frames from a stream cut anywhere, and refuses non-frames and oversized frames', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const prng = new Prng(SEED, 1000);
  const { sender } = pair({ sender: { frameBytesMax: 5000 } });
  const frames: Buffer[] = [];
  for (let i = 0; i < 40; i++) {
    sender.append(bytesOf(prng, prng.int(1, 6000)), i, 0);
    for (let f = sender.pollFrame(0); f !== null; f = sender.pollFrame(0)) frames.push(f);
  }
  const stream = Buffer.concat(frames);
  const s = new FrameSplitter();
  const out: Buffer[] = [];
  for (let at = 0; at < stream.byteLength;) {
    const n = prng.chance(0.3) ? prng.int(1, 10) : prng.int(1, 3000);
    s.push(stream.subarray(at, at + n));
    at += n;
    for (let r = s.next(); r.type !== 'more'; r = s.next()) {
      assert.ok(r.type === 'frame', `seed ${SEED}`);
      out.push(Buffer.from(r.frame));
    }
  }
  assert.equal(s.bufferedBytes, 0);
  assert.deepEqual(out, frames);
  const bad = new FrameSplitter();
  bad.push(Buffer.from('HTTP/1.1 200 OK\r\n'));
  assert.deepEqual(bad.next(), { type: 'bad', reason: 'magic' });
  const small = new FrameSplitter(1000);
  const largest = frames.reduce((a, b) => (b.byteLength > a.byteLength ? b : a));
  assert.ok(largest.byteLength > 1000);
  small.push(largest.subarray(0, 100));
  assert.deepEqual(small.next(), { type: 'bad', reason: 'too-big' }, 'known from the header alone');
  assert.throws(() => new FrameSplitter(FRAME_BYTES_MAX + 1), /assertion/);
});
