/**
 * FT at runtime and live migration in a cluster of real host processes
 * (issue 6), under load from the ioredis load client in another process:
 *
 * - FT toggle: `lockstep vm ft kv on` (waits for protected: a backup cloned
 *   from the running VM and caught up) and `off` (the backup dropped),
 *   repeated: no client error at all, and the history with a final read of
 *   every key is linearizable (no write lost).
 * - Migration: `lockstep vm migrate kv --to HOST` around the hosts, first
 *   with FT off, then with FT on (to its backup's host and to the third
 *   host). The only client errors allowed are connections reset at the
 *   switch (their operations count as unknown outcomes); clients reconnect,
 *   and the history with a final read must be linearizable.
 *
 * Toggles: 5 (LOCKSTEP_FT_TOGGLES overrides; `npm run test:soak` runs 20).
 * Migrations: 5 (LOCKSTEP_MIGRATIONS). Reproduce: seeds and setup are printed.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tmpdir } from 'node:os';
import { writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import type { VmStatus } from '../../src/api/backend.js';
import { testSeed } from '../../src/core/prng.js';
import { formatCheckResult } from '../checker/linearizability.js';
import { mergeHistories, type KvOpRecord } from '../checker/history.js';
import { startCluster, serviceIp, type LocalCluster } from './cluster-harness.js';
import { checkFinalReads, loadKeyNames, readKeys } from './load-client.js';
import { loadArgs, readHistory, startLoadProcess, type LoadProcess } from './load-process.js';
import { tempDir } from './harness.js';

const TOGGLES = Number(process.env['LOCKSTEP_FT_TOGGLES'] ?? 5);
const MIGRATIONS = Number(process.env['LOCKSTEP_MIGRATIONS'] ?? 5);
const KEYS = 24;
const PORT = 6379;
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

async function show(c: LocalCluster, name: string): Promise<VmStatus> {
  return c.cliJson<VmStatus>(['vm', 'show', name]);
}

/** Starts a load client that runs until stopped (bounded by its own 50 s and the harness's kill). */
function startLoad(ip: string, seed: number, out: string): LoadProcess {
  return startLoadProcess(
    children,
    loadArgs({
      host: ip,
      port: PORT,
      clients: 4,
      keys: KEYS,
      durationMs: 50_000,
      opsMax: 2_000_000,
      seed,
      out,
    }),
  );
}

