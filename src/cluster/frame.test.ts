// Tests of host-to-host frames (frame.ts): the exact bytes of a frame, every
// rejection reason, fuzzing with random bytes and with every single-bit flip
// and truncation of valid frames (all must be refused, none may throw), the
// stream framing of peekFrameLength, the replay window against a naive model,
// the heartbeat payload, a frame's trip through a real UDP socket (PeerUdp),
// and the FT logging channel's payloads (exact bytes, truncations, fuzzing).
//
// The randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import {
  FRAME_BYTES_MAX,
  FRAME_BYTES_MIN,
  FRAME_PAYLOAD_BYTES_MAX,
  FrameKind,
  HEARTBEAT_CHANNEL,
  REPLAY_WINDOW,
  ReplayGuard,
  decodeFrame,
  decodeHeartbeat,
  encodeFrame,
  encodeHeartbeat,
  peekFrameLength,
  type Frame,
  type ReplayVerdict,
} from './frame.js';
import {
  FT_FLAGS_MAX,
  FT_REASON_BYTES_MAX,
  FT_VERSION,
  FtRefuseCode,
  decodeFtAck,
  decodeFtHello,
  decodeFtLog,
  decodeFtRefuse,
  decodeFtWelcome,
  encodeFtAck,
  encodeFtHello,
  encodeFtLog,
  encodeFtRefuse,
  encodeFtWelcome,
  ftChannelOf,
  ftSessionKey,
  type FtHello,
  type FtWelcome,
} from './frame.js';
import { Prng, testSeed } from '../core/prng.js';
import { PeerUdp, parseHostPort } from '../io/peer-udp.js';

const SEED = testSeed();
const KEY = Buffer.alloc(32, 0x5a);
const CLUSTER = '00112233445566778899aabbccddeeff';
const INC = '0123456789abcdef';
const EXPECT = { clusterId: CLUSTER, self: 'h2' };

function frame(over: Partial<Frame> = {}): Frame {
  return {
    kind: FrameKind.HEARTBEAT,
    clusterId: CLUSTER,
    from: 'h1',
    fromIncarnation: INC,
    to: 'h2',
    channel: HEARTBEAT_CHANNEL,
    seq: 7,
    payload: Uint8Array.of(1, 2, 3),
    ...over,
  };
}

function reason(buf: Uint8Array, expect = EXPECT, key: Uint8Array = KEY): string {
  const d = decodeFrame(buf, key, expect);
  return d.ok ? 'ok' : d.reason;
}

test('a frame has the documented bytes and round-trips', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const f = frame({ seq: 0x1_0000_0002, channel: 0x01020304 });
  const b = encodeFrame(f, KEY);
  const expectedHead = Buffer.concat([
    Buffer.from([0x4c, 0x53, 1, 1]),
    Buffer.from(CLUSTER, 'hex'),
    Buffer.from([2]),
    Buffer.from('h1'),
    Buffer.from(INC, 'hex'),
    Buffer.from([2]),
    Buffer.from('h2'),
    Buffer.from([0x04, 0x03, 0x02, 0x01]),
    Buffer.from([0x02, 0, 0, 0, 0x01, 0, 0, 0]),
    Buffer.from([3, 0, 0, 0]),
    Buffer.from([1, 2, 3]),
  ]);
  assert.deepEqual(b.subarray(0, expectedHead.length), expectedHead);
  assert.equal(b.length, expectedHead.length + 32);
  assert.equal(b.length, FRAME_BYTES_MIN + 2 + 3);
  const mac = createHmac('sha256', KEY).update(expectedHead).digest();
  assert.deepEqual(b.subarray(expectedHead.length), mac);

  const d = decodeFrame(b, KEY, EXPECT);
  assert.ok(d.ok);
  assert.deepEqual({ ...d.frame, payload: [...d.frame.payload] }, { ...f, payload: [1, 2, 3] });
  // The payload is a copy: the receive buffer may be reused.
  b.fill(0);
  assert.deepEqual([...d.frame.payload], [1, 2, 3]);
});

