/**
 * The example KV server (examples/kv, C) under `lockstep run`, driven by real
 * clients from separate processes: redis-cli, redis-benchmark and ioredis.
 * Also checks that its append-only file on the VM disk survives a restart.
 *
 * Budget: about 20 s on the 2-core CI machine (each test states its own limit).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Redis } from 'ioredis';
import { repoPath, startLockstep, tempDir, type Running } from './harness.js';

const execFileP = promisify(execFile);
const KV = repoPath('examples', 'kv', 'kv.wasm');

async function redisCli(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], {
    timeout: 10_000,
  });
  return stdout.trim();
}

let disk: { dir: string; cleanup: () => void };
let vm: Running;
let port: number;

before(async () => {
  disk = tempDir('kv');
  vm = await startLockstep([
    'run',
    KV,
    '--listen',
    '127.0.0.1:0',
    '--disk',
    disk.dir,
    '--env',
    'KV_FSYNC=always',
  ]);
  port = vm.addresses[0]!.port;
});

after(async () => {
  await vm?.stop();
  disk?.cleanup();
});

test('redis-cli: PING, SET, GET, INCR, DEL, EXISTS, DBSIZE', { timeout: 20_000 }, async () => {
  assert.equal(await redisCli(port, 'PING'), 'PONG');
  assert.equal(await redisCli(port, 'SET', 'greeting', 'héllo wörld'), 'OK');
  assert.equal(await redisCli(port, 'GET', 'greeting'), 'héllo wörld');
  assert.equal(await redisCli(port, 'INCR', 'counter'), '1');
  assert.equal(await redisCli(port, 'INCR', 'counter'), '2');
  assert.equal(await redisCli(port, 'EXISTS', 'greeting', 'counter', 'nope'), '2');
  assert.equal(await redisCli(port, 'DBSIZE'), '2');
  assert.equal(await redisCli(port, 'DEL', 'counter'), '1');
  assert.equal(await redisCli(port, 'GET', 'counter'), '');
  assert.match(await redisCli(port, 'NOSUCHCOMMAND'), /ERR unknown command/);
});

test(
  'ioredis: connects (ready check), pipelines, and reads its own writes',
  { timeout: 20_000 },
  async () => {
    const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1 });
    try {
      await client.connect();
      const pipe = client.pipeline();
      for (let i = 0; i < 200; i++) pipe.set(`k${i}`, `v${i}`);
      const res = await pipe.exec();
      assert.equal(res?.length, 200);
      const values = await Promise.all(Array.from({ length: 200 }, (_, i) => client.get(`k${i}`)));
      values.forEach((v, i) => assert.equal(v, `v${i}`));
      assert.equal(await client.incr('ctr'), 1);
      const big = 'x'.repeat(300_000); // larger than a channel ring: exercises partial sends and backpressure
      await client.set('big', big);
      assert.equal(await client.get('big'), big);
    } finally {
      client.disconnect();
    }
  },
);

test('redis-benchmark: 50 clients, plain and pipelined, GET and SET', { timeout: 60_000 }, async () => {
  for (const extra of [[], ['-P', '16']]) {
    const { stdout } = await execFileP(
      'redis-benchmark',
      ['-h', '127.0.0.1', '-p', String(port), '-c', '50', '-n', '5000', '-t', 'get,set', '-q', ...extra],
      { timeout: 50_000 },
    );
    const lines = stdout.split(/[\r\n]/).filter((l) => /requests per second/.test(l));
    assert.equal(lines.length, 2, `expected GET and SET results, got: ${stdout}`);
  }
});

test('the append-only file on the disk survives a restart', { timeout: 30_000 }, async () => {
  assert.equal(await redisCli(port, 'SET', 'persist-me', '42'), 'OK');
  const r = await vm.stop('SIGTERM');
  assert.equal(r.code, 143, `stderr: ${r.stderr}`);
  const aof = readFileSync(path.join(disk.dir, 'appendonly.aof'), 'latin1');
  assert.match(aof, /persist-me/);
  vm = await startLockstep(['run', KV, '--listen', '127.0.0.1:0', '--disk', disk.dir]);
  port = vm.addresses[0]!.port;
  assert.equal(await redisCli(port, 'GET', 'persist-me'), '42');
  assert.equal(await redisCli(port, 'GET', 'greeting'), 'héllo wörld');
});
