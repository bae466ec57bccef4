/**
 * Local clusters of real host processes for end-to-end tests.
 *
 * Each host is its own `lockstep host start` OS process, optionally wrapped
 * (e.g. in `nsenter` to share a mount namespace). Every process started here
 * is killed by `close()`, which tests call in `finally`/`after`, and by an
 * exit hook if a test dies first. Service addresses are loopback addresses
 * unique to this test process (127.X.Y.Z drawn from the pid), so concurrent
 * test files never collide.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { BIN, CACHE_DIR, ROOT, repoPath, runCollected, tempDir, type RunResult } from './harness.js';
import type { VmStatus } from '../../src/api/backend.js';

/** The example KV server (Redis protocol) that the cluster tests place on hosts. */
export const KV = repoPath('examples', 'kv', 'kv.wasm');

const liveChildren = new Set<ChildProcess>();
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL');
  });
}

export interface HostProc {
  name: string;
  pid: number;
  api: string;
  child: ChildProcess;
  /** Everything the host wrote on stderr so far (its JSON log lines). */
  log(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (or `signal`), then SIGKILL after graceMs; resolves at exit. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

export interface StartHostOptions {
  name: string;
  data: string;
  coordinator: string;
  profile?: 'default' | 'fast';
  extraArgs?: string[];
  /** A command prefix, e.g. ['nsenter', '-t', PID, '-m', '--']. */
  wrap?: string[];
  readyTimeoutMs?: number;
}

export function startHost(o: StartHostOptions): Promise<HostProc> {
  hookExit();
  mkdirSync(o.data, { recursive: true });
  const argv = [
    BIN,
    'host',
    'start',
    '--name',
    o.name,
    '--data',
    o.data,
    '--coordinator',
    o.coordinator,
    '--profile',
    o.profile ?? 'default',
    ...(o.extraArgs ?? []),
  ];
  const [cmd, args] = o.wrap
    ? [o.wrap[0]!, [...o.wrap.slice(1), process.execPath, ...argv]]
    : [process.execPath, argv];
  const child = spawn(cmd, args, {
    cwd: ROOT,
    env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveChildren.add(child);
  let errText = '';
  child.stderr!.on('data', (b: Buffer) => (errText += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      liveChildren.delete(child);
      resolve({ code, signal });
    }),
  );
  return new Promise((resolve, reject) => {
    const timeoutMs = o.readyTimeoutMs ?? 30_000;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`host ${o.name} not ready within ${timeoutMs} ms:\n${errText}`));
    }, timeoutMs);
    const lines = createInterface({ input: child.stdout! });
    lines.once('line', (line) => {
      clearTimeout(timer);
      const ready = JSON.parse(line) as { name: string; pid: number; api: string };
      resolve({
        name: ready.name,
        pid: ready.pid,
        api: ready.api,
        child,
        log: () => errText,
        exited,
        async stop(signal = 'SIGTERM', graceMs = 15_000) {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
          await exited;
          clearTimeout(t);
        },
      });
    });
    void exited.then((r) => {
      clearTimeout(timer);
      reject(new Error(`host ${o.name} exited (${r.code ?? r.signal}) before it was ready:\n${errText}`));
    });
  });
}

/** A loopback address unique to this test process: 127.A.B.n with A.B from the pid. */
export function serviceIp(n: number): string {
  const pid = process.pid;
  return `127.${1 + ((pid >> 8) % 250)}.${pid % 256}.${n}`;
}

export interface LocalCluster {
  dir: string;
  coordinator: string;
  hosts: HostProc[];
  /** Runs the CLI against this cluster. */
  cli(args: string[], timeoutMs?: number, env?: Record<string, string>): Promise<RunResult>;
  /** Runs the CLI and parses its stdout's last line as JSON (asserting exit 0). */
  cliJson<T = unknown>(args: string[], timeoutMs?: number): Promise<T>;
  addHost(name: string, extraArgs?: string[]): Promise<HostProc>;
  /** The logs of every host started so far (also those killed or replaced), in start order. */
  allLogs(): string;
  /** `vm create NAME --wasm KV --listen IP:6379 --disk (a fresh empty image) [--host HOST]`, waiting for it to serve. */
  createKv(o: { name?: string; ip: string; host?: string; extraArgs?: string[] }): Promise<VmStatus>;
  close(): Promise<void>;
}

