/**
 * The cluster end to end: real `lockstep host start` processes sharing a
 * `file:` coordinator, driven by the real CLI and by redis-cli against the
 * example KV server.
 *
 * Setup to reproduce by hand: `lockstep cluster up --hosts 3 --data DIR`, then
 * `LOCKSTEP_COORDINATOR=file:DIR/coord lockstep vm create kv --wasm
 * examples/kv/kv.wasm --listen 127.0.0.2:6379 --disk SOMEDIR`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import dgram from 'node:dgram';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BIN, CACHE_DIR, runCollected, tempDir } from './harness.js';
import { KV, redis, serviceIp, startCluster, waitUntil, type LocalCluster } from './cluster-harness.js';
import type { VmStatus, HostStatus } from '../../src/api/backend.js';
import { encodeFrame, FrameKind } from '../../src/cluster/frame.js';
import { openCoordinator } from '../../src/coord/open.js';
import { KEY_CLUSTER, hostKey, type ClusterRecord, type HostRecord } from '../../src/coord/records.js';

async function api(
  c: LocalCluster,
  hostIndex: number,
  method: string,
  p: string,
  opts: { token?: string | null; body?: string; contentType?: string } = {},
): Promise<{ status: number; json: unknown }> {
  const token = opts.token === undefined ? (await c.cli(['cluster', 'token'])).stdout.trim() : opts.token;
  const headers: Record<string, string> = {};
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (opts.body !== undefined) headers['content-type'] = opts.contentType ?? 'application/json';
  const r = await fetch(`http://${c.hosts[hostIndex]!.api}${p}`, {
    method,
    headers,
    ...(opts.body !== undefined ? { body: opts.body } : {}),
    signal: AbortSignal.timeout(5000),
  });
  const text = await r.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON: keep the text.
  }
  return { status: r.status, json };
}

test(
  'a 3-host cluster: create, show, stop, start and remove VMs; logs; health',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 3, prefix: 'cl3' });
    t.after(() => c.close());
    for (const h of c.hosts) {
      assert.ok(h.pid > 0);
      assert.match(h.api, /^127\.0\.0\.1:\d+$/);
    }
    assert.deepEqual(await c.cliJson(['vm', 'ls']), []);

    const ip = serviceIp(10);
    const disk = path.join(c.dir, 'image');
    mkdirSync(disk);
    const created = await c.cliJson<VmStatus>([
      'vm',
      'create',
      'kv',
      '--wasm',
      KV,
      '--listen',
      `${ip}:6379`,
      '--disk',
      disk,
      '--env',
      'KV_FSYNC=always',
    ]);
    for (const k of ['name', 'state', 'ft', 'protection', 'primary', 'backup', 'address', 'lagMs'])
      assert.ok(k in created, `vm create --json has ${k}`);
    assert.equal(created.name, 'kv');
    assert.equal(created.state, 'running');
    assert.equal(created.ft, false);
    assert.equal(created.protection, 'off');
    assert.equal(created.backup, null);
    assert.equal(created.address, `${ip}:6379`);
    assert.equal(created.lagMs, null);
    const primary = created.primary!;
    assert.ok(['h1', 'h2', 'h3'].includes(primary));
    assert.equal(await redis(ip, 6379, 'SET', 'greeting', 'hello'), 'OK');
    assert.equal(await redis(ip, 6379, 'GET', 'greeting'), 'hello');

    // The health endpoint answers 200 only on the host that runs the VM, with no token.
    for (let i = 0; i < 3; i++) {
      const r = await api(c, i, 'GET', '/health/vms/kv/primary', { token: null });
      assert.equal(r.status, c.hosts[i]!.name === primary ? 200 : 503, `host ${c.hosts[i]!.name}`);
    }

    const shown = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
    assert.equal(shown.primary, primary);
    const listed = await c.cliJson<VmStatus[]>(['vm', 'ls']);
    assert.deepEqual(
      listed.map((v) => [v.name, v.state]),
      [['kv', 'running']],
    );
    const table = await c.cli(['vm', 'ls']);
    assert.match(table.stdout, /NAME\s+STATE\s+PROTECTION/);

    // The guest's stdio goes to its console log, readable from any host.
    const logs = await c.cli(['vm', 'logs', 'kv']);
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stdout, /--- lockstep: kv generation 1 starting/);

    // Refusals: same name, same address, FT (not yet), a bad name, an unreadable module.
    const dup = await c.cli(['vm', 'create', 'kv', '--wasm', KV, '--listen', `${ip}:6380`]);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already exists/);
    const sameAddr = await c.cli(['vm', 'create', 'kv2', '--wasm', KV, '--listen', `${ip}:6379`]);
    assert.equal(sameAddr.code, 1);
    assert.match(sameAddr.stderr, /already the address of VM kv/);
    const badName = await c.cli(['vm', 'create', 'Bad Name', '--wasm', KV, '--listen', `${ip}:6381`]);
    assert.equal(badName.code, 1);
    const noWasm = await c.cli([
      'vm',
      'create',
      'kv3',
      '--wasm',
      '/nonexistent.wasm',
      '--listen',
      `${ip}:6381`,
    ]);
    assert.equal(noWasm.code, 1);
    assert.match(noWasm.stderr, /cannot read/);

    // Stop and start: the VM comes back on the same host with its disk.
    const stopped = await c.cliJson<VmStatus>(['vm', 'stop', 'kv']);
    assert.equal(stopped.state, 'stopped');
    assert.match(await redis(ip, 6379, 'PING'), /error/);
    const started = await c.cliJson<VmStatus>(['vm', 'start', 'kv']);
    assert.equal(started.state, 'running');
    assert.equal(started.primary, primary);
    assert.equal(await redis(ip, 6379, 'GET', 'greeting'), 'hello');

    // A second VM goes to another host (the least loaded).
    const ip2 = serviceIp(11);
    const second = await c.cliJson<VmStatus>([
      'vm',
      'create',
      'kv2',
      '--wasm',
      KV,
      '--listen',
      `${ip2}:6379`,
      '--disk',
      disk,
    ]);
    assert.notEqual(second.primary, primary);
    assert.equal(await redis(ip2, 6379, 'PING'), 'PONG');

    // Removal stops it and deletes its local data.
    const rm = await c.cliJson<{ removed: string }>(['vm', 'rm', 'kv']);
    assert.equal(rm.removed, 'kv');
    const hostDir = path.join(c.dir, 'hosts', primary, 'vms', 'kv');
    await waitUntil(
      'kv to stop and its data to go',
      async () => (!existsSync(hostDir) ? true : undefined),
      20_000,
    );
    assert.match(await redis(ip, 6379, 'PING'), /error/);
    assert.deepEqual(
      (await c.cliJson<VmStatus[]>(['vm', 'ls'])).map((v) => v.name),
      ['kv2'],
    );
    const gone = await c.cli(['vm', 'show', 'kv']);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /no VM named kv/);
  },
);

test('the host API: bearer token, bad bodies, open health endpoints', { timeout: 120_000 }, async (t) => {
  const c = await startCluster({ hosts: 1, prefix: 'clapi' });
  t.after(() => c.close());
  assert.equal((await api(c, 0, 'GET', '/health', { token: null })).status, 200);
  assert.equal((await api(c, 0, 'GET', '/v1/vms', { token: null })).status, 401);
  assert.equal((await api(c, 0, 'GET', '/v1/vms', { token: 'ab'.repeat(32) })).status, 401);
  const ok = await api(c, 0, 'GET', '/v1/vms');
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json, []);
  const malformed = await api(c, 0, 'POST', '/v1/vms', { body: '{"name": ' });
  assert.equal(malformed.status, 400);
  const unknownField = await api(c, 0, 'POST', '/v1/vms', {
    body: JSON.stringify({ name: 'a', wasm: KV, listen: '127.0.0.1:1', color: 'red' }),
  });
  assert.equal(unknownField.status, 400);
  const missing = await api(c, 0, 'POST', '/v1/vms', { body: JSON.stringify({ name: 'a' }) });
  assert.equal(missing.status, 400);
  assert.equal((await api(c, 0, 'GET', '/v1/vms/nope')).status, 404);
  // A token from the environment works as well as one from the coordinator; a wrong one is refused.
  const token = (await c.cli(['cluster', 'token'])).stdout.trim();
  assert.match(token, /^[0-9a-f]{64}$/);
  const wrong = await c.cli(['vm', 'ls', '--json'], 30_000, { LOCKSTEP_TOKEN: 'ab'.repeat(32) });
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /unauthori[sz]ed|token/i);
});

test(
  'hosts join and leave; a host without the secret, forged, replayed and garbage frames are refused',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 2, prefix: 'clmem' });
    t.after(() => c.close());
    const hostsOf = async (i: number): Promise<HostStatus[]> => {
      const r = await api(c, i, 'GET', '/v1/hosts');
      assert.equal(r.status, 200);
      return r.json as HostStatus[];
    };
    const h3 = await c.addHost('h3');
    await waitUntil(
      'h1 to hear h3',
      async () =>
        (await hostsOf(0)).find((h) => h.name === 'h3' && h.state === 'up' && h.heartbeatRttMs !== null)
          ? true
          : undefined,
      20_000,
    );
    await h3.stop('SIGTERM');
    await waitUntil(
      'h1 to see h3 leave',
      async () => ((await hostsOf(0)).find((h) => h.name === 'h3')?.state === 'left' ? true : undefined),
      20_000,
    );

    // A host that does not know the secret: its heartbeats are rejected and it is never up.
    const rogue = await c.addHost('rogue', ['--cluster-secret-override', 'cd'.repeat(32)]);
    await waitUntil(
      'h1 to count rogue as down',
      async () => ((await hostsOf(0)).find((h) => h.name === 'rogue')?.state === 'down' ? true : undefined),
      30_000,
    );
    await waitUntil(
      'h1 to log the bad MAC',
      async () => (/rejected a frame[^\n]*mac/.test(c.hosts[0]!.log()) ? true : undefined),
      10_000,
    );
    assert.match(rogue.log(), /rejected a frame[^\n]*mac/);
    await rogue.stop();

    // Frames sent by hand to h1's heartbeat port. The test registers a probe host in the
    // coordinator (it may: access to the coordinator is the trust boundary), so that it can send
    // genuine frames and then replay them.
    const opened = await openCoordinator(c.coordinator);
    assert.ok(opened.ok);
    const coord = opened.value;
    t.after(() => coord.close());
    const cluster = (await coord.get<ClusterRecord>(KEY_CLUSTER)) as {
      ok: true;
      value: { value: ClusterRecord };
    };
    const h1 = (await coord.get<HostRecord>(hostKey('h1'))) as { ok: true; value: { value: HostRecord } };
    const h2 = (await coord.get<HostRecord>(hostKey('h2'))) as { ok: true; value: { value: HostRecord } };
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    t.after(() => sock.close());
    const probeIncarnation = 'feedfacecafe0001';
    const probe: HostRecord = {
      ...h2.value.value,
      name: 'probe',
      incarnation: probeIncarnation,
      pid: 1,
      peer: `127.0.0.1:${sock.address().port}`,
      api: '127.0.0.1:9',
    };
    assert.ok((await coord.put(hostKey('probe'), probe, 'absent')).ok);
    const [peerHost, peerPort] = [
      h1.value.value.peer.split(':')[0]!,
      Number(h1.value.value.peer.split(':')[1]),
    ];
    const send = (b: Buffer): Promise<void> =>
      new Promise((r) => sock.send(b, peerPort, peerHost, () => r()));
    const frame = (key: Buffer, from: string, incarnation: string, seq: number): Buffer =>
      encodeFrame(
        {
          kind: FrameKind.HEARTBEAT,
          clusterId: cluster.value.value.clusterId,
          from,
          fromIncarnation: incarnation,
          to: 'h1',
          channel: 0,
          seq,
          payload: Buffer.alloc(16),
        },
        key,
      );
    const secret = Buffer.from(cluster.value.value.secretHex, 'hex');
    // Once h1 knows the probe, a genuine frame is accepted: the probe shows up.
    const genuine = frame(secret, 'probe', probeIncarnation, 5);
    // The probe heartbeats on its own timer, so a slow API answer under load never leaves a gap
    // long enough for h1 to suspect it.
    let probeSeq = 1000;
    const beat = setInterval(() => void send(frame(secret, 'probe', probeIncarnation, probeSeq++)), 100);
    try {
      await waitUntil(
        'h1 to accept the probe',
        async () => ((await hostsOf(0)).find((h) => h.name === 'probe')?.state === 'up' ? true : undefined),
        20_000,
      );
    } finally {
      clearInterval(beat);
    }
    await send(genuine); // behind the window of what the probe sent since: a replay
    await send(genuine);
    await send(Buffer.from('garbage that is not a frame at all'));
    await send(frame(Buffer.alloc(32, 7), 'h2', h2.value.value.incarnation, 1e9)); // a forgery
    await send(frame(secret, 'probe', '0123456789abcdef', 5)); // an incarnation that is not registered
    await waitUntil(
      'h1 to log every rejection',
      async () => {
        const log = c.hosts[0]!.log();
        const from = `127.0.0.1:${sock.address().port}`;
        return ['replay', 'magic', 'mac', 'stale-incarnation'].every((r) =>
          log.split('\n').some((l) => l.includes(`rejected a frame from ${from}`) && l.includes(`: ${r}"`)),
        )
          ? true
          : undefined;
      },
      10_000,
    );
    assert.ok((await coord.delete(hostKey('probe'), 'any')).ok);
    // h2 stays up throughout: the replayed frame did not disturb the real stream.
    assert.equal((await hostsOf(0)).find((h) => h.name === 'h2')?.state, 'up');
  },
);

test(
  'kill -9 of a VM host: the VM restarts on another host after fencing (fast profile)',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'clha' });
    t.after(() => c.close());
    const ip = serviceIp(20);
    const vm = await c.createKv({ ip, host: 'h1' });
    assert.equal(vm.primary, 'h1');
    assert.equal(vm.generation, 1);
    assert.equal(await redis(ip, 6379, 'PING'), 'PONG');
    const killed = await c.cliJson<{ killed: boolean; pid: number }>(['host', 'kill', 'h1']);
    assert.equal(killed.killed, true);
    assert.equal(killed.pid, c.hosts[0]!.pid);
    const moved = await waitUntil(
      'kv to run on another host',
      async () => {
        const s = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
        return s.state === 'running' && s.primary !== 'h1' ? s : undefined;
      },
      60_000,
    );
    assert.equal(moved.generation, 2);
    assert.equal(await redis(ip, 6379, 'PING'), 'PONG');
    const newHost = c.hosts.find((h) => h.name === moved.primary)!;
    assert.match(newHost.log(), /fenced h1/);
    // The CLI still works while a registered host is dead.
    assert.equal((await c.cliJson<VmStatus[]>(['vm', 'ls'])).length, 1);
  },
);

test(
  'a 1 s SIGSTOP of the VM host under load causes no failover (default profile)',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 3, prefix: 'clstop' });
    t.after(() => c.close());
    const ip = serviceIp(30);
    const vm = await c.createKv({ ip, host: 'h2' });
    const h2 = c.hosts[1]!;
    // Load on the VM and on the machine while the host is paused, three times.
    const load = runCollected(
      'redis-benchmark',
      ['-h', ip, '-p', '6379', '-n', '40000', '-c', '20', '-t', 'set,get', '-q'],
      {
        timeoutMs: 60_000,
      },
    );
    for (let i = 0; i < 3; i++) {
      process.kill(h2.pid, 'SIGSTOP');
      await new Promise((r) => setTimeout(r, 1000));
      process.kill(h2.pid, 'SIGCONT');
      await new Promise((r) => setTimeout(r, 1500));
    }
    await load;
    // Longer than detection plus the claim's expiry: a takeover would have happened by now.
    await new Promise((r) => setTimeout(r, 8000));
    const after = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
    assert.equal(after.primary, 'h2');
    assert.equal(after.generation, vm.generation);
    assert.equal(after.state, 'running');
    for (const h of c.hosts) assert.doesNotMatch(h.log(), /peer h2 is down/, `${h.name} declared h2 down`);
    assert.equal(await redis(ip, 6379, 'PING'), 'PONG');
  },
);

test(
  'cluster up: a supervised local cluster; the CLI works while every host is dead; Ctrl-C stops all',
  { timeout: 180_000 },
  async (t) => {
    const tmp = tempDir('clup');
    const up = spawn(process.execPath, [BIN, 'cluster', 'up', '--hosts', '2', '--data', tmp.dir], {
      env: { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    up.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((r) => up.on('close', (code) => r(code)));
    t.after(async () => {
      up.kill('SIGKILL');
      tmp.cleanup();
    });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: up.stdout }).once('line', resolve);
      void exited.then((code) => reject(new Error(`cluster up exited ${code}:\n${err}`)));
    });
    const ready = JSON.parse(line) as {
      coordinator: string;
      hosts: { name: string; pid: number; api: string }[];
    };
    assert.equal(ready.coordinator, `file:${path.join(tmp.dir, 'coord')}`);
    assert.deepEqual(
      ready.hosts.map((h) => h.name),
      ['h1', 'h2'],
    );
    assert.match(err, /host h1 pid \d+, API http:\/\/127\.0\.0\.1:\d+/);
    const env = { ...process.env, LOCKSTEP_CACHE_DIR: CACHE_DIR, LOCKSTEP_COORDINATOR: ready.coordinator };
    const cli = (...args: string[]) =>
      runCollected(process.execPath, [BIN, ...args], { timeoutMs: 60_000, env });
    const disk = path.join(tmp.dir, 'image');
    mkdirSync(disk);
    const ip = serviceIp(50);
    const created = await cli(
      'vm',
      'create',
      'kv',
      '--wasm',
      KV,
      '--listen',
      `${ip}:6379`,
      '--disk',
      disk,
      '--json',
    );
    assert.equal(created.code, 0, created.stderr);
    // Every host dies: the supervisor reports it, and the CLI answers from the coordinator.
    for (const h of ready.hosts) assert.equal((await cli('host', 'kill', h.name)).code, 0);
    await waitUntil(
      'cluster up to report both deaths',
      async () => ((err.match(/exited: SIGKILL/g) ?? []).length === 2 ? true : undefined),
      20_000,
    );
    const ls = await cli('vm', 'ls', '--json');
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stderr, /no host answers; reading the coordinator/);
    assert.deepEqual(
      (JSON.parse(ls.stdout) as VmStatus[]).map((v) => v.name),
      ['kv'],
    );
    // A host killed twice is already gone: host kill says so and never touches another process.
    const again = await cli('host', 'kill', 'h1', '--json');
    assert.equal(again.code, 0, again.stderr);
    assert.equal((JSON.parse(again.stdout) as { killed: boolean }).killed, false);
    up.kill('SIGINT');
    assert.equal(await exited, 0, err);
    for (const h of ready.hosts) assert.throws(() => process.kill(h.pid, 0));
  },
);

test('every cluster command has --help', { timeout: 60_000 }, async () => {
  for (const cmd of [
    ['host', 'start'],
    ['host', 'kill'],
    ['cluster', 'up'],
    ['cluster', 'token'],
    ['vm', 'create'],
    ['vm', 'ls'],
    ['vm', 'show'],
    ['vm', 'start'],
    ['vm', 'stop'],
    ['vm', 'rm'],
    ['vm', 'logs'],
    ['vm', 'snapshot'],
    ['vm', 'failover'],
  ]) {
    const r = await runCollected(process.execPath, [BIN, ...cmd, '--help'], { timeoutMs: 20_000 });
    assert.equal(r.code, 0, `${cmd.join(' ')} --help: ${r.stderr}`);
    assert.match(r.stdout, /Usage: lockstep/);
  }
  // No coordinator given: a usage error that says how to give one.
  const env = { ...process.env };
  delete env['LOCKSTEP_COORDINATOR'];
  const r = await runCollected(process.execPath, [BIN, 'vm', 'ls'], { timeoutMs: 20_000, env });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--coordinator/);
  // Bad host options are usage errors that name the problem, before anything starts.
  const tmp = tempDir('host-usage');
  try {
    const base = [
      'host',
      'start',
      '--name',
      'hx',
      '--data',
      path.join(tmp.dir, 'd'),
      '--coordinator',
      `file:${path.join(tmp.dir, 'c')}`,
    ];
    for (const [extra, message] of [
      [['--fence', 'vip'], /--fence vip needs --vip-interface/],
      [['--vip-interface', 'nosuch0'], /--vip-interface nosuch0: no such network interface/],
      [['--ft-lag-bound-ms', '0'], /--ft-lag-bound-ms: an integer from 1 to 600000/],
      [['--fence', 'ipmi'], /expected local, vip or command/],
    ] as const) {
      const u = await runCollected(process.execPath, [BIN, ...base, ...extra], { timeoutMs: 20_000 });
      assert.equal(u.code, 2, `${extra.join(' ')}: ${u.stderr}`);
      assert.match(u.stderr, message);
    }
  } finally {
    tmp.cleanup();
  }
});

test(
  'a paused host is taken over only once its command fence agent succeeds (fast profile)',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 2, profile: 'fast', prefix: 'clfence' });
    t.after(() => c.close());
    // The agent stands in for a remote power switch: it refuses until the test allows it, then
    // kills the host it is given.
    const marker = path.join(c.dir, 'fenced.txt');
    const allow = path.join(c.dir, 'allow-fencing');
    const agent = path.join(c.dir, 'fence.sh');
    writeFileSync(
      agent,
      [
        '#!/bin/sh',
        `if [ ! -e ${allow} ]; then echo "not allowed yet"; exit 1; fi`,
        `echo "$LOCKSTEP_FENCE_HOST $LOCKSTEP_FENCE_PID" >> ${marker}`,
        'kill -9 "$LOCKSTEP_FENCE_PID"',
        '',
      ].join('\n'),
      { mode: 0o755 },
    );
    const h3 = await c.addHost('h3', ['--fence', `command:${agent}`]);
    const ip = serviceIp(60);
    const vm = await c.createKv({ ip, host: 'h3' });
    assert.equal(vm.primary, 'h3');
    t.diagnostic(
      `setup: 3 hosts, fast profile; h3 (pid ${h3.pid}) runs kv at ${ip}:6379 and is fenced by ${agent}`,
    );
    process.kill(h3.pid, 'SIGSTOP');
    t.after(() => {
      try {
        process.kill(h3.pid, 'SIGCONT');
      } catch {
        // Already fenced.
      }
    });
    // Detection and the claim's expiry pass, a host wins the next generation, and the agent refuses:
    // the VM must not start anywhere, and its status says why.
    const waiting = await waitUntil(
      'the takeover to wait for the fence',
      async () => {
        const s = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
        return s.primary !== 'h3' && /waiting to fence h3/.test(s.reason ?? '') ? s : undefined;
      },
      60_000,
    );
    assert.match(waiting.reason ?? '', /not allowed yet/);
    assert.notEqual(waiting.state, 'running');
    writeFileSync(allow, '');
    const moved = await waitUntil(
      'kv to run on the host that fenced h3',
      async () => {
        const s = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
        return s.state === 'running' ? s : undefined;
      },
      60_000,
    );
    assert.equal(moved.primary, waiting.primary);
    assert.equal(readFileSync(marker, 'utf8').trim(), `h3 ${h3.pid}`);
    assert.equal(await redis(ip, 6379, 'PING'), 'PONG');
    assert.notEqual((await h3.exited).signal, null);
  },
);
