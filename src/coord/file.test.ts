// Unit tests of the file: coordinator (file.ts) beyond the shared conformance
// suite: the record format and its checksum, opening and refusing
// directories, the garbage collector's bound on files, and above all the
// cases the collector makes dangerous: writers paused (by test hooks) across
// a collection must never report a win they cannot prove.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  mkdirSync,
  existsSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CoordResult } from './coordinator.js';
import {
  RecordKind,
  decodeRecord,
  encodeRecord,
  openFileCoordinator,
  versionFileName,
  type FileCoordinator,
  type FileCoordinatorOptions,
} from './file.js';

function ok<T>(r: CoordResult<T>, what = 'call'): T {
  if (!r.ok) assert.fail(`${what} failed: ${r.error.code}: ${r.error.message}`);
  return r.value;
}

function fails<T>(r: CoordResult<T>, code: string, what = 'call'): void {
  assert.equal(r.ok, false, `${what} should fail with '${code}': ${JSON.stringify(r)}`);
  if (!r.ok) assert.equal(r.error.code, code, `${what}: ${r.error.message}`);
}

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-file-coord-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function open(dir: string, opts: FileCoordinatorOptions = {}): Promise<FileCoordinator> {
  return ok(await openFileCoordinator(dir, { keep: 4, levels: 3, ...opts }), `open ${dir}`);
}