test('edge values round-trip: long UTF-8 names, the largest seq and channel, upper-case hex', () => {
  const from = 'é'.repeat(31) + 'x'; // 63 bytes
  const f = frame({
    from,
    to: 'h2',
    seq: Number.MAX_SAFE_INTEGER,
    channel: 0xffffffff,
    kind: 255,
    fromIncarnation: 'ABCDEF0123456789',
    clusterId: CLUSTER.toUpperCase(),
  });
  const d = decodeFrame(encodeFrame(f, KEY), KEY, EXPECT);
  assert.ok(d.ok);
  assert.equal(d.frame.from, from);
  assert.equal(d.frame.seq, Number.MAX_SAFE_INTEGER);
  assert.equal(d.frame.channel, 0xffffffff);
  assert.equal(d.frame.fromIncarnation, 'abcdef0123456789');
  assert.equal(d.frame.clusterId, CLUSTER);
  // A BOM at the start of a name survives (the decoder must not strip it).
  const bom = decodeFrame(encodeFrame(frame({ from: '\ufeffh1' }), KEY), KEY, EXPECT);
  assert.ok(bom.ok);
  assert.equal(bom.frame.from, '\ufeffh1');
});

test('encodeFrame refuses what it cannot encode (a caller bug: assertion)', () => {
  const bad: Partial<Frame>[] = [
    { kind: 0 },
    { kind: 256 },
    { from: '' },
    { to: 'x'.repeat(64) },
    { fromIncarnation: '0123' },
    { clusterId: 'zz' },
    { channel: -1 },
    { channel: 2 ** 32 },
    { seq: -1 },
    { seq: 2 ** 53 },
    { seq: 1.5 },
    { payload: new Uint8Array(FRAME_PAYLOAD_BYTES_MAX + 1) },
  ];
  for (const over of bad)
    assert.throws(() => encodeFrame(frame(over), KEY), /assertion/, JSON.stringify(over));
  assert.throws(() => encodeFrame(frame(), Buffer.alloc(8)), /assertion/);
  assert.throws(
    () => decodeFrame(encodeFrame(frame(), KEY), KEY, { clusterId: 'x', self: 'h2' }),
    /assertion/,
  );
  // The largest payload fits with the longest names.
  const big = encodeFrame(
    frame({ from: 'a'.repeat(63), to: 'b'.repeat(63), payload: new Uint8Array(FRAME_PAYLOAD_BYTES_MAX) }),
    KEY,
  );
  assert.equal(big.length, FRAME_BYTES_MAX);
  assert.equal(reason(big, { clusterId: CLUSTER, self: 'b'.repeat(63) }), 'ok');
});

test('every rejection reason', () => {
  const good = encodeFrame(frame(), KEY);
  assert.equal(reason(good), 'ok');
  assert.equal(reason(new Uint8Array(0)), 'short');
  assert.equal(reason(good.subarray(0, good.length - 1)), 'short');
  assert.equal(reason(Buffer.from('garbage that is not a frame at all')), 'magic');
  const v2 = Buffer.from(good);
  v2[2] = 2;
  assert.equal(reason(v2), 'version');
  assert.equal(reason(good, EXPECT, Buffer.alloc(32, 1)), 'mac');
  assert.equal(reason(good, { clusterId: 'ffffffffffffffffffffffffffffffff', self: 'h2' }), 'cluster');
  assert.equal(reason(good, { clusterId: CLUSTER, self: 'h3' }), 'not-for-me');
  assert.equal(reason(new Uint8Array(FRAME_BYTES_MAX + 1)), 'too-big');
  assert.equal(reason(Buffer.concat([good, Buffer.of(0)])), 'malformed');
  // A zero-length name is malformed before anything is authenticated.
  const noName = Buffer.from(good);
  noName[20] = 0;
  assert.equal(reason(noName), 'malformed');
  // An authenticated frame with impossible values (a peer's bug) is refused too.
  const reMac = (b: Buffer): Buffer => {
    createHmac('sha256', KEY)
      .update(b.subarray(0, b.length - 32))
      .digest()
      .copy(b, b.length - 32);
    return b;
  };
  const kind0 = Buffer.from(good);
  kind0[3] = 0;
  assert.equal(reason(reMac(kind0)), 'malformed');
  const badUtf8 = Buffer.from(good);
  badUtf8[21] = 0xff;
  assert.equal(reason(reMac(badUtf8)), 'malformed');
  const hugeSeq = Buffer.from(good);
  hugeSeq.writeUInt32LE(2 ** 21, 21 + 2 + 8 + 1 + 2 + 4 + 4);
  assert.equal(reason(reMac(hugeSeq)), 'malformed');
});

