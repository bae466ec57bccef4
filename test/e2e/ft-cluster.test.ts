/**
 * FT in a cluster of real host processes (DESIGN.md §3, issue 5's crash
 * suite): an FT KV VM, the load client in another process writing SET and
 * INCR and recording its history, and kill -9 of the primary's host while
 * the primary holds outputs (the gauge is read live from the primary's API
 * and printed for each kill). After every failover the killed host is
 * started again (returned to the pool) and the cluster re-pairs the VM by
 * itself; at the end every key is read, and the merged history with those
 * reads must be linearizable: nothing acknowledged was lost.
 *
 * Also: `vm create --ft` returns with the backup attached, `vm show` tells
 * protected, `vm failover` moves the VM to its backup with its state.
 *
 * Kills per coordinator backend: 5 (LOCKSTEP_FT_KILLS overrides; `npm run
 * test:soak` runs 50). Reproduce: seeds and setup are printed.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { tmpdir } from 'node:os';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import type { VmStatus } from '../../src/api/backend.js';
import { ApiClient } from '../../src/api/client.js';
import { testSeed } from '../../src/core/prng.js';
import { formatCheckResult } from '../checker/linearizability.js';
import { mergeHistories, type KvOpRecord } from '../checker/history.js';
import { KV, startCluster, startHost, serviceIp, waitUntil, type LocalCluster } from './cluster-harness.js';
import { checkFinalReads, loadKeyNames, readKeys } from './load-client.js';
import { loadArgs, readHistory, startLoadProcess } from './load-process.js';
import { etcdAvailable, startEtcd } from './etcd.js';
import { startLockstep, tempDir } from './harness.js';

const KILLS = Number(process.env['LOCKSTEP_FT_KILLS'] ?? 5);
/** A crash suite's time limit grows with its kills (about 10 s each on this machine). */
const SUITE_TIMEOUT_MS = 120_000 + KILLS * 40_000;
const KEYS = 24;
const PORT = 6379;
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

async function show(c: LocalCluster, name: string): Promise<VmStatus> {
  return c.cliJson<VmStatus>(['vm', 'show', name]);
}

async function waitProtected(c: LocalCluster, name: string, timeoutMs: number): Promise<VmStatus> {
  return waitUntil(
    `${name} protected`,
    async () => {
      const s = await show(c, name).catch(() => undefined);
      return s?.protection === 'protected' ? s : undefined;
    },
    timeoutMs,
  );
}

/** The VM's live status from its primary's own API (held outputs, log bytes), or null. */
async function liveStatus(
  c: LocalCluster,
  token: string,
  primary: string,
  name: string,
): Promise<VmStatus | null> {
  const h = c.hosts.find(
    (x) => x.name === primary && x.child.exitCode === null && x.child.signalCode === null,
  );
  if (h === undefined) return null;
  const r = await new ApiClient({ endpoints: [h.api], token, timeoutMs: 1000 }).getVm(name);
  return r.ok ? r.value : null;
}

/** The live gauge of held outputs, from the primary's own API. */
async function heldOutputs(c: LocalCluster, token: string, primary: string, name: string): Promise<number> {
  return (await liveStatus(c, token, primary, name))?.heldOutputs ?? 0;
}

/**
 * Bounded logs: once a pair is protected and idle, no host keeps more FT log
 * than this on disk (the logs hold only what a backup may still be sent).
 */
const LOG_FILE_BOUND_BYTES = 1024 * 1024;

/** The size of the VM's ft.log on every host that has one. */
function logFileSizes(c: LocalCluster, name: string): Map<string, number> {
  const out = new Map<string, number>();
  const hostsDir = path.join(c.dir, 'hosts');
  for (const h of existsSync(hostsDir) ? readdirSync(hostsDir) : []) {
    const f = path.join(hostsDir, h, 'vms', name, 'ft.log');
    if (existsSync(f)) out.set(h, statSync(f).size);
  }
  return out;
}

