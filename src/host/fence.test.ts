/**
 * Fence agents: parsing `--fence`, and the `vip` agent's refusals (it never
 * claims success for a host it cannot reach). Removing an address for real
 * is covered by test/e2e/ft-partition.test.ts, in network namespaces.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { HostRecord } from '../coord/records.js';
import { describeFence, fenceHost, parseFenceSpec } from './fence.js';
import { bootId } from './proc.js';

function record(over: Partial<HostRecord>): HostRecord {
  return {
    v: 1,
    name: 'h9',
    incarnation: 'abcd',
    pid: 999_999_999,
    pidStartTicks: 1,
    bootId: bootId(),
    api: '127.0.0.1:1',
    peer: '127.0.0.1:2',
    address: null,
    nodeVersion: process.version,
    arch: process.arch,
    state: 'up',
    startedAtMs: 0,
    ...over,
  };
}

test('parseFenceSpec: local, vip and command:/ABSOLUTE; anything else is a message', () => {
  assert.deepEqual(parseFenceSpec('local'), { agent: 'local' });
  assert.deepEqual(parseFenceSpec('vip'), { agent: 'vip' });
  assert.deepEqual(parseFenceSpec('command:/usr/local/bin/stonith'), {
    agent: 'command',
    command: '/usr/local/bin/stonith',
  });
  assert.match(parseFenceSpec('command:stonith') as string, /absolute path/);
  assert.match(parseFenceSpec('ipmi') as string, /expected local, vip or command/);
  assert.equal(describeFence({ agent: 'vip' }), 'vip');
  assert.equal(describeFence({ agent: 'command', command: '/x' }), 'command:/x');
});

test('the vip agent refuses a host without --vip-interface, and a host on another machine', async () => {
  const none = await fenceHost(record({ fence: { agent: 'vip' } }), 1000, { serviceIps: ['10.9.9.9'] });
  assert.ok(!none.ok && /registered no --vip-interface/.test(none.message));
  const far = await fenceHost(
    record({ fence: { agent: 'vip' }, vip: { iface: 'eth0', netns: null }, bootId: 'another-machine' }),
    1000,
    { serviceIps: ['10.9.9.9'] },
  );
  assert.ok(!far.ok && /another machine/.test(far.message), JSON.stringify(far));
  // An address that is not there counts as removed: a retried takeover never fails on its own earlier half.
  const absent = await fenceHost(
    record({ fence: { agent: 'vip' }, vip: { iface: 'lo', netns: null } }),
    5000,
    {
      serviceIps: ['10.255.254.253'],
    },
  );
  assert.ok(absent.ok, JSON.stringify(absent));
});
