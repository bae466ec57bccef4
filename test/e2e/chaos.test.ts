/**
 * Record → replay under I/O chaos (`--io-chaos SEED`, src/io/chaos.ts): the
 * network delays received bytes, hands them to the guest in short pieces,
 * drains the guest's sends late through small rings (short sends, EAGAIN),
 * and resets connections as a peer's RST would. The example KV servers are
 * recorded under real clients through that network, then replayed.
 *
 * A run passes when:
 * - the recorder, stopped by SIGTERM once its clients are done (one kv run:
 *   in the middle of its load), exits 0;
 * - replay, on a `cp -r` copy of the disk taken before recording, exits 0
 *   and prints the recording's events, memorySha256 and outputSha256 (stop
 *   "end-of-log" where the recording's was "signal"), and leaves the disk as
 *   the recording left it;
 * - every reply a client did receive is right: the chaos is a hostile
 *   network, never a lossy or reordering host;
 * - the chaos really happened: the recorder's stats line counts delays,
 *   short reads and tx stalls, and `--trace-calls` shows the guest's
 *   sock_send answering EAGAIN. Resets, whose timing is random, must show up
 *   in the kv runs taken together, and the guest must then see CONNRESET or
 *   PIPE.
 *
 * Seeds: a fixed list plus one random seed, each printed; LOCKSTEP_TEST_SEED
 * (comma-separated) replaces the list. A failing run keeps its artifacts
 * (log, disk copies, trace) and its message gives the commands to replay it.
 *
 * Budget: about 30-45 s on the 2-core CI machine (each test states its limit).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { repoPath, runLockstep, startLockstep, tempDir, type RunResult } from './harness.js';
import { folderManifestSha256 } from '../../src/io/manifest.js';
import { Prng } from '../../src/core/prng.js';
import { ChaosPolicy, RX_DELAY_MS_MAX, TX_STALL_MS_MAX } from '../../src/io/chaos.js';

const KV = repoPath('examples', 'kv', 'kv.wasm');
const RUST_KV = repoPath('examples', 'rust-kv', 'rust-kv.wasm');
const FIXED_SEEDS = [1, 20261125, 3735928559];
/** How long the clients keep a recording busy. */
const LOAD_MS = 3000;
/** Longest a client waits for one reply before it counts the connection as hung. */
const REPLY_TIMEOUT_MS = 10_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function seedsToRun(): number[] {
  const env = process.env['LOCKSTEP_TEST_SEED'];
  if (env !== undefined && env.trim() !== '') {
    return env.split(',').map((s) => {
      const n = Number(s.trim());
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`LOCKSTEP_TEST_SEED: bad seed "${s}"`);
      return n;
    });
  }
  return [...FIXED_SEEDS, randomInt(0, 2 ** 47)];
}
const SEEDS = seedsToRun();
process.stderr.write(`chaos.test: seeds ${SEEDS.join(', ')} (set LOCKSTEP_TEST_SEED=N[,N…] to choose)\n`);

/** Set while a recorder is being stopped under load: its clients may then be refused. */
let recorderStopping = false;

/** Client processes and connections still open; everything is killed in after() and in each finally. */
const children = new Set<ChildProcess>();
const redisClients = new Set<Redis>();

function killClients(): void {
  for (const c of children) c.kill('SIGKILL');
  children.clear();
  for (const r of redisClients) r.disconnect();
  redisClients.clear();
}

after(killClients);

/** Runs a client program to completion, or kills it after timeoutMs; never rejects. */
function runClient(
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const done = (code: number | null): void => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, out });
    };
    child.on('error', (e) => {
      out += e.message;
      done(null);
    });
    child.on('close', (code) => done(code));
  });
}

// ---------------------------------------------------------------- the round trip

interface Summary {
  events: number;
  memorySha256: string;
  outputSha256: string;
  exitCode: number | null;
  stop: string;
}

function summaryOf(stdout: string, what: string): Summary {
  const lines = stdout.trimEnd().split('\n');
  const last = lines[lines.length - 1] ?? '';
  try {
    return JSON.parse(last) as Summary;
  } catch {
    throw new Error(`${what}: the last line of stdout is not the summary: ${JSON.stringify(last)}`);
  }
}