test('a header claiming a huge payload is refused before anything is allocated', () => {
  const good = encodeFrame(frame(), KEY);
  const payloadLenAt = 21 + 2 + 8 + 1 + 2 + 4 + 8;
  for (const claimed of [FRAME_BYTES_MAX, 0xffffffff, 0x80000000]) {
    const b = Buffer.from(good);
    b.writeUInt32LE(claimed, payloadLenAt);
    assert.equal(reason(b), 'too-big', String(claimed));
    assert.deepEqual(peekFrameLength(b), { ok: false, reason: 'too-big' });
  }
});

test('fuzz: random bytes never decode and never throw', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const rng = new Prng(SEED, 1);
  const good = encodeFrame(frame(), KEY);
  for (let i = 0; i < 20_000; i++) {
    const n = rng.int(0, 200);
    const b = new Uint8Array(n);
    for (let j = 0; j < n; j++) b[j] = rng.int(0, 255);
    // Half the cases start like a frame, so the fuzzing reaches past the magic and version.
    if (rng.chance(0.5)) b.set(good.subarray(0, Math.min(n, rng.int(0, 24))));
    const d = decodeFrame(b, KEY, EXPECT);
    assert.equal(d.ok, false, `seed ${SEED}: random bytes decoded: ${Buffer.from(b).toString('hex')}`);
    const p = peekFrameLength(b);
    if (p.ok) assert.ok(p.frameBytes >= FRAME_BYTES_MIN && p.frameBytes <= FRAME_BYTES_MAX);
  }
});

test('every single-bit flip and every truncation of a valid frame is refused', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const rng = new Prng(SEED, 2);
  const payload = new Uint8Array(rng.int(0, 40));
  for (let i = 0; i < payload.length; i++) payload[i] = rng.int(0, 255);
  const good = encodeFrame(frame({ payload, seq: rng.int(0, 2 ** 40) }), KEY);
  const seen = new Map<string, number>();
  for (let bit = 0; bit < good.length * 8; bit++) {
    const b = Buffer.from(good);
    b[bit >> 3]! ^= 1 << (bit & 7);
    const r = reason(b);
    assert.notEqual(r, 'ok', `seed ${SEED}: flip of bit ${bit} was accepted`);
    seen.set(r, (seen.get(r) ?? 0) + 1);
  }
  for (let n = 0; n < good.length; n++) {
    assert.notEqual(reason(good.subarray(0, n)), 'ok', `truncation to ${n} bytes was accepted`);
  }
  t.diagnostic(`bit flips by reason: ${JSON.stringify(Object.fromEntries(seen))}`);
  for (const r of ['magic', 'version', 'cluster', 'mac']) assert.ok(seen.has(r), `some flip gives ${r}`);
});

test('peekFrameLength reassembles frames from a byte stream cut anywhere', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const rng = new Prng(SEED, 3);
  const frames: Buffer[] = [];
  for (let i = 0; i < 50; i++) {
    const payload = new Uint8Array(rng.int(0, 3000)).fill(i);
    frames.push(encodeFrame(frame({ seq: i, channel: 9, payload, from: `host-${i}` }), KEY));
  }
  const stream = Buffer.concat(frames);
  let pending = Buffer.alloc(0);
  const got: number[] = [];
  for (let at = 0; at < stream.length;) {
    const n = Math.min(stream.length - at, rng.int(1, 700));
    pending = Buffer.concat([pending, stream.subarray(at, at + n)]);
    at += n;
    for (;;) {
      const p = peekFrameLength(pending);
      if (!p.ok) {
        assert.equal(p.reason, 'short');
        break;
      }
      if (pending.length < p.frameBytes) break;
      const d = decodeFrame(pending.subarray(0, p.frameBytes), KEY, EXPECT);
      assert.ok(d.ok, `seed ${SEED}`);
      got.push(d.frame.seq);
      pending = pending.subarray(p.frameBytes);
    }
  }
  assert.deepEqual(
    got,
    frames.map((_, i) => i),
  );
  assert.equal(pending.length, 0);
  assert.deepEqual(peekFrameLength(Buffer.from('GET / HTTP/1.1')), { ok: false, reason: 'magic' });
});

