// Tests of the FT logging channel's TCP transport (ft-link.ts) over real
// loopback sockets: a 50 MB stream in random appends (some bigger than a
// frame) arrives byte-exact with exact event numbers and acks that never run
// ahead of receipt; refusals (join check, VM, generation, incarnation, busy);
// bad input on both ends (garbage, forgeries, replayed and reordered frames,
// frames of another VM, a replayed connection), each rejected, logged and
// closing the connection with nothing delivered; backpressure from a backup
// that stops reading; the planted ackBeforeReceipt bug made visible with the
// test-only linkDelayMs; handshake deadlines and clean closes.
//
// The randomized tests print their seed; set LOCKSTEP_TEST_SEED to replay one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash } from 'node:crypto';
import {
  FtLinkServer,
  connectFtLink,
  localHostFacts,
  type FtAckEvent,
  type FtBackupLink,
  type FtCloseReason,
  type FtConnectOptions,
  type FtConnectResult,
  type FtLogger,
  type FtOffer,
  type FtPrimaryLink,
  type FtServerOptions,
} from './ft-link.js';
import {
  BackupHandshake,
  FrameSplitter,
  FtRefuseCode,
  LogReceiver,
  LogSender,
  answerHello,
  type FtEndpoint,
  type HostFacts,
  type LogChunk,
} from '../ft/channel.js';
import { Prng, testSeed } from '../core/prng.js';

const SEED = testSeed();
const KEY = Buffer.alloc(32, 0x33);
const CLUSTER = 'aabbccddeeff00112233445566778899';
const INC_P = '1111222233334444';
const INC_B = '5555666677778888';
const FACTS: HostFacts = { nodeVersion: process.version, arch: process.arch, v8Flags: [] };

interface LogLine {
  level: 'warn' | 'info';
  fields: Record<string, unknown>;
  msg: string;
}

function recorder(): { logger: FtLogger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return {
    lines,
    logger: {
      warn: (fields, msg) => lines.push({ level: 'warn', fields, msg }),
      info: (fields, msg) => lines.push({ level: 'info', fields, msg }),
    },
  };
}

