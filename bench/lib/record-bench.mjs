// Pieces of the record/replay benchmark (bench/record.mjs): starting `lockstep run`, `record`
// and `replay` as child processes, stopping a recorder cleanly and reading its summary, a RESP
// client and a RESP capture server (to check the exact bytes of redis-benchmark's SET), and
// redis-benchmark with a value size. Every wait is bounded; every child is killed at exit.
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { CLK_TCK, HOST, KV_WASM, ROOT, freePort, sleep, tempDir, waitForPong } from './kvbench.mjs';

export const IDLE_POLL_WASM = path.join(ROOT, 'test/guests/idle_poll.wasm');
export { KV_WASM };

// ---------------------------------------------------------------- children and cleanup

const children = new Set();

function track(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

export function killAll() {
  for (const c of children) {
    try {
      process.kill(c.group ? -c.pid : c.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  children.clear();
}
// kvbench.mjs's signal handlers call process.exit(), which runs this too.
process.on('exit', killAll);

/** Waits for a child's exit, at most `ms`; resolves true if it exited. */
function exited(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

// ---------------------------------------------------------------- the build under test

/**
 * A private copy of bin/ and dist/ (with node_modules linked), so a rebuild of the working tree
 * while the benchmark runs does not change the code being measured halfway through. Returns the
 * path of the copied bin/lockstep.js.
 */
export function snapshotBuild() {
  const t = tempDir('recbench-build-');
  cpSync(path.join(ROOT, 'dist'), path.join(t, 'dist'), { recursive: true });
  cpSync(path.join(ROOT, 'bin'), path.join(t, 'bin'), { recursive: true });
  cpSync(path.join(ROOT, 'package.json'), path.join(t, 'package.json'));
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(t, 'node_modules'));
  return path.join(t, 'bin/lockstep.js');
}

// ---------------------------------------------------------------- lockstep processes

/**
 * Spawns `node BIN ARGS...` with LOCKSTEP_CACHE_DIR set; collects stdout lines and the tail of
 * stderr. `onLine(line)` sees every stdout line as it arrives.
 */
export function spawnLockstep(bin, args, { cacheDir, env = {}, onLine } = {}) {
  const child = track(
    spawn(process.execPath, [bin, ...args], {
      cwd: ROOT,
      env: { ...process.env, LOCKSTEP_CACHE_DIR: cacheDir, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }),
  );
  child.stderrText = '';
  child.stderr.on('data', (d) => {
    child.stderrText = (child.stderrText + d.toString()).slice(-8000);
  });
  child.stdoutLines = [];
  let buf = '';
  child.stdout.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      child.stdoutLines.push(line);
      if (child.stdoutLines.length > 1000) child.stdoutLines.shift();
      onLine?.(line);
    }
  });
  return child;
}

/**
 * Starts the KV guest under `lockstep run` or `lockstep record` on a free loopback port with a
 * fresh disk, and waits for its first PONG. `log` is required for record.
 * Returns { mode, port, pid, child, dir, log, startupMs, args }.
 */
export async function startKv(bin, mode, { cacheDir, log, fsync = 'no', startTimeoutMs = 120_000 }) {
  const port = await freePort();
  const dir = tempDir(`recbench-${mode}-disk-`);
  const args = [mode, KV_WASM, '--listen', `${HOST}:${port}`, '--disk', dir, '--env', `KV_FSYNC=${fsync}`];
  if (mode === 'record') args.push('--log', log);
  const t0 = performance.now();
  const child = spawnLockstep(bin, args, { cacheDir });
  let startupMs;
  try {
    startupMs = await waitForPong(port, t0, startTimeoutMs, child);
  } catch (e) {
    await stopProcess(child, 5000);
    throw e;
  }
  return { mode, port, pid: child.pid, child, dir, log, startupMs, args };
}

/**
 * Starts test/guests/idle_poll.wasm under `lockstep record`; resolves when the guest printed
 * its start line, with the performance.now() of that moment.
 */
export async function startIdlePoll(bin, { cacheDir, log, startTimeoutMs = 120_000 }) {
  let seen;
  const started = new Promise((r) => (seen = r));
  const args = ['record', IDLE_POLL_WASM, '--log', log];
  const child = spawnLockstep(bin, args, {
    cacheDir,
    onLine: (line) => line.startsWith('idle_poll: started') && seen(performance.now()),
  });
  const timeout = sleep(startTimeoutMs).then(() => null);
  const gone = new Promise((r) => child.once('exit', () => r(null)));
  const at = await Promise.race([started, timeout, gone]);
  if (at === null) {
    await stopProcess(child, 5000);
    throw new Error(`idle_poll did not start: ${child.stderrText.slice(-500)}`);
  }
  return { child, pid: child.pid, startedAt: at, log, args };
}

/** SIGTERM, then SIGKILL after `ms`; resolves { code, signal, killed } once the child is gone. */
export async function stopProcess(child, ms = 60_000) {
  let killed = false;
  if (child.exitCode === null && child.signalCode === null) {
    try {
      child.kill('SIGTERM');
    } catch {
      // already gone
    }
    if (!(await exited(child, ms))) {
      killed = true;
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
      await exited(child, 5000);
    }
  }
  return { code: child.exitCode, signal: child.signalCode, killed };
}

/** The summary JSON on the last stdout line of record/replay, or null. */
export function lastSummary(child) {
  for (let i = child.stdoutLines.length - 1; i >= 0; i--) {
    const s = child.stdoutLines[i].trim();
    if (!s.startsWith('{')) continue;
    try {
      const j = JSON.parse(s);
      if (typeof j.events === 'number') return j;
    } catch {
      // not JSON
    }
  }
  return null;
}

/**
 * Stops a recorder with SIGTERM and checks that it stopped cleanly: exit 0, a summary, and the
 * "log FILE: N events, B bytes" line. Returns { summary, events, bytes, stoppedAt } (bytes: the
 * log file's size after exit); throws on anything else.
 */
export async function stopRecorder(rec, ms = 120_000) {
  const stoppedAt = performance.now();
  const r = await stopProcess(rec.child, ms);
  const summary = lastSummary(rec.child);
  const m = /lockstep: log .*: (\d+) events, (\d+) bytes/.exec(rec.child.stderrText);
  if (r.killed || r.code !== 0 || summary === null || m === null) {
    throw new Error(
      `recorder did not stop cleanly (exit ${r.code ?? r.signal}${r.killed ? ', killed after timeout' : ''}): ` +
        rec.child.stderrText.slice(-800),
    );
  }
  const bytes = statSync(rec.log).size;
  if (bytes !== Number(m[2]))
    process.stderr.write(`bench: note: ${rec.log} is ${bytes} bytes, the recorder said ${m[2]}\n`);
  return { summary, events: summary.events, bytes, stoppedAt };
}

/**
 * Runs `lockstep replay WASM --log LOG [--disk EMPTYDIR]` under bash, timing it from spawn to
 * exit; bash's `times` gives the process's CPU time (user+sys, all threads). Returns
 * { code, wallS, cpuS, summary, matches, stderrTail }.
 */
export async function replay(bin, wasm, log, { cacheDir, disk = true, timeoutMs = 600_000 }) {
  const args = ['replay', wasm, '--log', log];
  if (disk) args.push('--disk', tempDir('recbench-replay-disk-'));
  const t0 = performance.now();
  const child = track(
    spawn('bash', ['-c', '"$@"; rc=$?; times >&2; exit $rc', 'bash', process.execPath, bin, ...args], {
      cwd: ROOT,
      env: { ...process.env, LOCKSTEP_CACHE_DIR: cacheDir },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    }),
  );
  child.group = true;
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out = (out + d).slice(-4000)));
  child.stderr.on('data', (d) => (err = (err + d).slice(-8000)));
  const done = await exited(child, timeoutMs);
  if (!done) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
    await exited(child, 5000);
    throw new Error(`replay of ${log} timed out after ${timeoutMs} ms`);
  }
  const wallS = (performance.now() - t0) / 1000;
  const lines = err.trim().split('\n');
  const cpuS = timesCpu(err);
  let summary = null;
  for (const l of out.trim().split('\n').reverse()) {
    try {
      summary = JSON.parse(l);
      break;
    } catch {
      // not the summary
    }
  }
  return {
    code: child.exitCode,
    wallS,
    cpuS,
    summary,
    matches: /replay matches the recording/.test(err),
    stderrTail: lines.slice(0, -2).join('\n').slice(-800),
    command: `lockstep ${args.join(' ')}`,
  };
}