interface ChaosStats {
  connections: number;
  delays: number;
  shortReads: number;
  txStalls: number;
  splitWrites: number;
  resets: number;
}

function chaosStatsOf(stderr: string, seed: number): ChaosStats {
  const m =
    /io chaos \(seed (\d+)\): (\d+) connections, (\d+) delays, (\d+) short reads, (\d+) tx stalls, (\d+) split writes, (\d+) resets/.exec(
      stderr,
    );
  assert.ok(m, `seed ${seed}: no chaos stats line on the recorder's stderr:\n${stderr}`);
  assert.equal(Number(m[1]), seed, 'the stats line names the seed');
  const [connections, delays, shortReads, txStalls, splitWrites, resets] = m.slice(2).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return { connections, delays, shortReads, txStalls, splitWrites, resets };
}

type Trace = Record<string, Record<string, number>>;
const errnoCount = (trace: Trace, fn: string, errno: number): number => trace[fn]?.[String(errno)] ?? 0;
const ERRNO_AGAIN = 6;
const ERRNO_CONNRESET = 15;
const ERRNO_PIPE = 64;

interface RoundTrip {
  stats: ChaosStats;
  trace: Trace;
  summary: Summary;
}

/**
 * Records `wasm` with `--io-chaos seed` while `load(port)` runs, stops it with
 * SIGTERM, replays the log on a copy of the disk taken before, and compares.
 */
async function chaosRoundTrip(
  t: { diagnostic(msg: string): void },
  name: string,
  wasm: string,
  seed: number,
  load: (port: number) => Promise<string>,
  opts: { stopAfterMs?: number } = {},
): Promise<RoundTrip> {
  const work = tempDir(`chaos-${name}-${seed}`);
  const disk = path.join(work.dir, 'disk');
  const before = path.join(work.dir, 'disk-before'); // kept pristine, to replay again by hand
  const replayDisk = path.join(work.dir, 'disk-replay');
  const log = path.join(work.dir, 'log');
  const tracePath = path.join(work.dir, 'trace.json');
  mkdirSync(disk);
  execFileSync('cp', ['-r', disk, before]);
  execFileSync('cp', ['-r', disk, replayDisk]);
  const recordArgs = [
    'record',
    wasm,
    '--log',
    log,
    '--io-chaos',
    String(seed),
    '--listen',
    '127.0.0.1:0',
    '--disk',
    disk,
    '--trace-calls',
    tracePath,
  ];
  const replayArgs = ['replay', wasm, '--log', log, '--disk', replayDisk];
  const repro =
    `seed ${seed}; artifacts kept in ${work.dir}; record: lockstep ${recordArgs.join(' ')}; ` +
    `replay again: cp -r ${before} /tmp/d && lockstep replay ${wasm} --log ${log} --disk /tmp/d`;
  t.diagnostic(`${name}: io chaos seed ${seed}`);
  let ok = false;
  const vm = await startLockstep(recordArgs, { timeoutMs: 30_000 });
  recorderStopping = false;
  try {
    const loading = load(vm.addresses[0]!.port);
    let rec: RunResult;
    if (opts.stopAfterMs === undefined) {
      t.diagnostic(`${name} seed ${seed}: ${await loading}`);
      await sleep(300); // idle: every client is done
      rec = await vm.stop('SIGTERM', 15_000);
    } else {
      loading.catch(() => {}); // awaited below, after the stop
      await sleep(opts.stopAfterMs);
      recorderStopping = true;
      rec = await vm.stop('SIGTERM', 15_000); // in the middle of the load
      t.diagnostic(`${name} seed ${seed}: stopped under load; ${await loading}`);
    }
    assert.equal(rec.code, 0, `record exited ${rec.code} (${repro}):\n${rec.stderr}`);
    assert.match(rec.stderr, new RegExp(`lockstep: io chaos on \\(seed ${seed}\\)`), 'the seed is printed');
    const stats = chaosStatsOf(rec.stderr, seed);
    t.diagnostic(`${name} seed ${seed}: ${JSON.stringify(stats)}`);
    const recorded = summaryOf(rec.stdout, 'record');
    assert.equal(recorded.stop, 'signal', `record stopped by "${recorded.stop}" (${repro})`);
    const trace = JSON.parse(readFileSync(tracePath, 'utf8')) as Trace;

    const rep = await runLockstep(replayArgs, { timeoutMs: 60_000 });
    assert.equal(rep.code, 0, `replay exited ${rep.code}, not 0 (${repro}):\n${rep.stderr}`);
    const replayed = summaryOf(rep.stdout, 'replay');
    assert.deepEqual(
      { ...replayed, stop: replayed.stop === 'end-of-log' ? 'signal' : replayed.stop },
      recorded,
      `replay's summary differs from the recording's (${repro})`,
    );
    assert.equal(replayed.stop, 'end-of-log');
    assert.equal(
      Buffer.from(folderManifestSha256(replayDisk)).toString('hex'),
      Buffer.from(folderManifestSha256(disk)).toString('hex'),
      `the disk replay left differs from the one the recording left (${repro})`,
    );
    ok = true;
    return { stats, trace, summary: recorded };
  } finally {
    killClients();
    await vm.stop('SIGKILL', 5000);
    if (ok) work.cleanup();
    else {
      t.diagnostic(`${name} seed ${seed}: FAILED; ${repro}`);
      for (const line of `the recorder's stderr:\n${vm.stderr()}`.split('\n')) t.diagnostic(line);
    }
  }
}

