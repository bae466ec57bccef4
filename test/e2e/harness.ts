/**
 * The end-to-end harness: runs the `lockstep` command exactly as a user does
 * (`node bin/lockstep.js …`, the package's bin), as a separate OS process, and
 * cleans up after itself even when a test fails.
 *
 * Every child gets a hard time limit, so a hung guest fails its test instead
 * of hanging the suite.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (dist/test/e2e/harness.js is three levels below it). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = path.join(ROOT, 'bin', 'lockstep.js');

export function repoPath(...parts: string[]): string {
  return path.join(ROOT, ...parts);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Cache directory shared by the suite, so each module is instrumented once per run. */
export const CACHE_DIR = path.join(tmpdir(), `lockstep-test-cache-${process.getuid?.() ?? 0}`);

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR, ...extra };
}

/** Runs `lockstep ARGS` to completion (or until timeoutMs, then SIGKILL). */
export function runLockstep(
  args: string[],
  opts: { timeoutMs?: number; stdin?: string | Buffer; env?: Record<string, string>; cwd?: string } = {},
): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd ?? ROOT,
      env: childEnv(opts.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    if (opts.stdin !== undefined) child.stdin.end(opts.stdin);
    else child.stdin.end();
  });
}

/**
 * Spawns `cmd args` with stdout and stderr collected, SIGKILLed after
 * timeoutMs. `live` (optional) holds the child while it runs, so an after()
 * hook can kill whatever is still running when a test fails.
 */
export function runCollected(
  cmd: string,
  args: string[],
  opts: { timeoutMs: number; env?: NodeJS.ProcessEnv; cwd?: string; live?: Set<ChildProcess> },
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd ?? ROOT,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    opts.live?.add(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      opts.live?.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      opts.live?.delete(child);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
}

/** A long-running `lockstep run`, with the addresses its listeners got. */
export interface Running {
  child: ChildProcess;
  addresses: { host: string; port: number }[];
  stdout(): string;
  stderr(): string;
  /** Sends a signal and waits for the exit (SIGKILL after graceMs). */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<RunResult>;
  exited: Promise<RunResult>;
}

/** Starts `lockstep ARGS` and resolves once it has printed `expectListeners` listening lines. */
export function startLockstep(
  args: string[],
  opts: { expectListeners?: number; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<Running> {
  const expect = opts.expectListeners ?? 1;
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: childEnv(opts.env),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  let errText = '';
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  const exited = new Promise<RunResult>((resolve) => {
    child.on('close', (code, signal) =>
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: errText }),
    );
  });
  const running: Running = {
    child,
    addresses: [],
    stdout: () => Buffer.concat(out).toString(),
    stderr: () => errText,
    exited,
    async stop(signal = 'SIGTERM', graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(`lockstep did not start listening within ${opts.timeoutMs ?? 30_000} ms:\n${errText}`),
      );
    }, opts.timeoutMs ?? 30_000);
    child.stderr!.on('data', (b: Buffer) => {
      errText += b.toString();
      const found = [...errText.matchAll(/listening on (\[[^\]]+\]|[^\s:]+):(\d+) \(fd \d+\)/g)];
      if (found.length >= expect && running.addresses.length === 0) {
        running.addresses = found.map((m) => ({ host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) }));
        clearTimeout(timer);
        resolve(running);
      }
    });
    void exited.then((r) => {
      clearTimeout(timer);
      if (running.addresses.length === 0)
        reject(new Error(`lockstep exited (${r.code}) before listening:\n${r.stderr}`));
    });
  });
}

/** A fresh temporary folder, removed by the returned cleanup function. */
export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), `lockstep-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
