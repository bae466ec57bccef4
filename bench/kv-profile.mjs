#!/usr/bin/env node
// Where Lockstep's time goes on the KV benchmark. Run from the repository root after a build:
//
//   node bench/kv-profile.mjs [--runs N] [--requests N] [--quick] [--no-cost] [--no-count]
//                             [--cpu-prof] [--out FILE]
//
// Three parts, each against the guest examples/kv/kv.wasm with KV_FSYNC=no, 50 clients:
//   1. Instrumentation cost at run time: the same VM with the instrumented module (what
//      `lockstep run` runs) and with the raw kv.wasm (bench/lib/vm-server.mjs --raw bypasses
//      instrument()), native kv for reference; interleaved rounds, medians, per-round ratios;
//      CPU per request split by thread (main = I/O, vCPU = worker).
//   2. Cross-thread wake-ups per request: a copy of dist/ in a temp folder (never the repository's)
//      is patched to count Atomics.notify calls each way, vCPU sleeps, I/O-loop turns, socket reads
//      and writes, and host calls; the counts are read (SIGUSR2) around one benchmark run per mode.
//   3. With --cpu-prof: V8's sampling profile of both threads during one non-pipelined run, top
//      functions by self time (wall-clock sampling, so "(idle)" and Atomics.wait are included).
// Results: markdown on stdout, JSON in bench/results/kv-profile-<date>.json.
import { cpSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  ROOT,
  cpuSplit,
  ensureDist,
  busyProcesses,
  ensureNativeBuild,
  lockstepThreads,
  machineFacts,
  median,
  redisBenchmark,
  sleep,
  startServer,
  tempDir,
  threadCpu,
  writeResults,
  numberOption,
} from './lib/kvbench.mjs';

const argv = process.argv.slice(2);
const opt = (name, def) => numberOption(argv, name, def);
const quick = argv.includes('--quick');
const cfg = {
  runs: opt('--runs', quick ? 2 : 5),
  requests: opt('--requests', quick ? 20_000 : 100_000),
  pipelineRequests: 0,
  clients: 50,
  pipeline: 16,
  tests: 'get,set',
  cost: !argv.includes('--no-cost'),
  count: !argv.includes('--no-count'),
  cpuProf: argv.includes('--cpu-prof'),
  maxMinutes: opt('--max-minutes', 30),
  quick,
};
cfg.pipelineRequests = opt('--pipeline-requests', cfg.requests * 5);
const outIdx = argv.indexOf('--out');
const date = new Date().toISOString().slice(0, 10);
const outFile =
  outIdx >= 0
    ? path.resolve(argv[outIdx + 1])
    : path.join(ROOT, 'bench/results', `kv-profile-${date}${quick ? '-quick' : ''}.json`);
const deadline = Date.now() + cfg.maxMinutes * 60_000;
const log = (s) => process.stderr.write(s + '\n');
const r0 = (x, d = 0) => (x === null || x === undefined ? null : Math.round(x * 10 ** d) / 10 ** d);
const MODES = [
  { name: 'plain', pipeline: 1, requests: cfg.requests },
  { name: 'pipelined', pipeline: cfg.pipeline, requests: cfg.pipelineRequests },
];
const nTests = cfg.tests.split(',').length;
const benchTimeoutMs = (requests) => Math.max(60_000, requests / 2);

ensureDist();
ensureNativeBuild();
const cacheDir = tempDir('kvprof-cache-');
const busy = await busyProcesses();
for (const b of busy)
  process.stderr.write(`bench: WARNING: another process is busy (${b.cpuPct}% CPU): pid ${b.pid} ${b.cmd}\n`);
const result = {
  benchmark: 'kv-profile',
  date: new Date().toISOString(),
  config: cfg,
  machine: machineFacts(),
  cost: null,
  wakeups: null,
  cpuProfile: null,
};
result.machine.busyAtStart = busy;
log(`bench: config ${JSON.stringify(cfg)}`);
log(`bench: reproduce with: node bench/kv-profile.mjs ${argv.join(' ')}`.trimEnd());

async function run(server, mode) {
  const before = threadCpu(server.pid);
  const b = await redisBenchmark(server.port, {
    tests: cfg.tests,
    requests: mode.requests,
    clients: cfg.clients,
    pipeline: mode.pipeline,
    timeoutMs: benchTimeoutMs(mode.requests),
  });
  const after = threadCpu(server.pid);
  if (server.child.exitCode !== null)
    throw new Error(`${server.kind} died: ${server.child.stderrText.slice(-500)}`);
  const total = mode.requests * nTests;
  const cpu = cpuSplit(before, after, server.threads ?? null);
  const us = (s) => r0((s * 1e6) / total, 2);
  return {
    rps: b.rps,
    cpu: {
      main: us(cpu.main),
      vcpu: us(cpu.vcpu),
      other: us(cpu.other),
      total: us(cpu.total),
      sys: us(cpu.sys),
    },
    client: b.clientCpuS === null ? null : us(b.clientCpuS),
  };
}

