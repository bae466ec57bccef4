#!/usr/bin/env node
// The record/replay benchmark: what `lockstep record` costs next to `lockstep run`, how fast
// `lockstep replay` re-executes a recording, and how big the event log grows. Run from the
// repository root after a build (`npx tsc -p tsconfig.json`):
//
//   node bench/record.mjs [--runs N] [--quick] [--only throughput,replay,bytes,idle]
//                         [--requests N] [--pipeline-requests N] [--set-requests N]
//                         [--set-requests-c1 N] [--idle-seconds S] [--idle-runs N]
//                         [--out FILE] [--max-minutes M] [--no-snapshot] [--no-long-replay]
//
// The four measurements (docs/BENCHMARKS.md, "Record and replay", has the method and results):
//   1. throughput: `lockstep run` and `lockstep record` of examples/kv/kv.wasm (KV_FSYNC=no), both
//      started once on loopback ports with fresh disks and warmed up; each round runs
//      `redis-benchmark -c 50 -t set,get` non-pipelined and with -P 16 against both, in a rotating
//      order; the ratio record/run is computed per round, then medianed. Per-thread CPU from
//      /proc/<pid>/task/*/stat around every run. Target: record >= 0.95x run.
//   2. replay: per round and mode, a fresh recorder serves one redis-benchmark run and is stopped
//      with SIGTERM; the recording's event rate is (events - the startup's events) / the
//      redis-benchmark's wall time (spawn to exit). The log is then replayed; the replay rate is
//      events / (replay wall time, spawn to exit, minus the wall time of replaying a log of the
//      same startup with no requests), raw rate quoted too. Target: replay rate >= 2x record rate.
//   3. bytes: log bytes per unpipelined `SET` with a 100-byte value (`redis-benchmark -t set -d 100
//      -P 1`, -c 50 and -c 1), minus a log of the same startup with no requests, over the SET
//      request's exact bytes (captured from redis-benchmark by a RESP server in this script).
//      Target: <= the request's bytes + 48.
//   4. idle: log bytes per second of test/guests/idle_poll.wasm (poll with a 1 s timeout, forever)
//      recorded for S seconds, minus a log of the same startup; and of the KV guest idle with
//      KV_FSYNC=everysec, and idle with one expiring key (kv then sweeps every 100 ms).
//      Target: <= 100 B/s for the 1 s poll.
// By default the script copies bin/ and dist/ to a temporary folder first, so that a rebuild of
// the working tree during the run does not change the code under test (--no-snapshot: use them
// in place). Results: a markdown table on stdout, JSON in bench/results/record-<date>.json.
import os from 'node:os';
import path from 'node:path';
import { rmSync } from 'node:fs';
import {
  LOCKSTEP_BIN,
  ROOT,
  busyProcesses,
  cpuSplit,
  ensureDist,
  lockstepThreads,
  machineFacts,
  median,
  numberOption,
  sleep,
  tempDir,
  threadCpu,
  writeResults,
} from './lib/kvbench.mjs';
import {
  KV_WASM,
  captureSetRequest,
  gitState,
  machineCpu,
  redisBench,
  replay,
  respCommand,
  snapshotBuild,
  startIdlePoll,
  startKv,
  stopProcess,
  stopRecorder,
} from './lib/record-bench.mjs';

// ---------------------------------------------------------------- options

const argv = process.argv.slice(2);
const opt = (name, def) => numberOption(argv, name, def);
if (argv.includes('--help')) {
  process.stdout.write(
    'usage: node bench/record.mjs [--runs N] [--quick] [--only throughput,replay,bytes,idle]\n' +
      '                             [--requests N] [--pipeline-requests N] [--set-requests N]\n' +
      '                             [--set-requests-c1 N] [--idle-seconds S] [--idle-runs N]\n' +
      '                             [--out FILE] [--max-minutes M] [--no-snapshot] [--no-long-replay]\n',
  );
  process.exit(0);
}
const quick = argv.includes('--quick');
const ALL = ['throughput', 'replay', 'bytes', 'idle'];
const onlyIdx = argv.indexOf('--only');
const only = onlyIdx >= 0 ? (argv[onlyIdx + 1] ?? '').split(',') : ALL;
if (only.some((x) => !ALL.includes(x))) {
  process.stderr.write(`bench: --only takes a comma-separated subset of ${ALL.join(',')}\n`);
  process.exit(2);
}
const cfg = {
  runs: opt('--runs', quick ? 2 : 7),
  requests: opt('--requests', quick ? 20_000 : 100_000),
  pipelineRequests: 0,
  setRequests: opt('--set-requests', quick ? 20_000 : 100_000),
  setRequestsC1: opt('--set-requests-c1', quick ? 5_000 : 20_000),
  idleSeconds: opt('--idle-seconds', quick ? 5 : 15),
  idleRuns: opt('--idle-runs', quick ? 1 : 2),
  clients: 50,
  pipeline: 16,
  tests: 'set,get',
  valueBytes: 100,
  only,
  snapshot: !argv.includes('--no-snapshot'),
  longReplay: !argv.includes('--no-long-replay'),
  maxMinutes: opt('--max-minutes', 40),
  quick,
};
cfg.pipelineRequests = opt('--pipeline-requests', cfg.requests * 5);
const outIdx = argv.indexOf('--out');
const date = new Date().toISOString().slice(0, 10);
const outFile =
  outIdx >= 0
    ? path.resolve(argv[outIdx + 1])
    : path.join(ROOT, 'bench/results', `record-${date}${quick ? '-quick' : ''}.json`);