/** The obvious model of the replay window: every seq ever accepted, and the highest. */
class NaiveGuard {
  private seen = new Set<number>();
  private highest = -1;
  accept(seq: number): ReplayVerdict {
    if (this.seen.has(seq) || seq <= this.highest - REPLAY_WINDOW) return 'replay';
    this.seen.add(seq);
    this.highest = Math.max(this.highest, seq);
    return 'ok';
  }
}

test('the replay window agrees with a naive model over random reordered and duplicated streams', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const rng = new Prng(SEED, 4);
  for (let run = 0; run < 300; run++) {
    const g = new ReplayGuard();
    g.setIncarnation('h1', INC);
    const model = new NaiveGuard();
    let next = rng.int(0, 2 ** 33);
    const spread = rng.int(1, 150);
    for (let i = 0; i < 400; i++) {
      let seq: number;
      const r = rng.next();
      if (r < 0.5) seq = next++;
      else if (r < 0.9) seq = Math.max(0, next - rng.int(1, spread));
      else seq = next + rng.int(0, spread);
      assert.equal(
        g.accept('h1', INC, 3, seq),
        model.accept(seq),
        `seed ${SEED} run ${run} step ${i} seq ${seq}`,
      );
    }
  }
});

test('the replay guard: incarnations, channels, unknown peers and bounds', () => {
  const g = new ReplayGuard(2);
  assert.equal(g.accept('h1', INC, 0, 1), 'stale-incarnation', 'an unknown peer has no current incarnation');
  g.setIncarnation('h1', INC.toUpperCase());
  assert.equal(g.incarnationOf('h1'), INC);
  assert.equal(g.accept('h1', INC, 0, 5), 'ok');
  assert.equal(g.accept('h1', INC, 0, 5), 'replay');
  assert.equal(g.accept('h1', INC, 0, 4), 'ok', 'reordered, within the window');
  assert.equal(g.accept('h1', INC, 1, 5), 'ok', 'channels count separately');
  assert.equal(g.accept('h1', INC, 2, 0), 'channels-full');
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 100), 'stale-incarnation');
  // The same incarnation again keeps the windows; a new one starts afresh.
  g.setIncarnation('h1', INC);
  assert.equal(g.accept('h1', INC, 0, 5), 'replay');
  g.setIncarnation('h1', 'ffffffffffffffff');
  assert.equal(g.accept('h1', INC, 0, 6), 'stale-incarnation', 'frames of the old incarnation are refused');
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 0), 'ok');
  // Far ahead, then exactly at the window's edge.
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 1000), 'ok');
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 1000 - REPLAY_WINDOW), 'replay');
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 1000 - REPLAY_WINDOW + 1), 'ok');
  g.forget('h1');
  assert.equal(g.accept('h1', 'ffffffffffffffff', 0, 2000), 'stale-incarnation');

  g.syncRegistry(
    [
      { name: 'h1', incarnation: INC, state: 'up' },
      { name: 'h2', incarnation: INC, state: 'left' },
      { name: 'me', incarnation: INC, state: 'up' },
    ],
    'me',
  );
  assert.equal(g.incarnationOf('h1'), INC);
  assert.equal(g.incarnationOf('h2'), null);
  assert.equal(g.incarnationOf('me'), null);
  g.syncRegistry([]);
  assert.equal(g.incarnationOf('h1'), null);
});