async function start(kind, extra = {}) {
  const s = await startServer(kind, { cacheDir, ...extra });
  if (kind !== 'native') s.threads = lockstepThreads(s.pid);
  return s;
}

// ---------------------------------------------------------------- 1. instrumentation cost

async function measureCost() {
  log('\n== instrumentation cost: instrumented vs raw kv.wasm ==');
  const kinds = ['vm', 'vm-raw', 'native'];
  const servers = {};
  for (const k of kinds) servers[k] = await start(k);
  const rounds = [];
  try {
    for (const k of kinds)
      for (const m of MODES) await run(servers[k], { ...m, requests: Math.ceil(m.requests / 2) });
    for (let round = 0; round < cfg.runs && Date.now() < deadline; round++) {
      const order = kinds.map((_, i) => kinds[(i + round) % kinds.length]);
      const rec = {};
      for (const k of order) {
        rec[k] = {};
        for (const m of round % 2 ? [...MODES].reverse() : MODES) rec[k][m.name] = await run(servers[k], m);
      }
      rounds.push(rec);
      log(
        `  round ${round + 1}: ` +
          kinds
            .map(
              (k) =>
                `${k} ${MODES.map((m) => `${m.name} GET ${rec[k][m.name].rps.GET.toFixed(0)} SET ${rec[k][m.name].rps.SET.toFixed(0)}`).join(' / ')}`,
            )
            .join(' | '),
      );
    }
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.stop()));
  }
  const out = { rounds: rounds.length, medians: {}, ratioInstrumentedToRaw: {}, cpu: {} };
  for (const k of kinds) {
    out.medians[k] = {};
    out.cpu[k] = {};
    for (const m of MODES) {
      out.medians[k][m.name] = {
        SET: r0(median(rounds.map((r) => r[k][m.name].rps.SET))),
        GET: r0(median(rounds.map((r) => r[k][m.name].rps.GET))),
      };
      const pick = (f) => r0(median(rounds.map((r) => f(r[k][m.name]))), 2);
      out.cpu[k][m.name] = {
        main: pick((x) => x.cpu.main),
        vcpu: pick((x) => x.cpu.vcpu),
        other: pick((x) => x.cpu.other),
        total: pick((x) => x.cpu.total),
        sys: pick((x) => x.cpu.sys),
        client: pick((x) => x.client),
      };
    }
  }
  for (const m of MODES) {
    out.ratioInstrumentedToRaw[m.name] = {};
    for (const t of ['SET', 'GET']) {
      const per = rounds.map((r) => r.vm[m.name].rps[t] / r['vm-raw'][m.name].rps[t]);
      out.ratioInstrumentedToRaw[m.name][t] = {
        median: r0(median(per), 3),
        min: r0(Math.min(...per), 3),
        max: r0(Math.max(...per), 3),
      };
    }
  }
  return out;
}

// ---------------------------------------------------------------- 2. counting copy of dist/

