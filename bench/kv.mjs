#!/usr/bin/env node
// The KV benchmark: examples/kv/kv.wasm under `lockstep run`, against the same C source built
// natively with gcc, and against redis-server itself. Run from the repository root after a build:
//
//   node bench/kv.mjs [--runs N] [--requests N] [--pipeline-requests N] [--startup-runs N]
//                     [--quick] [--no-startup] [--out FILE] [--max-minutes M]
//
// What it does (docs/BENCHMARKS.md has the method and the results):
//   1. Startup: time from spawn to the first PONG, for Lockstep with a cold instrumentation
//      cache (a fresh LOCKSTEP_CACHE_DIR) and a warm one, interleaved; native and redis-server
//      for reference. Medians.
//   2. Throughput: starts the three servers once on free loopback ports (127.0.0.1 only), warms
//      each up, then runs N rounds; each round runs every server in a rotating order, each with
//      `redis-benchmark -c 50 -t get,set` non-pipelined and with -P 16. Quotes medians over the
//      rounds, and the ratios lockstep/native and lockstep/redis-server computed per round, then
//      medianed. Lockstep runs the guest with KV_FSYNC=no (as does native), so the disk does not
//      dominate; redis-server runs without persistence.
//   3. CPU: per-thread CPU time of each server process from /proc/<pid>/task/*/stat, sampled
//      around every redis-benchmark run, per request; for Lockstep split into the main (I/O)
//      thread, the vCPU worker thread and the rest (V8's compiler and GC helpers). The client's
//      CPU is shown too: on a 2-core machine the client competes with the server.
// Results: a markdown table on stdout and JSON in bench/results/kv-<date>.json.
import os from 'node:os';
import path from 'node:path';
import {
  ROOT,
  SERVERS,
  cpuSplit,
  ensureDist,
  busyProcesses,
  ensureNativeBuild,
  lockstepThreads,
  machineFacts,
  median,
  redisBenchmark,
  shellLine,
  startServer,
  tempDir,
  threadCpu,
  writeResults,
  numberOption,
} from './lib/kvbench.mjs';

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
const opt = (name, def) => numberOption(argv, name, def);
if (argv.includes('--help')) {
  process.stdout.write(
    'usage: node bench/kv.mjs [--runs N] [--requests N] [--pipeline-requests N] [--startup-runs N]\n' +
      '                         [--quick] [--no-startup] [--out FILE] [--max-minutes M]\n',
  );
  process.exit(0);
}
const quick = argv.includes('--quick');
const cfg = {
  runs: opt('--runs', quick ? 2 : 5),
  requests: opt('--requests', quick ? 20_000 : 100_000),
  pipelineRequests: 0,
  startupRuns: opt('--startup-runs', quick ? 2 : 5),
  clients: 50,
  pipeline: 16,
  tests: 'get,set',
  servers: ['lockstep', 'native', 'redis'],
  startup: !argv.includes('--no-startup'),
  maxMinutes: opt('--max-minutes', 45),
  quick,
};
cfg.pipelineRequests = opt('--pipeline-requests', cfg.requests * 5);
const outIdx = argv.indexOf('--out');
const date = new Date().toISOString().slice(0, 10);
const outFile =
  outIdx >= 0
    ? path.resolve(argv[outIdx + 1])
    : path.join(ROOT, 'bench/results', `kv-${date}${quick ? '-quick' : ''}.json`);
const deadline = Date.now() + cfg.maxMinutes * 60_000;
const log = (s) => process.stderr.write(s + '\n');
const r0 = (x, d = 0) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);

// ---------------------------------------------------------------- setup

ensureDist();
ensureNativeBuild();
const facts = machineFacts();
const busy = await busyProcesses();
facts.busyAtStart = busy;
for (const b of busy)
  process.stderr.write(`bench: WARNING: another process is busy (${b.cpuPct}% CPU): pid ${b.pid} ${b.cmd}\n`);
const cacheDir = tempDir('kvbench-cache-'); // Lockstep's instrumentation cache for this run
const MODES = [
  { name: 'plain', pipeline: 1, requests: cfg.requests },
  { name: 'pipelined', pipeline: cfg.pipeline, requests: cfg.pipelineRequests },
];
const benchTimeoutMs = (requests) => Math.max(60_000, requests / 2); // >= 2,000 req/s or fail

log(`bench: ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}, ${facts.redisServer}`);
log(`bench: load average at start ${facts.loadavgAtStart.join(' ')}`);
log(`bench: config ${JSON.stringify(cfg)}`);
log('bench: reproduce with:');
log(`  node bench/kv.mjs ${argv.join(' ')}`.trimEnd());
const example = (kind) => shellLine(SERVERS[kind]({ port: 'PORT', dir: 'TMPDIR', cacheDir: 'CACHEDIR' }));
for (const k of cfg.servers) log(`  server ${k}: ${example(k)}`);
log(
  `  client: redis-benchmark -h 127.0.0.1 -p PORT -c ${cfg.clients} -n ${cfg.requests} -t ${cfg.tests} --csv`,
);
log(
  `  client: redis-benchmark -h 127.0.0.1 -p PORT -c ${cfg.clients} -n ${cfg.pipelineRequests} -t ${cfg.tests} --csv -P ${cfg.pipeline}`,
);

