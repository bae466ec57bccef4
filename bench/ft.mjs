#!/usr/bin/env node
// FT benchmarks (issue 5), on one 3-host local cluster (file: coordinator,
// fast profile), all figures as medians over rounds and as ratios to a
// baseline measured in the same run:
//
// 1. Overhead: redis-benchmark (50 clients, SET and GET) against two VMs of
//    the example KV server in the same cluster, one unprotected and one FT
//    (protected), interleaved round by round. Throughput ratio FT/plain and
//    the p50/p99 latencies of each, from redis-benchmark's --csv output.
// 2. Logging bandwidth: bytes appended to the FT primary's log per second
//    while redis-benchmark runs (the primary's live `logBytes`, from its own
//    API: what the channel carries; its ft.log is a bounded spill buffer now)
//    the channel carries), and per request.
// 3. Synchronous replication, compared: a real redis-server with one replica,
//    each write followed by WAIT 1 0 (the write is on the replica before the
//    client hears back), driven by the same ioredis workload as the FT VM.
// 4. Failover time: kill -9 of the FT primary's host, until the service
//    address answers PING again (20 ms polling would hide the detail, so 5 ms),
//    over --kills kills; the killed host is started again and the pair
//    re-forms between kills.
//
// 5. Latency at a fixed offered load (half the unprotected peak): paced SETs
//    from 50 connections, latency measured from each request's scheduled time
//    (so queueing is not hidden), p50 and p99 for the plain and the FT VM; and
//    CPU-seconds per request of the primary's and the backup's host processes.
//
// Usage: node bench/ft.mjs [--profile fast|default] [--only failover] [--rounds N]
//                          [--requests N] [--kills N] [--rate-fraction F] [--rate N] [--out FILE]
//        --only failover: only the kills; --only latency --rate N: only idle logging and the fixed load
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { LOCKSTEP_BIN, ROOT } from './lib/kvbench.mjs';
import { cliArg, median, ping, startHost as startHostIn } from './lib/cluster.mjs';

const root = ROOT;
const bin = LOCKSTEP_BIN;
const arg = cliArg;
const rounds = Number(arg('--rounds', '5'));
const requests = Number(arg('--requests', '20000'));
const kills = Number(arg('--kills', '20'));
const out = arg('--out', null);
const profile = arg('--profile', 'fast');
const only = arg('--only', null);
/** The fixed offered load, as a fraction of the unprotected peak (the issue asks for 0.5). */
const rateFraction = Number(arg('--rate-fraction', '0.5'));
/** An absolute fixed load (requests/s) instead of the fraction (with --only latency). */
const rateAbs = arg('--rate', null);
const { Redis } = await import('ioredis');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round2 = (x) => (x === null ? null : Math.round(x * 100) / 100);

const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-ft-'));
const coordinator = `file:${path.join(dir, 'coord')}`;
const env = { ...process.env, LOCKSTEP_COORDINATOR: coordinator };
const hosts = new Map();
/** Every host process started, for the logs kept when --keep-logs DIR is given. */
const started = [];
const keepLogs = arg('--keep-logs', null);
const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

async function startHost(name) {
  const h = await startHostIn(dir, name, coordinator, profile);
  children.add(h.child);
  h.child.once('exit', () => children.delete(h.child));
  hosts.set(name, h);
  started.push(h);
  return h;
}

function lockstep(...args) {
  const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`lockstep ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

/** The primary's live count of log bytes produced, from its own host API. */
let apiToken = null;
async function liveLogBytes(name, primary) {
  apiToken ??= spawnSync(process.execPath, [bin, 'cluster', 'token'], {
    env,
    encoding: 'utf8',
  }).stdout.trim();
  const res = await globalThis.fetch(`http://${hosts.get(primary).api}/v1/vms/${name}`, {
    headers: { authorization: `Bearer ${apiToken}` },
  });
  const v = await res.json();
  if (typeof v.logBytes !== 'number')
    throw new Error(`no live logBytes from ${primary}: ${JSON.stringify(v)}`);
  return v.logBytes;
}

async function waitProtected(name) {
  for (let i = 0; i < 600; i++) {
    const s = lockstep('vm', 'show', name, '--json');
    if (s.protection === 'protected') return s;
    await sleep(100);
  }
  throw new Error(`${name} never became protected`);
}