async function until(what: string, pred: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function serverOptions(over: Partial<FtServerOptions> = {}): FtServerOptions {
  return { key: KEY, clusterId: CLUSTER, self: 'p1', selfIncarnation: INC_P, facts: FACTS, ...over };
}

function connectOptions(over: Partial<FtConnectOptions> = {}): FtConnectOptions {
  return {
    key: KEY,
    clusterId: CLUSTER,
    self: 'b1',
    selfIncarnation: INC_B,
    facts: FACTS,
    primary: 'p1',
    primaryIncarnation: INC_P,
    vm: 'kv',
    generation: 7,
    onLog: () => {},
    ...over,
  };
}

/** What the primary's offer saw, for the tests to wait on. */
interface OfferLog {
  sessions: FtPrimaryLink[];
  acks: FtAckEvent[];
  closes: FtCloseReason[];
  refusals: { from: string; code: FtRefuseCode; reason: string }[];
}

function offer(over: Partial<FtOffer> = {}): { offer: FtOffer; seen: OfferLog } {
  const seen: OfferLog = { sessions: [], acks: [], closes: [], refusals: [] };
  return {
    seen,
    offer: {
      generation: 7,
      backup: 'b1',
      backupIncarnation: INC_B,
      startFrom: (asked) => (asked.offset === 0 ? asked : 'this primary keeps the log only from offset 0'),
      onSession: (l) => seen.sessions.push(l),
      onAck: (_l, a) => seen.acks.push(a),
      onClose: (_l, r) => seen.closes.push(r),
      onRefused: (r) => seen.refusals.push(r),
      ...over,
    },
  };
}

/** A server serving 'kv', and a connected backup whose session is established. */
async function established(
  o: {
    server?: Partial<FtServerOptions>;
    offer?: Partial<FtOffer>;
    connect?: Partial<FtConnectOptions>;
  } = {},
): Promise<{
  server: FtLinkServer;
  seen: OfferLog;
  primary: FtPrimaryLink;
  backup: FtBackupLink;
  chunks: LogChunk[];
  backupCloses: FtCloseReason[];
  lines: LogLine[];
}> {
  const { logger, lines } = recorder();
  const server = await FtLinkServer.listen(
    { host: '127.0.0.1', port: 0 },
    serverOptions({ log: logger, ...o.server }),
  );
  const { offer: off, seen } = offer(o.offer);
  server.offer('kv', off);
  const chunks: LogChunk[] = [];
  const backupCloses: FtCloseReason[] = [];
  const r = await connectFtLink(
    server.address(),
    connectOptions({
      log: logger,
      onLog: (_l, c) => chunks.push(c),
      onClose: (_l, reason) => backupCloses.push(reason),
      ...o.connect,
    }),
  );
  assert.ok(r.ok, `connect: ${!r.ok && r.reason}`);
  await until('the session', () => seen.sessions.length === 1);
  return { server, seen, primary: seen.sessions[0]!, backup: r.link, chunks, backupCloses, lines };
}

test('a 50 MB stream in random appends arrives byte-exact, with exact event seqs and acks never ahead of receipt', async (t) => {
  t.diagnostic(`seed ${SEED}`);
  const prng = new Prng(SEED, 1);
  const pool = Buffer.allocUnsafe(2 * 1024 * 1024);
  for (let i = 0; i < pool.byteLength; i += 4) pool.writeUInt32LE(prng.nextU32(), i);
  const totalBytes = 50 * 1024 * 1024;
  let backupBytes = 0;
  let backupEventSeq = -1;
  const backupHash = createHash('sha256');
  // The model: the end offset of every append and the events complete there.
  const ends: { end: number; events: number }[] = [];
  const eventsAt = (offset: number): number => {
    let lo = 0;
    let hi = ends.length; // first index with end > offset
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (ends[mid]!.end <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo === 0 ? 0 : ends[lo - 1]!.events;
  };
  let ackViolation: string | null = null;
  let eventViolation: string | null = null;
  let lastAckedSeq = -1;
  const env = await established({
    offer: {
      sender: { frameBytesMax: 256 * 1024, bufferBytesMax: 16 * 1024 * 1024, flushDelayMs: 1 },
      onAck: (_l, a) => {
        // Acks are checked against what the backup really received, in the same process.
        if (a.ackedBytes > backupBytes)
          ackViolation ??= `ack of ${a.ackedBytes} with ${backupBytes} received`;
        if (a.ackedEventSeq !== eventsAt(a.ackedBytes) - 1)
          eventViolation ??= `ack seq ${a.ackedEventSeq} at ${a.ackedBytes}`;
        if (a.ackedEventSeq < lastAckedSeq) eventViolation ??= 'ackedEventSeq went back';
        lastAckedSeq = a.ackedEventSeq;
      },
    },
    connect: {
      onLog: (_l, c) => {
        if (c.offset !== backupBytes) eventViolation ??= `chunk at ${c.offset}, expected ${backupBytes}`;
        backupHash.update(c.bytes);
        backupBytes += c.bytes.byteLength;
        if (c.lastEventSeq !== eventsAt(backupBytes) - 1)
          eventViolation ??= `chunk seq ${c.lastEventSeq} at ${backupBytes}`;
        backupEventSeq = c.lastEventSeq;
      },
    },
  });
  const primaryHash = createHash('sha256');
  let appended = 0;
  let events = 0;
  let bigAppends = 0;
  const started = Date.now();
  while (appended < totalBytes) {
    const kind = prng.next();
    let n =
      kind < 0.7
        ? prng.int(1, 4096)
        : kind < 0.95
          ? prng.int(4096, 128 * 1024)
          : prng.int(256 * 1024, 1536 * 1024);
    n = Math.min(n, totalBytes - appended);
    if (n > 256 * 1024) bigAppends++;
    const at = prng.int(0, pool.byteLength - n);
    const bytes = pool.subarray(at, at + n);
    const completes = prng.chance(0.8);
    // Respect the sender's bound: wait for acks when the buffer is full, as the recorder's reader would.
    while (env.primary.spaceBytes < n) await new Promise((r) => setTimeout(r, 1));
    const r = env.primary.append(bytes, (completes ? ++events : events) - 1);
    assert.ok(r.ok);
    primaryHash.update(bytes);
    appended += n;
    ends.push({ end: appended, events });
    if (prng.chance(0.05)) await new Promise((r) => setImmediate(r));
  }
  env.primary.flush();
  await until('every byte acked', () => env.primary.ackedBytes === totalBytes, 15000);
  t.diagnostic(`50 MB in ${Date.now() - started} ms, ${ends.length} appends (${bigAppends} over 256 KiB)`);
  assert.equal(ackViolation, null);
  assert.equal(eventViolation, null);
  assert.equal(backupBytes, totalBytes);
  assert.equal(backupHash.digest('hex'), primaryHash.digest('hex'));
  assert.equal(backupEventSeq, events - 1);
  assert.equal(env.primary.ackedEventSeq, events - 1);
  assert.deepEqual(env.primary.lag(), { events: 0, bytes: 0, ms: 0, replayEvents: events });
  // The backup's replayer reports its progress; the primary sees it with the next ack.
  env.backup.reportReplayed(events - 1);
  await until('replay progress', () => env.primary.replayedEventSeq === events - 1);
  assert.equal(env.primary.lag().replayEvents, 0);
  assert.ok(bigAppends > 0, 'some appends were bigger than a frame');
  assert.equal(env.lines.filter((l) => l.level === 'warn').length, 0);
  await env.server.close();
  await until('the backup sees the close', () => env.backupCloses.length === 1);
});

test('refusals reach the backup with a clear reason, and the primary hears of them', async () => {
  const { logger, lines } = recorder();
  const server = await FtLinkServer.listen({ host: '127.0.0.1', port: 0 }, serverOptions({ log: logger }));
  const { offer: off, seen } = offer();
  server.offer('kv', off);
  const connect = (over: Partial<FtConnectOptions>): Promise<FtConnectResult> =>
    connectFtLink(server.address(), connectOptions({ log: logger, ...over }));

  const join = await connect({ facts: { ...FACTS, nodeVersion: 'v0.10.48', v8Flags: ['--jitless'] } });
  assert.ok(!join.ok && join.refused && join.code === FtRefuseCode.JOIN);
  assert.match(
    join.reason,
    /Node version differs: the primary runs v\d+.*the backup v0\.10\.48.*only the backup has --jitless/,
  );
  await until('the primary hears of it', () => seen.refusals.length === 1);
  assert.equal(seen.refusals[0]!.code, FtRefuseCode.JOIN);

  const arch = await connect({ facts: { ...FACTS, arch: 'mips' } });
  assert.ok(!arch.ok && arch.code === FtRefuseCode.JOIN && /CPU architecture differs/.test(arch.reason));

  const vm = await connect({ vm: 'nosuch' });
  assert.ok(
    !vm.ok && vm.refused && vm.code === FtRefuseCode.VM && /not the primary of VM nosuch/.test(vm.reason),
  );

  const gen = await connect({ generation: 6 });
  assert.ok(!gen.ok && gen.code === FtRefuseCode.GENERATION && /generation 7, not 6/.test(gen.reason));

  const inc = await connect({ primaryIncarnation: '0000000000000001' });
  // The refusal comes from the primary's real incarnation, which this backup does not expect: it is rejected.
  assert.ok(!inc.ok && !inc.refused && /incarnation/.test(inc.reason));

  const who = await connect({ self: 'b2' });
  assert.ok(!who.ok && who.code === FtRefuseCode.PEER && /backup is b1/.test(who.reason));

  const start = await connect({ start: { offset: 4096, events: 10 } });
  assert.ok(!start.ok && start.code === FtRefuseCode.START && /only from offset 0/.test(start.reason));

  // A live session makes a second one busy.
  const first = await connect({});
  assert.ok(first.ok);
  await until('the session', () => seen.sessions.length === 1);
  const busy = await connect({});
  assert.ok(!busy.ok && busy.code === FtRefuseCode.BUSY);
  assert.ok(
    lines.some((l) => /refused b1's hello for VM kv: VM kv already has a live backup session/.test(l.msg)),
  );
  assert.equal(server.stats().sessionsEstablished, 1);
  await server.close();
});

test('the listener rejects and logs garbage, forgeries and a replayed connection; nothing is established', async () => {
  const { logger, lines } = recorder();
  const server = await FtLinkServer.listen({ host: '127.0.0.1', port: 0 }, serverOptions({ log: logger }));
  const { offer: off, seen } = offer();
  server.offer('kv', off);
  const { host, port } = server.address();

  /** Opens a raw connection, writes `bytes`, and resolves with what came back once the server closed it. */
  const raw = (bytes: Buffer): Promise<Buffer> =>
    new Promise((resolve) => {
      const got: Buffer[] = [];
      const s = net.connect({ host, port }, () => s.write(bytes));
      s.on('data', (d) => got.push(d));
      s.on('error', () => {});
      s.on('close', () => resolve(Buffer.concat(got)));
    });

  assert.equal((await raw(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))).byteLength, 0);
  assert.ok(lines.some((l) => l.level === 'warn' && l.fields['reason'] === 'magic'));

  // A hello under another key: refused without an answer.
  const hs = new BackupHandshake({
    key: Buffer.alloc(32, 9),
    clusterId: CLUSTER,
    self: 'b1',
    selfIncarnation: INC_B,
    facts: FACTS,
    primary: 'p1',
    primaryIncarnation: INC_P,
    vm: 'kv',
    generation: 7,
    start: { offset: 0, events: 0 },
    sessionId: Buffer.alloc(16, 1),
  });
  assert.equal((await raw(hs.hello())).byteLength, 0);
  assert.ok(lines.some((l) => l.level === 'warn' && l.fields['reason'] === 'mac'));

  // A header claiming a 16 MiB frame (every length byte 0x01): closed before anything is allocated.
  await raw(Buffer.concat([Buffer.from([0x4c, 0x53, 1, 2]), Buffer.alloc(200, 0x01)]));
  assert.ok(
    lines.some(
      (l) => l.level === 'warn' && (l.fields['reason'] === 'too-big' || l.fields['reason'] === 'malformed'),
    ),
  );

  // A replayed connection: record what a real backup sent, then send it again after that session ended.
  let recorded = Buffer.alloc(0);
  const proxy = net.createServer((client) => {
    const upstream = net.connect({ host, port });
    client.on('data', (d) => {
      recorded = Buffer.concat([recorded, d]);
      upstream.write(d);
    });
    upstream.on('data', (d) => client.write(d));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  const paddr = proxy.address() as net.AddressInfo;
  const real = await connectFtLink({ host: '127.0.0.1', port: paddr.port }, connectOptions({ log: logger }));
  assert.ok(real.ok);
  await until('the real session', () => seen.sessions.length === 1);
  seen.sessions[0]!.append(Buffer.alloc(1000, 5), 0);
  await until('an ack', () => seen.acks.length >= 1);
  await real.link.close();
  await until('the session closes', () => seen.closes.length === 1);
  proxy.close();
  const warnsBefore = lines.filter((l) => l.level === 'warn').length;
  const answer = await raw(recorded);
  // The hello is authentic, so the primary answers it with a welcome under a fresh nonce; the replayed
  // acks were made under the old session's key and fail; no session is established.
  assert.ok(answer.byteLength > 0, 'a welcome was sent');
  assert.equal(seen.sessions.length, 1, 'no second session');
  const warns = lines.filter((l) => l.level === 'warn').slice(warnsBefore);
  assert.ok(
    warns.some((l) => l.fields['reason'] === 'mac'),
    JSON.stringify(warns),
  );
  assert.equal(server.stats().sessionsEstablished, 1);
  await server.close();
});

/**
 * A fake primary built from the pure parts: it welcomes a real backup, then
 * sends `script(frames)` (the genuine FT_LOG frames it made, tampered with as
 * the test likes) once the backup's first ack has come.
 */
async function fakePrimary(
  script: (genuine: Buffer[]) => Buffer[],
): Promise<{ chunks: LogChunk[]; closes: FtCloseReason[]; lines: LogLine[] }> {
  const endpoint: FtEndpoint = {
    key: KEY,
    clusterId: CLUSTER,
    self: 'p1',
    selfIncarnation: INC_P,
    facts: FACTS,
  };
  const server = net.createServer((socket) => {
    const splitter = new FrameSplitter();
    let sender: LogSender | null = null;
    socket.on('error', () => {});
    socket.on('data', (d) => {
      splitter.push(d);
      for (let r = splitter.next(); r.type === 'frame'; r = splitter.next()) {
        if (sender === null) {
          const a = answerHello(
            r.frame,
            endpoint,
            () => ({ generation: 7, backup: 'b1', backupIncarnation: INC_B, startFrom: (x) => x }),
            Buffer.alloc(16, 7),
          );
          assert.ok(a.type === 'welcome');
          socket.write(a.frame);
          sender = new LogSender(a.session, { frameBytesMax: 1000 });
          continue;
        }
        const ack = sender.onFrame(r.frame, 0);
        assert.ok(ack.ok);
        if (!ack.established) continue;
        for (let i = 0; i < 4; i++) sender.append(Buffer.alloc(500, i + 1), i, 0);
        const genuine: Buffer[] = [];
        for (let f = sender.pollFrame(0); f !== null; f = sender.pollFrame(0)) genuine.push(f);
        for (const f of script(genuine)) socket.write(f);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { logger, lines } = recorder();
  const chunks: LogChunk[] = [];
  const closes: FtCloseReason[] = [];
  const res = await connectFtLink(
    { host: '127.0.0.1', port: (server.address() as net.AddressInfo).port },
    connectOptions({ log: logger, onLog: (_l, c) => chunks.push(c), onClose: (_l, r) => closes.push(r) }),
  );
  assert.ok(res.ok, !res.ok ? res.reason : '');
  await until('the backup closes', () => closes.length === 1);
  server.close();
  return { chunks, closes, lines };
}

test('the backup rejects, logs and closes on garbage, forgeries, replayed, reordered and other-VM frames, keeping only what came before', async () => {
  // A frame of another VM's session between the same two hosts.
  const otherHs = new BackupHandshake({
    key: KEY,
    clusterId: CLUSTER,
    self: 'b1',
    selfIncarnation: INC_B,
    facts: FACTS,
    primary: 'p1',
    primaryIncarnation: INC_P,
    vm: 'other',
    generation: 7,
    start: { offset: 0, events: 0 },
    sessionId: Buffer.alloc(16, 4),
  });
  const endpoint: FtEndpoint = {
    key: KEY,
    clusterId: CLUSTER,
    self: 'p1',
    selfIncarnation: INC_P,
    facts: FACTS,
  };
  const oa = answerHello(
    otherHs.hello(),
    endpoint,
    () => ({ generation: 7, backup: 'b1', backupIncarnation: INC_B, startFrom: (x) => x }),
    Buffer.alloc(16, 5),
  );
  assert.ok(oa.type === 'welcome');
  const ob = otherHs.onFrame(oa.frame);
  assert.ok(ob.type === 'welcome');
  const otherSender = new LogSender(oa.session, { frameBytesMax: 1000 });
  // Establish it by hand with the receiver's first ack.
  const otherReceiver = new LogReceiver(ob.session);
  assert.ok(otherSender.onFrame(otherReceiver.pollAck(0)!, 0).ok);
  otherSender.append(Buffer.alloc(2000, 0xee), 3, 0);
  otherSender.pollFrame(0);
  const otherVmFrame = otherSender.pollFrame(0)!;

  const flip = (f: Buffer): Buffer => {
    const g = Buffer.from(f);
    g[g.byteLength - 100] = g[g.byteLength - 100]! ^ 0x01;
    return g;
  };
  const cases: [string, (g: Buffer[]) => Buffer[], string][] = [
    [
      'garbage',
      (g) => [g[0]!, Buffer.from('\x00garbage, not a frame at all, but long enough to be looked at')],
      'magic',
    ],
    ['a flipped bit', (g) => [g[0]!, flip(g[1]!)], 'mac'],
    ['a replayed frame', (g) => [g[0]!, g[0]!], 'replay'],
    ['a reordered frame', (g) => [g[0]!, g[2]!, g[1]!], 'reorder'],
    ['a frame of another VM', (g) => [g[0]!, otherVmFrame], 'mac'],
  ];
  for (const [name, script, reason] of cases) {
    const { chunks, closes, lines } = await fakePrimary(script);
    assert.equal(chunks.length, 1, `${name}: only the frame before it was delivered`);
    assert.equal(chunks[0]!.offset, 0);
    assert.equal(closes[0]!.code, 'rejected', name);
    assert.equal(closes[0]!.reject, reason, name);
    const warn = lines.find((l) => l.level === 'warn');
    assert.ok(warn !== undefined, `${name}: logged`);
    assert.equal(warn.fields['reason'], reason, `${name}: ${warn.msg}`);
    assert.match(warn.msg, /^ft: rejected a frame from p1 for VM kv: /);
  }
});

test('a backup that stops reading causes backpressure, not unbounded memory; resuming delivers everything', async () => {
  const bufferBytesMax = 8 * 1024 * 1024;
  let paused = false;
  let received = 0;
  const env = await established({
    offer: { sender: { bufferBytesMax, frameBytesMax: 256 * 1024 } },
    connect: {
      onLog: (l, c) => {
        received += c.bytes.byteLength;
        if (!paused) {
          paused = true;
          l.pause();
        }
      },
    },
  });
  const chunk = Buffer.alloc(64 * 1024, 0x42);
  let appended = 0;
  let refused = 0;
  let maxSocketBuffered = 0;
  const deadline = Date.now() + 4000;
  // Keep appending, as a primary would, until the sender refuses for a while.
  while (Date.now() < deadline && refused < 200) {
    const r = env.primary.append(chunk, appended / chunk.byteLength);
    if (r.ok) appended += chunk.byteLength;
    else refused++;
    maxSocketBuffered = Math.max(maxSocketBuffered, env.primary.stats().socketBufferedBytes);
    await new Promise((r) => setTimeout(r, 1));
  }
  const s = env.primary.stats();
  assert.ok(refused >= 200, 'append refuses once the buffer is full');
  assert.ok(s.bufferedBytes <= bufferBytesMax, `unacked ${s.bufferedBytes} > ${bufferBytesMax}`);
  assert.ok(s.bufferedBytes > bufferBytesMax - chunk.byteLength, 'the buffer filled up');
  assert.ok(env.primary.overHighWater, 'the caller is told to throttle');
  assert.ok(maxSocketBuffered <= 512 * 1024, `the socket buffer held ${maxSocketBuffered} bytes`);
  assert.ok(s.unsentBytes > 0, 'the sender holds bytes back rather than pushing them into the socket');
  assert.ok(env.primary.lag().ms > 0);
  env.backup.resume();
  await until('everything acked', () => env.primary.ackedBytes === appended, 10000);
  assert.equal(received, appended);
  assert.equal(env.primary.overHighWater, false);
  await env.server.close();
});

test('the planted bug ackBeforeReceipt, with the test-only linkDelayMs, acknowledges bytes the backup does not have', async () => {
  for (const bug of [false, true]) {
    let heldAtAck: number | null = null;
    let ackedAtAck = 0;
    let held = 0;
    const env = await established({
      offer: {
        onAck: (_l, a) => {
          if (heldAtAck === null) {
            heldAtAck = held;
            ackedAtAck = a.ackedBytes;
          }
        },
      },
      connect: {
        linkDelayMs: 300,
        receiver: { ackBeforeReceipt: bug },
        onLog: (_l, c) => (held += c.bytes.byteLength),
      },
    });
    env.primary.append(Buffer.alloc(1000, 1), 0);
    await until('an ack', () => heldAtAck !== null);
    await until('the bytes', () => held === 1000);
    assert.equal(ackedAtAck, 1000);
    if (bug) {
      assert.equal(heldAtAck, 0, 'acknowledged while the backup held nothing');
      assert.equal(
        env.primary.ackedEventSeq,
        0,
        'so event 0 counts as safe, and its outputs would be released',
      );
    } else {
      assert.equal(heldAtAck, 1000, 'a correct backup acks only what it holds');
    }
    await env.server.close();
  }
});

test('handshake deadlines; clean closes from either side; a refused connection is a value', async () => {
  const { logger, lines } = recorder();
  const server = await FtLinkServer.listen(
    { host: '127.0.0.1', port: 0 },
    serverOptions({ log: logger, handshakeTimeoutMs: 150 }),
  );
  // A connection that says nothing is closed at the deadline.
  const { host, port } = server.address();
  const silent = net.connect({ host, port });
  silent.on('error', () => {});
  const t0 = Date.now();
  await new Promise((r) => silent.on('close', r));
  assert.ok(Date.now() - t0 >= 100);
  assert.ok(lines.some((l) => /timed out/.test(l.msg)));
  // A primary that never answers: connectFtLink gives up at its deadline.
  const mute = net.createServer((s) => s.on('error', () => {}));
  await new Promise<void>((r) => mute.listen(0, '127.0.0.1', () => r()));
  const r = await connectFtLink(
    { host: '127.0.0.1', port: (mute.address() as net.AddressInfo).port },
    connectOptions({ handshakeTimeoutMs: 150 }),
  );
  assert.ok(!r.ok && !r.refused && /timed out/.test(r.reason));
  mute.close();
  // Nobody listening.
  const nobody = await connectFtLink({ host: '127.0.0.1', port: 1 }, connectOptions());
  assert.ok(!nobody.ok && /ECONNREFUSED|closed/.test(nobody.reason), nobody.ok ? '' : nobody.reason);
  await server.close();

  // The primary closes: the backup hears of it.
  const a = await established();
  await a.primary.close();
  await until('the backup closes', () => a.backupCloses.length === 1);
  assert.equal(a.backupCloses[0]!.code, 'peer-closed');
  assert.equal(a.seen.closes[0]!.code, 'local');
  assert.equal(a.server.link('kv'), null);
  // The backup closes: the primary hears of it, and the VM can be served again.
  const { offer: off2, seen: seen2 } = offer();
  a.server.offer('kv', off2);
  const again = await connectFtLink(a.server.address(), connectOptions());
  assert.ok(again.ok);
  await until('a new session', () => seen2.sessions.length === 1);
  await again.link.close();
  await until('the primary closes', () => seen2.closes.length === 1);
  assert.equal(seen2.closes[0]!.code, 'peer-closed');
  // Withdrawing the VM closes its session.
  const b = await connectFtLink(a.server.address(), connectOptions());
  assert.ok(b.ok);
  await until('a third session', () => seen2.sessions.length === 2);
  a.server.withdraw('kv');
  await until('withdrawn', () => seen2.closes.length === 2);
  assert.equal(seen2.closes[1]!.code, 'withdrawn');
  await a.server.close();
});

test('localHostFacts describes this process', () => {
  const f = localHostFacts();
  assert.equal(f.nodeVersion, process.version);
  assert.equal(f.arch, process.arch);
  assert.ok(Array.isArray(f.v8Flags));
});