const result = {
  benchmark: 'kv',
  date: new Date().toISOString(),
  config: cfg,
  machine: facts,
  commands: Object.fromEntries(cfg.servers.map((k) => [k, example(k)])),
  startup: null,
  rounds: [],
  medians: null,
  ratios: null,
  cpu: null,
  complete: false,
};

// ---------------------------------------------------------------- 1. startup

async function measureStartup() {
  log('\n== startup: spawn to first PONG ==');
  // Populate the shared cache once, so "warm" starts hit it.
  const first = await startServer('lockstep', { cacheDir });
  log(`  lockstep first start (fills the cache): ${first.startupMs.toFixed(0)} ms`);
  await first.stop();
  const samples = { 'lockstep-cold': [], 'lockstep-warm': [], native: [], redis: [] };
  for (let i = 0; i < cfg.startupRuns && Date.now() < deadline; i++) {
    const order =
      i % 2 === 0
        ? ['lockstep-cold', 'lockstep-warm', 'native', 'redis']
        : ['redis', 'native', 'lockstep-warm', 'lockstep-cold'];
    for (const which of order) {
      const kind = which.startsWith('lockstep') ? 'lockstep' : which;
      const dir = which === 'lockstep-cold' ? tempDir('kvbench-coldcache-') : cacheDir;
      const s = await startServer(kind, { cacheDir: dir });
      samples[which].push(s.startupMs);
      await s.stop();
    }
    log(
      `  round ${i + 1}: ${Object.entries(samples)
        .map(([k, v]) => `${k} ${v[v.length - 1].toFixed(0)} ms`)
        .join(', ')}`,
    );
  }
  return Object.fromEntries(
    Object.entries(samples).map(([k, v]) => [
      k,
      { medianMs: r0(median(v), 1), samplesMs: v.map((x) => r0(x, 1)) },
    ]),
  );
}

// ---------------------------------------------------------------- 2+3. throughput and CPU

async function measureOne(server, mode, threads) {
  const before = threadCpu(server.pid);
  const b = await redisBenchmark(server.port, {
    tests: cfg.tests,
    requests: mode.requests,
    clients: cfg.clients,
    pipeline: mode.pipeline,
    timeoutMs: benchTimeoutMs(mode.requests),
  });
  const after = threadCpu(server.pid);
  if (server.child.exitCode !== null || server.child.signalCode !== null) {
    throw new Error(`${server.kind} died during the benchmark: ${server.child.stderrText.slice(-500)}`);
  }
  const total = mode.requests * cfg.tests.split(',').length; // requests served in this run
  const cpu = cpuSplit(before, after, threads);
  const us = (s) => r0((s * 1e6) / total, 2);
  return {
    rps: b.rps,
    wallS: r0(b.wallS, 2),
    cpuUsPerReq: {
      main: us(cpu.main),
      vcpu: us(cpu.vcpu),
      other: us(cpu.other),
      total: us(cpu.total),
      sys: us(cpu.sys),
    },
    clientCpuUsPerReq: b.clientCpuS === null ? null : us(b.clientCpuS),
  };
}

async function measureThroughput() {
  log('\n== throughput ==');
  const servers = {};
  for (const k of cfg.servers) {
    servers[k] = await startServer(k, { cacheDir });
    if (k === 'lockstep') servers[k].threads = lockstepThreads(servers[k].pid);
    log(`  started ${k} on port ${servers[k].port} (pid ${servers[k].pid})`);
  }
  try {
    // Warm-up: lets V8 tier the guest and the host up to optimised code, and fills the key.
    for (const k of cfg.servers) {
      for (const mode of MODES) {
        await measureOne(
          servers[k],
          { ...mode, requests: Math.ceil(mode.requests / 2) },
          servers[k].threads ?? null,
        );
      }
      log(`  warmed up ${k}`);
    }
    for (let round = 0; round < cfg.runs; round++) {
      if (Date.now() > deadline) {
        log(`  time budget of ${cfg.maxMinutes} min reached after ${round} rounds`);
        break;
      }
      const order = cfg.servers.map((_, i) => cfg.servers[(i + round) % cfg.servers.length]);
      const modes = round % 2 === 0 ? MODES : [...MODES].reverse();
      const rec = { round: round + 1, order, results: {} };
      for (const k of order) {
        rec.results[k] = {};
        for (const mode of modes) {
          rec.results[k][mode.name] = await measureOne(servers[k], mode, servers[k].threads ?? null);
        }
      }
      result.rounds.push(rec);
      const line = (k) =>
        MODES.map(
          (m) =>
            `${m.name} SET ${rec.results[k][m.name].rps.SET.toFixed(0)} GET ${rec.results[k][m.name].rps.GET.toFixed(0)}`,
        ).join(' | ');
      log(`  round ${round + 1} (${order.join(', ')}):`);
      for (const k of cfg.servers) log(`    ${k.padEnd(8)} ${line(k)}`);
    }
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop()));
  }
}