const deadline = Date.now() + cfg.maxMinutes * 60_000;
const log = (s) => process.stderr.write(s + '\n');
const r0 = (x, d = 0) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);
const stats = (xs, d = 3) => {
  const v = xs.filter((x) => Number.isFinite(x));
  if (v.length === 0) return null;
  return { median: r0(median(v), d), min: r0(Math.min(...v), d), max: r0(Math.max(...v), d), n: v.length };
};
const MODES = [
  { name: 'plain', pipeline: 1, requests: () => cfg.requests },
  { name: 'pipelined', pipeline: cfg.pipeline, requests: () => cfg.pipelineRequests },
];
const benchTimeoutMs = (requests) => Math.max(60_000, requests / 2); // >= 2,000 req/s or fail
const QUIET_CORES = 0.25; // a round is "quiet" when other processes used less than this during every run
const TARGETS = { recordOverRun: 0.95, replayOverRecord: 2, bytesOverRequest: 48, idleBytesPerS: 100 };

// ---------------------------------------------------------------- setup

ensureDist();
const facts = machineFacts();
const busy = await busyProcesses();
facts.busyAtStart = busy;
for (const b of busy)
  process.stderr.write(`bench: WARNING: another process is busy (${b.cpuPct}% CPU): pid ${b.pid} ${b.cmd}\n`);
const bin = cfg.snapshot ? snapshotBuild() : LOCKSTEP_BIN;
const cacheDir = tempDir('recbench-cache-'); // Lockstep's instrumentation cache for this run
const logs = tempDir('recbench-logs-');
let logSeq = 0;
const newLog = (what) => path.join(logs, `${String(++logSeq).padStart(3, '0')}-${what}.log`);
const dropLog = (f) => rmSync(f, { force: true });

log(`bench: ${facts.nproc} CPUs (${facts.cpuModel}), node ${facts.node}, ${facts.redisBenchmark}`);
log(`bench: load average at start ${facts.loadavgAtStart.join(' ')}`);
log(`bench: config ${JSON.stringify(cfg)}`);
log(`bench: lockstep under test: ${bin}${cfg.snapshot ? ' (a copy of bin/ and dist/)' : ''}`);
log('bench: reproduce with:');
log(`  node bench/record.mjs ${argv.join(' ')}`.trimEnd());
log(
  `  servers: LOCKSTEP_CACHE_DIR=CACHEDIR node bin/lockstep.js run|record examples/kv/kv.wasm --listen 127.0.0.1:PORT --disk TMPDIR --env KV_FSYNC=no [--log LOG]`,
);

const result = {
  benchmark: 'record',
  date: new Date().toISOString(),
  config: cfg,
  targets: TARGETS,
  machine: facts,
  git: gitState(),
  commands: {
    run: 'node bin/lockstep.js run examples/kv/kv.wasm --listen 127.0.0.1:PORT --disk TMPDIR --env KV_FSYNC=no',
    record:
      'node bin/lockstep.js record examples/kv/kv.wasm --listen 127.0.0.1:PORT --disk TMPDIR --env KV_FSYNC=no --log LOG',
    replay: 'node bin/lockstep.js replay examples/kv/kv.wasm --log LOG --disk EMPTYDIR',
    idle: 'node bin/lockstep.js record test/guests/idle_poll.wasm --log LOG',
  },
  setRequest: null,
  rounds: [],
  idle: [],
  longReplay: null,
  summary: null,
  problems: [],
  complete: false,
};
const problem = (s) => {
  log(`bench: PROBLEM: ${s}`);
  result.problems.push(s);
};

// ---------------------------------------------------------------- 1. throughput, record vs run

