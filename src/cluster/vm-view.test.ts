import { test } from 'node:test';
import assert from 'node:assert/strict';
import { vmView, type VmRecords } from './vm-view.js';
import type { PeerView } from './reconcile.js';

const records = (over: Partial<VmRecords> = {}): VmRecords => ({
  spec: {
    v: 1,
    name: 'kv',
    wasmPath: '/x/kv.wasm',
    wasmSha256: 'ab',
    listen: '127.0.0.2:6379',
    disk: null,
    env: [],
    args: [],
    memoryMaxMib: 64,
    ft: false,
    desired: 'running',
  },
  placement: { v: 1, generation: 3, primary: 'h1', backup: null },
  status: { v: 1, host: 'h1', generation: 3, state: 'running', message: null, exitCode: null },
  claim: null,
  ...over,
});

test('the fields and states of DESIGN.md §5', () => {
  const v = vmView(records(), null);
  assert.deepEqual(
    {
      name: v.name,
      state: v.state,
      ft: v.ft,
      protection: v.protection,
      primary: v.primary,
      backup: v.backup,
      address: v.address,
      lagMs: v.lagMs,
    },
    {
      name: 'kv',
      state: 'running',
      ft: false,
      protection: 'off',
      primary: 'h1',
      backup: null,
      address: '127.0.0.2:6379',
      lagMs: null,
    },
  );
});

test('a report from another host or an older generation is history, not the current state', () => {
  const old = records({
    status: { v: 1, host: 'h1', generation: 2, state: 'running', message: null, exitCode: null },
  });
  assert.equal(vmView(old, null).state, 'starting');
  const other = records({
    status: { v: 1, host: 'h2', generation: 3, state: 'failed', message: 'x', exitCode: 1 },
  });
  assert.equal(vmView(other, null).state, 'starting');
  assert.equal(
    vmView(records({ spec: { ...records().spec, desired: 'stopped' }, status: null }), null).state,
    'stopped',
  );
});

test('a failure carries its reason and exit code; a primary that is not heard says so', () => {
  const failed = vmView(
    records({
      status: { v: 1, host: 'h1', generation: 3, state: 'failed', message: 'guest trapped', exitCode: null },
    }),
    null,
  );
  assert.equal(failed.state, 'failed');
  assert.equal(failed.reason, 'guest trapped');
  const down = vmView(records(), new Map<string, PeerView>([['h1', 'down']]));
  assert.equal(down.reason, 'host h1 is down');
  const unplaced = vmView(records({ placement: null, status: null }), null);
  assert.equal(unplaced.state, 'starting');
  assert.equal(unplaced.reason, 'waiting for a host');
});

test('FT wished but no backup: unprotected, with a reason; never protected from the desired state alone', () => {
  const v = vmView(records({ spec: { ...records().spec, ft: true } }), null);
  assert.equal(v.protection, 'unprotected');
  assert.equal(v.reason, 'no backup host is attached');
});
