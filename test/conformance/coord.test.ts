/**
 * The coordinator conformance suite: one set of tests, `conformance(name,
 * makeBackend)`, run against both backends: `file:` on a fresh temporary
 * directory and `etcd:` on a real etcd started by test/e2e/etcd.ts.
 *
 * What it holds every backend to (src/coord/coordinator.ts states the
 * contract): get/put/list/delete semantics; the 'absent', 'any' and
 * {version} compares and their conflicts; versions that are never reused,
 * even after delete and re-create; recursive, sorted lists that never include
 * a sibling prefix; 'invalid' for bad input with nothing written; values that
 * round-trip; exactly one winner per round when several OS processes race a
 * test-and-set on the same version; and 'unavailable', within the time limit,
 * from a store that cannot be reached, with recovery once it is back.
 *
 * The file store is created with K = 4 (versions kept per key), so its
 * garbage collector runs every few writes in every test here, races included.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { VALUE_BYTES_MAX, type CoordResult, type Coordinator } from '../../src/coord/coordinator.js';
import { openCoordinator } from '../../src/coord/open.js';
import { openFileCoordinator } from '../../src/coord/file.js';
import { etcdAvailable, startEtcd } from '../e2e/etcd.js';
import type { GenRecord, ParentMessage, WorkerMessage } from './race-worker.js';

const WORKER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'race-worker.js');
/** The time limit used where the suite measures how fast 'unavailable' comes. */
const OUTAGE_OP_TIMEOUT_MS = 1000;
/**
 * How late after its time limit an 'unavailable' may arrive. The point is that a call never hangs,
 * not how fast it fails: the margin is wide, because a CI machine running other suites can delay
 * timers and processes by seconds.
 */
const LATENESS_MS = 5000;
const RACE_WORKERS = 4;

interface Outage {
  name: string;
  begin(): Promise<void>;
  end(): Promise<void>;
}

export interface Backend {
  /** The coordinator string, for child processes. */
  spec: string;
  /** Opens another coordinator on the same store. */
  open(opTimeoutMs?: number): Promise<Coordinator>;
  /** Ways to make the store unreachable for coordinators that are already open, and to undo them. */
  outages: Outage[];
  /** Rounds of the barrier race, and generations of the free-running race after it. */
  raceRounds: number;
  freeGens: number;
  cleanup(): Promise<void>;
}

function ok<T>(r: CoordResult<T>, what = 'call'): T {
  if (!r.ok) assert.fail(`${what} failed: ${r.error.code}: ${r.error.message}`);
  return r.value;
}

function fails<T>(r: CoordResult<T>, code: string, what = 'call'): void {
  assert.equal(r.ok, false, `${what} should fail with '${code}' but succeeded: ${JSON.stringify(r)}`);
  if (!r.ok) assert.equal(r.error.code, code, `${what}: ${r.error.message}`);
}