async function measureOne(server, mode, requests) {
  const m0 = machineCpu();
  const before = threadCpu(server.pid);
  const b = await redisBench(server.port, {
    tests: cfg.tests,
    requests,
    clients: cfg.clients,
    pipeline: mode.pipeline,
    timeoutMs: benchTimeoutMs(requests),
  });
  const after = threadCpu(server.pid);
  const m1 = machineCpu();
  if (server.child.exitCode !== null || server.child.signalCode !== null)
    throw new Error(`${server.mode} died during the benchmark: ${server.child.stderrText.slice(-500)}`);
  const total = requests * cfg.tests.split(',').length;
  const cpu = cpuSplit(before, after, server.threads);
  const us = (s) => r0((s * 1e6) / total, 2);
  // CPU the rest of the machine used meanwhile, in cores: everything busy minus server and client
  // (includes this script and the idle other server, a few hundredths of a core).
  const otherCores = (m1.busyS - m0.busyS - cpu.total - (b.clientCpuS ?? 0)) / b.wallS;
  return {
    rps: b.rps,
    wallS: r0(b.wallS, 3),
    clientCpuUsPerReq: b.clientCpuS === null ? null : us(b.clientCpuS),
    otherCores: r0(Math.max(0, otherCores), 3),
    cpuUsPerReq: {
      main: us(cpu.main),
      vcpu: us(cpu.vcpu),
      other: us(cpu.other),
      total: us(cpu.total),
      sys: us(cpu.sys),
    },
  };
}

async function startThroughputServers() {
  const servers = {};
  servers.run = await startKv(bin, 'run', { cacheDir });
  servers.record = await startKv(bin, 'record', { cacheDir, log: newLog('throughput-record') });
  for (const s of Object.values(servers)) {
    s.threads = lockstepThreads(s.pid);
    log(`  started ${s.mode} on port ${s.port} (pid ${s.pid}, ${s.startupMs.toFixed(0)} ms)`);
  }
  for (const s of Object.values(servers))
    for (const m of MODES) await measureOne(s, m, Math.ceil(m.requests() / 2));
  log('  warmed up run and record');
  return servers;
}

/** The mean of two measureOne() results (ABBA halves). */
function combine(xs) {
  const mean = (f) => xs.reduce((a, x) => a + f(x), 0) / xs.length;
  const out = { rps: {}, wallS: r0(mean((x) => x.wallS) * xs.length, 3), cpuUsPerReq: {} };
  for (const t of Object.keys(xs[0].rps))
    out.rps[t] = r0(
      mean((x) => x.rps[t]),
      2,
    );
  for (const k of Object.keys(xs[0].cpuUsPerReq))
    out.cpuUsPerReq[k] = r0(
      mean((x) => x.cpuUsPerReq[k]),
      2,
    );
  out.clientCpuUsPerReq = r0(
    mean((x) => x.clientCpuUsPerReq ?? NaN),
    2,
  );
  out.otherCores = r0(
    mean((x) => x.otherCores),
    3,
  );
  out.halves = xs;
  return out;
}

/**
 * One round: per mode, the two servers in the order A B B A (A alternating between rounds),
 * each run being half the requests, so a linear drift in background load hits both alike.
 */
async function throughputRound(servers, round, rec) {
  const order = round % 2 === 0 ? ['run', 'record'] : ['record', 'run'];
  const modes = Math.floor(round / 2) % 2 === 0 ? MODES : [...MODES].reverse();
  const seq = [...order, ...[...order].reverse()];
  rec.throughput = { order: seq, modes: modes.map((m) => m.name), results: { run: {}, record: {} } };
  for (const m of modes) {
    const halves = { run: [], record: [] };
    for (const k of seq) halves[k].push(await measureOne(servers[k], m, Math.ceil(m.requests() / 2)));
    for (const k of order) rec.throughput.results[k][m.name] = combine(halves[k]);
  }
  const t = rec.throughput.results;
  const others = MODES.flatMap((m) => order.flatMap((k) => t[k][m.name].halves.map((h) => h.otherCores)));
  rec.throughput.otherCores = r0(median(others), 3);
  rec.throughput.otherCoresMax = r0(Math.max(...others), 3);
  rec.throughput.ratio = {};
  for (const m of MODES) {
    rec.throughput.ratio[m.name] = {};
    for (const test of ['SET', 'GET'])
      rec.throughput.ratio[m.name][test] = r0(t.record[m.name].rps[test] / t.run[m.name].rps[test], 4);
  }
  log(
    `  throughput (${order.join(', ')}): ` +
      MODES.map(
        (m) =>
          `${m.name} SET ${t.run[m.name].rps.SET.toFixed(0)}/${t.record[m.name].rps.SET.toFixed(0)} GET ${t.run[m.name].rps.GET.toFixed(0)}/${t.record[m.name].rps.GET.toFixed(0)}`,
      ).join(' | ') +
      ` (run/record req/s; other processes ${rec.throughput.otherCores} cores)`,
  );
}

// ---------------------------------------------------------------- 3a. the startup baseline

/** A recorder that starts, answers the PING of waitForPong, and is stopped: the fixed part of every KV log. */
async function kvStartupLog(fsync = 'no', keep = false) {
  const f = newLog(`startup-${fsync}`);
  const rec = await startKv(bin, 'record', { cacheDir, log: f, fsync });
  const s = await stopRecorder(rec);
  if (!keep) dropLog(f);
  return { events: s.events, bytes: s.bytes, log: f };
}

// ---------------------------------------------------------------- 2. replay speed

