/**
 * Network namespaces for end-to-end tests: a process run inside one that has
 * no interfaces up (not even loopback) cannot reach any network, so a replay
 * that succeeds there provably never touched one.
 *
 * Each namespace has a name unique to this test process (its pid plus random
 * hex), and is deleted by `remove()`, which tests call in `finally`/`after`.
 * An exit hook deletes any that a failing test left behind, and namespaces of
 * earlier test processes that are no longer alive are swept on creation.
 *
 * Needs root (or CAP_SYS_ADMIN) and iproute2's `ip`; `NETNS_SETUP` says so in
 * failure messages.
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { BIN, CACHE_DIR, runCollected, type RunResult } from './harness.js';

const execFileP = promisify(execFile);

/** Every namespace this module creates starts with this prefix, then the creator's pid. */
const PREFIX = 'lockstep-rr-';
/** What a reader needs to reproduce a namespace by hand. */
export const NETNS_SETUP =
  'network namespaces need root and iproute2: `ip netns add NAME`, then `ip netns exec NAME node bin/lockstep.js …`; `ip netns del NAME` afterwards';

const live = new Set<string>();
const children = new Set<ChildProcess>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of children) c.kill('SIGKILL');
    for (const name of live) {
      try {
        execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
      } catch {
        // Already gone: nothing to do.
      }
    }
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes namespaces that earlier test processes created and could not delete (they were killed). */
async function sweepStale(): Promise<void> {
  const { stdout } = await execFileP('ip', ['netns', 'list'], { timeout: 10_000 });
  for (const line of stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${PREFIX}(\\d+)-[0-9a-f]+$`).exec(name);
    if (m === null || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await execFileP('ip', ['netns', 'del', name], { timeout: 10_000 }).catch(() => {});
  }
}

export interface Netns {
  readonly name: string;
  /** The interfaces that are up inside the namespace (`ip -o link show up`), one line each. */
  interfacesUp(): Promise<string[]>;
  /**
   * Runs `node bin/lockstep.js ARGS` inside the namespace, as
   * `ip netns exec NAME node bin/lockstep.js ARGS`, to completion or until
   * timeoutMs (then SIGKILL).
   */
  runLockstep(args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  /** The command line that runLockstep(args) runs, for failure messages. */
  commandLine(args: string[]): string[];
  /** Deletes the namespace; safe to call twice. */
  remove(): Promise<void>;
}

/** Creates a namespace with a fresh name. Its loopback interface stays down. */
export async function createNetns(): Promise<Netns> {
  hookExit();
  await sweepStale();
  const name = `${PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await execFileP('ip', ['netns', 'add', name], { timeout: 10_000 });
  } catch (e) {
    throw new Error(`cannot create network namespace ${name}: ${(e as Error).message}\n${NETNS_SETUP}`);
  }
  live.add(name);
  const commandLine = (args: string[]): string[] => [
    'ip',
    'netns',
    'exec',
    name,
    process.execPath,
    BIN,
    ...args,
  ];
  return {
    name,
    async interfacesUp() {
      const { stdout } = await execFileP('ip', ['netns', 'exec', name, 'ip', '-o', 'link', 'show', 'up'], {
        timeout: 10_000,
      });
      return stdout.split('\n').filter((l) => l.trim() !== '');
    },
    commandLine,
    runLockstep(args, opts = {}) {
      const timeoutMs = opts.timeoutMs ?? 60_000;
      const [cmd, ...rest] = commandLine(args);
      // `ip netns exec` execs the command, so the child's pid is node's and a kill reaches it.
      return runCollected(cmd!, rest, {
        timeoutMs,
        env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
        live: children,
      });
    },
    async remove() {
      if (!live.has(name)) return;
      await execFileP('ip', ['netns', 'del', name], { timeout: 10_000 });
      live.delete(name);
    },
  };
}