async function waitAcked(load: LoadProcess, n: number): Promise<void> {
  const deadline = performance.now() + 20_000;
  const base = load.latest()?.ackedWrites ?? 0;
  while ((load.latest()?.ackedWrites ?? 0) < base + n) {
    if (performance.now() > deadline)
      throw new Error(`the load client did not get ${n} more writes acknowledged`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function stopLoad(load: LoadProcess): Promise<string> {
  load.child.kill('SIGTERM');
  const r = await load.exited;
  return r.stdout.trim();
}

interface Stats {
  fail: number;
  info: number;
  errorsByKind: Record<string, number>;
}

/** Runs `body` and, when it throws, keeps the hosts' logs and shows their decisions. */
async function withLogs(
  t: { diagnostic(s: string): void },
  c: LocalCluster,
  label: string,
  body: () => Promise<void>,
) {
  try {
    await body();
  } catch (e) {
    const kept = path.join(tmpdir(), `lockstep-ft-ops-${label}-${process.pid}.log`);
    writeFileSync(kept, c.allLogs());
    t.diagnostic(`host logs kept in ${kept}`);
    for (const line of c.allLogs().split('\n'))
      if (/won|live at|stopping|alone|lost|attached|failed|protected|clone|migrat|fault tolerance/.test(line))
        t.diagnostic(line.slice(0, 300));
    throw e;
  }
}

test(
  `FT toggle under load: ${TOGGLES} times on and off, no client error, no write lost`,
  { timeout: 120_000 + TOGGLES * 30_000 },
  async (t) => {
    const seed = testSeed();
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'ft-toggle' });
    const ip = serviceIp(43);
    const outDir = tempDir('ft-toggle-hist');
    t.diagnostic(`setup: hosts h1-h3 (fast profile, ${c.coordinator}), KV at ${ip}:${PORT}, seed ${seed}`);
    try {
      await withLogs(t, c, 'toggle', async () => {
        const created = await c.createKv({ name: 'kv', ip });
        assert.equal(created.protection, 'off');
        const histories: KvOpRecord[][] = [];
        for (let k = 0; k < TOGGLES; k++) {
          const out = path.join(outDir.dir, `t${k}.json`);
          const load = startLoad(ip, seed + k, out);
          await waitAcked(load, 100);
          const on = await c.cli(['vm', 'ft', 'kv', 'on', '--json', '--timeout-ms', '60000']);
          assert.equal(on.code, 0, on.stderr);
          const protectedNow = await show(c, 'kv');
          assert.equal(protectedNow.protection, 'protected', JSON.stringify(protectedNow));
          assert.notEqual(protectedNow.backup, null);
          await waitAcked(load, 100);
          const off = await c.cli(['vm', 'ft', 'kv', 'off', '--json', '--timeout-ms', '60000']);
          assert.equal(off.code, 0, off.stderr);
          const offNow = await show(c, 'kv');
          assert.equal(offNow.protection, 'off');
          assert.equal(offNow.backup, null);
          await waitAcked(load, 100);
          const stats = await stopLoad(load);
          const s = JSON.parse(stats) as Stats;
          t.diagnostic(
            `toggle ${k + 1}/${TOGGLES}: protected with backup ${protectedNow.backup} (generation ${protectedNow.generation}), then off; client ${stats}`,
          );
          // No client error at all: FT changes nothing a client can see.
          assert.equal(s.fail, 0, `client errors during toggle ${k + 1}: ${stats}`);
          assert.equal(s.info - (s.errorsByKind['info:stopped'] ?? 0), 0, `unknown outcomes: ${stats}`);
          histories.push(readHistory(out));
          // The VM never moved: one primary, one generation, all along.
          assert.equal(offNow.primary, created.primary);
          assert.equal(offNow.generation, created.generation);
        }
        const final = await readKeys(ip, PORT, loadKeyNames(KEYS).all, 20_000);
        const result = checkFinalReads(mergeHistories(histories), final);
        t.diagnostic(formatCheckResult(result));
        assert.equal(result.ok, true, formatCheckResult(result));
      });
    } finally {
      outDir.cleanup();
      await c.close();
    }
  },
);

test(
  `live migration under load: ${MIGRATIONS} moves around the hosts, FT off and on; only resets at the switch`,
  { timeout: 120_000 + MIGRATIONS * 40_000 },
  async (t) => {
    const seed = testSeed();
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'migrate' });
    const ip = serviceIp(44);
    const outDir = tempDir('migrate-hist');
    t.diagnostic(`setup: hosts h1-h3 (fast profile, ${c.coordinator}), KV at ${ip}:${PORT}, seed ${seed}`);
    try {
      await withLogs(t, c, 'migrate', async () => {
        await c.createKv({ name: 'kv', ip, host: 'h1' });
        const histories: KvOpRecord[][] = [];
        for (let k = 0; k < MIGRATIONS; k++) {
          // The second half of the moves are of an FT VM.
          const ft = k >= Math.floor(MIGRATIONS / 2);
          if (ft && k === Math.floor(MIGRATIONS / 2)) {
            const on = await c.cli(['vm', 'ft', 'kv', 'on', '--json', '--timeout-ms', '60000']);
            assert.equal(on.code, 0, on.stderr);
          }
          const before = await show(c, 'kv');
          const hosts = ['h1', 'h2', 'h3'].filter((h) => h !== before.primary);
          // With FT on, alternate between the backup's host and the other one.
          const to = ft && k % 2 === 0 && before.backup !== null ? before.backup : hosts[k % hosts.length]!;
          const out = path.join(outDir.dir, `m${k}.json`);
          const load = startLoad(ip, seed + k, out);
          await waitAcked(load, 100);
          const m = await c.cli(['vm', 'migrate', 'kv', '--to', to, '--json', '--timeout-ms', '60000']);
          assert.equal(m.code, 0, m.stderr);
          const afterMove = await show(c, 'kv');
          assert.equal(afterMove.primary, to);
          assert.ok(afterMove.generation > before.generation);
          await waitAcked(load, 100);
          const stats = await stopLoad(load);
          const s = JSON.parse(stats) as Stats;
          t.diagnostic(
            `move ${k + 1}/${MIGRATIONS} (FT ${ft ? 'on' : 'off'}): ${before.primary} -> ${to} (generation ${before.generation} -> ${afterMove.generation}); client ${stats}`,
          );
          // Connections open at the switch are reset; nothing else fails.
          const allowed = new Set([
            'info:connection-lost',
            'info:stopped',
            'conn:ECONNRESET',
            'conn:ECONNREFUSED',
            'conn:EPIPE',
          ]);
          for (const [kind, n] of Object.entries(s.errorsByKind))
            if (!kind.startsWith('reply:') && !allowed.has(kind))
              assert.fail(`move ${k + 1}: ${n} client errors of kind ${kind}: ${stats}`);
          assert.equal(s.fail, 0, `move ${k + 1}: operations that certainly failed: ${stats}`);
          histories.push(readHistory(out));
          if (ft) {
            const again = await c.cli(['vm', 'ft', 'kv', 'on', '--json', '--timeout-ms', '60000']);
            assert.equal(again.code, 0, `re-protection after move ${k + 1}: ${again.stderr}`);
          }
        }
        const final = await readKeys(ip, PORT, loadKeyNames(KEYS).all, 20_000);
        const result = checkFinalReads(mergeHistories(histories), final);
        t.diagnostic(formatCheckResult(result));
        assert.equal(result.ok, true, formatCheckResult(result));
        // A migration to a host that does not exist, or to where it is, is refused with a reason.
        const nowhere = await c.cli(['vm', 'migrate', 'kv', '--to', 'h9']);
        assert.notEqual(nowhere.code, 0);
        assert.match(nowhere.stderr, /no host named h9/);
        const here = (await show(c, 'kv')).primary!;
        const same = await c.cli(['vm', 'migrate', 'kv', '--to', here]);
        assert.notEqual(same.code, 0);
        assert.match(same.stderr, new RegExp(`runs on ${here} already`));
      });
    } finally {
      outDir.cleanup();
      await c.close();
    }
  },
);
