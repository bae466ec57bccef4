/**
 * The module store's search order and checks (src/host/modules.ts), with
 * stand-in peers. The real fetch between hosts is exercised by
 * test/e2e/modules.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MODULE_UNUSED_KEEP_MS, ModuleStore, sha256Of, type PeerFetch } from './modules.js';

const A = Buffer.from('module A: the bytes the VM was created from');
const B = Buffer.from('module B: what the path holds later');

function setup(
  peers: { name: string; answer: () => PeerFetch }[],
  withPeers = true,
): { dir: string; store: ModuleStore; asked: string[]; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-modules-'));
  const asked: string[] = [];
  const store = new ModuleStore({
    dir: path.join(dir, 'store'),
    tmpSuffix: 'test',
    peers: () => (withPeers ? peers.map((p) => ({ name: p.name, api: `${p.name}:1` })) : []),
    fetchFromPeer: async (api) => {
      const p = peers.find((q) => `${q.name}:1` === api)!;
      asked.push(p.name);
      // One turn of the event loop, so concurrent resolves overlap.
      await new Promise((r) => setImmediate(r));
      return p.answer();
    },
  });
  return { dir, store, asked, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

test('the store comes first (checked); then the path, if its hash still matches; it is copied into the store', async () => {
  const s = setup([{ name: 'h2', answer: () => ({ ok: true, bytes: A }) }]);
  try {
    const from = path.join(s.dir, 'kv.wasm');
    writeFileSync(from, A);
    const first = await s.store.resolve(from, sha256Of(A));
    assert.deepEqual(first, { ok: true, path: s.store.fileOf(sha256Of(A)), source: 'path' });
    assert.deepEqual(readFileSync(s.store.fileOf(sha256Of(A))), A);
    // The path changes and then disappears: the stored copy is what runs.
    writeFileSync(from, B);
    rmSync(from);
    const again = await s.store.resolve(from, sha256Of(A));
    assert.deepEqual(again, { ok: true, path: s.store.fileOf(sha256Of(A)), source: 'store' });
    assert.deepEqual(s.asked, []);
    // A stored copy damaged on disk is not run: it is fetched again.
    writeFileSync(s.store.fileOf(sha256Of(A)), B);
    const repaired = await s.store.resolve(from, sha256Of(A));
    assert.deepEqual(repaired, { ok: true, path: s.store.fileOf(sha256Of(A)), source: { peer: 'h2' } });
    assert.deepEqual(readFileSync(s.store.fileOf(sha256Of(A))), A);
  } finally {
    s.cleanup();
  }
});

test('a changed path is not used: the module comes from a peer, skipping peers that fail or lie', async () => {
  const s = setup([
    { name: 'h2', answer: () => ({ ok: false, message: 'connection refused' }) },
    { name: 'h3', answer: () => ({ ok: true, bytes: B }) },
    { name: 'h4', answer: () => ({ ok: true, bytes: A }) },
  ]);
  try {
    const from = path.join(s.dir, 'kv.wasm');
    writeFileSync(from, B);
    const r = await s.store.resolve(from, sha256Of(A));
    assert.deepEqual(r, { ok: true, path: s.store.fileOf(sha256Of(A)), source: { peer: 'h4' } });
    assert.deepEqual(s.asked, ['h2', 'h3', 'h4']);
    assert.deepEqual(readFileSync(s.store.fileOf(sha256Of(A))), A);
    // The path was left as it is.
    assert.deepEqual(readFileSync(from), B);
  } finally {
    s.cleanup();
  }
});

test('nowhere to be found: the failure says where it looked', async () => {
  const s = setup([{ name: 'h2', answer: () => ({ ok: false, message: 'no module here' }) }]);
  try {
    const from = path.join(s.dir, 'gone.wasm');
    const r = await s.store.resolve(from, sha256Of(A));
    assert.equal(r.ok, false);
    assert.match(!r.ok ? r.message : '', /gone\.wasm: not on this host; h2: no module here/);
    assert.equal(existsSync(s.store.fileOf(sha256Of(A))), false);
    const alone = setup([], false);
    try {
      const r2 = await alone.store.resolve(from, sha256Of(A));
      assert.match(!r2.ok ? r2.message : '', /no other host is up to ask/);
    } finally {
      alone.cleanup();
    }
    const bad = await s.store.resolve(from, 'not-a-hash');
    assert.match(!bad.ok ? bad.message : '', /bad module hash/);
  } finally {
    s.cleanup();
  }
});

test('concurrent resolves of one module share one fetch', async () => {
  const s = setup([{ name: 'h2', answer: () => ({ ok: true, bytes: A }) }]);
  try {
    const from = path.join(s.dir, 'missing.wasm');
    const all = await Promise.all([1, 2, 3].map(() => s.store.resolve(from, sha256Of(A))));
    for (const r of all) assert.equal(r.ok, true);
    assert.deepEqual(s.asked, ['h2']);
  } finally {
    s.cleanup();
  }
});

test('put stores an upload by its hash; prune keeps modules in use and young ones', async () => {
  const s = setup([]);
  try {
    const a = await s.store.put(A);
    const b = await s.store.put(B);
    assert.equal(a.sha256, sha256Of(A));
    assert.equal(await s.store.has(a.sha256), A.byteLength);
    const stale = `${s.store.fileOf(sha256Of(A))}.crashed.tmp`;
    writeFileSync(stale, 'half');
    const now = Date.now();
    // Young: nothing goes, in use or not.
    assert.equal(await s.store.prune(new Set([a.sha256]), now), 0);
    const old = new Date(now - MODULE_UNUSED_KEEP_MS - 60_000);
    for (const f of [a.path, b.path, stale]) utimesSync(f, old, old);
    assert.equal(await s.store.prune(new Set([a.sha256]), now), 2);
    assert.equal(existsSync(a.path), true);
    assert.equal(existsSync(b.path), false);
    assert.equal(existsSync(stale), false);
    assert.equal(await s.store.has('../../etc/passwd'), null);
  } finally {
    s.cleanup();
  }
});

test('a store that cannot be written is a failure value, not a rejection', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-modules-'));
  try {
    // The store's folder would be under a regular file: mkdir fails (ENOTDIR).
    writeFileSync(path.join(dir, 'file'), '');
    const store = new ModuleStore({
      dir: path.join(dir, 'file', 'store'),
      tmpSuffix: 'test',
      peers: () => [],
      fetchFromPeer: async () => ({ ok: false, message: 'unused' }),
    });
    const from = path.join(dir, 'kv.wasm');
    writeFileSync(from, A);
    const r = await store.resolve(from, sha256Of(A));
    assert.equal(r.ok, false);
    assert.match(!r.ok ? r.message : '', /cannot keep module .* ENOTDIR/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
