import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseHost, decide, type ReconcileInput, type PeerView } from './reconcile.js';
import type { VmSpec } from '../coord/records.js';

const spec = (over: Partial<VmSpec> = {}): VmSpec => ({
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
  ...over,
});

function input(over: Partial<ReconcileInput>): ReconcileInput {
  return {
    self: 'h1',
    spec: spec(),
    placement: null,
    claim: null,
    hosts: new Map<string, PeerView>([
      ['h1', 'up'],
      ['h2', 'up'],
      ['h3', 'up'],
    ]),
    loads: new Map(),
    local: null,
    claimExpiryMarginMs: 1000,
    ...over,
  };
}

const placed = (primary: string | null, generation = 1, version = 'v1') => ({
  value: { v: 1 as const, generation, primary, backup: null },
  version,
});

test('chooseHost: fewest VMs among up hosts, then by name; never a down or excluded host', () => {
  const hosts = new Map<string, PeerView>([
    ['h3', 'up'],
    ['h1', 'down'],
    ['h2', 'up'],
    ['h4', 'suspect'],
  ]);
  assert.equal(chooseHost(hosts, new Map(), null), 'h2');
  assert.equal(chooseHost(hosts, new Map([['h2', 2]]), null), 'h3');
  assert.equal(chooseHost(hosts, new Map(), 'h2'), 'h3');
  assert.equal(chooseHost(new Map([['h1', 'down']]), new Map(), null), null);
});

test('an unplaced VM is placed by the chosen host only, by test-and-set from absent', () => {
  assert.deepEqual(decide(input({})), [
    {
      type: 'place',
      expectVersion: null,
      placement: { v: 1, generation: 1, primary: 'h1', backup: null },
      fence: null,
    },
  ]);
  assert.deepEqual(decide(input({ self: 'h2' })), []);
  assert.deepEqual(decide(input({ hosts: new Map<string, PeerView>([['h1', 'down']]) })), [
    { type: 'wait', reason: 'no host is up to run it' },
  ]);
});

test('the primary starts its VM at the placed generation, once', () => {
  assert.deepEqual(decide(input({ placement: placed('h1', 3) })), [{ type: 'start', generation: 3 }]);
  assert.deepEqual(
    decide(input({ placement: placed('h1', 3), local: { generation: 3, state: 'running' } })),
    [],
  );
  // A copy that failed at this generation stays failed until someone starts it again.
  assert.deepEqual(
    decide(input({ placement: placed('h1', 3), local: { generation: 3, state: 'failed' } })),
    [],
  );
  // An older local copy that stopped does not block a new generation.
  assert.deepEqual(
    decide(input({ placement: placed('h1', 4), local: { generation: 3, state: 'stopped' } })),
    [{ type: 'start', generation: 4 }],
  );
});

