/**
 * FT across "machines" (issue 5's partition and pause suites): three host
 * processes, each in its own network namespace on a bridge, a real etcd in a
 * fourth, the load client in a fifth, and the test itself in the root
 * namespace (reaching them through the bridge's root link). The VM's service
 * address is a virtual IP that follows the primary (`--vip-interface eth0`),
 * and every host is fenced with the `vip` agent, which takes the address
 * away without killing anything, so a partitioned or paused primary stays
 * alive: only the generation's test-and-set and the Output Rule keep it from
 * emitting what the new primary's state lacks. (The `local` agent would kill
 * it, and the suites would pass trivially.)
 *
 * Partitions, cut with iptables inside the namespaces, each held while the
 * load runs and then healed: primary ✕ backup (both ways, and each one way),
 * primary ✕ coordinator, backup ✕ coordinator, and the primary isolated from
 * everything but its clients. Pause: SIGSTOP of the primary's host past the
 * failure timeout, the backup goes live, SIGCONT. After each suite every key
 * is read and the merged client history with those reads must be
 * linearizable: never more than one copy emitted output, and nothing
 * acknowledged was lost.
 *
 * The planted bug "skip the generation compare" (LOCKSTEP_TEST_PLANT on the
 * hosts) must turn both suites red: asserted on every run.
 *
 * Needs root, iproute2, iptables, iputils-arping and etcd (installed by
 * scripts/setup.mjs). The namespaces are removed even when a test fails.
 * Reproduce: the seed, the subnet and the commands that built the network
 * are printed.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { ChildProcess } from 'node:child_process';
import type { VmStatus } from '../../src/api/backend.js';
import { testSeed } from '../../src/core/prng.js';
import { hasVip } from '../../src/host/vip.js';
import { formatCheckResult, type KvCheckResult } from '../checker/linearizability.js';
import { mergeHistories, type KvOpRecord } from '../checker/history.js';
import { KV, startHost, waitUntil, type HostProc } from './cluster-harness.js';
import { checkFinalReads, loadKeyNames, readKeys } from './load-client.js';
import { loadArgs, readHistory, startLoadProcess } from './load-process.js';
import { etcdAvailable, startEtcd, type EtcdServer } from './etcd.js';
import { BIN, CACHE_DIR, runCollected, tempDir, type RunResult } from './harness.js';
import { createBridgeNet, type BridgeNet, type CutDirection } from './netns-bridge.js';

const PORT = 6379;
const KEYS = 16;
/** How long each cut is held while the load runs (longer than the fast profile's detection). */
const CUT_MS = 4000;
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

const skip =
  process.getuid?.() !== 0
    ? 'needs root for network namespaces'
    : !etcdAvailable()
      ? 'etcd is not installed'
      : false;

/** The world of one suite: the network, etcd, three hosts and a way to run the CLI. */
interface World {
  net: BridgeNet;
  etcd: EtcdServer;
  hosts: HostProc[];
  /** Host name (`n0`…) → namespace host (`h0`…). */
  nsOf: Map<string, string>;
  vip: string;
  dir: string;
  cli(args: string[], timeoutMs?: number): Promise<RunResult>;
  show(name: string): Promise<VmStatus>;
  logs(): string;
  close(): Promise<void>;
}