// ---------------------------------------------------------------------------
// Child processes of the races.

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** A forked race-worker with a queue of its messages. */
class Peer {
  private readonly queue: WorkerMessage[] = [];
  private waiter: ((m: WorkerMessage) => void) | null = null;
  private exitCode: number | null | undefined = undefined;
  readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    children.add(proc);
    proc.on('message', (m: WorkerMessage) => {
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w(m);
      } else this.queue.push(m);
    });
    this.exited = new Promise((resolve) =>
      proc.on('exit', (code) => {
        this.exitCode = code;
        children.delete(proc);
        resolve();
      }),
    );
  }

  send(m: ParentMessage): void {
    this.proc.send(m);
  }

  next(timeoutMs = 30_000): Promise<WorkerMessage> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.exitCode !== undefined)
      return Promise.reject(new Error(`${this.name} exited (${this.exitCode})`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${this.name}: no message within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.waiter = (m) => {
        clearTimeout(timer);
        resolve(m);
      };
      void this.exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${this.exitCode})`));
      });
    });
  }

  async expect<K extends WorkerMessage['kind']>(kind: K): Promise<Extract<WorkerMessage, { kind: K }>> {
    const m = await this.next();
    if (m.kind === 'error') assert.fail(`${this.name}: ${m.message}`);
    assert.equal(m.kind, kind, `${this.name} sent ${JSON.stringify(m)}`);
    return m as Extract<WorkerMessage, { kind: K }>;
  }
}

/**
 * Races RACE_WORKERS processes on one generation record. Barrier rounds
 * first: every worker reads the same version, then all try the test-and-set
 * at once; exactly one must win and the others must learn they lost. Then a
 * free-running phase without barriers, where stale readers are common. The
 * history must give every generation exactly one owner.
 */
async function race(b: Backend, coord: Coordinator, key: string, log: (s: string) => void): Promise<void> {
  ok(await coord.put(key, { gen: 0, owner: 'seed' } satisfies GenRecord, 'absent'), 'seed');
  const started = performance.now();
  const peers: Peer[] = [];
  for (let i = 0; i < RACE_WORKERS; i++) {
    const name = `w${i}`;
    const proc = fork(WORKER, ['race', b.spec, key, name], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    peers.push(new Peer(name, proc));
  }
  try {
    for (const p of peers) await p.expect('ready');
    const owners = new Map<number, string>();
    for (let round = 0; round < b.raceRounds; round++) {
      for (const p of peers) p.send({ cmd: 'read' });
      const reads = await Promise.all(peers.map((p) => p.expect('read')));
      const version = reads[0]?.version;
      for (const r of reads) {
        assert.equal(r.gen, round, `round ${round}: a worker read generation ${r.gen}`);
        assert.equal(r.version, version, `round ${round}: workers read different versions`);
      }
      for (const p of peers) p.send({ cmd: 'write' });
      const writes = await Promise.all(peers.map((p) => p.expect('write')));
      const winners = peers.filter((_, i) => writes[i]?.outcome === 'won');
      assert.equal(winners.length, 1, `round ${round}: ${winners.length} winners: ${JSON.stringify(writes)}`);
      for (const [i, w] of writes.entries()) {
        if (w.outcome !== 'won')
          assert.equal(w.outcome, 'conflict', `round ${round}, ${peers[i]?.name}: ${w.message}`);
      }
      const winner = winners[0] as Peer;
      const now = ok(await coord.get<GenRecord>(key), 'read back');
      assert.ok(now);
      assert.deepEqual(now.value, { gen: round + 1, owner: winner.name }, `round ${round}`);
      assert.equal(
        now.version,
        writes[peers.indexOf(winner)]?.version,
        `round ${round}: the winner's version`,
      );
      owners.set(round + 1, winner.name);
    }
    const barrierMs = performance.now() - started;

    const target = b.raceRounds + b.freeGens;
    for (const p of peers) p.send({ cmd: 'free', targetGen: target });
    const results = await Promise.all(peers.map((p) => p.expect('free')));
    const versions = new Set<string>();
    const unsure = new Set<number>();
    for (const [i, r] of results.entries()) {
      const name = peers[i]?.name as string;
      for (const w of r.wins) {
        assert.ok(!owners.has(w.gen), `generation ${w.gen} won by both ${owners.get(w.gen)} and ${name}`);
        assert.ok(!versions.has(w.version), `version ${w.version} issued twice`);
        owners.set(w.gen, name);
        versions.add(w.version);
      }
      // 'unavailable' is allowed without barriers: a file: writer descheduled across K other writes and
      // a collection cannot tell whether it won (docs/COORDINATOR.md). It must never be a false 'ok'.
      for (const code of Object.keys(r.losses)) {
        assert.ok(code === 'conflict' || code === 'unavailable', `${name} lost with ${code}`);
      }
      for (const g of r.unsure) unsure.add(g);
    }
    // Every generation has exactly one owner: a worker that was told it won, or one that was told
    // 'unavailable' for it (and so never acts as its owner).
    for (let g = 1; g <= target; g++)
      assert.ok(owners.has(g) || unsure.has(g), `generation ${g} has no owner`);
    const last = ok(await coord.get<GenRecord>(key), 'final read');
    assert.equal(last?.value.gen, target);
    if (owners.has(target)) assert.equal(last?.value.owner, owners.get(target));
    const losses = results.reduce((n, r) => n + (r.losses.conflict ?? 0), 0);
    log(
      `${b.raceRounds} barrier rounds in ${barrierMs.toFixed(0)} ms; ${b.freeGens} free generations ` +
        `with ${losses} lost races and ${unsure.size} unsure in ` +
        `${(performance.now() - started - barrierMs).toFixed(0)} ms`,
    );
  } finally {
    for (const p of peers) {
      if (p.proc.connected) p.send({ cmd: 'exit' });
    }
    const exited = Promise.all(peers.map((p) => p.exited));
    const timer = setTimeout(() => peers.forEach((p) => p.proc.kill('SIGKILL')), 5000);
    await exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------

const BAD_KEYS: unknown[] = [
  '',
  '/a',
  'a/',
  'a//b',
  '.a',
  'a/.b',
  'a/../b',
  '..',
  'a b',
  'a/@v0000000000000001',
  'é',
  'a\nb',
  'x'.repeat(129),
  Array(9).fill('s').join('/'),
  5,
  null,
];

const ROUND_TRIP_VALUES: unknown[] = [
  { a: 1 },
  {
    nested: { deep: [1, 2, { x: null }] },
    s: 'quote " backslash \\ newline \n tab \t nul \u0000',
    u: 'ünïcödé ✓ 😀 \u2028',
    n: -1.5e-7,
    big: Number.MAX_SAFE_INTEGER,
    t: true,
    f: false,
  },
  [1, 'two', null, [], {}],
  'a string',
  42,
  0,
  true,
  null,
  {},
  [],
];

export function conformance(
  name: string,
  makeBackend: () => Promise<Backend>,
  skip: string | false = false,
): void {
  describe(`coordinator conformance: ${name}`, { skip }, () => {
    let b: Backend;
    let c: Coordinator;
    let n = 0;
    /** A fresh key prefix per test, so tests share one store without seeing each other. */
    const fresh = () => `t${++n}`;

    before(async () => {
      b = await makeBackend();
      c = await b.open();
    });
    after(async () => {
      await c?.close();
      await b?.cleanup();
    });

    test('get of a missing key is null; put absent creates; a second put absent conflicts', async () => {
      const k = `${fresh()}/a`;
      assert.equal(ok(await c.get(k)), null);
      const { version } = ok(await c.put(k, { x: 1 }, 'absent'));
      assert.equal(typeof version, 'string');
      assert.deepEqual(ok(await c.get(k)), { key: k, value: { x: 1 }, version });
      fails(await c.put(k, { x: 2 }, 'absent'), 'conflict');
      assert.deepEqual(ok(await c.get(k)), { key: k, value: { x: 1 }, version });
    });

    test('put with the current version succeeds once; an old version conflicts and writes nothing', async () => {
      const k = `${fresh()}/a`;
      const v1 = ok(await c.put(k, 1, 'absent')).version;
      const v2 = ok(await c.put(k, 2, { version: v1 })).version;
      assert.notEqual(v2, v1);
      fails(await c.put(k, 3, { version: v1 }), 'conflict');
      const v3 = ok(await c.put(k, 3, { version: v2 })).version;
      fails(await c.put(k, 4, { version: v2 }), 'conflict');
      assert.deepEqual(ok(await c.get(k)), { key: k, value: 3, version: v3 });
      // A version of a missing key, or one never issued, never matches.
      fails(await c.put(`${k}x`, 1, { version: v3 }), 'conflict');
      assert.equal(ok(await c.get(`${k}x`)), null);
      fails(await c.put(k, 5, { version: '987654321' }), 'conflict');
      fails(await c.put(k, 5, { version: '9999999999999999999' }), 'conflict');
      assert.equal(ok(await c.get(k))?.version, v3);
    });

    test("put 'any' creates or overwrites, always with a new version", async () => {
      const k = `${fresh()}/a`;
      const seen = new Set<string>();
      for (let i = 0; i < 12; i++) {
        const { version } = ok(await c.put(k, { i }, 'any'));
        assert.ok(!seen.has(version), `version ${version} reused`);
        seen.add(version);
        assert.deepEqual(ok(await c.get(k)), { key: k, value: { i }, version });
      }
    });

    test('delete: compares like put, is idempotent with any, and the key reads absent after', async () => {
      const k = `${fresh()}/a`;
      ok(await c.delete(k, 'any'), 'delete of a missing key with any');
      fails(await c.delete(k, { version: '1' }), 'conflict');
      const v1 = ok(await c.put(k, 'one', 'absent')).version;
      const v2 = ok(await c.put(k, 'two', { version: v1 })).version;
      fails(await c.delete(k, { version: v1 }), 'conflict');
      assert.equal(ok(await c.get(k))?.value, 'two');
      ok(await c.delete(k, { version: v2 }));
      assert.equal(ok(await c.get(k)), null);
      fails(await c.delete(k, { version: v2 }), 'conflict');
      fails(await c.put(k, 'three', { version: v2 }), 'conflict');
      assert.equal(ok(await c.get(k)), null);
      ok(await c.delete(k, 'any'));
      const v3 = ok(await c.put(k, 'three', 'absent')).version;
      assert.ok(![v1, v2].includes(v3));
      ok(await c.delete(k, 'any'));
      assert.equal(ok(await c.get(k)), null);
    });

    test('versions are never reused across delete and re-create', async () => {
      const k = `${fresh()}/a`;
      const seen: string[] = [];
      for (let i = 0; i < 10; i++) {
        const v = ok(await c.put(k, { i }, 'absent')).version;
        assert.ok(!seen.includes(v), `version ${v} of ${k} seen before: ${seen.join(',')}`);
        seen.push(v);
        const w = ok(await c.put(k, { i, again: true }, { version: v })).version;
        assert.ok(!seen.includes(w));
        seen.push(w);
        if (i % 2 === 0) ok(await c.delete(k, { version: w }));
        else ok(await c.delete(k, 'any'));
        // Every version from before the delete is dead, even the last one.
        for (const old of seen) fails(await c.put(k, 'stale', { version: old }), 'conflict', `put at ${old}`);
      }
    });

    test('list is recursive, sorted, excludes the prefix itself and sibling prefixes', async () => {
      const ns = fresh();
      const keys = [
        `${ns}/vms/a`,
        `${ns}/vms/a/spec`,
        `${ns}/vms/a/claim`,
        `${ns}/vms/a/x/y/z`,
        `${ns}/vms/ab/spec`,
        `${ns}/vms/a0/spec`,
        `${ns}/vms/a-b`,
        `${ns}/vms/a.b/spec`,
        `${ns}/vms/b/spec`,
        `${ns}/vmsx`,
        `${ns}/vms/a/gone`,
      ];
      for (const k of keys) ok(await c.put(k, { k }, 'absent'), `put ${k}`);
      ok(await c.delete(`${ns}/vms/a/gone`, 'any'));
      const underA = ok(await c.list(`${ns}/vms/a`));
      assert.deepEqual(
        underA.map((e) => e.key),
        [`${ns}/vms/a/claim`, `${ns}/vms/a/spec`, `${ns}/vms/a/x/y/z`],
      );
      for (const e of underA) {
        assert.deepEqual(e.value, { k: e.key });
        assert.equal(e.version, ok(await c.get(e.key))?.version);
      }
      const all = ok(await c.list(`${ns}/vms`)).map((e) => e.key);
      const expected = keys.filter((k) => k.startsWith(`${ns}/vms/`) && !k.endsWith('/gone')).sort();
      assert.deepEqual(all, expected);
      assert.deepEqual(ok(await c.list(`${ns}/nothing`)), []);
      assert.deepEqual(ok(await c.list(`${ns}/vms/a/spec`)), []);
    });

    test("bad keys, values and compares are 'invalid' and write nothing", async () => {
      const ns = fresh();
      const k = `${ns}/a`;
      for (const bad of BAD_KEYS) {
        const key = bad as string;
        fails(await c.get(key), 'invalid', `get ${JSON.stringify(bad)}`);
        fails(await c.put(key, 1, 'any'), 'invalid', `put ${JSON.stringify(bad)}`);
        fails(await c.delete(key, 'any'), 'invalid', `delete ${JSON.stringify(bad)}`);
        fails(await c.list(key), 'invalid', `list ${JSON.stringify(bad)}`);
      }
      ok(await c.put('x'.repeat(128), 1, 'any'), 'a 128-character segment');
      ok(await c.put(`${ns}/${Array(7).fill('s').join('/')}`, 1, 'any'), 'eight segments');
      // JSON text is limited in UTF-8 bytes, not characters.
      fails(await c.put(k, 'x'.repeat(VALUE_BYTES_MAX - 1), 'any'), 'invalid', 'one byte too big');
      fails(await c.put(k, 'é'.repeat(VALUE_BYTES_MAX / 2), 'absent'), 'invalid', 'too big in UTF-8');
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      for (const v of [undefined, () => 1, 10n, cyclic, Symbol('s')]) {
        fails(await c.put(k, v, 'any'), 'invalid', `put ${String(v)}`);
      }
      for (const e of [
        'sometimes',
        { version: 'abc' },
        { version: '0' },
        { version: '01' },
        { version: 5 },
        {},
        null,
      ]) {
        fails(await c.put(k, 1, e as 'any'), 'invalid', `expect ${JSON.stringify(e)}`);
      }
      fails(await c.delete(k, 'absent' as 'any'), 'invalid', "delete with 'absent'");
      fails(await c.delete(k, { version: '-1' }), 'invalid');
      assert.equal(ok(await c.get(k)), null);
      assert.deepEqual(
        ok(await c.list(ns)).map((e) => e.key),
        [`${ns}/${Array(7).fill('s').join('/')}`],
      );
      const max = 'x'.repeat(VALUE_BYTES_MAX - 2);
      ok(await c.put(k, max, 'absent'), 'exactly the largest value');
      assert.equal(ok(await c.get(k))?.value, max);
    });

    test('values round-trip exactly', async () => {
      const ns = fresh();
      for (const [i, v] of ROUND_TRIP_VALUES.entries()) {
        const k = `${ns}/v${i}`;
        const { version } = ok(await c.put(k, v, 'absent'));
        assert.deepEqual(ok(await c.get(k)), { key: k, value: v, version }, `value ${i}`);
      }
      const listed = ok(await c.list(ns));
      assert.deepEqual(
        listed.map((e) => e.value),
        ROUND_TRIP_VALUES.map((_, i) => i)
          .sort((x, y) => (`v${x}` < `v${y}` ? -1 : 1))
          .map((i) => ROUND_TRIP_VALUES[i]),
      );
    });

    test('concurrent test-and-set within one process: exactly one winner per version', async () => {
      const k = `${fresh()}/gen`;
      const other = await b.open();
      try {
        let version = ok(await c.put(k, { gen: 0 }, 'absent')).version;
        for (let gen = 1; gen <= 10; gen++) {
          const results = await Promise.all(
            Array.from({ length: 8 }, (_, i) => (i % 2 ? c : other).put(k, { gen, i }, { version })),
          );
          const won = results.filter((r) => r.ok);
          assert.equal(won.length, 1, `generation ${gen}: ${JSON.stringify(results)}`);
          for (const r of results) if (!r.ok) assert.equal(r.error.code, 'conflict', r.error.message);
          version = ok(won[0] as CoordResult<{ version: string }>).version;
          assert.equal(ok(await other.get(k))?.version, version);
        }
        const absentRace = await Promise.all(
          Array.from({ length: 6 }, (_, i) => (i % 2 ? c : other).put(`${k}/new`, { i }, 'absent')),
        );
        assert.equal(absentRace.filter((r) => r.ok).length, 1, JSON.stringify(absentRace));
      } finally {
        await other.close();
      }
    });

    test('test-and-set races between OS processes: one winner per round, losers learn they lost', async (t) => {
      await race(b, c, `${fresh()}/placement`, (s) => t.diagnostic(s));
    });

    test('close is idempotent, does not hang, and later calls are unavailable', async () => {
      const d = await b.open();
      const k = `${fresh()}/a`;
      ok(await d.put(k, 1, 'any'));
      // A hang here is caught by the test's own timeout; no clock is asserted.
      await d.close();
      await d.close();
      fails(await d.get(k), 'unavailable');
      fails(await d.put(k, 2, 'any'), 'unavailable');
      assert.equal(ok(await c.get(k))?.value, 1);
    });

    test('an unreachable store answers unavailable within the time limit, and works again after', async (t) => {
      for (const outage of b.outages) {
        const d = await b.open(OUTAGE_OP_TIMEOUT_MS);
        const ns = fresh();
        const k = `${ns}/a`;
        const { version } = ok(await d.put(k, 'before', 'absent'));
        await outage.begin();
        try {
          const calls: Array<[string, () => Promise<CoordResult<unknown>>]> = [
            ['get', () => d.get(k)],
            ['put any', () => d.put(k, 'during', 'any')],
            ['put version', () => d.put(k, 'during', { version })],
            ['put absent', () => d.put(`${ns}/new`, 'during', 'absent')],
            ['list', () => d.list(ns)],
            ['delete', () => d.delete(k, 'any')],
          ];
          for (const [what, call] of calls) {
            const t0 = performance.now();
            const r = await call();
            const ms = performance.now() - t0;
            fails(r, 'unavailable', `${outage.name}: ${what}`);
            assert.ok(
              ms < OUTAGE_OP_TIMEOUT_MS + LATENESS_MS,
              `${outage.name}: ${what} took ${ms.toFixed(0)} ms`,
            );
            t.diagnostic(`${outage.name}: ${what} unavailable after ${ms.toFixed(0)} ms`);
          }
        } finally {
          await outage.end();
        }
        // The same coordinator object recovers, without being reopened.
        const back = ok(await d.get(k), `${outage.name}: get after recovery`);
        assert.ok(back !== null || true);
        ok(await d.put(k, 'after', 'any'), `${outage.name}: put after recovery`);
        assert.equal(ok(await d.get(k))?.value, 'after');
        await d.close();
      }
    });
  });
}

// ---------------------------------------------------------------------------
// The two backends.

conformance('file', async () => {
  const parent = mkdtempSync(path.join(tmpdir(), 'lockstep-coord-'));
  const dir = path.join(parent, 'store');
  const away = `${dir}.away`;
  // K = 4: the collector runs every fourth write of a key, so every test exercises it.
  const created = await openFileCoordinator(dir, { keep: 4, levels: 3 });
  assert.ok(created.ok, created.ok ? '' : created.error.message);
  await created.value.close();
  const spec = `file:${dir}`;
  return {
    spec,
    async open(opTimeoutMs?: number) {
      return ok(await openCoordinator(spec, { opTimeoutMs: opTimeoutMs ?? 5000 }), `open ${spec}`);
    },
    outages: [
      {
        name: 'DIR replaced by a regular file',
        begin: async () => {
          renameSync(dir, away);
          writeFileSync(dir, 'not a directory');
        },
        end: async () => {
          unlinkSync(dir);
          renameSync(away, dir);
        },
      },
      {
        name: 'DIR gone',
        begin: async () => renameSync(dir, away),
        end: async () => renameSync(away, dir),
      },
    ],
    raceRounds: 50,
    freeGens: 100,
    async cleanup() {
      rmSync(parent, { recursive: true, force: true });
    },
  };
});

conformance(
  'etcd',
  async () => {
    const server = await startEtcd();
    return {
      spec: server.spec,
      async open(opTimeoutMs?: number) {
        return ok(
          await openCoordinator(server.spec, { opTimeoutMs: opTimeoutMs ?? 5000 }),
          `open ${server.spec}`,
        );
      },
      outages: [
        { name: 'etcd killed', begin: () => server.kill(), end: () => server.restart() },
        {
          name: 'etcd paused (SIGSTOP)',
          begin: async () => server.pause(),
          end: async () => server.resume(),
        },
      ],
      raceRounds: 30,
      freeGens: 60,
      cleanup: () => server.stop(),
    };
  },
  etcdAvailable() ? false : 'etcd is not installed (/usr/bin/etcd)',
);

// ---------------------------------------------------------------------------
// The file backend on a read-only mount: reads work, writes are 'unavailable'.

function canUnshare(): boolean {
  const r = spawnSync('unshare', ['-m', 'true'], { timeout: 5000 });
  return r.status === 0;
}

describe(
  'file backend on a read-only bind mount',
  { skip: canUnshare() ? false : 'unshare -m is not permitted' },
  () => {
    test('reads still work; writes are unavailable within the time limit', async () => {
      const parent = mkdtempSync(path.join(tmpdir(), 'lockstep-coord-ro-'));
      try {
        const dir = path.join(parent, 'store');
        const spec = `file:${dir}`;
        const c = ok(await openCoordinator(spec));
        ok(await c.put('vms/a/spec', { x: 1 }, 'absent'));
        await c.close();
        // A private mount namespace: the read-only bind mount is visible to the child only.
        const r = spawnSync(
          'unshare',
          [
            '-m',
            'sh',
            '-c',
            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" "$3" probe "$4" "$5"',
            'sh',
            dir,
            process.execPath,
            WORKER,
            spec,
            'vms/a/spec',
          ],
          { timeout: 30_000, encoding: 'utf8', env: { ...process.env, LOCKSTEP_TEST_OP_TIMEOUT_MS: '1000' } },
        );
        assert.equal(r.status, 0, `probe failed: ${r.stderr}`);
        const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as {
          read: CoordResult<{ value: unknown }>;
          write: CoordResult<unknown>;
          writeMs: number;
          listOk: boolean;
        };
        assert.deepEqual(ok(out.read)?.value, { x: 1 });
        fails(out.write, 'unavailable', 'put on a read-only mount');
        assert.ok(out.writeMs < 1000 + LATENESS_MS, `the put took ${out.writeMs} ms`);
        assert.ok(out.listOk);
        // Outside the namespace the store is writable and unchanged.
        const d = ok(await openCoordinator(spec));
        assert.deepEqual(ok(await d.get('vms/a/spec'))?.value, { x: 1 });
        await d.close();
      } finally {
        rmSync(parent, { recursive: true, force: true });
      }
    });
  },
);

// ---------------------------------------------------------------------------
// The etcd backend with a dead endpoint in its list: calls that land on it are retried on the live one.

describe(
  'etcd backend with a dead endpoint among its endpoints',
  { skip: etcdAvailable() ? false : 'no etcd' },
  () => {
    test('every call succeeds through the live endpoint', async (t) => {
      const server = await startEtcd();
      t.after(() => server.stop());
      // Port 1 on loopback refuses connections: the request never leaves, so a retry is always safe.
      const spec = `etcd:127.0.0.1:1,${server.endpoint}`;
      const c = ok(await openCoordinator(spec, { opTimeoutMs: 3000 }), `open ${spec}`);
      t.after(() => c.close());
      let version = ok(await c.put('k', { n: 0 }, 'absent')).version;
      for (let n = 1; n <= 20; n++) {
        version = ok(await c.put('k', { n }, { version }), `put ${n}`).version;
        assert.deepEqual(ok(await c.get('k'))?.value, { n });
      }
      assert.equal(ok(await c.list('k')).length, 0);
    });
  },
);
