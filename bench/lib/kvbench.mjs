// Shared pieces of the KV benchmarks (bench/kv.mjs, bench/kv-profile.mjs): starting and stopping
// servers on loopback, waiting for the first PONG, running redis-benchmark, and reading per-thread
// CPU times from /proc. Every wait is bounded in time; every child is killed at exit.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const ROOT = path.resolve(new URL('../..', import.meta.url).pathname);
export const KV_WASM = path.join(ROOT, 'examples/kv/kv.wasm');
export const NATIVE_KV = path.join(ROOT, 'examples/kv/native/build/kv');
export const NATIVE_SHIM = path.join(ROOT, 'examples/kv/native/build/kv-shim');
export const LOCKSTEP_BIN = path.join(ROOT, 'bin/lockstep.js');
export const VM_SERVER = path.join(ROOT, 'bench/lib/vm-server.mjs');
export const HOST = '127.0.0.1';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// ---------------------------------------------------------------- children and cleanup

const children = new Set();
const tempDirs = new Set();

export function tempDir(prefix) {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

function killAllSync() {
  for (const c of children) {
    try {
      process.kill(c.group ? -c.pid : c.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}
process.on('exit', killAllSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    process.stderr.write(`\nbench: ${sig}, killing servers\n`);
    killAllSync();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** A free TCP port on 127.0.0.1 (bound then released; a tiny race we accept on loopback). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen({ host: HOST, port: 0, exclusive: true }, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** One PING over RESP; resolves true on +PONG within timeoutMs. */
function pingOnce(port, timeoutMs) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port });
    let buf = '';
    const done = (ok) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('connect', () => sock.write('*1\r\n$4\r\nPING\r\n'));
    sock.on('data', (d) => {
      buf += d.toString();
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
    sock.on('error', () => done(false));
  });
}

/** Polls PING every 5 ms until +PONG; returns ms since `t0` (performance.now()), or throws. */
export async function waitForPong(port, t0, timeoutMs, child) {
  const deadline = t0 + timeoutMs;
  while (performance.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `server exited (${child.exitCode ?? child.signalCode}) before answering PING: ${child.stderrText?.slice(-500)}`,
      );
    }
    if (await pingOnce(port, 1000)) return performance.now() - t0;
    await sleep(5);
  }
  throw new Error(`no PONG on port ${port} within ${timeoutMs} ms`);
}

// ---------------------------------------------------------------- servers

/**
 * Server kinds. Each returns { cmd, args, env } for a port and a fresh data folder.
 * - lockstep: the real CLI, `lockstep run examples/kv/kv.wasm`, KV_FSYNC=no inside the guest;
 * - native: the same kv.c built with gcc -O2, launched by kv-shim (binds, dup2 to fd 3, exec);
 * - redis: redis-server itself, no persistence;
 * - vm / vm-raw / vm-counted: bench/lib/vm-server.mjs (in-process Vm: instrumented, uninstrumented,
 *   or from a counting copy of dist/), for kv-profile.mjs.
 */
export const SERVERS = {
  lockstep: ({ port, dir, cacheDir }) => ({
    cmd: process.execPath,
    args: [
      LOCKSTEP_BIN,
      'run',
      KV_WASM,
      '--listen',
      `${HOST}:${port}`,
      '--disk',
      dir,
      '--env',
      'KV_FSYNC=no',
    ],
    env: { LOCKSTEP_CACHE_DIR: cacheDir },
  }),
  native: ({ port, dir }) => ({
    cmd: NATIVE_SHIM,
    args: [`${HOST}:${port}`, NATIVE_KV],
    env: { KV_DIR: dir, KV_FSYNC: 'no' },
  }),
  redis: ({ port, dir }) => ({
    cmd: 'redis-server',
    args: [
      '--port',
      String(port),
      '--bind',
      HOST,
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      dir,
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
    ],
    env: {},
  }),
  vm: ({ port, dir, cacheDir }) => ({
    cmd: process.execPath,
    args: [
      VM_SERVER,
      '--wasm',
      KV_WASM,
      '--listen',
      `${HOST}:${port}`,
      '--disk',
      dir,
      '--env',
      'KV_FSYNC=no',
      '--cache-dir',
      cacheDir,
    ],
    env: {},
  }),
  'vm-raw': ({ port, dir }) => ({
    cmd: process.execPath,
    args: [
      VM_SERVER,
      '--raw',
      '--wasm',
      KV_WASM,
      '--listen',
      `${HOST}:${port}`,
      '--disk',
      dir,
      '--env',
      'KV_FSYNC=no',
    ],
    env: {},
  }),
  'vm-counted': ({ port, dir, cacheDir, dist }) => ({
    cmd: process.execPath,
    args: [
      VM_SERVER,
      '--dist',
      dist,
      '--wasm',
      KV_WASM,
      '--listen',
      `${HOST}:${port}`,
      '--disk',
      dir,
      '--env',
      'KV_FSYNC=no',
      '--cache-dir',
      cacheDir,
    ],
    env: {},
  }),
};

/** Shell-quoted command line, for printing the reproduction recipe. */
export function shellLine({ cmd, args, env }) {
  const q = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const envs = Object.entries(env).map(([k, v]) => `${k}=${q(v)}`);
  return [
    ...envs,
    q(path.isAbsolute(cmd) && cmd.startsWith(ROOT) ? path.relative(ROOT, cmd) : cmd),
    ...args.map((a) => q(a.startsWith(ROOT + '/') ? path.relative(ROOT, a) : a)),
  ].join(' ');
}

/**
 * Starts a server and waits for its first PONG. Returns
 * { kind, port, pid, child, spec, startupMs, stop() }.
 */
export async function startServer(kind, opts = {}) {
  const port = await freePort();
  const dir = tempDir(`kvbench-${kind}-`);
  const spec = SERVERS[kind]({ port, dir, cacheDir: opts.cacheDir, dist: opts.dist });
  const t0 = performance.now();
  const child = track(
    spawn(spec.cmd, spec.args, {
      cwd: ROOT,
      env: { ...process.env, ...spec.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  child.stderrText = '';
  child.stderr.on('data', (d) => {
    child.stderrText = (child.stderrText + d.toString()).slice(-4000);
  });
  child.stdoutLines = [];
  let outBuf = '';
  child.stdout.on('data', (d) => {
    outBuf += d.toString();
    let i;
    while ((i = outBuf.indexOf('\n')) >= 0) {
      child.stdoutLines.push(outBuf.slice(0, i));
      outBuf = outBuf.slice(i + 1);
    }
  });
  let startupMs;
  try {
    startupMs = await waitForPong(port, t0, opts.startTimeoutMs ?? 120_000, child);
  } catch (e) {
    await stopChild(child);
    throw e;
  }
  return {
    kind,
    port,
    pid: child.pid,
    child,
    spec,
    startupMs,
    stop: () => stopChild(child),
  };
}

/** SIGTERM, then SIGKILL after 3 s; resolves when the child is gone. */
export async function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  try {
    child.kill('SIGTERM');
  } catch {
    // already gone
  }
  const t = setTimeout(() => {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }, 3000);
  await gone;
  clearTimeout(t);
}

// ---------------------------------------------------------------- CPU times from /proc

export const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Per-thread CPU seconds (utime+stime) of a process: Map tid -> seconds. */
export function threadCpu(pid) {
  const out = new Map();
  let tids;
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After "pid (comm) ", field 3 (state) is f[0]; utime is field 14 -> f[11], stime f[12].
      const t = new Number((Number(f[11]) + Number(f[12])) / CLK_TCK); // seconds, with .sys attached
      t.sys = Number(f[12]) / CLK_TCK;
      out.set(Number(tid), t);
    } catch {
      // thread ended
    }
  }
  return out;
}

/**
 * Threads of a freshly started Lockstep process: the main thread is tid == pid; the vCPU worker
 * is the newest thread at start (Node creates its platform and libuv threads first, and all
 * threads are named "node", so the name cannot tell them apart).
 */
export function lockstepThreads(pid) {
  const tids = [...threadCpu(pid).keys()].sort((a, b) => a - b);
  return { main: pid, vcpu: tids[tids.length - 1] };
}

/** CPU seconds spent between two threadCpu() samples, split into main / vcpu / other. */
export function cpuSplit(before, after, threads) {
  let main = 0;
  let vcpu = 0;
  let other = 0;
  let sys = 0; // kernel time, all threads
  for (const [tid, t] of after) {
    const d = t - (before.get(tid) ?? 0);
    sys += t.sys - (before.get(tid)?.sys ?? 0);
    if (threads && tid === threads.main) main += d;
    else if (threads && tid === threads.vcpu) vcpu += d;
    else if (!threads) main += d;
    else other += d;
  }
  return { main, vcpu, other, total: main + vcpu + other, sys };
}

// ---------------------------------------------------------------- redis-benchmark

/**
 * Runs redis-benchmark against a port; returns { rps: {SET, GET, ...}, clientCpuS, wallS,
 * command }. The client's own CPU time is taken with bash's `times` (children's user+sys).
 */
export async function redisBenchmark(
  port,
  { tests = 'get,set', requests, clients = 50, pipeline = 1, timeoutMs },
) {
  const args = [
    '-h',
    HOST,
    '-p',
    String(port),
    '-c',
    String(clients),
    '-n',
    String(requests),
    '-t',
    tests,
    '--csv',
  ];
  if (pipeline > 1) args.push('-P', String(pipeline));
  const command = `redis-benchmark ${args.join(' ')}`;
  const t0 = performance.now();
  const child = track(
    spawn('bash', ['-c', 'redis-benchmark "$@"; rc=$?; times >&2; exit $rc', 'bash', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true, // its own process group, so a timeout kills bash and redis-benchmark together
    }),
  );
  child.group = true;
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      child.kill('SIGKILL');
    }
  }, timeoutMs);
  const code = await new Promise((r) => child.once('exit', (c, s) => r(c ?? s)));
  clearTimeout(timer);
  const wallS = (performance.now() - t0) / 1000;
  if (timedOut) throw new Error(`${command}: timed out after ${timeoutMs} ms`);
  if (code !== 0) throw new Error(`${command}: exit ${code}: ${err.slice(-500)}`);
  const rps = {};
  for (const line of out.split('\n')) {
    const m = /^"([A-Z_]+)[^"]*","([\d.]+)"/.exec(line);
    if (m) rps[m[1]] = Number(m[2]);
  }
  // `times` prints two lines: the shell's own, then its children's: "0m1.234s 0m0.567s".
  const lines = err.trim().split('\n');
  const tm = /(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s/.exec(lines[lines.length - 1] ?? '');
  const clientCpuS = tm ? Number(tm[1]) * 60 + Number(tm[2]) + Number(tm[3]) * 60 + Number(tm[4]) : null;
  if (Object.keys(rps).length === 0)
    throw new Error(`${command}: no results in output: ${out.slice(0, 300)}`);
  return { rps, clientCpuS, wallS, command };
}