/** The children's user+sys seconds from bash's `times` (its last line of output), or null. */
function timesCpu(stderr) {
  const lines = stderr.trim().split('\n');
  const tm = /(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s/.exec(lines[lines.length - 1] ?? '');
  return tm ? Number(tm[1]) * 60 + Number(tm[2]) + Number(tm[3]) * 60 + Number(tm[4]) : null;
}

/** Machine-wide CPU seconds, busy and total (summed over all cores), from /proc/stat. */
export function machineCpu() {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already counted in user)
  const idle = f[3] + f[4];
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busyS: (total - idle) / CLK_TCK, totalS: total / CLK_TCK };
}

// ---------------------------------------------------------------- RESP

/** Sends one command over a fresh connection and resolves the first reply line. */
export function respCommand(port, argv, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no reply to ${argv[0]} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('connect', () => {
      const parts = [`*${argv.length}\r\n`];
      for (const a of argv) parts.push(`$${Buffer.byteLength(a)}\r\n${a}\r\n`);
      sock.write(parts.join(''));
    });
    sock.on('data', (d) => {
      buf += d.toString();
      const i = buf.indexOf('\r\n');
      if (i >= 0) {
        clearTimeout(timer);
        sock.destroy();
        resolve(buf.slice(0, i));
      }
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/**
 * Captures what redis-benchmark really sends for `-t set -d SIZE`: a throwaway RESP server on
 * loopback that parses every request, answers CONFIG GET with an empty value and anything else
 * with +OK, and counts the bytes of each SET request. Returns { setBytes, example, setCount,
 * otherCommands, totalBytes }.
 */
export async function captureSetRequest(dataSize, requests = 200) {
  const sizes = new Map();
  let example = null;
  const other = [];
  let totalBytes = 0;
  const server = net.createServer((sock) => {
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      totalBytes += d.length;
      buf = Buffer.concat([buf, d]);
      for (;;) {
        const req = parseResp(buf);
        if (req === null) break;
        const raw = buf.subarray(0, req.bytes);
        buf = buf.subarray(req.bytes);
        const name = req.argv[0]?.toString().toUpperCase();
        if (name === 'SET') {
          sizes.set(req.bytes, (sizes.get(req.bytes) ?? 0) + 1);
          example ??= raw.toString('latin1');
          sock.write('+OK\r\n');
        } else if (name === 'CONFIG') {
          other.push(req.argv.map(String).join(' '));
          const key = String(req.argv[2] ?? '');
          sock.write(`*2\r\n$${key.length}\r\n${key}\r\n$0\r\n\r\n`);
        } else {
          other.push(req.argv.map(String).join(' '));
          sock.write('+OK\r\n');
        }
      }
    });
    sock.on('error', () => {});
  });
  await new Promise((r, j) => server.listen({ host: HOST, port: 0 }, r).once('error', j));
  const { port } = server.address();
  try {
    await redisBench(port, { tests: 'set', requests, clients: 1, dataSize, timeoutMs: 30_000 });
  } finally {
    server.close();
  }
  const [setBytes, setCount] = [...sizes.entries()].sort((a, b) => b[1] - a[1])[0] ?? [null, 0];
  return { setBytes, setCount, sizes: Object.fromEntries(sizes), example, otherCommands: other, totalBytes };
}

/** One RESP array of bulk strings at the start of buf: { argv, bytes }, or null if incomplete. */
function parseResp(buf) {
  if (buf.length === 0) return null;
  if (buf[0] !== 0x2a) throw new Error(`capture: not a RESP array: ${buf.subarray(0, 20).toString()}`);
  let i = buf.indexOf('\r\n');
  if (i < 0) return null;
  const n = Number(buf.subarray(1, i).toString());
  let off = i + 2;
  const argv = [];
  for (let k = 0; k < n; k++) {
    i = buf.indexOf('\r\n', off);
    if (i < 0) return null;
    const len = Number(buf.subarray(off + 1, i).toString());
    off = i + 2;
    if (buf.length < off + len + 2) return null;
    argv.push(buf.subarray(off, off + len));
    off += len + 2;
  }
  return { argv, bytes: off };
}

// ---------------------------------------------------------------- redis-benchmark

/**
 * redis-benchmark against 127.0.0.1:port, in its own process group (killed on timeout).
 * Returns { rps: {SET, GET}, wallS, clientCpuS, command }; wallS is spawn to exit, clientCpuS
 * redis-benchmark's user+sys time (bash's `times`).
 */
export async function redisBench(
  port,
  { tests = 'get,set', requests, clients = 50, pipeline = 1, dataSize = null, timeoutMs },
) {
  const args = ['-h', HOST, '-p', String(port), '-c', String(clients), '-n', String(requests), '-t', tests];
  if (dataSize !== null) args.push('-d', String(dataSize));
  if (pipeline > 1) args.push('-P', String(pipeline));
  args.push('--csv');
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
  child.stderr.on('data', (d) => (err = (err + d).slice(-4000)));
  const done = await exited(child, timeoutMs);
  const wallS = (performance.now() - t0) / 1000;
  if (!done) {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // gone
    }
    await exited(child, 5000);
    throw new Error(`${command}: timed out after ${timeoutMs} ms`);
  }
  if (child.exitCode !== 0) throw new Error(`${command}: exit ${child.exitCode}: ${err.slice(-500)}`);
  const rps = {};
  for (const line of out.split('\n')) {
    const m = /^"([A-Z_]+)[^"]*","([\d.]+)"/.exec(line);
    if (m) rps[m[1]] = Number(m[2]);
  }
  if (Object.keys(rps).length === 0)
    throw new Error(`${command}: no results in output: ${out.slice(0, 300)}`);
  return { rps, wallS, clientCpuS: timesCpu(err), command };
}

// ---------------------------------------------------------------- misc

/** The git commit and the files that differ from it (read-only git commands; for the results file). */
export function gitState() {
  const git = (...args) => {
    try {
      return execFileSync('git', args, {
        cwd: ROOT,
        env: { ...process.env, GIT_OPTIONAL_LOCKS: '0' },
        stdio: ['ignore', 'pipe', 'ignore'],
      })
        .toString()
        .trim();
    } catch {
      return null;
    }
  };
  const status = git('status', '--porcelain', '--untracked-files=no');
  return {
    commit: git('rev-parse', 'HEAD'),
    modified: status === null ? null : status.split('\n').filter(Boolean),
  };
}