// ---------------------------------------------------------------- kv load

/**
 * Tells a connection failure (tolerated: the chaos resets connections) from
 * anything else: a wrong reply, a server error, a command that timed out.
 */
function isConnectionError(e: unknown): boolean {
  if (e instanceof assert.AssertionError || !(e instanceof Error)) return false;
  if (recorderStopping && /ECONNREFUSED/.test(e.message)) return true;
  return /ECONNRESET|EPIPE|Connection is closed|aborted due to connection close|Stream isn't writeable|max retries/i.test(
    e.message,
  );
}

/**
 * One ioredis client: SET/GET pairs, pipelines, large values (larger than
 * any ring), INCR and MGET, checking every reply it gets. On a connection
 * error it reconnects, a bounded number of times. Keys carry the worker and
 * the connection's generation, so a command stranded on a reset connection
 * cannot confuse the next one.
 */
async function ioredisWorker(port: number, rng: Prng, id: number, deadline: number): Promise<string> {
  let ops = 0;
  let errors = 0;
  for (let gen = 0; gen < 25 && Date.now() < deadline; gen++) {
    const c = new Redis({
      host: '127.0.0.1',
      port,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      retryStrategy: () => null,
      connectTimeout: REPLY_TIMEOUT_MS,
      commandTimeout: REPLY_TIMEOUT_MS,
    });
    c.on('error', () => {}); // reported through the rejected commands
    redisClients.add(c);
    const k = (s: string): string => `w${id}:g${gen}:${s}`;
    let counter = 0;
    try {
      await c.connect();
      // A value larger than the largest ring first: short sends and EAGAIN on every connection.
      let first = true;
      while (Date.now() < deadline) {
        const op = first ? 2 : rng.int(0, 4);
        ops++;
        switch (op) {
          case 0: {
            const v = randomBytes(rng.int(1, 2000)).toString('base64');
            assert.equal(await c.set(k('a'), v), 'OK');
            assert.equal(await c.get(k('a')), v, 'GET returns the value just SET');
            break;
          }
          case 1: {
            const n = rng.int(5, 40);
            const p = c.pipeline();
            const vals = Array.from(
              { length: n },
              (_, i) => `${i}:${randomBytes(rng.int(1, 300)).toString('hex')}`,
            );
            vals.forEach((v, i) => p.set(k(`p${i}`), v));
            vals.forEach((_, i) => p.get(k(`p${i}`)));
            const res = (await p.exec()) ?? [];
            assert.equal(res.length, 2 * n);
            for (const [err] of res) if (err) throw err;
            vals.forEach((v, i) => assert.equal(res[n + i]![1], v, 'pipelined GET returns its SET'));
            break;
          }
          case 2: {
            // Base64 of 50 KB or more is larger than the largest ring (64 KiB).
            const v = randomBytes(rng.int(first ? 50_000 : 10_000, 120_000)).toString('base64');
            assert.equal(await c.set(k('big'), v), 'OK');
            assert.equal(await c.get(k('big')), v, 'a large value comes back intact');
            first = false;
            break;
          }
          case 3: {
            const n = await c.incr(k('ctr'));
            assert.equal(n, ++counter, 'INCR counts on one connection');
            break;
          }
          default: {
            const keys = Array.from({ length: 40 }, (_, i) => k(`p${i}`));
            const got = await c.mget(...keys);
            assert.equal(got.length, 40);
          }
        }
      }
    } catch (e) {
      if (!isConnectionError(e)) throw e;
      errors++;
    } finally {
      c.disconnect();
      redisClients.delete(c);
    }
  }
  return `w${id}: ${ops} ops, ${errors} connection errors`;
}