// ---------------------------------------------------------------- machine facts

export function machineFacts() {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] })
        .toString()
        .trim();
    } catch {
      return null;
    }
  };
  const cpuModel = os.cpus()[0]?.model ?? null;
  return {
    nproc: Number(sh('nproc', [])) || os.availableParallelism(),
    cpuModel,
    node: process.version,
    redisServer: sh('redis-server', ['--version']),
    redisBenchmark: sh('redis-benchmark', ['--version']),
    gcc: sh('gcc', ['--version'])?.split('\n')[0] ?? null,
    kernel: os.release(),
    loadavgAtStart: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
}

/** Builds the native kv and kv-shim with examples/build.sh when they are missing. */
export function ensureNativeBuild() {
  if (existsSync(NATIVE_KV) && existsSync(NATIVE_SHIM)) return false;
  process.stderr.write('bench: native kv missing, running examples/build.sh\n');
  execFileSync('bash', [path.join(ROOT, 'examples/build.sh')], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 600_000,
  });
  return true;
}

export function ensureDist() {
  if (!existsSync(path.join(ROOT, 'dist/src/cli/main.js'))) {
    throw new Error('dist/ is missing: run `npx tsc -p tsconfig.json` first');
  }
}

/**
 * Other processes using CPU right now (over `ms`), excluding this process and its children:
 * a benchmark on a shared 2-core machine is only as good as its idle background.
 */