async function replayRound(rec, startup) {
  // The no-op replay: a log of the same startup with no requests, timed the same way.
  const base = await replay(bin, KV_WASM, startup.log, { cacheDir });
  if (base.code !== 0) problem(`replay of the startup log exited ${base.code}: ${base.stderrTail}`);
  rec.replay = { startupReplayWallS: r0(base.wallS, 4), startupReplayCpuS: base.cpuS, modes: {} };
  for (const m of MODES) {
    const f = newLog(`replay-${m.name}`);
    const srv = await startKv(bin, 'record', { cacheDir, log: f });
    const requests = m.requests();
    let b;
    let s;
    try {
      b = await redisBench(srv.port, {
        tests: cfg.tests,
        requests,
        clients: cfg.clients,
        pipeline: m.pipeline,
        timeoutMs: benchTimeoutMs(requests),
      });
    } finally {
      s = await stopRecorder(srv);
    }
    const r = await replay(bin, KV_WASM, f, { cacheDir });
    const faithful = r.code === 0 && r.summary?.events === s.events && r.matches;
    if (!faithful)
      problem(
        `replay of a ${m.name} recording (${s.events} events) exited ${r.code}, ${r.summary?.events} events: ${r.stderrTail}`,
      );
    if (faithful && r.summary.memorySha256 !== s.summary.memorySha256)
      problem(`replay of a ${m.name} recording: memory hash differs from the recording's`);
    const loadEvents = s.events - startup.events;
    const recordRate = loadEvents / b.wallS;
    const adjWallS = r.wallS - base.wallS;
    const x = {
      requests: requests * 2,
      recordRps: b.rps,
      recordWallS: r0(b.wallS, 4),
      events: s.events,
      loadEvents,
      logBytes: s.bytes,
      eventsPerRequest: r0(loadEvents / (requests * 2), 4),
      recordEventsPerS: r0(recordRate),
      replayCode: r.code,
      faithful,
      replayWallS: r0(r.wallS, 4),
      replayCpuS: r.cpuS,
      replayWallAdjS: r0(adjWallS, 4),
      replayEventsPerSRaw: r0(s.events / r.wallS),
      replayEventsPerSAdj: r0(s.events / adjWallS),
      ratioRaw: r0(s.events / r.wallS / recordRate, 4),
      ratioAdj: r0(s.events / adjWallS / recordRate, 4),
    };
    rec.replay.modes[m.name] = x;
    dropLog(f);
    log(
      `  replay ${m.name}: recorded ${s.events} events (${(s.bytes / 1e6).toFixed(1)} MB) in ${b.wallS.toFixed(2)} s of load = ${x.recordEventsPerS} ev/s; ` +
        `replay ${r.wallS.toFixed(2)} s (startup ${base.wallS.toFixed(2)} s) = ${x.replayEventsPerSAdj} ev/s adj, ` +
        `ratio ${x.ratioAdj} adj / ${x.ratioRaw} raw${faithful ? '' : ' NOT FAITHFUL'}`,
    );
  }
}

// ---------------------------------------------------------------- 3. bytes per SET

async function bytesRound(rec, startup) {
  rec.bytes = { startupEvents: startup.events, startupBytes: startup.bytes, cases: {} };
  for (const [name, clients, requests] of [
    ['c50', cfg.clients, cfg.setRequests],
    ['c1', 1, cfg.setRequestsC1],
  ]) {
    const f = newLog(`bytes-${name}`);
    const srv = await startKv(bin, 'record', { cacheDir, log: f });
    let b;
    let s;
    try {
      b = await redisBench(srv.port, {
        tests: 'set',
        requests,
        clients,
        dataSize: cfg.valueBytes,
        timeoutMs: benchTimeoutMs(requests),
      });
    } finally {
      s = await stopRecorder(srv);
    }
    dropLog(f);
    const perSet = (s.bytes - startup.bytes) / requests;
    rec.bytes.cases[name] = {
      clients,
      requests,
      rps: b.rps.SET,
      events: s.events,
      logBytes: s.bytes,
      bytesPerSet: r0(perSet, 2),
      eventsPerSet: r0((s.events - startup.events) / requests, 3),
      overRequest: result.setRequest?.setBytes ? r0(perSet - result.setRequest.setBytes, 2) : null,
    };
    log(
      `  bytes ${name}: ${requests} SETs -> ${s.bytes} B log (startup ${startup.bytes} B) = ${perSet.toFixed(1)} B/SET, ` +
        `${rec.bytes.cases[name].eventsPerSet} events/SET`,
    );
  }
}

// ---------------------------------------------------------------- 4. idle

const SETTLE_MS = 200; // how long after start the baseline recorders are stopped