/** redis-benchmark --csv: per test, rps and latency percentiles (ms). */
function redisBenchmark(host, port) {
  const r = spawnSync(
    'redis-benchmark',
    ['-h', host, '-p', String(port), '-c', '50', '-n', String(requests), '-t', 'set,get', '--csv'],
    { encoding: 'utf8', timeout: 300_000 },
  );
  if (r.status !== 0) throw new Error(`redis-benchmark: ${r.stderr}`);
  const rows = {};
  for (const line of r.stdout.trim().split('\n').slice(1)) {
    const cells = line.split(',').map((c) => c.replace(/"/g, ''));
    rows[cells[0]] = { rps: Number(cells[1]), p50: Number(cells[5]), p99: Number(cells[7]) };
  }
  return rows;
}

/** The ioredis workload of the WAIT comparison: N clients, each SET (+ WAIT 1 0) in turn. */
async function ioredisWrites(host, port, withWait, opsPerClient, clients = 50) {
  const conns = await Promise.all(
    Array.from({ length: clients }, async () => {
      const r = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 0 });
      await r.connect();
      return r;
    }),
  );
  const t0 = performance.now();
  await Promise.all(
    conns.map(async (r, c) => {
      for (let i = 0; i < opsPerClient; i++) {
        await r.set(`k${c}:${i % 100}`, `v${i}`);
        if (withWait) await r.call('WAIT', '1', '0');
      }
    }),
  );
  const s = (performance.now() - t0) / 1000;
  for (const r of conns) r.disconnect();
  return (clients * opsPerClient) / s;
}

function startRedis(port, extra = []) {
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      ...extra,
    ],
    {
      stdio: 'ignore',
    },
  );
  children.add(child);
  return child;
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** CPU-seconds (user + system) a process has used, from /proc. */
function cpuSeconds(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in ticks (CLK_TCK 100)
}

/**
 * Paced SETs at `ratePerSec` for `durationMs` over `conns` connections;
 * latency from each request's scheduled time. Returns p50/p99 in ms.
 */
async function pacedLatency(host, port, ratePerSec, durationMs, conns = 50) {
  const sockets = await Promise.all(
    Array.from(
      { length: conns },
      () =>
        new Promise((resolve, reject) => {
          const s = net.connect({ host, port }, () => resolve(s));
          s.once('error', reject);
          s.setNoDelay(true);
        }),
    ),
  );
  const lat = [];
  const queue = [];
  const free = [...sockets];
  const t0 = performance.now();
  const total = Math.floor((ratePerSec * durationMs) / 1000);
  const inflight = new Map();
  let n = 0;
  const pump = () => {
    while (free.length > 0 && queue.length > 0) {
      const s = free.shift();
      inflight.set(s, queue.shift());
      s.write(`SET paced:${n % 1000} ${n}\r\n`);
      n++;
    }
  };
  for (const s of sockets) {
    let buf = '';
    s.on('data', (b) => {
      buf += b.toString();
      while (buf.includes('\r\n')) {
        buf = buf.slice(buf.indexOf('\r\n') + 2);
        lat.push(performance.now() - inflight.get(s));
        free.push(s);
        pump();
      }
    });
  }
  let scheduled = 0;
  while (scheduled < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * ratePerSec) / 1000));
    for (; scheduled < due; scheduled++) queue.push(t0 + (scheduled * 1000) / ratePerSec);
    pump();
    await sleep(1);
  }
  for (let i = 0; i < 2000 && lat.length < total; i++) await sleep(5);
  for (const s of sockets) s.destroy();
  lat.sort((a, b) => a - b);
  return { p50: lat[Math.floor(lat.length * 0.5)], p99: lat[Math.floor(lat.length * 0.99)], n: lat.length };
}