async function crashSuite(t: { diagnostic(s: string): void }, c: LocalCluster, label: string): Promise<void> {
  const seed = testSeed();
  const ip = serviceIp(label === 'file' ? 41 : 42);
  t.diagnostic(
    `setup (${label}): coordinator ${c.coordinator}, hosts h1-h3 (fast profile), VM at ${ip}:${PORT}, ${KILLS} kills, seed ${seed}`,
  );
  const created = await c.createKv({ name: 'ftkv', ip, extraArgs: ['--ft'] });
  assert.ok(
    created.protection === 'syncing' || created.protection === 'protected',
    'create --ft returns attached',
  );
  const token = (await c.cli(['cluster', 'token'])).stdout.trim();
  const histories: KvOpRecord[][] = [];
  const outDir = tempDir('ft-cluster-hist');
  let logBytesTotal = 0;
  let logFileMax = 0;
  try {
    for (let k = 0; k < KILLS; k++) {
      const before = await waitProtected(c, 'ftkv', 60_000);
      // Re-protected by itself (k > 0): the logs on disk hold no more than a backup may need.
      const sizes = logFileSizes(c, 'ftkv');
      for (const [h, n] of sizes) {
        logFileMax = Math.max(logFileMax, n);
        assert.ok(
          n <= LOG_FILE_BOUND_BYTES,
          `${h}'s ft.log holds ${n} bytes with the pair protected and idle`,
        );
      }
      const out = path.join(outDir.dir, `h${k}.json`);
      const load = startLoadProcess(
        children,
        loadArgs({
          host: ip,
          port: PORT,
          clients: 4,
          keys: KEYS,
          durationMs: 4000,
          opsMax: 1_000_000,
          seed: seed + k,
          out,
        }),
      );
      await waitUntil(
        '100 acknowledged writes',
        async () => ((load.latest()?.ackedWrites ?? 0) >= 100 ? true : undefined),
        20_000,
      );
      const primary = before.primary!;
      // Kill only while the primary holds outputs, so the crash lands where the Output Rule matters.
      const held = await waitUntil(
        'held outputs on the primary',
        async () => {
          const n = await heldOutputs(c, token, primary, 'ftkv');
          return n > 0 ? n : undefined;
        },
        10_000,
        5,
      );
      logBytesTotal += (await liveStatus(c, token, primary, 'ftkv'))?.logBytes ?? 0;
      const victim = c.hosts.find((h) => h.name === primary && h.child.exitCode === null)!;
      victim.child.kill('SIGKILL');
      await victim.exited;
      const after = await waitUntil(
        'the backup to serve',
        async () => {
          const s = await show(c, 'ftkv').catch(() => undefined);
          return s !== undefined &&
            s.state === 'running' &&
            s.primary !== primary &&
            s.generation > before.generation
            ? s
            : undefined;
        },
        30_000,
      );
      const stats = await load.exited;
      t.diagnostic(
        `kill ${k + 1}/${KILLS}: ${primary} killed with ${held} held outputs; ${after.primary} serves at generation ${after.generation}; client ${stats.stdout.trim()}`,
      );
      histories.push(readHistory(out));
      // Return the killed host to the pool; the cluster re-pairs the VM by itself.
      c.hosts.splice(c.hosts.indexOf(victim), 1);
      await c.addHost(primary, []);
    }
    const final = await readKeys(ip, PORT, loadKeyNames(KEYS).all, 20_000);
    const result = checkFinalReads(mergeHistories(histories), final);
    t.diagnostic(formatCheckResult(result));
    // Every new backup was made by live clone (a snapshot of the running primary), not by
    // replaying from the first event.
    t.diagnostic(
      `bounded logs: the primaries produced at least ${logBytesTotal} bytes of log; the largest ft.log seen with the pair protected was ${logFileMax} bytes`,
    );
    const clones = c.allLogs().match(/clone for \w+ at call \d+/g) ?? [];
    t.diagnostic(`backups made by live clone: ${clones.length} (${clones.slice(0, 3).join('; ')}…)`);
    assert.ok(clones.length >= KILLS, `at least one clone per re-protection, got ${clones.length}`);
    assert.equal(result.ok, true, formatCheckResult(result));
  } catch (e) {
    // The hosts' logs are kept for the failure report; their decisions are shown here.
    const kept = path.join(tmpdir(), `lockstep-ft-cluster-${label}-${process.pid}.log`);
    writeFileSync(kept, c.allLogs());
    t.diagnostic(`host logs kept in ${kept}`);
    for (const line of c.allLogs().split('\n')) {
      if (/won|live at|stopping|fenced|alone|lost|attached|failed|protected|go-live/.test(line))
        t.diagnostic(line.slice(0, 300));
    }
    throw e;
  } finally {
    outDir.cleanup();
  }
}