/** One idle measurement: three recorders in parallel (they sleep), then their three baselines. */
async function idleRound(i) {
  const D = cfg.idleSeconds * 1000;
  const kinds = {
    idlePoll: async (waitMs) => {
      const f = newLog(`idle-poll-${waitMs}`);
      const r = await startIdlePoll(bin, { cacheDir, log: f });
      await sleep(Math.max(0, r.startedAt + waitMs - performance.now()));
      const s = await stopRecorder({ ...r, log: f });
      dropLog(f);
      return { ...s, seconds: (s.stoppedAt - r.startedAt) / 1000 };
    },
    kvEverysec: async (waitMs) => {
      const f = newLog(`idle-kv-${waitMs}`);
      const r = await startKv(bin, 'record', { cacheDir, log: f, fsync: 'everysec' });
      const t0 = performance.now();
      await sleep(waitMs);
      const s = await stopRecorder(r);
      dropLog(f);
      return { ...s, seconds: (s.stoppedAt - t0) / 1000 };
    },
    kvExpiringKey: async (waitMs) => {
      const f = newLog(`idle-kv-ttl-${waitMs}`);
      const r = await startKv(bin, 'record', { cacheDir, log: f, fsync: 'everysec' });
      const reply = await respCommand(r.port, ['SET', 'ttlkey', 'v', 'EX', '3600']);
      if (reply !== '+OK') problem(`SET ... EX 3600 answered ${reply}`);
      const t0 = performance.now();
      await sleep(waitMs);
      const s = await stopRecorder(r);
      dropLog(f);
      return { ...s, seconds: (s.stoppedAt - t0) / 1000 };
    },
  };
  const names = Object.keys(kinds);
  const long = await Promise.all(names.map((k) => kinds[k](D)));
  const short = await Promise.all(names.map((k) => kinds[k](SETTLE_MS)));
  const rec = { run: i + 1 };
  names.forEach((k, j) => {
    const dt = long[j].seconds - short[j].seconds;
    rec[k] = {
      seconds: r0(long[j].seconds, 3),
      baselineSeconds: r0(short[j].seconds, 3),
      bytes: long[j].bytes,
      baselineBytes: short[j].bytes,
      events: long[j].events,
      baselineEvents: short[j].events,
      bytesPerS: r0((long[j].bytes - short[j].bytes) / dt, 2),
      eventsPerS: r0((long[j].events - short[j].events) / dt, 3),
    };
  });
  result.idle.push(rec);
  log(
    `  idle ${i + 1}: ` +
      names.map((k) => `${k} ${rec[k].bytesPerS} B/s (${rec[k].eventsPerS} events/s)`).join(', '),
  );
}

// ---------------------------------------------------------------- summary and output