const results = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: os.cpus().length,
  profile,
  rounds,
  requests,
};
try {
  for (const n of ['h1', 'h2', 'h3']) await startHost(n);
  const ipPlain = `127.0.${100 + (process.pid % 100)}.20`;
  const ipFt = `127.0.${100 + (process.pid % 100)}.21`;
  for (const [name, ip, ft] of [
    ['plain', ipPlain, false],
    ['ftkv', ipFt, true],
  ]) {
    const image = path.join(dir, `image-${name}`);
    mkdirSync(image);
    lockstep(
      'vm',
      'create',
      name,
      '--wasm',
      path.join(root, 'examples', 'kv', 'kv.wasm'),
      '--listen',
      `${ip}:6379`,
      '--disk',
      image,
      '--host',
      'h1',
      ...(ft ? ['--ft'] : []),
      '--json',
      '--timeout-ms',
      '60000',
    );
  }
  await waitProtected('ftkv');

  // 1 and 2: overhead and logging bandwidth, interleaved.
  const per = [];
  for (let r = 0; r < (only === 'failover' || only === 'latency' ? 0 : rounds); r++) {
    const plain = redisBenchmark(ipPlain, 6379);
    const ftStatus = await waitProtected('ftkv');
    const bytes0 = await liveLogBytes('ftkv', ftStatus.primary);
    const t0 = performance.now();
    const ft = redisBenchmark(ipFt, 6379);
    const secs = (performance.now() - t0) / 1000;
    const logBytes = (await liveLogBytes('ftkv', ftStatus.primary)) - bytes0;
    const row = {
      setRatio: ft.SET.rps / plain.SET.rps,
      getRatio: ft.GET.rps / plain.GET.rps,
      plain,
      ft,
      logBytesPerSec: logBytes / secs,
      logBytesPerRequest: logBytes / (2 * requests),
    };
    per.push(row);
    process.stderr.write(
      `round ${r + 1}/${rounds}: FT/plain SET ${round2(row.setRatio)} GET ${round2(row.getRatio)}; log ${Math.round(row.logBytesPerSec / 1024)} KiB/s\n`,
    );
  }
  if (only !== 'failover') {
    // Idle logging: the guest's own timers and polls, with no client.
    const st0 = await waitProtected('ftkv');
    const idle0 = await liveLogBytes('ftkv', st0.primary);
    await sleep(5000);
    results.idleLogBytesPerSec = Math.round(((await liveLogBytes('ftkv', st0.primary)) - idle0) / 5);
    // 5: latency at half the unprotected peak, and CPU per request on each host.
    // With --only latency the peak is measured here, once.
    const peak =
      per.length > 0 ? median(per.map((p) => p.plain.SET.rps)) : redisBenchmark(ipPlain, 6379).SET.rps;
    const rate = rateAbs !== null ? Number(rateAbs) : Math.round(peak * rateFraction);
    const lats = [];
    for (let r = 0; r < rounds; r++) {
      const plain = await pacedLatency(ipPlain, 6379, rate, 3000);
      const st = await waitProtected('ftkv');
      const pPid = hosts.get(st.primary).pid;
      const bPid = hosts.get(st.backup).pid;
      const c0 = [cpuSeconds(pPid), cpuSeconds(bPid)];
      const ft = await pacedLatency(ipFt, 6379, rate, 3000);
      const c1 = [cpuSeconds(pPid), cpuSeconds(bPid)];
      lats.push({
        plain,
        ft,
        primaryCpuPerReqUs: ((c1[0] - c0[0]) / ft.n) * 1e6,
        backupCpuPerReqUs: ((c1[1] - c0[1]) / ft.n) * 1e6,
      });
      process.stderr.write(
        `round ${r + 1}/${rounds} at ${rate}/s: p50 plain ${plain.p50.toFixed(2)} ms, FT ${ft.p50.toFixed(2)} ms; p99 plain ${plain.p99.toFixed(2)}, FT ${ft.p99.toFixed(2)}\n`,
      );
    }
    results.fixedLoad = {
      ratePerSec: rate,
      fractionOfPlainPeak: rateFraction,
      plainP50Ms: round2(median(lats.map((l) => l.plain.p50))),
      plainP99Ms: round2(median(lats.map((l) => l.plain.p99))),
      ftP50Ms: round2(median(lats.map((l) => l.ft.p50))),
      ftP99Ms: round2(median(lats.map((l) => l.ft.p99))),
      addedP50Ms: round2(median(lats.map((l) => l.ft.p50 - l.plain.p50))),
      primaryHostCpuUsPerRequest: Math.round(median(lats.map((l) => l.primaryCpuPerReqUs))),
      backupHostCpuUsPerRequest: Math.round(median(lats.map((l) => l.backupCpuPerReqUs))),
    };
  }
  if (only !== 'failover' && only !== 'latency') {
    results.overhead = {
      setRatio: round2(median(per.map((p) => p.setRatio))),
      getRatio: round2(median(per.map((p) => p.getRatio))),
      plain: {
        setRps: Math.round(median(per.map((p) => p.plain.SET.rps))),
        getRps: Math.round(median(per.map((p) => p.plain.GET.rps))),
        setP50: median(per.map((p) => p.plain.SET.p50)),
        setP99: median(per.map((p) => p.plain.SET.p99)),
        getP50: median(per.map((p) => p.plain.GET.p50)),
        getP99: median(per.map((p) => p.plain.GET.p99)),
      },
      ft: {
        setRps: Math.round(median(per.map((p) => p.ft.SET.rps))),
        getRps: Math.round(median(per.map((p) => p.ft.GET.rps))),
        setP50: median(per.map((p) => p.ft.SET.p50)),
        setP99: median(per.map((p) => p.ft.SET.p99)),
        getP50: median(per.map((p) => p.ft.GET.p50)),
        getP99: median(per.map((p) => p.ft.GET.p99)),
      },
      logKiBPerSec: Math.round(median(per.map((p) => p.logBytesPerSec)) / 1024),
      logBytesPerRequest: Math.round(median(per.map((p) => p.logBytesPerRequest))),
    };

    // 3: WAIT 1 0 on real Redis replication vs the FT VM, same ioredis workload.
    const mPort = await freePort();
    const rPort = await freePort();
    startRedis(mPort);
    startRedis(rPort, ['--replicaof', '127.0.0.1', String(mPort)]);
    for (let i = 0; i < 100; i++) {
      const r = spawnSync('redis-cli', ['-p', String(mPort), 'INFO', 'replication'], { encoding: 'utf8' });
      if (/connected_slaves:1/.test(r.stdout) && /state=online/.test(r.stdout)) break;
      await sleep(100);
    }
    const waits = [];
    for (let r = 0; r < rounds; r++) {
      const redisWait = await ioredisWrites('127.0.0.1', mPort, true, 200);
      const redisNoWait = await ioredisWrites('127.0.0.1', mPort, false, 200);
      const lockstepFt = await ioredisWrites(ipFt, 6379, false, 200);
      waits.push({ redisWait, redisNoWait, lockstepFt });
      process.stderr.write(
        `round ${r + 1}/${rounds}: writes/s redis+WAIT ${Math.round(redisWait)}, redis ${Math.round(redisNoWait)}, lockstep FT ${Math.round(lockstepFt)}\n`,
      );
    }
    results.syncReplication = {
      redisWaitWritesPerSec: Math.round(median(waits.map((w) => w.redisWait))),
      redisNoWaitWritesPerSec: Math.round(median(waits.map((w) => w.redisNoWait))),
      lockstepFtWritesPerSec: Math.round(median(waits.map((w) => w.lockstepFt))),
      ratioFtToRedisWait: round2(median(waits.map((w) => w.lockstepFt / w.redisWait))),
    };
  }

  // 4: failover time over kills.
  const failovers = [];
  for (let k = 0; k < (only === 'latency' ? 0 : kills); k++) {
    const s = await waitProtected('ftkv');
    const victim = hosts.get(s.primary);
    const killedAt = performance.now();
    victim.child.kill('SIGKILL');
    // Until the old primary's socket is gone a PING could still be answered by it: wait for it.
    await new Promise((r) => victim.child.once('exit', r));
    let servedMs = null;
    while (performance.now() - killedAt < 30_000) {
      if (await ping(ipFt, 6379)) {
        servedMs = performance.now() - killedAt;
        break;
      }
      await sleep(5);
    }
    failovers.push(servedMs);
    process.stderr.write(
      `kill ${k + 1}/${kills}: ${s.primary} -> serving again after ${servedMs === null ? 'never' : Math.round(servedMs) + ' ms'}\n`,
    );
    await startHost(s.primary);
  }
  const sorted = failovers.filter((x) => x !== null).sort((a, b) => a - b);
  results.failover = {
    kills,
    servedAgain: sorted.length,
    medianMs: Math.round(median(sorted)),
    p90Ms: Math.round(sorted[Math.floor(sorted.length * 0.9)] ?? NaN),
    maxMs: Math.round(sorted[sorted.length - 1] ?? NaN),
  };
} finally {
  for (const c of children) c.kill('SIGKILL');
  if (keepLogs !== null) {
    mkdirSync(keepLogs, { recursive: true });
    started.forEach((h, i) => writeFileSync(path.join(keepLogs, `${i}-${h.name}.log`), h.log()));
  }
  rmSync(dir, { recursive: true, force: true });
}
const text = JSON.stringify(results, null, 2);
process.stdout.write(text + '\n');
if (out !== null) writeFileSync(out, text + '\n');