function summarise() {
  const rounds = result.rounds;
  const tests = ['SET', 'GET'];
  const medians = {};
  const cpu = {};
  for (const k of cfg.servers) {
    medians[k] = {};
    cpu[k] = {};
    for (const m of MODES) {
      medians[k][m.name] = {};
      for (const t of tests)
        medians[k][m.name][t] = r0(median(rounds.map((r) => r.results[k][m.name].rps[t])));
      const pick = (f) => r0(median(rounds.map((r) => f(r.results[k][m.name]))), 2);
      cpu[k][m.name] = {
        main: pick((x) => x.cpuUsPerReq.main),
        vcpu: pick((x) => x.cpuUsPerReq.vcpu),
        other: pick((x) => x.cpuUsPerReq.other),
        total: pick((x) => x.cpuUsPerReq.total),
        sys: pick((x) => x.cpuUsPerReq.sys),
        client: pick((x) => x.clientCpuUsPerReq),
      };
    }
  }
  const ratios = {};
  for (const other of ['native', 'redis']) {
    ratios[`lockstep/${other}`] = {};
    for (const m of MODES) {
      ratios[`lockstep/${other}`][m.name] = {};
      for (const t of tests) {
        const per = rounds.map((r) => r.results.lockstep[m.name].rps[t] / r.results[other][m.name].rps[t]);
        ratios[`lockstep/${other}`][m.name][t] = {
          median: r0(median(per), 3),
          min: r0(Math.min(...per), 3),
          max: r0(Math.max(...per), 3),
        };
      }
    }
  }
  result.medians = medians;
  result.ratios = ratios;
  result.cpu = cpu;
}

function markdown() {
  const L = [];
  const n = result.rounds.length;
  const f = (x) => (x === null ? 'n/a' : Math.round(x).toLocaleString('en-US'));
  const rt = (x) => (x ? `${x.median.toFixed(2)}× (${x.min.toFixed(2)}–${x.max.toFixed(2)})` : 'n/a');
  L.push(
    `KV benchmark, ${result.date.slice(0, 10)}: ${cfg.clients} clients, medians of ${n} interleaved rounds (req/s); ratios per round, medianed (min–max)`,
  );
  L.push('');
  L.push('| mode | test | lockstep | native (gcc) | redis-server | lockstep/native | lockstep/redis |');
  L.push('|---|---|---:|---:|---:|---:|---:|');
  for (const m of MODES) {
    for (const t of ['SET', 'GET']) {
      const label = m.pipeline > 1 ? `-P ${m.pipeline}` : 'no pipeline';
      L.push(
        `| ${label} | ${t} | ${f(result.medians.lockstep[m.name][t])} | ${f(result.medians.native[m.name][t])} | ${f(result.medians.redis[m.name][t])} | ${rt(result.ratios['lockstep/native'][m.name][t])} | ${rt(result.ratios['lockstep/redis'][m.name][t])} |`,
      );
    }
  }
  L.push('');
  L.push(
    'CPU time per request (µs, median over rounds; GET and SET together). Lockstep: main = I/O thread, vCPU = worker, other = V8 helpers',
  );
  L.push('');
  L.push('| server | mode | main | vCPU | other | server total | of which kernel | redis-benchmark client |');
  L.push('|---|---|---:|---:|---:|---:|---:|---:|');
  const g = (x) => (x === null ? 'n/a' : x.toFixed(2));
  for (const k of cfg.servers) {
    for (const m of MODES) {
      const c = result.cpu[k][m.name];
      const isL = k === 'lockstep';
      L.push(
        `| ${k} | ${m.name === 'plain' ? 'no pipeline' : `-P ${m.pipeline}`} | ${isL ? g(c.main) : '—'} | ${isL ? g(c.vcpu) : '—'} | ${isL ? g(c.other) : '—'} | ${g(c.total)} | ${g(c.sys)} | ${g(c.client)} |`,
      );
    }
  }
  if (result.startup) {
    L.push('');
    L.push(`Startup, spawn to first PONG (median of ${cfg.startupRuns}):`);
    L.push('');
    L.push('| lockstep, cold cache | lockstep, warm cache | native | redis-server |');
    L.push('|---:|---:|---:|---:|');
    const s = result.startup;
    L.push(
      `| ${f(s['lockstep-cold'].medianMs)} ms | ${f(s['lockstep-warm'].medianMs)} ms | ${f(s.native.medianMs)} ms | ${f(s.redis.medianMs)} ms |`,
    );
  }
  return L.join('\n');
}

function save() {
  writeResults(outFile, result);
  log(`\nbench: results written to ${path.relative(ROOT, outFile)}`);
}

let failed = false;
try {
  if (cfg.startup) result.startup = await measureStartup();
  await measureThroughput();
  if (result.rounds.length === 0) throw new Error('no complete round');
  summarise();
  result.complete = result.rounds.length === cfg.runs;
  result.machine.loadavgAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  process.stdout.write('\n' + markdown() + '\n');
} catch (e) {
  failed = true;
  log(`bench: FAILED: ${e.stack ?? e}`);
  if (result.rounds.length > 0) summarise();
} finally {
  save();
}
process.exit(failed ? 1 : 0);