/** An ioredis client that only holds its connection and pings, so a reset has something to hit. */
async function idleHolder(port: number, deadline: number): Promise<string> {
  let pings = 0;
  let errors = 0;
  while (Date.now() < deadline && errors < 10) {
    const c = new Redis({
      host: '127.0.0.1',
      port,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      retryStrategy: () => null,
      connectTimeout: REPLY_TIMEOUT_MS,
      commandTimeout: REPLY_TIMEOUT_MS,
    });
    c.on('error', () => {});
    redisClients.add(c);
    try {
      await c.connect();
      while (Date.now() < deadline) {
        assert.equal(await c.ping(), 'PONG');
        pings++;
        await sleep(100);
      }
    } catch (e) {
      if (!isConnectionError(e)) throw e;
      errors++;
    } finally {
      c.disconnect();
      redisClients.delete(c);
    }
  }
  return `holder: ${pings} pings, ${errors} connection errors`;
}

/** redis-benchmark, plain then pipelined; a reset makes it give up, which is tolerated. */
async function benchmarks(port: number, deadline: number): Promise<string> {
  const base = ['-h', '127.0.0.1', '-p', String(port), '-q'];
  const runs = [
    ['-n', '150', '-c', '3', '-t', 'set,get,incr,mset'],
    ['-n', '800', '-c', '3', '-P', '8', '-d', '300', '-t', 'set,get'],
  ];
  const out: string[] = [];
  for (const extra of runs) {
    const left = Math.max(deadline + 8000 - Date.now(), 1000);
    const r = await runClient('redis-benchmark', [...base, ...extra], left);
    const done = r.out.split(/[\r\n]/).filter((l) => /requests per second/.test(l)).length;
    out.push(`redis-benchmark ${extra.join(' ')}: exit ${r.code}, ${done} tests done`);
  }
  return out.join('; ');
}

