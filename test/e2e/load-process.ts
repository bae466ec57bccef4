/**
 * The load client (load-client.ts) as a separate process, for tests: start
 * it, follow its progress reports, and read the history it writes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseKvHistory, type KvOpRecord } from '../checker/history.js';
import type { LoadStats } from './load-client.js';
import { ROOT } from './harness.js';

const LOAD_CLIENT = fileURLToPath(new URL('./load-client.js', import.meta.url));
const HOST = '127.0.0.1';
/** A load client still running after this long is killed, so a hang fails its test instead of the suite. */
const LOAD_PROCESS_KILL_MS = 60_000;

export interface LoadProcess {
  readonly child: ChildProcess;
  /** The latest progress report, null before the first. */
  latest(): LoadStats | null;
  readonly exited: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>;
}

/**
 * Runs `node load-client.js ARGS` as a separate process, collecting its
 * progress reports. `wrap` is a command prefix, such as `ip netns exec NS`,
 * to run the client on another "machine".
 */
export function startLoadProcess(
  children: Set<ChildProcess>,
  args: string[],
  wrap: readonly string[] = [],
): LoadProcess {
  const argv = [...wrap, process.execPath, LOAD_CLIENT, ...args];
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let stdout = '';
  let stderr = '';
  let pendingLine = '';
  let latest: LoadStats | null = null;
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => {
    const text = pendingLine + d.toString();
    const lines = text.split('\n');
    pendingLine = lines.pop() ?? '';
    for (const line of lines) {
      if (line.startsWith('{"progress":')) latest = (JSON.parse(line) as { progress: LoadStats }).progress;
      else stderr += line + '\n';
    }
  });
  const killer = setTimeout(() => child.kill('SIGKILL'), LOAD_PROCESS_KILL_MS);
  const exited = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve) =>
    child.once('close', (code, signal) => {
      clearTimeout(killer);
      children.delete(child);
      resolve({ code, signal, stdout, stderr: stderr + pendingLine });
    }),
  );
  return { child, latest: () => latest, exited };
}

export function loadArgs(o: {
  host?: string;
  port: number;
  clients: number;
  keys: number;
  durationMs: number;
  opsMax: number;
  seed: number;
  out: string;
}): string[] {
  return [
    '--host',
    o.host ?? HOST,
    '--port',
    String(o.port),
    '--clients',
    String(o.clients),
    '--keys',
    String(o.keys),
    '--duration-ms',
    String(o.durationMs),
    '--ops-max',
    String(o.opsMax),
    '--seed',
    String(o.seed),
    '--out',
    o.out,
    '--timeout-ms',
    '5000',
  ];
}

export function readHistory(file: string): KvOpRecord[] {
  const parsed = parseKvHistory(readFileSync(file, 'utf8'));
  assert.ok(parsed.ok, parsed.ok ? '' : parsed.error);
  return parsed.operations;
}

/** The stats line the load client prints last on stdout. */
export function finalStats(stdout: string): LoadStats {
  const line = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as LoadStats;
}