/** Copies dist/ to a temp folder and patches the copy to count wake-ups; fails loudly if the code moved. */
function makeCountingDist() {
  const dir = tempDir('kvprof-dist-');
  cpSync(path.join(ROOT, 'dist'), path.join(dir, 'dist'), { recursive: true });
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  writeFileSync(path.join(dir, 'package.json'), '{"type":"module"}\n');
  // Each edit is [regexp, replacement, expected count (0 = at least one)]; a miss fails loudly.
  const patch = (rel, edits) => {
    const f = path.join(dir, 'dist', rel);
    let s = readFileSync(f, 'utf8');
    for (const [re, to] of edits) {
      const n = (s.match(re) ?? []).length;
      if (n === 0)
        throw new Error(
          `kv-profile: cannot patch ${rel}: ${re} not found (the source changed; update the patch)`,
        );
      s = s.replace(re, to);
    }
    writeFileSync(f, s);
  };
  // Counters live in Ctl slots from 16 up (the real protocol uses the low slots):
  // 16 pokeIo calls, 17 notifies of the I/O side, 18 wakeVcpu calls, 19 notifies of the vCPU,
  // 20 vCPU sleeps, 21-24 host calls (poll_oneoff, sock_recv, sock_send, other), 25 poll subscriptions.
  // Written against the compiled JavaScript, so it survives small changes to the protocol.
  patch('src/vm/channel.js', [
    [/const CTL_SLOTS = \d+;/, 'const CTL_SLOTS = 32;'],
    [/( *)pokeIo\(\) \{\n/, '$1pokeIo() {\n$1    Atomics.add(this.i32, 16, 1);\n'],
    [/( *)wakeVcpu\(\) \{\n/, '$1wakeVcpu() {\n$1    Atomics.add(this.i32, 18, 1);\n'],
    [
      /( *)waitVcpu\(seen, timeoutMs\) \{\n/,
      '$1waitVcpu(seen, timeoutMs) {\n$1    Atomics.add(this.i32, 20, 1);\n',
    ],
    [
      /Atomics\.notify\(this\.i32, CtlSlot\.IO\)/g,
      '(Atomics.add(this.i32, 17, 1), Atomics.notify(this.i32, CtlSlot.IO))',
    ],
  ]);
  // Notifies of the vCPU, but not requestStop's: only inside wakeVcpu's body.
  {
    const f = path.join(dir, 'dist', 'src/vm/channel.js');
    const s = readFileSync(f, 'utf8');
    const at = s.indexOf('wakeVcpu() {');
    const endAt = s.indexOf('\n    }\n', at);
    const body = s.slice(at, endAt);
    if (!body.includes('Atomics.notify(this.i32, CtlSlot.WAKE)'))
      throw new Error('kv-profile: cannot patch wakeVcpu');
    const counted = body.replace(
      'Atomics.notify(this.i32, CtlSlot.WAKE)',
      '(Atomics.add(this.i32, 19, 1), Atomics.notify(this.i32, CtlSlot.WAKE))',
    );
    writeFileSync(f, s.slice(0, at) + counted + s.slice(endAt));
  }
  patch('src/io/net-device.js', [
    [
      /( *)this\.service\(\);\n(\s*)(?=(this\.ctl\.ioWaiting\(true\);\s*)?const w = Atomics\.waitAsync)/,
      '$1(globalThis.__lockstepBench ??= { loops: 0, asyncWaits: 0, dataEvents: 0, socketWrites: 0 }).loops++;\n$1this.service();\n$2',
    ],
    [/if \(w\.async\)/, 'if (w.async && ++globalThis.__lockstepBench.asyncWaits)'],
    [/( *)onData\(c, chunk\) \{\n/, '$1onData(c, chunk) {\n$1    globalThis.__lockstepBench.dataEvents++;\n'],
    [
      /( *)if \(!c\.socket\.write\(data\)\)/,
      '$1globalThis.__lockstepBench.socketWrites++;\n$1if (!c.socket.write(data))',
    ],
  ]);
  patch('src/vm/wasi/host.js', [
    [
      /( *)return \(\.\.\.args\) => \{\n/,
      '$1const benchSlot = { poll_oneoff: 21, sock_recv: 22, sock_send: 23 }[name] ?? 24;\n$1return (...args) => {\n$1    Atomics.add(ctl.i32, benchSlot, 1);\n',
    ],
    [
      /( *)poll_oneoff\(inPtr, outPtr, nsubs, neventsPtr\) \{\n/,
      '$1poll_oneoff(inPtr, outPtr, nsubs, neventsPtr) {\n$1    Atomics.add(this.caps.ctl.i32, 25, nsubs);\n',
    ],
  ]);
  return path.join(dir, 'dist');
}

async function counters(server) {
  const n = server.child.stdoutLines.length;
  server.child.kill('SIGUSR2');
  const until = Date.now() + 3000;
  while (server.child.stdoutLines.length === n) {
    if (Date.now() > until) throw new Error('no counters from vm-server');
    await sleep(10);
  }
  return JSON.parse(server.child.stdoutLines[n]);
}

async function measureWakeups() {
  log('\n== cross-thread wake-ups per request (counting copy of dist/) ==');
  const dist = makeCountingDist();
  const s = await start('vm-counted', { dist });
  const out = {};
  try {
    for (const m of MODES) await run(s, { ...m, requests: Math.ceil(m.requests / 2) });
    for (const m of MODES) {
      const a = await counters(s);
      const r = await run(s, m);
      const b = await counters(s);
      const total = m.requests * nTests;
      const per = {};
      for (const k of Object.keys(b)) per[k] = r0((b[k] - a[k]) / total, 3);
      out[m.name] = { rps: r.rps, cpu: r.cpu, perRequest: per };
      log(`  ${m.name}: ${JSON.stringify(per)}`);
    }
  } finally {
    await s.stop();
  }
  return out;
}

// ---------------------------------------------------------------- 3. V8 CPU profile (optional)

function summariseProfile(file, top = 15) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const cf = byId.get(p.samples[i]).callFrame;
    const d = p.timeDeltas[i] ?? 0;
    total += d;
    const key =
      `${cf.functionName || '(anonymous)'} ${cf.url ? cf.url.split('/').slice(-2).join('/') + ':' + (cf.lineNumber + 1) : ''}`.trim();
    self.set(key, (self.get(key) ?? 0) + d);
  }
  return {
    totalMs: r0(total / 1e3),
    top: [...self]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([k, v]) => ({ fn: k, ms: r0(v / 1e3), pct: r0((100 * v) / total, 1) })),
  };
}

async function measureCpuProfile() {
  log('\n== V8 CPU profile, one non-pipelined run ==');
  const profDir = tempDir('kvprof-cpuprof-');
  const s = await start('vm');
  await s.stop(); // fills the cache, so the profiled run does not instrument
  const { SERVERS } = await import('./lib/kvbench.mjs');
  const orig = SERVERS.vm;
  SERVERS.vm = (o) => {
    const spec = orig(o);
    return { ...spec, args: ['--cpu-prof', '--cpu-prof-dir', profDir, ...spec.args] };
  };
  const p = await start('vm');
  SERVERS.vm = orig;
  try {
    await run(p, { ...MODES[0], requests: Math.ceil(cfg.requests / 2) });
    await run(p, MODES[0]);
  } finally {
    await p.stop();
  }
  const files = readdirSync(profDir)
    .filter((f) => f.endsWith('.cpuprofile'))
    .sort();
  // Node numbers the profiles by thread: the main thread's is written first (…0.001), the worker's next.
  return files.map((f, i) => ({
    thread: i === 0 ? 'main' : 'vcpu',
    ...summariseProfile(path.join(profDir, f)),
  }));
}

// ---------------------------------------------------------------- report

function markdown() {
  const L = [];
  const g = (x) => (x === null || x === undefined ? 'n/a' : x.toFixed(2));
  const f = (x) => (x === null ? 'n/a' : Math.round(x).toLocaleString('en-US'));
  if (result.cost) {
    const c = result.cost;
    L.push(`Instrumentation cost on the KV server (median of ${c.rounds} interleaved rounds, req/s):`);
    L.push('');
    L.push('| mode | test | instrumented | uninstrumented | native | instrumented/uninstrumented |');
    L.push('|---|---|---:|---:|---:|---:|');
    for (const m of MODES) {
      for (const t of ['SET', 'GET']) {
        const r = c.ratioInstrumentedToRaw[m.name][t];
        L.push(
          `| ${m.pipeline > 1 ? `-P ${m.pipeline}` : 'no pipeline'} | ${t} | ${f(c.medians.vm[m.name][t])} | ${f(c.medians['vm-raw'][m.name][t])} | ${f(c.medians.native[m.name][t])} | ${r.median.toFixed(3)} (${r.min.toFixed(2)}–${r.max.toFixed(2)}) |`,
        );
      }
    }
    L.push('');
    L.push('CPU µs per request (median):');
    L.push('');
    L.push('| server | mode | main (I/O) | vCPU | other | total | of which kernel | client |');
    L.push('|---|---|---:|---:|---:|---:|---:|---:|');
    for (const k of ['vm', 'vm-raw', 'native']) {
      for (const m of MODES) {
        const x = c.cpu[k][m.name];
        L.push(
          `| ${k} | ${m.name} | ${k === 'native' ? '—' : g(x.main)} | ${k === 'native' ? '—' : g(x.vcpu)} | ${k === 'native' ? '—' : g(x.other)} | ${g(x.total)} | ${g(x.sys)} | ${g(x.client)} |`,
        );
      }
    }
  }
  if (result.wakeups) {
    L.push('');
    L.push('Per request (counting copy of dist/):');
    L.push('');
    const keys = Object.keys(result.wakeups.plain.perRequest);
    L.push(`| counter | ${MODES.map((m) => m.name).join(' | ')} |`);
    L.push(`|---|${MODES.map(() => '---:').join('|')}|`);
    for (const k of keys)
      L.push(`| ${k} | ${MODES.map((m) => g(result.wakeups[m.name].perRequest[k])).join(' | ')} |`);
  }
  if (result.cpuProfile) {
    for (const t of result.cpuProfile) {
      L.push('');
      L.push(`V8 profile, ${t.thread} thread (${t.totalMs} ms sampled, wall clock):`);
      for (const x of t.top)
        L.push(`  ${String(x.ms).padStart(7)} ms ${String(x.pct).padStart(5)}%  ${x.fn}`);
    }
  }
  return L.join('\n');
}

let failed = false;
try {
  if (cfg.cost) result.cost = await measureCost();
  if (cfg.count) result.wakeups = await measureWakeups();
  if (cfg.cpuProf) result.cpuProfile = await measureCpuProfile();
  result.machine.loadavgAtEnd = os.loadavg().map((x) => Math.round(x * 100) / 100);
  process.stdout.write('\n' + markdown() + '\n');
} catch (e) {
  failed = true;
  log(`bench: FAILED: ${e.stack ?? e}`);
} finally {
  writeResults(outFile, result);
  log(`bench: results written to ${path.relative(ROOT, outFile)}`);
}
process.exit(failed ? 1 : 0);