function summarise() {
  const R = result.rounds;
  const S = {};
  const tp = R.filter((r) => r.throughput);
  if (tp.length) {
    S.throughput = {};
    for (const m of MODES) {
      S.throughput[m.name] = {};
      for (const test of ['SET', 'GET']) {
        S.throughput[m.name][test] = {
          run: r0(median(tp.map((r) => r.throughput.results.run[m.name].rps[test]))),
          record: r0(median(tp.map((r) => r.throughput.results.record[m.name].rps[test]))),
          ratio: stats(tp.map((r) => r.throughput.ratio[m.name][test])),
        };
      }
      S.throughput[m.name].cpuRatio = stats(
        tp.map(
          (r) =>
            r.throughput.results.record[m.name].cpuUsPerReq.total /
            r.throughput.results.run[m.name].cpuUsPerReq.total,
        ),
      );
      for (const k of ['run', 'record']) {
        const pick = (f) => r0(median(tp.map((r) => f(r.throughput.results[k][m.name].cpuUsPerReq))), 2);
        S.throughput[m.name][`cpu_${k}`] = {
          main: pick((c) => c.main),
          vcpu: pick((c) => c.vcpu),
          other: pick((c) => c.other),
          total: pick((c) => c.total),
          sys: pick((c) => c.sys),
        };
      }
    }
  }
  if (tp.length) {
    S.throughput.otherCores = stats(
      tp.map((r) => r.throughput.otherCores),
      2,
    );
    // The rounds during which other processes used less than QUIET_CORES: the fairest comparison.
    const quiet = tp.filter((r) => r.throughput.otherCoresMax < QUIET_CORES);
    S.throughput.quiet = { rounds: quiet.map((r) => r.round) };
    for (const m of MODES)
      for (const t of ['SET', 'GET'])
        S.throughput.quiet[`${m.name} ${t}`] = stats(quiet.map((r) => r.throughput.ratio[m.name][t]));
  }
  const rp = R.filter((r) => r.replay);
  if (rp.length) {
    S.replay = { startupReplayWallS: stats(rp.map((r) => r.replay.startupReplayWallS)) };
    for (const m of MODES) {
      const xs = rp.map((r) => r.replay.modes[m.name]).filter(Boolean);
      const p = (k, d = 0) => r0(median(xs.map((x) => x[k])), d);
      S.replay[m.name] = {
        events: p('events'),
        logBytes: p('logBytes'),
        eventsPerRequest: p('eventsPerRequest', 3),
        recordWallS: p('recordWallS', 3),
        recordEventsPerS: p('recordEventsPerS'),
        replayWallS: p('replayWallS', 3),
        replayCpuS: p('replayCpuS', 2),
        replayEventsPerSRaw: p('replayEventsPerSRaw'),
        replayEventsPerSAdj: p('replayEventsPerSAdj'),
        ratioRaw: stats(xs.map((x) => x.ratioRaw)),
        ratioAdj: stats(xs.map((x) => x.ratioAdj)),
        allFaithful: xs.every((x) => x.faithful),
      };
    }
  }
  const by = R.filter((r) => r.bytes);
  if (by.length) {
    S.bytes = {
      requestBytes: result.setRequest?.setBytes ?? null,
      startupBytes: stats(
        by.map((r) => r.bytes.startupBytes),
        0,
      ),
    };
    for (const c of ['c50', 'c1']) {
      const xs = by.map((r) => r.bytes.cases[c]);
      S.bytes[c] = {
        bytesPerSet: stats(
          xs.map((x) => x.bytesPerSet),
          2,
        ),
        overRequest: stats(
          xs.map((x) => x.overRequest),
          2,
        ),
        eventsPerSet: r0(median(xs.map((x) => x.eventsPerSet)), 3),
        rps: r0(median(xs.map((x) => x.rps))),
      };
    }
  }
  if (result.idle.length) {
    S.idle = {};
    for (const k of ['idlePoll', 'kvEverysec', 'kvExpiringKey']) {
      S.idle[k] = {
        bytesPerS: stats(
          result.idle.map((x) => x[k].bytesPerS),
          2,
        ),
        eventsPerS: r0(median(result.idle.map((x) => x[k].eventsPerS)), 3),
        seconds: r0(median(result.idle.map((x) => x[k].seconds)), 2),
      };
    }
  }
  // Targets.
  const T = {};
  if (S.throughput)
    T.recordOverRun = Object.fromEntries(
      MODES.flatMap((m) =>
        ['SET', 'GET'].map((t) => [
          `${m.name} ${t}`,
          S.throughput[m.name][t].ratio.median >= TARGETS.recordOverRun,
        ]),
      ),
    );
  if (S.replay)
    T.replayOverRecord = Object.fromEntries(
      MODES.map((m) => [m.name, (S.replay[m.name].ratioAdj?.median ?? 0) >= TARGETS.replayOverRecord]),
    );
  if (S.bytes)
    T.bytesOverRequest = Object.fromEntries(
      ['c50', 'c1'].map((c) => [c, (S.bytes[c].overRequest?.median ?? Infinity) <= TARGETS.bytesOverRequest]),
    );
  if (S.idle) T.idleBytesPerS = (S.idle.idlePoll.bytesPerS?.median ?? Infinity) <= TARGETS.idleBytesPerS;
  S.targetsMet = T;
  result.summary = S;
}