test('the heartbeat payload: 16 bytes, -1 for no echo, garbage refused', () => {
  const a = encodeHeartbeat({ sentMs: 1234.5, echoMs: null });
  assert.equal(a.length, 16);
  assert.equal(a.readDoubleLE(8), -1);
  assert.deepEqual(decodeHeartbeat(a), { sentMs: 1234.5, echoMs: null });
  assert.deepEqual(decodeHeartbeat(encodeHeartbeat({ sentMs: 0, echoMs: 0 })), { sentMs: 0, echoMs: 0 });
  assert.equal(decodeHeartbeat(new Uint8Array(15)), null);
  assert.equal(decodeHeartbeat(new Uint8Array(17)), null);
  const nan = Buffer.alloc(16);
  nan.writeDoubleLE(NaN, 0);
  assert.equal(decodeHeartbeat(nan), null);
  const neg = Buffer.alloc(16);
  neg.writeDoubleLE(-5, 0);
  assert.equal(decodeHeartbeat(neg), null);
  const inf = Buffer.alloc(16);
  inf.writeDoubleLE(Infinity, 8);
  assert.equal(decodeHeartbeat(inf), null);
  assert.throws(() => encodeHeartbeat({ sentMs: -1, echoMs: null }), /assertion/);
  assert.throws(() => encodeHeartbeat({ sentMs: 1, echoMs: NaN }), /assertion/);
});

test('a frame crosses a real UDP socket; send errors are counted, not thrown; big datagrams are dropped', async () => {
  const a = await PeerUdp.bind('127.0.0.1', 0);
  const b = await PeerUdp.bind('127.0.0.1', 0, { datagramBytesMax: 200 });
  try {
    const got: Buffer[] = [];
    const arrived = new Promise<void>((resolve) =>
      b.onDatagram((buf, rinfo) => {
        assert.equal(rinfo.address, '127.0.0.1');
        assert.equal(rinfo.port, a.address().port);
        got.push(buf);
        resolve();
      }),
    );
    const bAddr = b.address();
    assert.equal(bAddr.host, '127.0.0.1');
    assert.ok(bAddr.port > 0);
    a.send(new Uint8Array(500), bAddr.host, bAddr.port); // over b's limit: dropped
    const msg = encodeHeartbeat({ sentMs: 10, echoMs: 3 });
    a.send(encodeFrame(frame({ payload: msg }), KEY), bAddr.host, bAddr.port);
    await arrived;
    const d = decodeFrame(got[0]!, KEY, EXPECT);
    assert.ok(d.ok);
    assert.deepEqual(decodeHeartbeat(d.frame.payload), { sentMs: 10, echoMs: 3 });
    assert.equal(b.stats().datagramsTooBig, 1);
    assert.equal(b.stats().datagramsReceived, 1);

    a.send(Buffer.of(1), bAddr.host, 0); // a bad port: dgram throws synchronously
    a.send(Buffer.of(1), '::1', bAddr.port); // an IPv6 address from a udp4 socket
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(a.stats().sendErrors >= 2, JSON.stringify(a.stats()));
    assert.ok(a.stats().lastError !== null);
  } finally {
    await a.close();
    await b.close();
    await a.close(); // idempotent
  }
  a.send(Buffer.of(1), '127.0.0.1', 9); // after close: counted
  assert.ok(a.stats().sendErrors >= 3);
  await assert.rejects(PeerUdp.bind('192.0.2.1', 0), 'binding an address that is not local fails');
});

test('parseHostPort', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:4000'), { host: '127.0.0.1', port: 4000 });
  assert.deepEqual(parseHostPort('[::1]:4000'), { host: '::1', port: 4000 });
  assert.deepEqual(parseHostPort('localhost:1'), { host: 'localhost', port: 1 });
  for (const bad of ['127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', '::1:4000', '[nothex]:1', ':80', 'a:b']) {
    assert.equal(parseHostPort(bad), null, bad);
  }
});

// ---------------------------------------------------------------------------
// The FT logging channel's payloads (docs/FT-CHANNEL.md)
// ---------------------------------------------------------------------------

const FT_FACTS = { nodeVersion: 'v20.15.0', arch: 'x64', v8Flags: ['--max-old-space-size=512', '--no-opt'] };
const FT_HELLO: FtHello = {
  sessionId: Buffer.alloc(16, 0xa1),
  vm: 'kv',
  generation: 0x1_0000_0003,
  primaryIncarnation: INC,
  start: { offset: 12, events: 1 },
  facts: FT_FACTS,
};
const FT_WELCOME: FtWelcome = {
  sessionId: Buffer.alloc(16, 0xa1),
  primaryNonce: Buffer.alloc(16, 0xb2),
  vm: 'kv',
  generation: 3,
  start: { offset: 12, events: 1 },
  facts: FT_FACTS,
};