/** A promise and the function that resolves it: a gate a hook can wait on. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open: () => void = () => undefined;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

test('records round-trip, and any damaged byte or truncation is corrupt', () => {
  const rec = encodeRecord(RecordKind.Value, '{"key":"vms/a","value":{"x":1}}');
  const d = ok(decodeRecord(rec, 'test'));
  assert.equal(d.kind, RecordKind.Value);
  assert.equal(d.key, 'vms/a');
  assert.deepEqual(d.payload.value, { x: 1 });
  assert.deepEqual([...rec.subarray(0, 4)], [...Buffer.from('LSCR')]);
  for (let i = 0; i < rec.length; i++) {
    const bad = Buffer.from(rec);
    bad[i] = (bad[i] as number) ^ 0x01;
    fails(decodeRecord(bad, 'test'), 'corrupt', `flipped byte ${i}`);
  }
  for (let n = 0; n < rec.length; n++)
    fails(decodeRecord(rec.subarray(0, n), 'test'), 'corrupt', `${n} bytes`);
  fails(decodeRecord(Buffer.concat([rec, Buffer.from([0])]), 'test'), 'corrupt', 'a trailing byte');
});

test('a damaged record file reads as corrupt, for get, put and list', async (t) => {
  const dir = tempDir(t);
  const c = await open(dir);
  t.after(() => c.close());
  const { version } = ok(await c.put('vms/a/spec', { x: 1 }, 'absent'));
  const file = path.join(dir, 'vms', 'a', 'spec', versionFileName(Number(version)));
  const bytes = readFileSync(file);
  bytes[bytes.length - 6] = (bytes[bytes.length - 6] as number) ^ 0xff;
  writeFileSync(file, bytes);
  fails(await c.get('vms/a/spec'), 'corrupt');
  fails(await c.put('vms/a/spec', 2, { version }), 'corrupt');
  fails(await c.put('vms/a/spec', 2, 'any'), 'corrupt');
  fails(await c.list('vms'), 'corrupt');
});

test('open creates the directory, and refuses files and foreign directories', async (t) => {
  const dir = tempDir(t);
  const store = path.join(dir, 'a', 'b', 'store');
  const c = await open(store);
  assert.ok(existsSync(path.join(store, '@format')));
  await c.close();
  writeFileSync(path.join(dir, 'file'), 'x');
  fails(await openFileCoordinator(path.join(dir, 'file')), 'invalid', 'a regular file');
  fails(await openFileCoordinator(path.join(dir, 'file', 'sub')), 'invalid', 'a path under a file');
  mkdirSync(path.join(dir, 'foreign'));
  writeFileSync(path.join(dir, 'foreign', 'notes.txt'), 'mine');
  fails(await openFileCoordinator(path.join(dir, 'foreign')), 'invalid', 'a directory that is not a store');
});

test('processes that create the same store at once agree on its parameters', async (t) => {
  const dir = path.join(tempDir(t), 'store');
  const opened = await Promise.all(
    Array.from({ length: 6 }, (_, i) => openFileCoordinator(dir, { keep: 4 + i, levels: 3 })),
  );
  const coords = opened.map((r) => ok(r));
  const ids = new Set(coords.map((c) => `${c.params.storeId}/${c.params.keep}`));
  assert.equal(ids.size, 1);
  await Promise.all(coords.map((c) => c.close()));
});

test('the collector bounds the files of a key rewritten many times', async (t) => {
  const dir = tempDir(t);
  const c = await open(dir);
  t.after(() => c.close());
  for (let i = 0; i < 600; i++) ok(await c.put('vms/a/claim', { counter: i }, 'any'));
  await c.close();
  const names = readdirSync(path.join(dir, 'vms', 'a', 'claim'));
  const versions = names.filter((n) => n.startsWith('@v'));
  const markers = names.filter((n) => n.startsWith('@f'));
  // K = 4, L = 3: at most 2K + 1 versions, K markers on each lower level, one top marker per 64 versions.
  assert.ok(versions.length <= 9, `versions: ${versions.join(' ')}`);
  assert.ok(markers.length <= 4 + 4 + Math.ceil(600 / 64), `markers: ${markers.join(' ')}`);
  assert.deepEqual(readdirSync(path.join(dir, '@tmp')), []);
  const d = await open(dir);
  assert.deepEqual(ok(await d.get('vms/a/claim'))?.value, { counter: 599 });
  await d.close();
});

test('default parameters: the collector keeps K = 32 versions', async (t) => {
  const dir = tempDir(t);
  const c = ok(await openFileCoordinator(dir));
  assert.deepEqual([c.params.keep, c.params.levels], [32, 7]);
  for (let i = 0; i < 150; i++) ok(await c.put('k', i, 'any'));
  await c.close();
  const versions = readdirSync(path.join(dir, 'k')).filter((n) => n.startsWith('@v'));
  assert.ok(versions.length >= 32 && versions.length <= 65, `${versions.length} versions`);
});

test('a caller holding a collected version gets a conflict and writes nothing', async (t) => {
  const dir = tempDir(t);
  const c = await open(dir);
  t.after(() => c.close());
  const old = ok(await c.put('p', { gen: 0 }, 'absent')).version;
  let v = old;
  for (let i = 1; i <= 30; i++) v = ok(await c.put('p', { gen: i }, { version: v })).version;
  await c.close();
  const d = await open(dir);
  t.after(() => d.close());
  assert.ok(!existsSync(path.join(dir, 'p', versionFileName(Number(old)))), 'the old version was collected');
  fails(await d.put('p', { gen: 'stale' }, { version: old }), 'conflict');
  fails(await d.delete('p', { version: old }), 'conflict');
  assert.deepEqual(ok(await d.get('p')), { key: 'p', value: { gen: 30 }, version: v });
});

test('a writer paused before its link, across a collection, never reports a win', async (t) => {
  const dir = tempDir(t);
  const pause = gate();
  const reached = gate();
  const w = await open(dir, {
    testHooks: {
      beforeLink: async (_dir, version) => {
        if (version === 2) {
          reached.open();
          await pause.wait;
        }
      },
    },
  });
  const other = await open(dir);
  t.after(() => Promise.all([w.close(), other.close()]).then(() => undefined));
  const v1 = ok(await other.put('p', { gen: 0 }, 'absent')).version;
  assert.equal(v1, '1');
  // W has checked that version 1 is current and is about to create version 2.
  const pending = w.put('p', { gen: 1, owner: 'w' }, { version: v1 });
  await reached.wait;
  let v = v1;
  for (let i = 1; i <= 20; i++)
    v = ok(await other.put('p', { gen: i, owner: 'other' }, { version: v })).version;
  // Let the collector finish before W wakes up: version 2 is gone and covered.
  await other.close();
  assert.ok(!existsSync(path.join(dir, 'p', versionFileName(2))));
  pause.open();
  const r = await pending;
  assert.equal(r.ok, false, `the paused writer must not win: ${JSON.stringify(r)}`);
  const check = await open(dir);
  assert.deepEqual(ok(await check.get('p')), { key: 'p', value: { gen: 20, owner: 'other' }, version: v });
  assert.ok(!existsSync(path.join(dir, 'p', versionFileName(2))), 'the stale file was removed');
  await check.close();
});

test('a writer paused after winning, across a collection, reports unavailable, not conflict', async (t) => {
  const dir = tempDir(t);
  const pause = gate();
  const reached = gate();
  const w = await open(dir, {
    testHooks: {
      afterLink: async (_dir, version) => {
        if (version === 2) {
          reached.open();
          await pause.wait;
        }
      },
    },
  });
  const other = await open(dir);
  t.after(() => Promise.all([w.close(), other.close()]).then(() => undefined));
  const v1 = ok(await other.put('p', { gen: 0 }, 'absent')).version;
  const pending = w.put('p', { gen: 1, owner: 'w' }, { version: v1 });
  await reached.wait;
  // W's version 2 is in place: the others build on it.
  const seen = ok(await other.get('p'));
  assert.deepEqual(seen, { key: 'p', value: { gen: 1, owner: 'w' }, version: '2' });
  let v = '2';
  for (let i = 2; i <= 20; i++)
    v = ok(await other.put('p', { gen: i, owner: 'other' }, { version: v })).version;
  await other.close();
  pause.open();
  const r = await pending;
  fails(r, 'unavailable', 'a winner that cannot prove it won');
  const check = await open(dir);
  assert.deepEqual(ok(await check.get('p'))?.value, { gen: 20, owner: 'other' });
  await check.close();
});

test("an 'any' writer paused across a collection writes again and wins last", async (t) => {
  const dir = tempDir(t);
  const pause = gate();
  const reached = gate();
  let paused = false;
  const w = await open(dir, {
    testHooks: {
      beforeLink: async () => {
        if (!paused) {
          paused = true;
          reached.open();
          await pause.wait;
        }
      },
    },
  });
  const other = await open(dir);
  t.after(() => Promise.all([w.close(), other.close()]).then(() => undefined));
  ok(await other.put('claim', { n: 0 }, 'any'));
  const pending = w.put('claim', { n: 'w' }, 'any');
  await reached.wait;
  for (let i = 1; i <= 20; i++) ok(await other.put('claim', { n: i }, 'any'));
  await other.close();
  pause.open();
  const { version } = ok(await pending);
  const check = await open(dir);
  assert.deepEqual(ok(await check.get('claim')), { key: 'claim', value: { n: 'w' }, version });
  await check.close();
});

test('a call that cannot finish in time is unavailable within its time limit', async (t) => {
  // The stall lasts until the test releases it, so the failure can only come
  // from the call's own time limit; the budget is generous because a loaded CI
  // machine can take hundreds of milliseconds for one fsync.
  const dir = tempDir(t);
  const release = gate();
  let stall = true;
  const c = await open(dir, {
    opTimeoutMs: 2000,
    testHooks: { beforeLink: async () => (stall ? release.wait : undefined) },
  });
  t.after(() => c.close());
  const r = await c.put('k', 1, 'any');
  fails(r, 'unavailable');
  assert.match(r.ok ? '' : r.error.message, /no answer within 2000 ms/);
  stall = false;
  release.open();
  ok(await c.put('k', 2, 'any'));
});

test('temporary files of dead writers on this host are swept at open; others stay', async (t) => {
  const dir = tempDir(t);
  const c = await open(dir);
  await c.close();
  const tmp = path.join(dir, '@tmp');
  const host =
    os
      .hostname()
      .replace(/[^A-Za-z0-9-]/g, '-')
      .slice(0, 64) || 'host';
  const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')
    .trim()
    .replace(/[^0-9a-f]/g, '');
  writeFileSync(path.join(tmp, `t.${host}.${boot}.999999999.1.dead`), 'x');
  writeFileSync(path.join(tmp, `t.${host}.oldboot.1.1.prev`), 'x');
  writeFileSync(path.join(tmp, `t.otherhost.${boot}.999999999.1.keep`), 'x');
  const d = await open(dir);
  await d.close();
  assert.deepEqual(readdirSync(tmp), [`t.otherhost.${boot}.999999999.1.keep`]);
});

test('stress: many in-process contenders with random pauses and K = 2 never share a generation', async (t) => {
  const dir = tempDir(t);
  const rand = (n: number) => Math.floor(Math.random() * n);
  const jitter = async () => {
    const r = rand(20);
    // Mostly no pause, sometimes a short one, rarely one long enough for many writes and collections.
    if (r < 12) return;
    await new Promise((res) => setTimeout(res, r < 19 ? rand(3) : 20 + rand(30)));
  };
  const seed = await open(dir, { keep: 2, levels: 3 });
  ok(await seed.put('gen', { gen: 0, owner: 'seed' }, 'absent'));
  await seed.close();
  const target = 150;
  const owners = new Map<number, string>();
  const outcomes: Record<string, number> = {};
  const contenders = await Promise.all(
    Array.from({ length: 6 }, () => open(dir, { testHooks: { beforeLink: jitter, afterLink: jitter } })),
  );
  t.after(() => Promise.all(contenders.map((c) => c.close())).then(() => undefined));
  await Promise.all(
    contenders.map(async (c, i) => {
      for (;;) {
        const cur = ok(await c.get<{ gen: number; owner: string }>('gen'));
        assert.ok(cur);
        if (cur.value.gen >= target) return;
        await jitter();
        const r = await c.put('gen', { gen: cur.value.gen + 1, owner: `c${i}` }, { version: cur.version });
        const outcome = r.ok ? 'won' : r.error.code;
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        if (r.ok) {
          const g = cur.value.gen + 1;
          assert.ok(!owners.has(g), `generation ${g} won by ${owners.get(g)} and c${i}`);
          owners.set(g, `c${i}`);
        } else assert.ok(r.error.code === 'conflict' || r.error.code === 'unavailable', r.error.message);
      }
    }),
  );
  t.diagnostic(`outcomes: ${JSON.stringify(outcomes)}`);
  const check = await open(dir);
  const last = ok(await check.get<{ gen: number; owner: string }>('gen'));
  await check.close();
  assert.equal(last?.value.gen, target);
  // Every generation up to the last has one owner, except one whose winner could not prove it won ('unavailable').
  const missing = Array.from({ length: target }, (_, i) => i + 1).filter((g) => !owners.has(g));
  assert.ok(missing.length <= (outcomes.unavailable ?? 0), `generations without a known owner: ${missing}`);
  assert.equal(owners.get(target), last?.value.owner);
});
