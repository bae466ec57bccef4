/**
 * The load client (load-client.ts) against a real redis-server, which stands
 * in for the KV VM: the client's recording and the checker must accept a
 * correct store, and must catch a store that loses acknowledged state.
 *
 * - A clean run, as a separate process: the history parses, is linearizable,
 *   and so is it with a final read of every key.
 * - A crash with persistence off: redis-server is killed (-9) in the middle
 *   of the load and started again, empty, on the same port. The clients
 *   reconnect on their own, and the checker must report the lost writes.
 *   This is the negative control for the failover tests: it shows that a
 *   lossy failover would not pass unnoticed.
 * - In-process runLoad: opsMax bounds the run, and an abort stops it early.
 *
 * Waits are on the client's progress reports and are all bounded; nothing
 * asserts on timing. Skipped when redis-server is not installed.
 * Budget: about 10 s on the 2-core CI machine (each test states its own limit).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { ReplyError } from 'ioredis';
import { testSeed } from '../../src/core/prng.js';
import { History, mergeHistories } from '../checker/history.js';
import { INCR_ERROR_NOT_INTEGER } from '../checker/kv-model.js';
import { checkKvHistory, formatCheckResult } from '../checker/linearizability.js';
import {
  NOT_WRITEABLE_MESSAGE,
  checkFinalReads,
  classifyError,
  loadKeyNames,
  monotonicNowMs,
  readKeys,
  runLoad,
} from './load-client.js';
import { tempDir } from './harness.js';
import { finalStats, loadArgs, readHistory, startLoadProcess } from './load-process.js';

const HOST = '127.0.0.1';
const HAS_REDIS = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
const SKIP = HAS_REDIS ? false : 'redis-server is not installed';
/** How long redis-server may take to answer PING after it is started. */
const REDIS_START_TIMEOUT_MS = 5_000;
/** How long a wait on the load client's progress may take before the test fails. */
const PROGRESS_TIMEOUT_MS = 10_000;

const children = new Set<ChildProcess>();
const cleanups: (() => void)[] = [];
after(() => {
  for (const c of children) c.kill('SIGKILL');
  for (const cleanup of cleanups) cleanup();
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `cond` every 20 ms until it holds; throws after `timeoutMs`. */
async function waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadlineMs = monotonicNowMs() + timeoutMs;
  while (!cond()) {
    if (monotonicNowMs() >= deadlineMs)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() =>
        typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port')),
      );
    });
  });
}

/** True when something on HOST:port answers PING with +PONG. */
function pings(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    let got = '';
    const done = (ok: boolean): void => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once('error', () => done(false));
    s.once('connect', () => s.write('PING\r\n'));
    s.on('data', (d: Buffer) => {
      got += d.toString();
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
  });
}

interface RedisServer {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
}