export async function busyProcesses(ms = 1000, minPct = 20) {
  const sample = () => {
    const m = new Map();
    for (const d of readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const s = readFileSync(`/proc/${d}/stat`, 'utf8');
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        m.set(Number(d), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
      } catch {
        // gone
      }
    }
    return m;
  };
  const a = sample();
  await sleep(ms);
  const b = sample();
  const out = [];
  for (const [pid, x] of b) {
    if (pid === process.pid || x.ppid === process.pid) continue;
    const pct = ((x.ticks - (a.get(pid)?.ticks ?? x.ticks)) / CLK_TCK / (ms / 1000)) * 100;
    if (pct >= minPct) {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120);
      } catch {
        // gone
      }
      out.push({ pid, cpuPct: Math.round(pct), cmd });
    }
  }
  return out;
}

/** Writes a results file, formatted with the repository's prettier when it is installed (so `npm run lint` passes). */
export function writeResults(file, obj) {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(obj, null, 2) + '\n');
  const prettier = path.join(ROOT, 'node_modules/.bin/prettier');
  if (existsSync(prettier))
    spawnSync(prettier, ['--write', '--log-level', 'warn', file], {
      cwd: ROOT,
      stdio: 'ignore',
      timeout: 60_000,
    });
}

/** A positive numeric command-line option (`--runs 5`), or `def` when absent; exits 2 on a bad value. */
export function numberOption(argv, name, def) {
  const i = argv.indexOf(name);
  if (i < 0) return def;
  const v = Number(argv[i + 1]);
  if (!Number.isFinite(v) || v <= 0) {
    process.stderr.write(`bench: ${name} needs a positive number\n`);
    process.exit(2);
  }
  return v;
}