test('FT payloads have the documented bytes and round-trip', () => {
  const u64 = (v: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(v % 2 ** 32, 0);
    b.writeUInt32LE(Math.floor(v / 2 ** 32), 4);
    return b;
  };
  const str8 = (s: string): Buffer => Buffer.concat([Buffer.of(Buffer.byteLength(s)), Buffer.from(s)]);
  const facts = Buffer.concat([
    str8('v20.15.0'),
    str8('x64'),
    Buffer.of(2),
    str8('--max-old-space-size=512'),
    str8('--no-opt'),
  ]);
  const hello = encodeFtHello(FT_HELLO);
  assert.deepEqual(
    hello,
    Buffer.concat([
      Buffer.of(FT_VERSION),
      Buffer.alloc(16, 0xa1),
      str8('kv'),
      u64(0x1_0000_0003),
      Buffer.from(INC, 'hex'),
      u64(12),
      u64(1),
      facts,
    ]),
  );
  const h = decodeFtHello(hello);
  assert.ok(h.ok);
  assert.deepEqual(
    { ...h.hello, sessionId: [...h.hello.sessionId] },
    { ...FT_HELLO, sessionId: [...FT_HELLO.sessionId] },
  );

  const welcome = encodeFtWelcome(FT_WELCOME);
  assert.deepEqual(
    welcome,
    Buffer.concat([
      Buffer.of(FT_VERSION),
      Buffer.alloc(16, 0xa1),
      Buffer.alloc(16, 0xb2),
      str8('kv'),
      u64(3),
      u64(12),
      u64(1),
      facts,
    ]),
  );
  const w = decodeFtWelcome(welcome);
  assert.ok(w !== null);
  assert.equal(w.vm, 'kv');
  assert.deepEqual(w.start, FT_WELCOME.start);
  assert.deepEqual(w.facts, FT_FACTS);

  const refuse = encodeFtRefuse({
    sessionId: Buffer.alloc(16, 0xa1),
    code: FtRefuseCode.JOIN,
    reason: 'différent',
  });
  assert.deepEqual(
    refuse,
    Buffer.concat([
      Buffer.of(FT_VERSION),
      Buffer.alloc(16, 0xa1),
      Buffer.of(6),
      Buffer.of(10, 0),
      Buffer.from('différent'),
    ]),
  );
  assert.deepEqual(decodeFtRefuse(refuse), {
    sessionId: Buffer.alloc(16, 0xa1),
    code: FtRefuseCode.JOIN,
    reason: 'différent',
  });

  const log = encodeFtLog({ offset: 2 ** 40 + 5, events: 77, data: Uint8Array.of(9, 8, 7) });
  assert.deepEqual(log, Buffer.concat([u64(2 ** 40 + 5), u64(77), Buffer.of(9, 8, 7)]));
  assert.deepEqual(decodeFtLog(log), { offset: 2 ** 40 + 5, events: 77, data: Buffer.of(9, 8, 7) });

  const ack = encodeFtAck({ offset: 2 ** 52, events: 3, replayed: 2 });
  assert.deepEqual(ack, Buffer.concat([u64(2 ** 52), u64(3), u64(2)]));
  assert.deepEqual(decodeFtAck(ack), { offset: 2 ** 52, events: 3, replayed: 2 });

  // The channel is the session id's first four bytes, never 0; the key mixes both halves.
  assert.equal(
    ftChannelOf(Buffer.from('0102030400000000000000000000000000', 'hex').subarray(0, 16)),
    0x04030201,
  );
  assert.equal(ftChannelOf(Buffer.alloc(16)), 1);
  const k1 = ftSessionKey(KEY, Buffer.alloc(16, 1), Buffer.alloc(16, 2));
  assert.equal(k1.byteLength, 32);
  assert.notDeepEqual(k1, ftSessionKey(KEY, Buffer.alloc(16, 1), Buffer.alloc(16, 3)));
  assert.notDeepEqual(k1, ftSessionKey(KEY, Buffer.alloc(16, 4), Buffer.alloc(16, 2)));
  assert.deepEqual(
    k1,
    createHmac('sha256', KEY)
      .update(
        Buffer.concat([Buffer.from('lockstep ft session v1\0'), Buffer.alloc(16, 1), Buffer.alloc(16, 2)]),
      )
      .digest(),
  );
});