/** redis-cli, one command per connection, and one connection with 50 INCRs (-r 50). */
async function cliLoop(port: number, rng: Prng, deadline: number): Promise<string> {
  const cli = (...args: string[]): Promise<{ code: number | null; out: string }> =>
    runClient('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], REPLY_TIMEOUT_MS);
  let ok = 0;
  let failed = 0;
  for (let i = 0; i < 30 && Date.now() < deadline; i++) {
    const v = `v${i}-${rng.int(0, 1e9)}`;
    const set = await cli('SET', `cli:${i}`, v);
    if (set.code !== 0 || set.out.trim() !== 'OK') {
      failed++;
      continue;
    }
    const get = await cli('GET', `cli:${i}`);
    if (get.code === 0 && !/^Error/.test(get.out)) {
      assert.equal(get.out.trim(), v, 'redis-cli GET returns its SET');
      ok++;
    } else failed++;
    if (i % 10 === 0) await cli('-r', '50', 'INCR', 'cli:ctr');
    if (i % 10 === 5) await cli('KEYS', '*'); // a large reply
  }
  return `redis-cli: ${ok} checked SET/GET, ${failed} failed`;
}

async function kvLoad(port: number, seed: number): Promise<string> {
  const deadline = Date.now() + LOAD_MS;
  const parts = await Promise.all([
    ...[0, 1, 2].map((i) => ioredisWorker(port, new Prng(seed, 1000 + i), i, deadline)),
    idleHolder(port, deadline),
    idleHolder(port, deadline),
    benchmarks(port, deadline),
    cliLoop(port, new Prng(seed, 2000), deadline),
  ]);
  return parts.join('; ');
}

// ---------------------------------------------------------------- rust-kv load

/**
 * Line-protocol connections to rust-kv, one after another (it serves one at a
 * time): each sends a pipelined batch of SET/GET/COUNT lines (some values
 * larger than any ring), half-closes, and checks every reply line it got. A
 * reset cuts the replies short, which is tolerated; a wrong reply, or a
 * connection that makes no progress for REPLY_TIMEOUT_MS, is not.
 */
async function rustKvLoad(port: number, seed: number): Promise<string> {
  const rng = new Prng(seed, 3000);
  const deadline = Date.now() + LOAD_MS;
  let conns = 0;
  let checked = 0;
  let cut = 0;
  for (let i = 0; i < 40 && Date.now() < deadline; i++) {
    const lines: string[] = [];
    const expect: string[] = [];
    const values = new Map<string, string>();
    const n = rng.int(5, 30);
    for (let j = 0; j < n; j++) {
      const key = `c${i}k${rng.int(0, 5)}`;
      const op = rng.int(0, 9);
      if (op < 5) {
        const big = rng.chance(0.1);
        const v = randomBytes(big ? rng.int(30_000, 90_000) : rng.int(1, 200)).toString('base64');
        lines.push(`SET ${key} ${v}`);
        expect.push('OK');
        values.set(key, v);
      } else if (op < 9) {
        lines.push(`GET ${key}`);
        const v = values.get(key);
        expect.push(v === undefined ? 'NIL' : `VALUE ${v}`);
      } else {
        lines.push('COUNT');
        expect.push(''); // depends on earlier connections; only its shape is checked
      }
    }
    conns++;
    const replies = await new Promise<{ lines: string[]; error: string | null }>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      let buf = '';
      let error: string | null = null;
      const hang = (): void => void s.destroy(new Error('no progress'));
      let timer = setTimeout(hang, REPLY_TIMEOUT_MS);
      s.setEncoding('utf8');
      s.on('connect', () => s.end(lines.join('\n') + '\n'));
      s.on('data', (d: string) => {
        buf += d;
        clearTimeout(timer);
        timer = setTimeout(hang, REPLY_TIMEOUT_MS);
      });
      s.on('error', (e) => (error = e.message));
      s.on('close', () => {
        clearTimeout(timer);
        const got = buf.split('\n');
        got.pop(); // the part after the last newline is not a whole reply
        resolve({ lines: got, error });
      });
    });
    assert.notEqual(replies.error, 'no progress', `rust-kv connection ${i} hung (seed ${seed})`);
    assert.ok(replies.lines.length <= expect.length);
    replies.lines.forEach((got, j) => {
      if (expect[j] === '') assert.match(got, /^COUNT \d+$/);
      else assert.equal(got, expect[j], `rust-kv connection ${i}, reply ${j} (seed ${seed})`);
    });
    checked += replies.lines.length;
    if (replies.lines.length < expect.length) {
      // Only a reset may cut a connection short.
      assert.ok(
        replies.error !== null,
        `rust-kv connection ${i} ended early without an error (seed ${seed})`,
      );
      cut++;
    }
  }
  return `${conns} connections, ${checked} replies checked, ${cut} cut short by resets`;
}

// ---------------------------------------------------------------- tests

const kvRuns: RoundTrip[] = [];

for (const seed of SEEDS) {
  test(
    `kv under io chaos (seed ${seed}): record, replay, same summary and disk`,
    { timeout: 60_000 },
    async (t) => {
      const r = await chaosRoundTrip(t, 'kv', KV, seed, (port) => kvLoad(port, seed));
      kvRuns.push(r);
      assert.ok(r.stats.delays > 0, `seed ${seed}: no delays`);
      assert.ok(r.stats.shortReads > 0, `seed ${seed}: no short reads`);
      assert.ok(r.stats.txStalls > 0, `seed ${seed}: no tx stalls`);
      assert.ok(
        errnoCount(r.trace, 'sock_send', ERRNO_AGAIN) > 0,
        `seed ${seed}: the guest's sock_send never saw EAGAIN: ${JSON.stringify(r.trace['sock_send'])}`,
      );
    },
  );
}