test(
  'vm create --ft, protected, vm failover keeps the state, the pair re-forms',
  { timeout: 120_000 },
  async (t) => {
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'ft-failover' });
    try {
      const ip = serviceIp(40);
      const created = await c.createKv({ name: 'kv', ip, extraArgs: ['--ft'] });
      assert.equal(created.ft, true);
      assert.notEqual(created.backup, null);
      const s1 = await waitProtected(c, 'kv', 60_000);
      assert.notEqual(s1.primary, s1.backup);
      // Lag is shown in ms, events and bytes, from the backup's acknowledgements.
      for (const k of ['lagMs', 'lagEvents', 'lagBytes'] as const) assert.equal(typeof s1[k], 'number', k);
      const { Redis } = await import('ioredis');
      const r = new Redis({
        host: ip,
        port: PORT,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => 50,
      });
      r.on('error', () => {});
      await r.connect();
      assert.equal(await r.set('k', 'v1'), 'OK');
      assert.equal(await r.incr('n'), 1);
      r.disconnect();
      // `vm snapshot` writes a file with the running VM and its disk; `run --from` restores it.
      const file = path.join(c.dir, 'kv.snap');
      const snapped = await c.cliJson<{ bytes: number }>(['vm', 'snapshot', 'kv', '--out', file]);
      assert.ok(snapped.bytes > 0);
      const restored = await startLockstep([
        'run',
        KV,
        '--listen',
        '127.0.0.1:0',
        '--disk',
        path.join(c.dir, 'restored-disk'),
        '--from',
        file,
      ]);
      try {
        const rr = new Redis({
          port: restored.addresses[0]!.port,
          lazyConnect: true,
          maxRetriesPerRequest: 0,
        });
        rr.on('error', () => {});
        await rr.connect();
        assert.equal(await rr.get('k'), 'v1', "the restored copy has the VM's keys");
        rr.disconnect();
      } finally {
        await restored.stop('SIGINT');
      }
      assert.ok(existsSync(path.join(c.dir, 'restored-disk', 'appendonly.aof')), 'the disk came with it');
      const moved = await c.cliJson<VmStatus>(['vm', 'failover', 'kv', '--timeout-ms', '30000']);
      assert.equal(moved.primary, s1.backup, 'the backup is the new primary');
      const r2 = new Redis({
        host: ip,
        port: PORT,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => 50,
      });
      r2.on('error', () => {});
      await r2.connect();
      assert.equal(await r2.get('k'), 'v1');
      assert.equal(await r2.incr('n'), 2);
      r2.disconnect();
      const s2 = await waitProtected(c, 'kv', 60_000);
      t.diagnostic(`after failover: primary ${s2.primary}, backup ${s2.backup}, generation ${s2.generation}`);
      assert.notEqual(s2.backup, null);
      // A VM without --ft cannot be failed over; the message says why.
      const plain = await c.cli(['vm', 'failover', 'nosuchvm']);
      assert.notEqual(plain.code, 0);
    } finally {
      await c.close();
    }
  },
);

test(
  'crash suite, file: coordinator: kill -9 of the primary host under load, nothing acknowledged lost',
  { timeout: SUITE_TIMEOUT_MS },
  async (t) => {
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'ft-crash-file' });
    try {
      await crashSuite(t, c, 'file');
    } finally {
      await c.close();
    }
  },
);

test(
  'crash suite, etcd: coordinator: kill -9 of the primary host under load, nothing acknowledged lost',
  { timeout: SUITE_TIMEOUT_MS, skip: etcdAvailable() ? false : 'etcd is not installed' },
  async (t) => {
    const etcd = await startEtcd({ log: (l) => t.diagnostic(l) });
    const c = await startCluster({
      hosts: 3,
      profile: 'fast',
      prefix: 'ft-crash-etcd',
      coordinator: etcd.spec,
    });
    try {
      await crashSuite(t, c, 'etcd');
    } finally {
      await c.close();
      await etcd.stop();
    }
  },
);

test('an FT VM on a cluster of one host runs unprotected, and says why', { timeout: 60_000 }, async () => {
  const c = await startCluster({ hosts: 1, profile: 'fast', prefix: 'ft-alone' });
  try {
    const ip = serviceIp(43);
    await c.createKv({ name: 'lone', ip, extraArgs: ['--ft', '--no-wait'] });
    const s = await waitUntil(
      'lone serving',
      async () => {
        const v = await show(c, 'lone').catch(() => undefined);
        return v?.state === 'running' ? v : undefined;
      },
      30_000,
    );
    const { Redis } = await import('ioredis');
    const r = new Redis({ host: ip, port: PORT, lazyConnect: true, maxRetriesPerRequest: 0 });
    r.on('error', () => {});
    await r.connect();
    assert.equal(await r.set('k', 'v'), 'OK', 'outputs leave without a backup');
    r.disconnect();
    const after = await show(c, 'lone');
    assert.equal(after.protection, 'unprotected');
    assert.match(after.reason ?? '', /no other host/);
    assert.equal(s.backup, null);
  } finally {
    await c.close();
  }
});

test(
  'the join check refuses a backup whose V8 flags differ, and vm show says why',
  { timeout: 90_000 },
  async (t) => {
    const c = await startCluster({ hosts: 1, profile: 'fast', prefix: 'ft-join' });
    // The second host runs Node with a V8 flag the first lacks: replay would not be exact.
    const odd = await startHost({
      name: 'h2',
      data: path.join(c.dir, 'hosts', 'h2'),
      coordinator: c.coordinator,
      profile: 'fast',
      wrap: ['env', 'NODE_OPTIONS=--max-old-space-size=333'],
    });
    try {
      t.diagnostic('setup: h1 plain, h2 with NODE_OPTIONS=--max-old-space-size=333; kv --ft on h1');
      await c.createKv({ name: 'kv', ip: serviceIp(44), host: 'h1', extraArgs: ['--ft', '--no-wait'] });
      const s = await waitUntil(
        'the refusal in vm show',
        async () => {
          const v = await show(c, 'kv').catch(() => undefined);
          return v !== undefined && /refused/.test(v.reason ?? '') ? v : undefined;
        },
        30_000,
      );
      t.diagnostic(`vm show: protection ${s.protection}, reason ${s.reason}`);
      assert.equal(s.protection, 'unprotected');
      assert.match(
        s.reason ?? '',
        /pairing with h2 refused: .*V8 flags differ: only the backup has --max-old-space-size=333/,
      );
    } finally {
      await odd.stop('SIGTERM', 10_000);
      await c.close();
    }
  },
);
