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
 * - `vip`: removes the VM's service address (a virtual IP) from the old
 *   host's interface, so that no client can reach the old copy any more, even
 *   when that copy still runs (partitioned or paused: the kernel keeps the
 *   address and answers ARP for it while the process is stopped). The old
 *   host's registration names its interface and network namespace; the agent
 *   acts on it directly when the old host runs on this machine (same boot id),
 *   by `ip -n NAMESPACE addr del`. A host on another machine needs a command
 *   agent (one that reaches that machine, such as over ssh), and the vip
 *   agent says so instead of pretending. The agent does not kill anything:
 *   a zombie copy that wakes finds its address gone, and the Output Rule and
 *   the generation keep it from emitting what the new primary lacks.
 *
 * Invariants: an agent reports success only when the old host can no longer
 * run anything (or never did); every failure is a value with a message.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import type { HostRecord } from '../coord/records.js';
import { bootId, killVerified } from './proc.js';
import { removeVip } from './vip.js';

export type FenceSpec = { agent: 'local' } | { agent: 'command'; command: string } | { agent: 'vip' };

export type FenceResult = { ok: true; detail: string } | { ok: false; message: string };

/** Output kept from a fence command, for the message when it fails. */
const COMMAND_OUTPUT_BYTES_MAX = 4096;

/** Parses `local`, `vip` or `command:/absolute/path`; returns a message for anything else. */
export function parseFenceSpec(s: string): FenceSpec | string {
  if (s === 'local') return { agent: 'local' };
  if (s === 'vip') return { agent: 'vip' };
  if (s.startsWith('command:')) {
    const command = s.slice('command:'.length);
    if (!path.isAbsolute(command))
      return `--fence command:PATH needs an absolute path, got ${JSON.stringify(command)}`;
    return { agent: 'command', command };
  }
  return `--fence: expected local, vip or command:/PATH, got ${JSON.stringify(s)}`;
}

export function describeFence(f: FenceSpec): string {
  return f.agent === 'command' ? `command:${f.command}` : f.agent;
}

/** What the fencing host knows about the takeover. */
export interface FenceContext {
  /** The service addresses (IPs) of the VM being taken over. */
  serviceIps: readonly string[];
}

/** Fences `target` with the agent its registration names (local when it names none). */
export async function fenceHost(
  target: HostRecord,
  timeoutMs: number,
  ctx: FenceContext = { serviceIps: [] },
): Promise<FenceResult> {
  const spec: FenceSpec = target.fence ?? { agent: 'local' };
  if (spec.agent === 'vip') return fenceVip(target, timeoutMs, ctx);
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

async function fenceVip(target: HostRecord, timeoutMs: number, ctx: FenceContext): Promise<FenceResult> {
  const vip = target.vip;
  if (vip === undefined)
    return {
      ok: false,
      message: `host ${target.name} asks for the vip fence but registered no --vip-interface`,
    };
  if (target.bootId !== bootId())
    return {
      ok: false,
      message: `host ${target.name} runs on another machine: the vip agent removes addresses only on this one (use --fence command:PATH there)`,
    };
  const done: string[] = [];
  for (const ip of ctx.serviceIps) {
    const r = await removeVip({
      iface: vip.iface,
      ip,
      timeoutMs,
      ...(vip.netns !== null ? { netns: vip.netns } : {}),
    });
    if (!r.ok) return { ok: false, message: r.message };
    done.push(r.detail);
  }
  return { ok: true, detail: done.length === 0 ? 'no service address to remove' : done.join('; ') };
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