function markdown() {
  const S = result.summary;
  const L = [];
  const f = (x) => (x === null || x === undefined ? 'n/a' : Math.round(x).toLocaleString('en-US'));
  const g = (x, d = 2) => (x === null || x === undefined ? 'n/a' : x.toFixed(d));
  const rt = (x, d = 2) => (x ? `${g(x.median, d)} (${g(x.min, d)}–${g(x.max, d)})` : 'n/a');
  const ok = (b) => (b ? 'met' : '**missed**');
  const n = result.rounds.length;
  L.push(`Record/replay benchmark, ${result.date.slice(0, 10)}: medians of ${n} rounds (min–max)`);
  const busyRounds = result.rounds.filter((r) => r.busy?.length).length;
  L.push('');
  L.push(
    `Load average at start ${result.machine.loadavgAtStart.join(' ')}, at end ${result.machine.loadavgAtEnd?.join(' ') ?? 'n/a'}; ` +
      `another process was busy at the start of ${busyRounds} of ${n} rounds` +
      (result.machine.busyAtStart.length ? ' and at the start of the run' : ''),
  );
  if (S.throughput) {
    L.push('');
    L.push(
      `1. \`record\` vs \`run\`, kv.wasm, KV_FSYNC=no, redis-benchmark -c ${cfg.clients} (req/s; ratio per round, medianed)`,
    );
    L.push('');
    L.push('| mode | test | run | record | record/run | target ≥ 0.95 |');
    L.push('|---|---|---:|---:|---:|---|');
    for (const m of MODES)
      for (const t of ['SET', 'GET']) {
        const x = S.throughput[m.name][t];
        L.push(
          `| ${m.pipeline > 1 ? `-P ${m.pipeline}` : 'no pipeline'} | ${t} | ${f(x.run)} | ${f(x.record)} | ${rt(x.ratio, 3)} | ${ok(S.targetsMet.recordOverRun[`${m.name} ${t}`])} |`,
        );
      }
    L.push('');
    L.push(
      'Per round (record/run; "others": CPU used by other processes during the round\'s runs, in cores, median and max):',
    );
    L.push('');
    L.push('| round | order | no pipeline SET | GET | -P 16 SET | GET | others |');
    L.push('|---|---|---:|---:|---:|---:|---:|');
    for (const r of result.rounds.filter((x) => x.throughput)) {
      const q = r.throughput.ratio;
      L.push(
        `| ${r.round} | ${r.throughput.order.join(' ')} | ${g(q.plain.SET, 3)} | ${g(q.plain.GET, 3)} | ${g(q.pipelined.SET, 3)} | ${g(q.pipelined.GET, 3)} | ${g(r.throughput.otherCores, 2)} (max ${g(r.throughput.otherCoresMax, 2)}) |`,
      );
    }
    const Q = S.throughput.quiet;
    L.push('');
    L.push(
      Q.rounds.length
        ? `Quiet rounds only (others < ${QUIET_CORES} cores in every run: rounds ${Q.rounds.join(', ')}): ` +
            MODES.flatMap((m) =>
              ['SET', 'GET'].map(
                (t) => `${m.pipeline > 1 ? '-P 16' : 'no pipeline'} ${t} ${rt(Q[`${m.name} ${t}`], 3)}`,
              ),
            ).join(', ')
        : `No quiet round (one where others stayed < ${QUIET_CORES} cores in every run).`,
    );
    L.push('');
    L.push(
      'CPU µs per request (SET and GET together), main = I/O thread, vCPU = worker, other = V8 helpers; ' +
        'record/run = total CPU per request, per round, medianed',
    );
    L.push('');
    L.push('| mode | server | main | vCPU | other | total | of which kernel | record/run |');
    L.push('|---|---|---:|---:|---:|---:|---:|---:|');
    for (const m of MODES)
      for (const k of ['run', 'record']) {
        const c = S.throughput[m.name][`cpu_${k}`];
        L.push(
          `| ${m.pipeline > 1 ? `-P ${m.pipeline}` : 'no pipeline'} | ${k} | ${g(c.main)} | ${g(c.vcpu)} | ${g(c.other)} | ${g(c.total)} | ${g(c.sys)} | ${k === 'record' ? rt(S.throughput[m.name].cpuRatio) : ''} |`,
        );
      }
  }
  if (S.replay) {
    L.push('');
    L.push(
      `2. Replay speed: one recording per round and mode (${f(cfg.requests * 2)} / ${f(cfg.pipelineRequests * 2)} requests), replayed; ` +
        `startup replay (no requests) ${g(S.replay.startupReplayWallS?.median, 3)} s`,
    );
    L.push('');
    L.push(
      '| mode | events | events/request | log MB | recording ev/s | replay wall s | replay ev/s (raw) | replay ev/s (− startup) | ratio raw | ratio − startup | target ≥ 2 |',
    );
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|');
    for (const m of MODES) {
      const x = S.replay[m.name];
      L.push(
        `| ${m.pipeline > 1 ? `-P ${m.pipeline}` : 'no pipeline'} | ${f(x.events)} | ${g(x.eventsPerRequest, 3)} | ${g(x.logBytes / 1e6, 1)} | ${f(x.recordEventsPerS)} | ${g(x.replayWallS, 3)} | ${f(x.replayEventsPerSRaw)} | ${f(x.replayEventsPerSAdj)} | ${rt(x.ratioRaw)} | ${rt(x.ratioAdj)} | ${ok(S.targetsMet.replayOverRecord[m.name])}${x.allFaithful ? '' : ' (NOT ALL FAITHFUL)'} |`,
      );
    }
  }
  if (S.bytes) {
    L.push('');
    L.push(
      `3. Log bytes per unpipelined SET (-d ${cfg.valueBytes}); the request is ${S.bytes.requestBytes} bytes; each round's startup-only log (${rt(S.bytes.startupBytes, 0)} bytes) subtracted`,
    );
    L.push('');
    L.push('| clients | SETs | bytes/SET | over the request | events/SET | target ≤ +48 |');
    L.push('|---|---:|---:|---:|---:|---|');
    for (const [c, clients, n] of [
      ['c50', cfg.clients, cfg.setRequests],
      ['c1', 1, cfg.setRequestsC1],
    ]) {
      const x = S.bytes[c];
      L.push(
        `| ${clients} | ${f(n)} | ${rt(x.bytesPerSet, 1)} | ${rt(x.overRequest, 1)} | ${g(x.eventsPerSet, 3)} | ${ok(S.targetsMet.bytesOverRequest[c])} |`,
      );
    }
  }
  if (S.idle) {
    L.push('');
    L.push(
      `4. Idle: log bytes per second over ${cfg.idleSeconds} s, startup subtracted (${result.idle.length} runs)`,
    );
    L.push('');
    L.push('| guest | B/s | events/s | target ≤ 100 B/s |');
    L.push('|---|---:|---:|---|');
    const row = (label, k, target) =>
      L.push(
        `| ${label} | ${rt(S.idle[k].bytesPerS, 1)} | ${g(S.idle[k].eventsPerS, 2)} | ${target === undefined ? '(reference)' : ok(target)} |`,
      );
    row('idle_poll.wasm (poll, 1 s timeout)', 'idlePoll', S.targetsMet.idleBytesPerS);
    row('kv.wasm, KV_FSYNC=everysec, idle', 'kvEverysec');
    row('kv.wasm, everysec, one key with a TTL (sweep every 100 ms)', 'kvExpiringKey');
  }
  if (result.longReplay) {
    const x = result.longReplay;
    L.push('');
    L.push(
      `Replay of the whole throughput recording (${f(x.events)} events, ${g(x.logBytes / 1e6, 1)} MB): exit ${x.code}, ${g(x.wallS, 1)} s, ${f(x.eventsPerS)} events/s${x.faithful ? ', faithful' : ', NOT FAITHFUL'}`,
    );
  }
  if (result.problems.length) {
    L.push('');
    L.push('Problems:');
    for (const p of result.problems) L.push(`- ${p}`);
  }
  return L.join('\n');
}