test(
  `kv under io chaos (seed ${SEEDS[0]}), stopped by SIGTERM in the middle of the load: record, replay`,
  { timeout: 60_000 },
  async (t) => {
    const seed = SEEDS[0]!;
    const r = await chaosRoundTrip(t, 'kv-busy', KV, seed, (port) => kvLoad(port, seed), {
      stopAfterMs: LOAD_MS / 2,
    });
    assert.ok(r.stats.delays > 0 && r.stats.shortReads > 0, `seed ${seed}: no delays or short reads`);
  },
);

test('kv under io chaos: resets happened, and the guest saw them', { timeout: 5000 }, (t) => {
  if (kvRuns.length < SEEDS.length) return t.skip('a kv run failed');
  const resets = kvRuns.reduce((n, r) => n + r.stats.resets, 0);
  const seen = kvRuns.reduce(
    (n, r) =>
      n + errnoCount(r.trace, 'sock_recv', ERRNO_CONNRESET) + errnoCount(r.trace, 'sock_send', ERRNO_PIPE),
    0,
  );
  t.diagnostic(`resets: ${resets}; guest calls answered CONNRESET or PIPE: ${seen}`);
  if (SEEDS.length < FIXED_SEEDS.length) {
    // One chosen seed may well reset nothing: report, do not fail.
    if (resets === 0) t.diagnostic(`seeds ${SEEDS.join(', ')}: no connection was reset`);
  } else assert.ok(resets > 0, `no connection was reset with seeds ${SEEDS.join(', ')}`);
  if (resets > 0) assert.ok(seen > 0, `${resets} resets, but no guest call saw CONNRESET or PIPE`);
});

test(
  'rust-kv (blocking sockets) under io chaos: record, replay, same summary and disk',
  { timeout: 60_000 },
  async (t) => {
    const seed = SEEDS[SEEDS.length - 1]!;
    const r = await chaosRoundTrip(t, 'rust-kv', RUST_KV, seed, (port) => rustKvLoad(port, seed));
    assert.ok(r.stats.delays > 0 && r.stats.shortReads > 0, `seed ${seed}: no delays or short reads`);
  },
);

test('the chaos policy: seeded, bounded, and it never loses or adds a byte', () => {
  const draw = (p: Prng): number[] => Array.from({ length: 100 }, () => p.nextU32());
  const draws = draw(new Prng(1234, 7));
  assert.deepEqual(draw(new Prng(1234, 7)), draws, 'one seed and stream, one sequence');
  assert.notDeepEqual(draw(new Prng(1234, 8)), draws, 'streams differ');
  assert.notEqual(new Prng(1).nextU32(), new Prng(2 ** 32 + 1).nextU32(), 'the high half of a seed counts');
  for (const seed of [0, 1, 2 ** 53 - 1, ...SEEDS]) {
    const policy = new ChaosPolicy(seed);
    const again = new ChaosPolicy(seed);
    for (let id = 1; id <= 50; id++) {
      const c = policy.forConnection(id);
      const d = again.forConnection(id);
      assert.deepEqual(
        [c.rxCapBytes, c.txCapBytes, c.resetAfterMs],
        [d.rxCapBytes, d.txCapBytes, d.resetAfterMs],
      );
      for (const cap of [c.rxCapBytes, c.txCapBytes]) {
        assert.ok(cap >= 128 && cap <= 65536 && (cap & (cap - 1)) === 0, `ring of ${cap} bytes`);
      }
      for (let k = 0; k < 50; k++) {
        const len = 1 + ((k * 7919) % 70_000);
        const pieces = c.rxPieces(len);
        assert.equal(
          pieces.reduce((n, p) => n + p.bytes, 0),
          len,
        );
        assert.ok(pieces.every((p) => p.bytes > 0 && p.delayMs >= 0 && p.delayMs <= RX_DELAY_MS_MAX));
        assert.ok(
          pieces.slice(1).every((p) => p.delayMs >= 1),
          'a later piece waits, so a read can be short',
        );
        const cuts = c.wireCuts(len);
        assert.ok(cuts.every((x, i) => x > 0 && x < len && (i === 0 || x > cuts[i - 1]!)));
        assert.ok(c.txStallMs(k) <= TX_STALL_MS_MAX);
      }
    }
  }
});