export async function startCluster(o: {
  hosts: number;
  coordinator?: string;
  profile?: 'default' | 'fast';
  wrap?: string[];
  prefix?: string;
}): Promise<LocalCluster> {
  const tmp = tempDir(o.prefix ?? 'cluster');
  const coordinator = o.coordinator ?? `file:${path.join(tmp.dir, 'coord')}`;
  const hosts: HostProc[] = [];
  const addHost = async (name: string, extraArgs: string[] = []): Promise<HostProc> => {
    const h = await startHost({
      name,
      data: path.join(tmp.dir, 'hosts', name),
      coordinator,
      profile: o.profile ?? 'default',
      extraArgs,
      ...(o.wrap ? { wrap: o.wrap } : {}),
    });
    hosts.push(h);
    started.push(h);
    return h;
  };
  const started: HostProc[] = [];
  const cluster: LocalCluster = {
    dir: tmp.dir,
    coordinator,
    hosts,
    cli: (args, timeoutMs = 90_000, env = {}) =>
      runCollected(process.execPath, [BIN, ...args], {
        timeoutMs,
        env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR, LOCKSTEP_COORDINATOR: coordinator, ...env },
      }),
    async cliJson<T>(args: string[], timeoutMs?: number): Promise<T> {
      const r = await cluster.cli([...args, '--json'], timeoutMs);
      if (r.code !== 0) throw new Error(`lockstep ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
      const lines = r.stdout.trim().split('\n');
      return JSON.parse(lines[lines.length - 1]!) as T;
    },
    addHost,
    allLogs: () => started.map((h) => h.log()).join(''),
    createKv(k) {
      mkdirSync(path.join(tmp.dir, 'images'), { recursive: true });
      const disk = mkdtempSync(path.join(tmp.dir, 'images', 'kv-'));
      return cluster.cliJson<VmStatus>([
        'vm',
        'create',
        k.name ?? 'kv',
        '--wasm',
        KV,
        '--listen',
        `${k.ip}:6379`,
        '--disk',
        disk,
        ...(k.host !== undefined ? ['--host', k.host] : []),
        ...(k.extraArgs ?? []),
      ]);
    },
    async close() {
      await Promise.all(hosts.map((h) => h.stop('SIGTERM', 10_000)));
      tmp.cleanup();
    },
  };
  try {
    // The first host creates the cluster's secrets; the rest join.
    await addHost('h1');
    for (let i = 2; i <= o.hosts; i++) await addHost(`h${i}`);
  } catch (e) {
    await cluster.close();
    throw e;
  }
  return cluster;
}

/** Polls `f` every intervalMs until it returns a non-undefined value, or throws after timeoutMs. */
export async function waitUntil<T>(
  what: string,
  f: () => Promise<T | undefined>,
  timeoutMs: number,
  intervalMs = 200,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown = null;
  while (performance.now() < deadline) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      lastError = e;
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`,
  );
}

/** A RESP client connection whose received bytes accumulate, so nothing arriving between reads is lost. */
export class RespClient {
  private got = '';
  private waiter: (() => void) | null = null;
  constructor(readonly s: net.Socket) {
    s.on('data', (b: Buffer) => {
      this.got += b.toString();
      this.waiter?.();
    });
  }
  /** Resolves with the next line (CRLF included), or '' if none arrives within waitMs. */
  line(waitMs: number): Promise<string> {
    return new Promise((resolve) => {
      const take = (): boolean => {
        const i = this.got.indexOf('\r\n');
        if (i < 0) return false;
        const l = this.got.slice(0, i + 2);
        this.got = this.got.slice(i + 2);
        clearTimeout(t);
        this.waiter = null;
        resolve(l);
        return true;
      };
      const t = setTimeout(() => {
        this.waiter = null;
        resolve('');
      }, waitMs);
      if (!take()) this.waiter = () => void take();
    });
  }
  ping(waitMs: number): Promise<string> {
    this.s.write('PING\r\n');
    return this.line(waitMs);
  }
}

/** One redis-cli command against ip:port; its trimmed output, or "error: …". */
export function redis(ip: string, port: number, ...args: string[]): Promise<string> {
  return runCollected('redis-cli', ['-h', ip, '-p', String(port), ...args], { timeoutMs: 10_000 }).then(
    (r) => (r.code === 0 ? r.stdout.trim() : `error: ${r.stderr.trim() || r.stdout.trim()}`),
  );
}