async function buildWorld(
  t: { diagnostic(s: string): void },
  label: string,
  plant: boolean,
  /** Extra `lockstep host` arguments per host name. */
  hostArgs: Record<string, string[]> = {},
): Promise<World> {
  const net = await createBridgeNet({ hosts: 5, rootLink: true });
  const tmp = tempDir(`ft-${label}`);
  const started: HostProc[] = [];
  let etcd: EtcdServer | null = null;
  const close = async (): Promise<void> => {
    await Promise.all(started.map((h) => h.stop('SIGKILL', 2000).catch(() => {})));
    if (etcd !== null) await etcd.stop().catch(() => {});
    await net.remove();
    tmp.cleanup();
  };
  try {
    const etcdHost = net.hosts[3]!;
    etcd = await startEtcd({
      listenHost: etcdHost.ip,
      wrap: ['ip', 'netns', 'exec', etcdHost.ns],
      log: (l) => t.diagnostic(l),
    });
    const coordinator = etcd.spec;
    t.diagnostic(
      `setup (${label}${plant ? ', PLANTED skip-generation-compare' : ''}): subnet ${net.subnetPrefix}.0/24, ` +
        `hosts n0-n2 in ${net.hosts
          .slice(0, 3)
          .map((h) => h.ns)
          .join(', ')}, etcd ${coordinator} in ${etcdHost.ns}, clients in ${net.hosts[4]!.ns}, ` +
        `VIP ${net.vip(1)}; host arguments ${JSON.stringify(hostArgs)}; network:\n${net.setupScript()}`,
    );
    const nsOf = new Map<string, string>();
    for (let i = 0; i < 3; i++) {
      const h = net.hosts[i]!;
      const name = `n${i}`;
      nsOf.set(name, h.name);
      const proc = await startHost({
        name,
        data: path.join(tmp.dir, 'hosts', name),
        coordinator,
        profile: 'fast',
        wrap: [
          'ip',
          'netns',
          'exec',
          h.ns,
          ...(plant ? ['env', 'LOCKSTEP_TEST_PLANT=skip-generation-compare'] : []),
        ],
        extraArgs: [
          '--address',
          h.ip,
          '--api',
          `${h.ip}:0`,
          '--vip-interface',
          h.iface,
          '--fence',
          'vip',
          ...(hostArgs[name] ?? []),
        ],
      });
      started.push(proc);
    }
    const cli = (args: string[], timeoutMs = 90_000): Promise<RunResult> =>
      runCollected(process.execPath, [BIN, ...args], {
        timeoutMs,
        env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR, LOCKSTEP_COORDINATOR: coordinator },
      });
    const show = async (name: string): Promise<VmStatus> => {
      const r = await cli(['vm', 'show', name, '--json'], 20_000);
      if (r.code !== 0) throw new Error(`vm show ${name} exited ${r.code}: ${r.stderr}`);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as VmStatus;
    };
    return {
      net,
      etcd,
      hosts: started,
      nsOf,
      vip: net.vip(1),
      dir: tmp.dir,
      cli,
      show,
      logs: () => started.map((h) => h.log()).join(''),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

async function createFtKv(w: World): Promise<VmStatus> {
  mkdirSync(path.join(w.dir, 'images'), { recursive: true });
  const disk = mkdtempSync(path.join(w.dir, 'images', 'kv-'));
  const r = await w.cli([
    'vm',
    'create',
    'kv',
    '--wasm',
    KV,
    '--listen',
    `${w.vip}:${PORT}`,
    '--disk',
    disk,
    '--ft',
    '--json',
  ]);
  if (r.code !== 0) throw new Error(`vm create exited ${r.code}:\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as VmStatus;
}

async function waitProtected(w: World, timeoutMs: number): Promise<VmStatus> {
  return waitUntil(
    'kv protected',
    async () => {
      const s = await w.show('kv').catch(() => undefined);
      return s?.protection === 'protected' && s.state === 'running' ? s : undefined;
    },
    timeoutMs,
    250,
  );
}

/** Starts the load client in the clients' namespace, and waits until it has 50 acknowledged writes. */
async function startLoad(
  w: World,
  seed: number,
  out: string,
  durationMs: number,
): Promise<ReturnType<typeof startLoadProcess>> {
  const load = startLoadProcess(
    children,
    loadArgs({ host: w.vip, port: PORT, clients: 4, keys: KEYS, durationMs, opsMax: 500_000, seed, out }),
    ['ip', 'netns', 'exec', w.net.hosts[4]!.ns],
  );
  await waitUntil(
    '50 acknowledged writes',
    async () => ((load.latest()?.ackedWrites ?? 0) >= 50 ? true : undefined),
    20_000,
    50,
  );
  return load;
}

/** Reads every key (from the root namespace, through the root link) and checks the merged history. */
async function finalCheck(
  t: { diagnostic(s: string): void },
  w: World,
  histories: KvOpRecord[][],
): Promise<KvCheckResult> {
  const merged = mergeHistories(histories);
  let reads: Awaited<ReturnType<typeof readKeys>> | null = null;
  try {
    reads = await readKeys(w.vip, PORT, loadKeyNames(KEYS).all, 20_000);
  } catch (e) {
    t.diagnostic(`final reads failed (${(e as Error).message}); checking the history alone`);
  }
  const result = reads !== null ? checkFinalReads(merged, reads) : checkFinalReads(merged, new Map());
  t.diagnostic(formatCheckResult(result));
  return result;
}

function keepLogs(t: { diagnostic(s: string): void }, w: World, label: string): void {
  const kept = path.join(tmpdir(), `lockstep-ft-${label}-${process.pid}.log`);
  writeFileSync(kept, w.logs());
  t.diagnostic(`host logs kept in ${kept}`);
  for (const line of w.logs().split('\n')) {
    if (/won|live at|stopping|fenced|fence|alone|lost|attached|failed|PLANTED|service address/.test(line))
      t.diagnostic(line.slice(0, 300));
  }
}

/**
 * Counts, in each host's namespace, the data packets sent from the service
 * address (an iptables OUTPUT rule without a target only counts). Pure ACKs
 * (52 bytes with timestamps), SYN-ACKs, resets and bare FINs are not data.
 */
async function installEmissionCounters(w: World): Promise<void> {
  for (const name of w.nsOf.values()) {
    const r = await w.net.exec(w.net.host(name).ns, 'iptables', [
      '-w',
      '5',
      '-A',
      'OUTPUT',
      ...emittedRule(w.vip),
    ]);
    if (r.code !== 0) throw new Error(`cannot install the emission counter in ${name}: ${r.stderr}`);
  }
}

function emittedRule(vip: string): string[] {
  return [
    '-s',
    `${vip}/32`,
    '-p',
    'tcp',
    '--sport',
    String(PORT),
    '--tcp-flags',
    'SYN,RST',
    'NONE',
    '-m',
    'length',
    '--length',
    '53:65535',
  ];
}

/** Data packets host `hostName` (n0…) has sent from the service address so far. */
async function emitted(w: World, hostName: string): Promise<number> {
  const ns = w.net.host(w.nsOf.get(hostName)!).ns;
  const r = await w.net.exec(ns, 'iptables', ['-w', '5', '-L', 'OUTPUT', '-v', '-x', '-n']);
  const line = r.stdout.split('\n').find((l) => l.includes(`spt:${PORT}`) && l.includes(w.vip));
  if (r.code !== 0 || line === undefined) throw new Error(`no emission counter in ${hostName}: ${r.stderr}`);
  return Number(line.trim().split(/\s+/)[0]);
}

/** The hosts whose health endpoint says they are the VM's primary (200); a host that does not answer is not. */
async function healthPrimaries(w: World): Promise<string[]> {
  const out: string[] = [];
  for (const h of w.hosts) {
    try {
      const r = await fetch(`http://${h.api}/health/vms/kv/primary`, { signal: AbortSignal.timeout(2000) });
      if (r.status === 200) out.push(h.name);
    } catch {
      // Stopped, paused or cut off: it does not claim to be primary.
    }
  }
  return out;
}

/**
 * Once the cluster settles, exactly one host may answer 200 on the primary
 * health endpoint (load balancers send traffic there), and it must be the
 * coordinator's primary. Returns a violation, or null.
 */
async function onePrimary(w: World, timeoutMs: number): Promise<string | null> {
  const deadline = performance.now() + timeoutMs;
  let last = '';
  while (performance.now() < deadline) {
    const s = await w.show('kv').catch(() => null);
    const answering = await healthPrimaries(w);
    if (s !== null && answering.length === 1 && answering[0] === s.primary) return null;
    last = `hosts answering 200 as kv's primary: [${answering.join(', ')}]; the coordinator names ${s?.primary ?? '?'}`;
    await new Promise((r) => setTimeout(r, 250));
  }
  return `not exactly one primary after ${timeoutMs} ms: ${last}`;
}

/** What a suite found: the history's check, and any other violation (more than one copy acting). */
interface SuiteResult {
  check: KvCheckResult;
  violations: string[];
}

interface Cut {
  label: string;
  /** The cuts, by role: P primary, B backup, O the third host, C the coordinator. */
  rules: { a: 'P' | 'B'; b: 'P' | 'B' | 'O' | 'C'; how: CutDirection }[];
}

const CUTS: Cut[] = [
  { label: 'primary ✕ backup', rules: [{ a: 'P', b: 'B', how: 'both' }] },
  { label: 'primary → backup dropped (the log stops)', rules: [{ a: 'P', b: 'B', how: 'a-to-b' }] },
  { label: 'backup → primary dropped (the acks stop)', rules: [{ a: 'B', b: 'P', how: 'a-to-b' }] },
  { label: 'primary ✕ coordinator', rules: [{ a: 'P', b: 'C', how: 'both' }] },
  { label: 'backup ✕ coordinator', rules: [{ a: 'B', b: 'C', how: 'both' }] },
  {
    label: 'primary isolated from backup, coordinator and the third host',
    rules: [
      { a: 'P', b: 'B', how: 'both' },
      { a: 'P', b: 'C', how: 'both' },
      { a: 'P', b: 'O', how: 'both' },
    ],
  },
];

/**
 * Runs the partition scenarios in order on one VM. Per scenario: once the VM
 * has moved away from the old primary, the old primary's host emits no more
 * data from the service address; after the heal exactly one host is primary.
 */
async function partitionSuite(
  t: { diagnostic(s: string): void },
  w: World,
  cuts: Cut[],
  seed: number,
): Promise<SuiteResult> {
  const histories: KvOpRecord[][] = [];
  const violations: string[] = [];
  await installEmissionCounters(w);
  for (const [k, cut] of cuts.entries()) {
    const before = await waitProtected(w, 90_000);
    const P = before.primary!;
    const B = before.backup!;
    const O = [...w.nsOf.keys()].find((n) => n !== P && n !== B)!;
    const ns = (role: 'P' | 'B' | 'O'): string => w.nsOf.get(role === 'P' ? P : role === 'B' ? B : O)!;
    const out = path.join(w.dir, `hist-${k}.json`);
    const load = await startLoad(w, seed + k, out, CUT_MS + 5000);
    for (const r of cut.rules) await w.net.cut(ns(r.a), r.b === 'C' ? w.etcd.listenHost : ns(r.b), r.how);
    // Watch for the VM leaving P while the cut holds; from then on P must emit nothing.
    const cutEndMs = performance.now() + CUT_MS;
    let moved: { to: string; generation: number; emittedByP: number } | null = null;
    while (performance.now() < cutEndMs) {
      const s = await w.show('kv').catch(() => null);
      if (moved === null && s !== null && s.primary !== P && s.generation > before.generation)
        moved = { to: s.primary!, generation: s.generation, emittedByP: await emitted(w, P) };
      await new Promise((r) => setTimeout(r, 200));
    }
    await w.net.heal();
    const stats = await load.exited;
    histories.push(readHistory(out));
    const one = await onePrimary(w, 20_000);
    if (one !== null) violations.push(`cut "${cut.label}": ${one}`);
    const after = await w.show('kv').catch(() => null);
    if (moved === null && after !== null && after.primary !== P)
      moved = { to: after.primary!, generation: after.generation, emittedByP: await emitted(w, P) };
    if (moved !== null) {
      const more = (await emitted(w, P)) - moved.emittedByP;
      if (more > 0)
        violations.push(
          `cut "${cut.label}": ${P} emitted ${more} data packets from the service address after ${moved.to} took generation ${moved.generation}`,
        );
    }
    t.diagnostic(
      `cut ${k + 1}/${cuts.length} "${cut.label}" (P=${P} B=${B}, generation ${before.generation}): ` +
        `${moved === null ? `stayed on ${P}` : `moved to ${moved.to} at generation ${moved.generation}`}; ` +
        `now ${after?.primary ?? '?'} at generation ${after?.generation ?? '?'}; client ${stats.stdout.trim()}`,
    );
  }
  return { check: await finalCheck(t, w, histories), violations };
}

/**
 * SIGSTOP of the primary's host past the timeout, the backup goes live,
 * SIGCONT: the woken host emits nothing from the service address, and
 * exactly one host is primary.
 */
async function pauseSuite(t: { diagnostic(s: string): void }, w: World, seed: number): Promise<SuiteResult> {
  const violations: string[] = [];
  await installEmissionCounters(w);
  const before = await waitProtected(w, 90_000);
  const P = before.primary!;
  const victim = w.hosts.find((h) => h.name === P)!;
  const out = path.join(w.dir, 'hist-pause.json');
  const load = await startLoad(w, seed, out, 12_000);
  victim.child.kill('SIGSTOP');
  let resumed = false;
  try {
    const moved = await waitUntil(
      'the backup to go live',
      async () => {
        const s = await w.show('kv').catch(() => undefined);
        return s !== undefined && s.state === 'running' && s.primary !== P && s.generation > before.generation
          ? s
          : undefined;
      },
      30_000,
    );
    const emittedByP = await emitted(w, P);
    // The new primary serves for a while before the old one wakes.
    await new Promise((r) => setTimeout(r, 2000));
    victim.child.kill('SIGCONT');
    resumed = true;
    t.diagnostic(
      `paused ${P} (generation ${before.generation}); ${moved.primary} went live at generation ${moved.generation}; resumed ${P}`,
    );
    const stats = await load.exited;
    t.diagnostic(`client ${stats.stdout.trim()}`);
    const more = (await emitted(w, P)) - emittedByP;
    if (more > 0) violations.push(`${P} emitted ${more} data packets from the service address after it woke`);
    const one = await onePrimary(w, 20_000);
    if (one !== null) violations.push(one);
    const oldNs = w.net.host(w.nsOf.get(P)!).ns;
    if (await hasVip('eth0', w.vip, { netns: oldNs }))
      violations.push(`${P} holds the service address again`);
  } finally {
    if (!resumed) victim.child.kill('SIGCONT');
  }
  return { check: await finalCheck(t, w, [readHistory(out)]), violations };
}

function assertGreen(r: SuiteResult): void {
  assert.deepEqual(r.violations, []);
  assert.equal(r.check.ok, true, formatCheckResult(r.check));
}

/** A planted bug must make the suite fail: the history's check, or another violation. */
function assertRed(t: { diagnostic(s: string): void }, r: SuiteResult): void {
  for (const v of r.violations) t.diagnostic(`caught: ${v}`);
  if (r.check.ok === false) t.diagnostic(`caught: ${r.check.reason}`);
  assert.ok(r.violations.length > 0 || r.check.ok === false, 'the planted bug went unnoticed');
}

test(
  'partition suite: iptables cuts between primary, backup and etcd; nothing acknowledged lost',
  { timeout: 420_000, skip },
  async (t) => {
    const seed = testSeed();
    const w = await buildWorld(t, 'partition', false);
    try {
      const created = await createFtKv(w);
      assert.notEqual(created.backup, null);
      assertGreen(await partitionSuite(t, w, CUTS, seed));
      // The pair re-forms after the last heal.
      await waitProtected(w, 90_000);
    } catch (e) {
      keepLogs(t, w, 'partition');
      throw e;
    } finally {
      await w.close();
    }
  },
);

test(
  'pause suite: SIGSTOP the primary past the timeout, the backup goes live, SIGCONT',
  { timeout: 240_000, skip },
  async (t) => {
    const seed = testSeed();
    const w = await buildWorld(t, 'pause', false);
    try {
      await createFtKv(w);
      assertGreen(await pauseSuite(t, w, seed));
      const s = await waitProtected(w, 90_000);
      t.diagnostic(`re-protected: primary ${s.primary}, backup ${s.backup}, generation ${s.generation}`);
    } catch (e) {
      keepLogs(t, w, 'pause');
      throw e;
    } finally {
      await w.close();
    }
  },
);

test(
  'planted bug "skip the generation compare" turns the partition suite red',
  { timeout: 240_000, skip },
  async (t) => {
    // With equal timings, which member of the cut pair acts first is a race. When the buggy backup
    // acts first, both members end up serving (caught); when the buggy primary does, its plain put
    // of generation N+1 names itself and the backup, which cannot win a place it is not named in,
    // only idles: the bug does no visible harm in that run (CI saw it once). So the primary's host
    // judges its peers down later (1.5 s instead of 0.3 s): the backup acts first, as it does in
    // most runs with equal timings, and the primary acting on its own later is the bug.
    const w = await buildWorld(t, 'planted-partition', true, { n0: ['--timing', 'failAfterMs=1500'] });
    try {
      const created = await createFtKv(w);
      assert.equal(created.primary, 'n0');
      assertRed(t, await partitionSuite(t, w, CUTS.slice(0, 1), 1));
    } catch (e) {
      keepLogs(t, w, 'planted-partition');
      throw e;
    } finally {
      await w.close();
    }
  },
);

test(
  'planted bug "skip the generation compare" turns the pause suite red',
  { timeout: 240_000, skip },
  async (t) => {
    const w = await buildWorld(t, 'planted-pause', true);
    try {
      await createFtKv(w);
      assertRed(t, await pauseSuite(t, w, 1));
    } catch (e) {
      keepLogs(t, w, 'planted-pause');
      throw e;
    } finally {
      await w.close();
    }
  },
);
