/**
 * Fence agents: how a host that takes a VM over makes sure the old host can
 * never act for it again.
 *
 * Role: each host says in its registration how it may be fenced (its
 * FenceSpec); a host that wins a takeover runs that agent against the old
 * host before it starts the VM.
 *
 * Agents:
 * - `local`: kill -9 of the old host's process, on this machine only, after
 *   checking in /proc that the pid still has the recorded start time and boot
 *   id (a reused pid is never killed).
 * - `command:PATH`: runs PATH (an executable on the fencing host) with the old
 *   host's identity in its environment, for power switches, cloud APIs or
 *   remote kills. Exit status 0 means "fenced"; anything else, or no answer
 *   within the time limit, means "not fenced", and the takeover waits.
 *
 * Invariants: an agent reports success only when the old host can no longer
 * run anything (or never did); every failure is a value with a message.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import type { HostRecord } from '../coord/records.js';
import { killVerified } from './proc.js';

export type FenceSpec = { agent: 'local' } | { agent: 'command'; command: string };

export type FenceResult = { ok: true; detail: string } | { ok: false; message: string };

/** Output kept from a fence command, for the message when it fails. */
const COMMAND_OUTPUT_BYTES_MAX = 4096;

/** Parses `local` or `command:/absolute/path`; returns a message for anything else. */
export function parseFenceSpec(s: string): FenceSpec | string {
  if (s === 'local') return { agent: 'local' };
  if (s.startsWith('command:')) {
    const command = s.slice('command:'.length);
    if (!path.isAbsolute(command))
      return `--fence command:PATH needs an absolute path, got ${JSON.stringify(command)}`;
    return { agent: 'command', command };
  }
  return `--fence: expected local or command:/PATH, got ${JSON.stringify(s)}`;
}

export function describeFence(f: FenceSpec): string {
  return f.agent === 'local' ? 'local' : `command:${f.command}`;
}

/** Fences `target` with the agent its registration names (local when it names none). */
export async function fenceHost(target: HostRecord, timeoutMs: number): Promise<FenceResult> {
  const spec: FenceSpec = target.fence ?? { agent: 'local' };
  if (spec.agent === 'local') {
    const r = await killVerified(
      { pid: target.pid, startTicks: target.pidStartTicks, bootId: target.bootId },
      timeoutMs,
    );
    if (!r.ok) return r;
    return { ok: true, detail: r.killed ? `killed pid ${target.pid}` : 'already gone' };
  }
  return runFenceCommand(spec.command, target, timeoutMs);
}

function runFenceCommand(command: string, target: HostRecord, timeoutMs: number): Promise<FenceResult> {
  return new Promise((resolve) => {
    let out = '';
    const child = spawn(command, [target.name], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        LOCKSTEP_FENCE_HOST: target.name,
        LOCKSTEP_FENCE_PID: String(target.pid),
        LOCKSTEP_FENCE_PID_START_TICKS: String(target.pidStartTicks),
        LOCKSTEP_FENCE_BOOT_ID: target.bootId,
        LOCKSTEP_FENCE_ADDRESS: target.address ?? '',
        LOCKSTEP_FENCE_API: target.api,
      },
    });
    const keep = (b: Buffer): void => {
      if (out.length < COMMAND_OUTPUT_BYTES_MAX)
        out += b.toString().slice(0, COMMAND_OUTPUT_BYTES_MAX - out.length);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      resolve({ ok: false, message: `fence command ${command}: ${e.message}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ ok: true, detail: `fence command ${command} succeeded` });
      else
        resolve({
          ok: false,
          message: `fence command ${command} ${signal === 'SIGKILL' ? `did not finish within ${timeoutMs} ms` : `exited ${code ?? signal}`}${out.trim() ? `: ${out.trim()}` : ''}`,
        });
    });
  });
}