test('FT payload decoders refuse what is not exactly one payload, and never throw', (t) => {
  t.diagnostic(`seed ${SEED}`);
  const hello = encodeFtHello(FT_HELLO);
  const welcome = encodeFtWelcome(FT_WELCOME);
  const refuse = encodeFtRefuse({ sessionId: Buffer.alloc(16), code: FtRefuseCode.VM, reason: 'no' });
  // Every truncation and an extra byte are refused.
  for (const [enc, dec] of [
    [hello, (b: Uint8Array) => (decodeFtHello(b).ok ? 'ok' : null)],
    [welcome, decodeFtWelcome],
    [refuse, decodeFtRefuse],
  ] as const) {
    for (let n = 0; n < enc.byteLength; n++) assert.equal(dec(enc.subarray(0, n)), null, `a cut at ${n}`);
    assert.equal(dec(Buffer.concat([enc, Buffer.of(0)])), null, 'a trailing byte');
  }
  assert.equal(decodeFtAck(Buffer.alloc(23)), null);
  assert.equal(decodeFtAck(Buffer.alloc(25)), null);
  assert.equal(decodeFtLog(Buffer.alloc(16)), null, 'an FT_LOG without data');
  // A u64 at or past 2^53 is refused.
  const big = Buffer.alloc(24);
  big.writeUInt32LE(2 ** 21, 4);
  assert.equal(decodeFtAck(big), null);
  // Another version of hello keeps its first 17 bytes, so it can be refused politely.
  const v2 = Buffer.from(hello);
  v2[0] = 2;
  assert.deepEqual(decodeFtHello(v2), {
    ok: false,
    reason: 'version',
    version: 2,
    sessionId: Buffer.alloc(16, 0xa1),
  });
  // A refusal's unknown code reads as OTHER; an over-long reason is cut at a character boundary.
  const odd = Buffer.from(refuse);
  odd[17] = 99;
  assert.equal(decodeFtRefuse(odd)?.code, FtRefuseCode.OTHER);
  const long = encodeFtRefuse({
    sessionId: Buffer.alloc(16),
    code: FtRefuseCode.OTHER,
    reason: 'é'.repeat(FT_REASON_BYTES_MAX),
  });
  const longBack = decodeFtRefuse(long);
  assert.ok(longBack !== null && Buffer.byteLength(longBack.reason) <= FT_REASON_BYTES_MAX);
  assert.ok(/^é+$/.test(longBack.reason));
  // Encoders assert what cannot be encoded.
  assert.throws(() => encodeFtHello({ ...FT_HELLO, sessionId: Buffer.alloc(15) }), /assertion/);
  assert.throws(() => encodeFtHello({ ...FT_HELLO, vm: '' }), /assertion/);
  assert.throws(
    () =>
      encodeFtHello({ ...FT_HELLO, facts: { ...FT_FACTS, v8Flags: Array(FT_FLAGS_MAX + 1).fill('--x') } }),
    /assertion/,
  );
  assert.throws(() => encodeFtLog({ offset: 0, events: 0, data: new Uint8Array(0) }), /assertion/);
  assert.throws(() => encodeFtAck({ offset: -1, events: 0, replayed: 0 }), /assertion/);
  // Random bytes: the decoders answer, never throw.
  const rng = new Prng(SEED, 40);
  for (let i = 0; i < 5000; i++) {
    const b = new Uint8Array(rng.int(0, 120));
    for (let j = 0; j < b.length; j++) b[j] = rng.int(0, 255);
    if (rng.chance(0.5) && b.length > 0) b[0] = FT_VERSION;
    decodeFtHello(b);
    decodeFtWelcome(b);
    decodeFtRefuse(b);
    decodeFtLog(b);
    decodeFtAck(b);
  }
});