test('a local copy that lost its generation stops and drops its held outputs', () => {
  for (const placement of [placed('h2', 4), placed('h1', 5), null]) {
    assert.deepEqual(decide(input({ placement, local: { generation: 4, state: 'running' } })), [
      { type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' },
    ]);
  }
});

test('desired stopped stops the local copy without dropping outputs', () => {
  assert.deepEqual(
    decide(
      input({
        spec: spec({ desired: 'stopped' }),
        placement: placed('h1'),
        local: { generation: 1, state: 'running' },
      }),
    ),
    [{ type: 'stop', discardOutputs: false, reason: 'stopped by request' }],
  );
  assert.deepEqual(decide(input({ spec: spec({ desired: 'stopped' }), placement: placed('h2') })), []);
});

test('a removed VM is cleaned locally', () => {
  assert.deepEqual(decide(input({ spec: null, local: { generation: 1, state: 'running' } })), [
    { type: 'remove-local' },
  ]);
  assert.deepEqual(decide(input({ spec: null })), []);
});

test('no takeover while the primary is up or only suspected', () => {
  for (const view of ['up', 'suspect'] as const) {
    const hosts = new Map<string, PeerView>([
      ['h1', 'up'],
      ['h2', view],
    ]);
    assert.deepEqual(decide(input({ placement: placed('h2'), hosts })), []);
  }
});

test('takeover waits for the claim to expire beyond its TTL and margin, then fences the old host', () => {
  const hosts = new Map<string, PeerView>([
    ['h1', 'up'],
    ['h2', 'down'],
    ['h3', 'up'],
  ]);
  const claim = (unchangedMs: number) => ({ holder: 'h2', generation: 1, unchangedMs, ttlMs: 5000 });
  assert.deepEqual(decide(input({ placement: placed('h2'), hosts, claim: claim(5900) })), [
    { type: 'wait', reason: "waiting for h2's claim to expire" },
  ]);
  assert.deepEqual(decide(input({ placement: placed('h2', 1, 'v7'), hosts, claim: claim(6001) })), [
    {
      type: 'place',
      expectVersion: 'v7',
      placement: { v: 1, generation: 2, primary: 'h1', backup: null },
      fence: 'h2',
    },
  ]);
  // Only the chosen host proposes; another would propose the same and lose the test-and-set anyway.
  assert.deepEqual(decide(input({ self: 'h3', placement: placed('h2'), hosts, claim: claim(6001) })), []);
});

test('a host that left cleanly is taken over without waiting for its claim, still with a fence', () => {
  const hosts = new Map<string, PeerView>([
    ['h1', 'up'],
    ['h2', 'left'],
  ]);
  const claim = { holder: 'h2', generation: 1, unchangedMs: 0, ttlMs: 5000 };
  const a = decide(input({ placement: placed('h2'), hosts, claim }));
  assert.equal(a.length, 1);
  assert.equal(a[0]!.type, 'place');
  assert.equal(a[0]!.type === 'place' && a[0]!.fence, 'h2');
});

// ---- FT pairs ----

const ftSpec = spec({ ft: true });
const ftPlaced = (primary: string | null, backup: string | null, generation = 1, version = 'v1') => ({
  value: { v: 1 as const, generation, primary, backup },
  version,
});

test('FT: the first placement names the primary; the backup comes once the primary runs', () => {
  assert.deepEqual(decide(input({ spec: ftSpec })), [
    {
      type: 'place',
      expectVersion: null,
      placement: { v: 1, generation: 1, primary: 'h1', backup: null },
      fence: null,
    },
  ]);
});

test('FT: the primary starts as primary, the backup as backup, both at the placed generation', () => {
  const placement = ftPlaced('h1', 'h2', 3);
  assert.deepEqual(decide(input({ spec: ftSpec, placement: ftPlaced('h1', null, 3) })), [
    { type: 'start', generation: 3, role: 'primary' },
  ]);
  assert.deepEqual(decide(input({ self: 'h2', spec: ftSpec, placement })), [
    { type: 'start', generation: 3, role: 'backup' },
  ]);
  assert.deepEqual(decide(input({ self: 'h3', spec: ftSpec, placement })), []);
});

test('FT: a primary without a backup places one, keeping the generation', () => {
  const placement = ftPlaced('h1', null, 4);
  const local = { generation: 4, state: 'running' as const, role: 'primary' as const };
  assert.deepEqual(decide(input({ spec: ftSpec, placement, local })), [
    {
      type: 'place',
      expectVersion: 'v1',
      placement: { v: 1, generation: 4, primary: 'h1', backup: 'h2' },
      fence: null,
    },
  ]);
});

test('FT: a member just dropped is not named backup again while it is avoided', () => {
  const placement = ftPlaced('h1', null, 4);
  const local = { generation: 4, state: 'running' as const, role: 'primary' as const };
  // h2 was the primary this host took over from: its detector may still think it is up.
  assert.deepEqual(decide(input({ spec: ftSpec, placement, local, avoidAsBackup: new Set(['h2']) })), [
    {
      type: 'place',
      expectVersion: 'v1',
      placement: { v: 1, generation: 4, primary: 'h1', backup: 'h3' },
      fence: null,
    },
  ]);
  assert.deepEqual(decide(input({ spec: ftSpec, placement, local, avoidAsBackup: new Set(['h2', 'h3']) })), [
    { type: 'wait', reason: 'no other host is up to hold a backup' },
  ]);
});

test('FT: a backup whose primary is gone wins N+1 and fences it, without waiting for its claim', () => {
  const placement = ftPlaced('h1', 'h2', 5);
  const hosts = new Map<string, PeerView>([
    ['h1', 'down'],
    ['h2', 'up'],
    ['h3', 'up'],
  ]);
  const local = { generation: 5, state: 'running' as const, role: 'backup' as const };
  const claim = { holder: 'h1', generation: 5, unchangedMs: 10, ttlMs: 5000 };
  assert.deepEqual(
    decide(input({ self: 'h2', spec: ftSpec, placement, hosts, local, claim, ftBackupCaughtUp: true })),
    [
      {
        type: 'place',
        expectVersion: 'v1',
        placement: { v: 1, generation: 6, primary: 'h2', backup: null },
        fence: 'h1',
      },
    ],
  );
  // Nobody else moves while the backup lives.
  assert.deepEqual(decide(input({ self: 'h3', spec: ftSpec, placement, hosts, claim })), []);
  // Having won, the backup goes live (it is not restarted).
  assert.deepEqual(
    decide(
      input({
        self: 'h2',
        spec: ftSpec,
        placement: ftPlaced('h2', null, 6),
        hosts,
        local,
        ftBackupCaughtUp: true,
      }),
    ),
    [{ type: 'promote', generation: 6 }],
  );
});

test('FT: a lost channel makes both members race for N+1; only the backup fences, and only a gone host', () => {
  const placement = ftPlaced('h1', 'h2', 5);
  const backupLocal = { generation: 5, state: 'running' as const, role: 'backup' as const };
  const primaryLocal = { generation: 5, state: 'running' as const, role: 'primary' as const };
  assert.deepEqual(
    decide(
      input({
        self: 'h2',
        spec: ftSpec,
        placement,
        local: backupLocal,
        ftPrimaryLost: true,
        ftBackupCaughtUp: true,
      }),
    ),
    [
      {
        type: 'place',
        expectVersion: 'v1',
        placement: { v: 1, generation: 6, primary: 'h2', backup: null },
        fence: null,
      },
    ],
  );
  assert.deepEqual(decide(input({ spec: ftSpec, placement, local: primaryLocal, ftBackupLost: true })), [
    {
      type: 'place',
      expectVersion: 'v1',
      placement: { v: 1, generation: 6, primary: 'h1', backup: null },
      fence: null,
    },
  ]);
  // The primary that won runs on alone; the one that lost stops and drops what it held.
  assert.deepEqual(decide(input({ spec: ftSpec, placement: ftPlaced('h1', null, 6), local: primaryLocal })), [
    { type: 'adopt', generation: 6 },
  ]);
  assert.deepEqual(decide(input({ spec: ftSpec, placement: ftPlaced('h2', null, 6), local: primaryLocal })), [
    { type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' },
  ]);
  assert.deepEqual(
    decide(input({ self: 'h2', spec: ftSpec, placement: ftPlaced('h1', null, 6), local: backupLocal })),
    [{ type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' }],
  );
});

test('FT: a primary host that restarted does not start the VM afresh while its backup holds the state', () => {
  const placement = ftPlaced('h1', 'h2', 5);
  assert.deepEqual(decide(input({ spec: ftSpec, placement })), [
    { type: 'wait', reason: "its backup h2 holds the VM's state and takes over" },
  ]);
  // With the backup gone too, it restarts from its disk, as an unprotected VM would.
  const hosts = new Map<string, PeerView>([
    ['h1', 'up'],
    ['h2', 'down'],
    ['h3', 'up'],
  ]);
  assert.deepEqual(decide(input({ spec: ftSpec, placement, hosts })), [
    { type: 'start', generation: 5, role: 'primary' },
  ]);
  // A backup that is up but never took over holds no replica (its host restarted too): the wait ends.
  assert.deepEqual(decide(input({ spec: ftSpec, placement, ftBackupTakeoverOverdue: true })), [
    { type: 'start', generation: 5, role: 'primary' },
  ]);
});

test('FT: a backup that had not caught up never goes live; with its primary gone the VM restarts as if both were lost', () => {
  const placement = ftPlaced('h1', 'h2', 5);
  const hosts = new Map<string, PeerView>([
    ['h1', 'down'],
    ['h2', 'up'],
    ['h3', 'up'],
  ]);
  const local = { generation: 5, state: 'running' as const, role: 'backup' as const };
  // Not caught up: no N+1 for it; the HA path (claim expiry, fence) decides instead.
  const claim = { holder: 'h1', generation: 5, unchangedMs: 10, ttlMs: 5000 };
  assert.deepEqual(decide(input({ self: 'h2', spec: ftSpec, placement, hosts, local, claim })), [
    { type: 'wait', reason: "waiting for h1's claim to expire" },
  ]);
  // Named primary (by a test failover, say) while still syncing: it stops rather than go live.
  assert.deepEqual(decide(input({ self: 'h2', spec: ftSpec, placement: ftPlaced('h2', null, 6), local })), [
    { type: 'stop', discardOutputs: true, reason: 'a backup that had not caught up cannot go live' },
  ]);
});

const pair = (primary: string, backup: string | null, generation = 3, version = 'v7') => ({
  value: { v: 1 as const, generation, primary, backup },
  version,
});

test('FT off: the primary drops its backup from the placement by test-and-set, keeping the generation', () => {
  const running = { generation: 3, state: 'running' as const, role: 'primary' as const };
  assert.deepEqual(
    decide(input({ spec: spec({ ft: false }), placement: pair('h1', 'h2'), local: running })),
    [
      {
        type: 'place',
        expectVersion: 'v7',
        placement: { v: 1, generation: 3, primary: 'h1', backup: null },
        fence: null,
      },
    ],
  );
  // Once dropped, nothing more (the daemon lets outputs go without waiting).
  assert.deepEqual(
    decide(input({ spec: spec({ ft: false }), placement: pair('h1', null), local: running })),
    [],
  );
  // The backup's copy stops as soon as the placement no longer names it; its outputs never leave.
  const backupCopy = { generation: 3, state: 'running' as const, role: 'backup' as const };
  assert.deepEqual(
    decide(input({ self: 'h2', spec: spec({ ft: false }), placement: pair('h1', null), local: backupCopy })),
    [{ type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' }],
  );
  // Until then, it is still a backup like any other (it could take over if the primary died).
  assert.deepEqual(
    decide(input({ self: 'h2', spec: spec({ ft: false }), placement: pair('h1', 'h2'), local: backupCopy })),
    [],
  );
});

test('migration: the target becomes the backup (replacing another), and the primary hands over once protected', () => {
  const running = { generation: 3, state: 'running' as const, role: 'primary' as const };
  for (const ft of [false, true]) {
    const s = spec({ ft, migrate: { to: 'h3', generation: 3 } });
    // Not the target yet: it is named backup in place of any other, at the same generation.
    for (const backup of [null, 'h2'])
      assert.deepEqual(decide(input({ spec: s, placement: pair('h1', backup), local: running })), [
        {
          type: 'place',
          expectVersion: 'v7',
          placement: { v: 1, generation: 3, primary: 'h1', backup: 'h3' },
          fence: null,
        },
      ]);
    // The target holds the backup but is not protected yet: wait.
    assert.deepEqual(decide(input({ spec: s, placement: pair('h1', 'h3'), local: running })), []);
    // Protected: generation N+1 names the target primary, like a test failover.
    assert.deepEqual(
      decide(input({ spec: s, placement: pair('h1', 'h3'), local: running, ftProtected: true })),
      [
        {
          type: 'place',
          expectVersion: 'v7',
          placement: { v: 1, generation: 4, primary: 'h3', backup: null },
          fence: null,
        },
      ],
    );
    // On the target, the backup copy starts, and after the handover it goes live.
    assert.deepEqual(decide(input({ self: 'h3', spec: s, placement: pair('h1', 'h3') })), [
      { type: 'start', generation: 3, role: 'backup' },
    ]);
    const backupCopy = { generation: 3, state: 'running' as const, role: 'backup' as const };
    assert.deepEqual(
      decide(
        input({
          self: 'h3',
          spec: s,
          placement: pair('h3', null, 4),
          local: backupCopy,
          ftBackupCaughtUp: true,
        }),
      ),
      [{ type: 'promote', generation: 4 }],
    );
    // The old primary sees it lost its place.
    assert.deepEqual(decide(input({ spec: s, placement: pair('h3', null, 4), local: running })), [
      { type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' },
    ]);
  }
  // A migration asked at another generation (a failover came in between) is over.
  const stale = spec({ migrate: { to: 'h3', generation: 2 } });
  assert.deepEqual(decide(input({ spec: stale, placement: pair('h1', null), local: running })), []);
  // A target that is not up: the migration waits, saying why.
  const down = new Map<string, PeerView>([
    ['h1', 'up'],
    ['h2', 'up'],
    ['h3', 'down'],
  ]);
  const s = spec({ migrate: { to: 'h3', generation: 3 } });
  assert.deepEqual(decide(input({ spec: s, hosts: down, placement: pair('h1', null), local: running })), [
    { type: 'wait', reason: 'migration target h3 is not up' },
  ]);
});