/** Starts an empty redis-server with no persistence on HOST:port and waits until it answers. */
async function startRedis(port: number, dir: string): Promise<RedisServer> {
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.add(child);
  let log = '';
  child.stdout?.on('data', (d: Buffer) => (log += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => children.delete(child));
  const deadlineMs = monotonicNowMs() + REDIS_START_TIMEOUT_MS;
  while (!(await pings(port))) {
    if (child.exitCode !== null || child.signalCode !== null || monotonicNowMs() >= deadlineMs) {
      child.kill('SIGKILL');
      throw new Error(`redis-server on port ${port} did not start:\n${log}`);
    }
    await sleep(50);
  }
  return { child, exited };
}

async function killRedis(server: RedisServer): Promise<void> {
  server.child.kill('SIGKILL');
  await server.exited;
}

test('error classification: only a command ioredis never wrote is a fail', () => {
  assert.deepEqual(classifyError(new Error(NOT_WRITEABLE_MESSAGE)), {
    status: 'fail',
    kind: 'not-writeable',
  });
  assert.deepEqual(classifyError(new Error('Command timed out')), { status: 'info', kind: 'timeout' });
  assert.deepEqual(classifyError(new Error('Connection is closed.')), {
    status: 'info',
    kind: 'connection-closed',
  });
  const lost = new Error('Reached the max retries per request limit (which is 0).');
  lost.name = 'MaxRetriesPerRequestError';
  assert.deepEqual(classifyError(lost), { status: 'info', kind: 'connection-lost' });
  assert.equal(classifyError(new Error('read ECONNRESET')).status, 'info');
  assert.equal(classifyError('not an error').status, 'info');
  const reply = new ReplyError(INCR_ERROR_NOT_INTEGER) as Error;
  assert.deepEqual(classifyError(reply), { status: 'ok', output: INCR_ERROR_NOT_INTEGER, errorReply: true });
});

test(
  'a clean run against redis-server: the history is linearizable, final reads too',
  { skip: SKIP, timeout: 30_000 },
  async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed} (LOCKSTEP_TEST_SEED=${seed} replays the op sequence)`);
    const dir = tempDir('load-client');
    cleanups.push(dir.cleanup);
    const port = await freePort();
    const redis = await startRedis(port, dir.dir);
    try {
      const out = path.join(dir.dir, 'history.json');
      const keys = 16;
      const load = startLoadProcess(
        children,
        loadArgs({ port, clients: 4, keys, durationMs: 1_500, opsMax: 200_000, seed, out }),
      );
      const r = await load.exited;
      assert.equal(r.code, 0, `load client failed (${r.code ?? r.signal}):\n${r.stderr}`);
      const stats = finalStats(r.stdout);
      t.diagnostic(`stats ${JSON.stringify(stats)}`);
      assert.ok(stats.ok > 0, 'some operations got replies');
      assert.ok(stats.ackedWrites > 0, 'some writes were acknowledged');

      const ops = readHistory(out);
      assert.equal(ops.length, stats.ops, 'every counted operation is in the history');
      assert.equal(new Set(ops.map((o) => o.clientId)).size, 4, 'four clients recorded');
      const result = checkKvHistory(ops);
      assert.equal(result.ok, true, formatCheckResult(result));

      const finalValues = await readKeys(HOST, port, loadKeyNames(keys).all, 5_000);
      const withReads = checkFinalReads(ops, finalValues);
      assert.equal(withReads.ok, true, formatCheckResult(withReads));
    } finally {
      await killRedis(redis);
    }
  },
);

test(
  'redis-server killed (-9) and restarted empty mid-run: the checker reports the lost writes',
  { skip: SKIP, timeout: 60_000 },
  async (t) => {
    const seed = testSeed();
    t.diagnostic(`seed ${seed}`);
    const dir = tempDir('load-client-crash');
    cleanups.push(dir.cleanup);
    const port = await freePort();
    let redis = await startRedis(port, dir.dir);
    const out = path.join(dir.dir, 'history.json');
    const keys = 16;
    // The duration is only an upper bound: the test stops the client with SIGTERM.
    const load = startLoadProcess(
      children,
      loadArgs({ port, clients: 4, keys, durationMs: 20_000, opsMax: 2_000_000, seed, out }),
    );
    try {
      // With a third of the acknowledged writes being INCRs, 50 of them make an
      // acknowledged INCR certain to all but about 1e-9, and an acknowledged
      // INCR that is lost can never be explained: counters only grow.
      await waitFor(
        () => (load.latest()?.ackedWrites ?? 0) >= 50,
        PROGRESS_TIMEOUT_MS,
        '50 acknowledged writes',
      );
      await killRedis(redis);
      redis = await startRedis(port, dir.dir);
      const okAtRestart = load.latest()?.ok ?? 0;
      // Enough operations after the restart for reads of the lost keys to happen.
      await waitFor(
        () => (load.latest()?.ok ?? 0) >= okAtRestart + 200,
        PROGRESS_TIMEOUT_MS,
        '200 more replies after the restart',
      );
      load.child.kill('SIGTERM');
      const r = await load.exited;
      assert.equal(r.code, 0, `load client failed (${r.code ?? r.signal}):\n${r.stderr}`);
      const stats = finalStats(r.stdout);
      t.diagnostic(`stats ${JSON.stringify(stats)}`);

      const ops = readHistory(out);
      assert.equal(ops.length, stats.ops, 'the history was written after SIGTERM');
      const alone = checkKvHistory(ops);
      t.diagnostic(`history alone: ${formatCheckResult(alone).split('\n')[0]}`);
      assert.notEqual(
        alone.ok,
        true,
        `the run's own reads must already expose the loss: ${formatCheckResult(alone)}`,
      );

      const finalValues = await readKeys(HOST, port, loadKeyNames(keys).all, 5_000);
      const withReads = checkFinalReads(ops, finalValues);
      t.diagnostic(`with final reads: ${formatCheckResult(withReads).split('\n')[0]}`);
      assert.equal(withReads.ok, false, `expected a violation: ${formatCheckResult(withReads)}`);
    } finally {
      load.child.kill('SIGKILL');
      await killRedis(redis);
    }
  },
);

test(
  'runLoad in-process: opsMax bounds the run and an abort stops it',
  { skip: SKIP, timeout: 30_000 },
  async () => {
    const dir = tempDir('load-client-inproc');
    cleanups.push(dir.cleanup);
    const port = await freePort();
    const redis = await startRedis(port, dir.dir);
    try {
      const bounded = new History(monotonicNowMs);
      const common = { host: HOST, port, clients: 3, keys: 6, seed: 7, timeoutMs: 5_000 };
      const stats = await runLoad({ ...common, durationMs: 20_000, opsMax: 300, history: bounded });
      assert.equal(stats.ops, 300);
      assert.equal(bounded.size, 300);
      assert.equal(stats.ok, 300, JSON.stringify(stats));

      const stop = new AbortController();
      const stopped = new History(monotonicNowMs);
      const running = runLoad({
        ...common,
        durationMs: 20_000,
        opsMax: 10_000_000,
        history: stopped,
        signal: stop.signal,
        clientIdPrefix: 'second.',
      });
      await waitFor(() => stopped.size >= 100, PROGRESS_TIMEOUT_MS, '100 operations');
      stop.abort();
      const stoppedStats = await running;
      assert.equal(stoppedStats.ops, stopped.size, 'every started operation was completed in the history');
      // The store kept the first run's keys, so only the merged history starts from empty.
      const result = checkKvHistory(mergeHistories([bounded.operations(), stopped.operations()]));
      assert.equal(result.ok, true, formatCheckResult(result));
    } finally {
      await killRedis(redis);
    }
  },
);