// ---------------------------------------------------------------- main

let failed = false;
let servers = null;
try {
  // Fill the instrumentation cache (kv and idle_poll), so no measured start instruments.
  log('\n== setup ==');
  const t0 = performance.now();
  const warm = await startKv(bin, 'run', { cacheDir });
  await stopProcess(warm.child, 10_000);
  const idleWarm = await startIdlePoll(bin, { cacheDir, log: newLog('warm-idle') });
  await stopRecorder({ ...idleWarm, log: idleWarm.log });
  log(`  instrumentation cache filled in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  result.setRequest = await captureSetRequest(cfg.valueBytes);
  log(
    `  redis-benchmark's SET -d ${cfg.valueBytes} is ${result.setRequest.setBytes} bytes: ${JSON.stringify(result.setRequest.example.slice(0, 50))}…`,
  );

  if (only.includes('throughput')) {
    log('\n== throughput servers ==');
    servers = await startThroughputServers();
  }
  const perRound = only.some((x) => x !== 'idle');
  for (let round = 0; perRound && round < cfg.runs; round++) {
    if (Date.now() > deadline) {
      problem(`time budget of ${cfg.maxMinutes} min reached after ${round} rounds`);
      break;
    }
    log(`\n== round ${round + 1}/${cfg.runs} ==`);
    const rec = { round: round + 1, loadavg: os.loadavg().map((x) => r0(x, 2)) };
    // Other processes busy right now (this script's own children are idle between measurements).
    rec.busy = await busyProcesses(500);
    for (const b of rec.busy) log(`  WARNING: busy (${b.cpuPct}% CPU): pid ${b.pid} ${b.cmd.slice(0, 100)}`);
    if (servers) await throughputRound(servers, round, rec);
    if (only.includes('replay') || only.includes('bytes')) {
      const startup = await kvStartupLog('no', true);
      if (only.includes('replay')) await replayRound(rec, startup);
      if (only.includes('bytes')) await bytesRound(rec, startup);
      dropLog(startup.log);
    }
    result.rounds.push(rec);
  }
  if (servers) {
    const s = await stopRecorder(servers.record);
    await stopProcess(servers.run.child, 10_000);
    if (cfg.longReplay && Date.now() < deadline) {
      log(`\n== replay of the whole throughput recording (${s.events} events, ${s.bytes} bytes) ==`);
      const r = await replay(bin, KV_WASM, servers.record.log, { cacheDir });
      result.longReplay = {
        events: s.events,
        logBytes: s.bytes,
        code: r.code,
        wallS: r0(r.wallS, 3),
        cpuS: r.cpuS,
        eventsPerS: r0(s.events / r.wallS),
        faithful: r.code === 0 && r.summary?.events === s.events && r.matches,
        stderrTail: r.code === 0 ? undefined : r.stderrTail,
      };
      if (!result.longReplay.faithful)
        problem(`replay of the throughput recording: exit ${r.code}: ${r.stderrTail}`);
      log(`  exit ${r.code}, ${r.wallS.toFixed(1)} s`);
    }
    dropLog(servers.record.log);
    servers = null;
  }
  if (only.includes('idle')) {
    log('\n== idle ==');
    for (let i = 0; i < cfg.idleRuns && Date.now() < deadline; i++) await idleRound(i);
  }
  summarise();
  result.complete = result.rounds.length === (only.some((x) => x !== 'idle') ? cfg.runs : 0);
  result.machine.loadavgAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  process.stdout.write('\n' + markdown() + '\n');
} catch (e) {
  failed = true;
  log(`bench: FAILED: ${e.stack ?? e}`);
  result.problems.push(`failed: ${String(e.message ?? e)}`);
  try {
    summarise();
  } catch {
    // partial results only
  }
} finally {
  if (servers) await Promise.all(Object.values(servers).map((s) => stopProcess(s.child, 10_000)));
  writeResults(outFile, result);
  log(`\nbench: results written to ${path.relative(ROOT, outFile)}`);
}
process.exit(failed ? 1 : 0);
