/**
 * Creating a VM on a named host (`vm create --host`) must place it there even
 * when another host reconciles while the request is half written.
 *
 * Two host daemons run in this process on one file coordinator. The host that
 * takes the request has its coordinator wrapped so that its first write of
 * the VM's records is followed by a pause of WINDOW_MS, during which both
 * hosts reconcile several times (fast profile). Written spec-first, the VM
 * would be seen with no placement and placed on h1 (the first host by name),
 * and the request for h2 would be lost; CI once caught exactly that in the
 * fencing test. Written placement-first, a placement with no spec is inert.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import pino from 'pino';
import { HostDaemon } from '../../src/host/daemon.js';
import { HOST_PROFILES } from '../../src/host/timings.js';
import type { Coordinator } from '../../src/coord/coordinator.js';
import { vmPlacementKey, vmSpecKey } from '../../src/coord/records.js';
import { KV, serviceIp, waitUntil } from './cluster-harness.js';
import { tempDir } from './harness.js';

/** Several reconcile ticks of the fast profile. */
const WINDOW_MS = 1500;

test('vm create --host places the VM on that host even if others reconcile mid-request', async (t) => {
  const tmp = tempDir('create-order');
  const hosts: HostDaemon[] = [];
  t.after(async () => {
    for (const h of hosts) await h.shutdown();
    tmp.cleanup();
  });
  const coordinator = `file:${path.join(tmp.dir, 'coord')}`;
  const writes: string[] = [];
  const vmKeys = new Set([vmSpecKey('kv'), vmPlacementKey('kv')]);
  const slowFirstVmWrite = (c: Coordinator): Coordinator => ({
    description: c.description,
    get: (k) => c.get(k),
    list: (p) => c.list(p),
    delete: (k, e) => c.delete(k, e),
    close: () => c.close(),
    async put(key, value, expect) {
      const r = await c.put(key, value, expect);
      if (vmKeys.has(key)) {
        writes.push(key);
        if (writes.length === 1) await new Promise((res) => setTimeout(res, WINDOW_MS));
      }
      return r;
    },
  });
  for (const name of ['h1', 'h2']) {
    const started = await HostDaemon.start({
      name,
      dataDir: path.join(tmp.dir, 'hosts', name),
      coordinator,
      address: null,
      api: { host: '127.0.0.1', port: 0 },
      timings: HOST_PROFILES.fast,
      logger: pino({ level: 'silent' }),
      ...(name === 'h1' ? { wrapCoordinator: slowFirstVmWrite } : {}),
    });
    assert.ok(started.ok, started.ok ? '' : started.error.message);
    hosts.push(started.host);
  }
  const [h1, h2] = hosts as [HostDaemon, HostDaemon];
  await waitUntil(
    'h1 to see h2 up',
    async () => {
      const r = await h1.listHosts();
      return r.ok && r.value.find((h) => h.name === 'h2')?.state === 'up' ? true : undefined;
    },
    30_000,
  );
  const listen = `${serviceIp(70)}:6379`;
  t.diagnostic(`setup: h1 and h2 in one process, fast profile, ${coordinator}; kv at ${listen}`);
  const created = await h1.createVm({ name: 'kv', wasm: KV, listen, host: 'h2' });
  assert.ok(created.ok, created.ok ? '' : created.error.message);
  assert.equal(created.value.primary, 'h2');
  assert.deepEqual(writes, [vmPlacementKey('kv'), vmSpecKey('kv')]);
  const running = await waitUntil(
    'kv to run',
    async () => {
      const r = await h2.getVm('kv');
      return r.ok && r.value.state === 'running' ? r.value : undefined;
    },
    30_000,
  );
  assert.equal(running.primary, 'h2');
  assert.equal(running.generation, 1);
});
