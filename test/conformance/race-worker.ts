/**
 * A child process of the coordinator conformance suite (coord.test.ts): one
 * contender in the multi-process test-and-set races, or a one-shot probe.
 *
 * Role: a separate OS process with its own coordinator, so the races test
 * exclusion between processes, not just between promises of one process.
 *
 * Usage (the suite forks it with an IPC channel):
 *   node race-worker.js race SPEC KEY NAME
 *     then obeys messages from the parent:
 *     - {cmd:'read'}: reads KEY and answers {gen, owner, version};
 *     - {cmd:'write'}: puts {gen: gen+1, owner: NAME} expecting the version it
 *       last read, and answers {outcome: 'won'|'conflict'|…, version?, message?};
 *     - {cmd:'free', targetGen}: races freely (read, then test-and-set) until
 *       the generation reaches targetGen, and answers with every generation it
 *       won, the outcome of every attempt it lost, and the generations it
 *       could not be sure about ('unavailable');
 *     - {cmd:'exit'}: closes the coordinator and exits.
 *   node race-worker.js probe SPEC KEY
 *     reads KEY, then tries to put it, and prints one JSON line with both
 *     results and their durations (used inside a read-only mount namespace).
 */
import { openCoordinator } from '../../src/coord/open.js';
import type { CoordResult, Coordinator } from '../../src/coord/coordinator.js';

/** The record the contenders fight over: a generation and its owner, like a VM's placement. */
export interface GenRecord {
  gen: number;
  owner: string;
}

export type ParentMessage =
  { cmd: 'read' } | { cmd: 'write' } | { cmd: 'free'; targetGen: number } | { cmd: 'exit' };

export type WorkerMessage =
  | { kind: 'ready' }
  | { kind: 'read'; gen: number; owner: string; version: string }
  | {
      kind: 'write';
      outcome: 'won' | 'conflict' | 'unavailable' | 'other';
      version?: string;
      message?: string;
    }
  | {
      kind: 'free';
      wins: Array<{ gen: number; version: string }>;
      losses: Record<string, number>;
      /** Generations this worker tried and got 'unavailable' for: it may or may not have won them. */
      unsure: number[];
    }
  | { kind: 'error'; message: string };

function send(msg: WorkerMessage): void {
  process.send?.(msg);
}

function outcomeOf(r: CoordResult<unknown>): 'won' | 'conflict' | 'unavailable' | 'other' {
  if (r.ok) return 'won';
  if (r.error.code === 'conflict' || r.error.code === 'unavailable') return r.error.code;
  return 'other';
}

async function race(coord: Coordinator, key: string, name: string): Promise<void> {
  let last: { gen: number; version: string } | null = null;
  const handle = async (msg: ParentMessage): Promise<void> => {
    if (msg.cmd === 'exit') {
      await coord.close();
      process.disconnect?.();
      return;
    }
    if (msg.cmd === 'read') {
      const r = await coord.get<GenRecord>(key);
      if (!r.ok || r.value === null) {
        send({ kind: 'error', message: `read ${key}: ${r.ok ? 'absent' : r.error.message}` });
        return;
      }
      last = { gen: r.value.value.gen, version: r.value.version };
      send({ kind: 'read', gen: r.value.value.gen, owner: r.value.value.owner, version: r.value.version });
      return;
    }
    if (msg.cmd === 'write') {
      if (last === null) {
        send({ kind: 'error', message: 'write before read' });
        return;
      }
      const r = await coord.put(key, { gen: last.gen + 1, owner: name }, { version: last.version });
      send({
        kind: 'write',
        outcome: outcomeOf(r),
        ...(r.ok ? { version: r.value.version } : { message: r.error.message }),
      });
      return;
    }
    // Free-running: no barrier, so contenders often hold stale versions, as a paused host would.
    const wins: Array<{ gen: number; version: string }> = [];
    const losses: Record<string, number> = {};
    const unsure: number[] = [];
    for (;;) {
      const r = await coord.get<GenRecord>(key);
      if (!r.ok || r.value === null) {
        send({ kind: 'error', message: `read ${key}: ${r.ok ? 'absent' : r.error.message}` });
        return;
      }
      const gen = r.value.value.gen;
      if (gen >= msg.targetGen) break;
      const w = await coord.put(key, { gen: gen + 1, owner: name }, { version: r.value.version });
      if (w.ok) wins.push({ gen: gen + 1, version: w.value.version });
      else {
        losses[w.error.code] = (losses[w.error.code] ?? 0) + 1;
        if (w.error.code === 'unavailable') unsure.push(gen + 1);
      }
    }
    send({ kind: 'free', wins, losses, unsure });
  };
  process.on('message', (msg: ParentMessage) => {
    handle(msg).catch((e: unknown) => send({ kind: 'error', message: String(e) }));
  });
  send({ kind: 'ready' });
}

async function probe(coord: Coordinator, key: string): Promise<void> {
  const t0 = performance.now();
  const read = await coord.get(key);
  const t1 = performance.now();
  const write = await coord.put(key, { probe: true }, 'any');
  const t2 = performance.now();
  const list = await coord.list(key.split('/')[0] ?? key);
  await coord.close();
  process.stdout.write(
    `${JSON.stringify({ read, readMs: t1 - t0, write, writeMs: t2 - t1, listOk: list.ok })}\n`,
  );
}

async function main(): Promise<void> {
  const [mode, spec, key, name] = process.argv.slice(2);
  if ((mode !== 'race' && mode !== 'probe') || !spec || !key) {
    process.stderr.write('usage: race-worker race SPEC KEY NAME | probe SPEC KEY\n');
    process.exit(2);
  }
  const opened = await openCoordinator(spec, {
    opTimeoutMs: Number(process.env.LOCKSTEP_TEST_OP_TIMEOUT_MS ?? 5000),
  });
  if (!opened.ok) {
    if (mode === 'race') send({ kind: 'error', message: `open ${spec}: ${opened.error.message}` });
    else process.stdout.write(`${JSON.stringify({ openError: opened.error })}\n`);
    process.exitCode = 1;
    process.disconnect?.();
    return;
  }
  if (mode === 'probe') await probe(opened.value, key);
  else await race(opened.value, key, name ?? `w${process.pid}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`race-worker: ${String(e)}\n`);
  process.exit(1);
});
