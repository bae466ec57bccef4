// Tests of openCoordinator's parsing (open.ts): every malformed string is
// 'invalid' with a message naming the problem, before any I/O; file: creates
// its directory; an etcd that does not answer is 'unavailable' in time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { openCoordinator, parseCoordinatorSpec } from './open.js';

test('coordinator strings parse into backends', () => {
  assert.deepEqual(parseCoordinatorSpec('file:/var/lib/x'), {
    ok: true,
    value: { kind: 'file', dir: '/var/lib/x' },
  });
  assert.deepEqual(parseCoordinatorSpec('file:rel/dir'), {
    ok: true,
    value: { kind: 'file', dir: 'rel/dir' },
  });
  assert.deepEqual(parseCoordinatorSpec('etcd:127.0.0.1:2379'), {
    ok: true,
    value: { kind: 'etcd', endpoints: ['127.0.0.1:2379'] },
  });
  assert.deepEqual(parseCoordinatorSpec('etcd:a.example:2379,b-1.example:22379,[::1]:2379,a.example:2379'), {
    ok: true,
    value: { kind: 'etcd', endpoints: ['a.example:2379', 'b-1.example:22379', '[::1]:2379'] },
  });
});

test('malformed coordinator strings are invalid, with a message that names the problem', () => {
  const cases: Array<[unknown, RegExp]> = [
    ['', /no coordinator given/],
    [undefined, /no coordinator given/],
    ['/var/lib/x', /no kind given/],
    ['zookeeper:1.2.3.4:2181', /unknown kind "zookeeper:"/],
    ['file:', /directory is missing/],
    ['etcd:', /empty/],
    ['etcd:host', /expected HOST:PORT/],
    ['etcd:host:', /port "" is not a number/],
    ['etcd:host:0', /port "0"/],
    ['etcd:host:65536', /port "65536"/],
    ['etcd:host:12ab', /port "12ab"/],
    ['etcd:http://host:2379', /without a scheme/],
    ['etcd:host:2379,', /empty \(stray comma\?\)/],
    ['etcd:ho st:2379', /not a host name/],
    ['etcd:-host:2379', /not a host name/],
    ['etcd:::1:2379', /not a host name/],
  ];
  for (const [spec, re] of cases) {
    const r = parseCoordinatorSpec(spec);
    assert.equal(r.ok, false, `${String(spec)} parsed`);
    if (!r.ok) {
      assert.equal(r.error.code, 'invalid', String(spec));
      assert.match(r.error.message, re, String(spec));
    }
  }
});

test('openCoordinator refuses bad strings and bad time limits without touching anything', async () => {
  const r = await openCoordinator('nonsense');
  assert.equal(r.ok ? 'ok' : r.error.code, 'invalid');
  const t = await openCoordinator('file:/nonexistent/never', { opTimeoutMs: -5 });
  assert.equal(t.ok ? 'ok' : t.error.code, 'invalid');
  assert.ok(!existsSync('/nonexistent/never'));
});

test('file: creates its directory and describes itself by the string it was opened from', async (t) => {
  const parent = mkdtempSync(path.join(os.tmpdir(), 'lockstep-open-'));
  t.after(() => rmSync(parent, { recursive: true, force: true }));
  const spec = `file:${path.join(parent, 'x', 'coord')}`;
  const r = await openCoordinator(spec);
  assert.ok(r.ok, r.ok ? '' : r.error.message);
  assert.equal(r.value.description, spec);
  assert.ok(existsSync(path.join(parent, 'x', 'coord', '@format')));
  await r.value.close();
});

test('etcd: an endpoint that never answers is unavailable within the time limit', async (t) => {
  // A listener that accepts connections and never speaks: the worst kind of unreachable (a paused etcd
  // looks the same, since the kernel still accepts). Its sockets are destroyed at the end: gRPC leaves a
  // half-open connection of a closed client to such a listener (unref'd, so it keeps no process alive).
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((s) => sockets.add(s));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const s of sockets) s.destroy();
    silent.close();
  });
  const port = (silent.address() as net.AddressInfo).port;
  for (const spec of [`etcd:127.0.0.1:${port}`, 'etcd:127.0.0.1:1']) {
    const t0 = performance.now();
    const r = await openCoordinator(spec, { opTimeoutMs: 500 });
    const ms = performance.now() - t0;
    assert.equal(r.ok ? 'ok' : r.error.code, 'unavailable', spec);
    assert.ok(ms < 1200, `${spec}: ${ms} ms`);
  }
});
