/**
 * The coordinator becomes unreachable under a running cluster.
 *
 * file: the hosts run inside one private mount namespace in which the
 * coordinator's folder is a bind mount; remounting it read-only makes every
 * write fail (root ignores permission bits, so chmod would not do). To
 * reproduce by hand: `unshare -m --propagation private sleep 600 &`, then
 * `nsenter -t PID -m mount --bind DIR DIR`, start the hosts with
 * `nsenter -t PID -m -- node bin/lockstep.js host start …`, and later
 * `nsenter -t PID -m mount -o remount,bind,ro DIR`.
 *
 * What must hold: running VMs keep computing, but once their claim cannot be
 * renewed their outputs are held; nothing that needs arbitration proceeds
 * (no takeover, no create); when the coordinator is back, held outputs are
 * released in order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { repoPath, tempDir } from './harness.js';
import { RespClient, serviceIp, startCluster, waitUntil } from './cluster-harness.js';
import type { VmStatus } from '../../src/api/backend.js';
import { startEtcd } from './etcd.js';

const KV = repoPath('examples', 'kv', 'kv.wasm');

test(
  'file: coordinator read-only: outputs held, no takeover, no create; released when it is back',
  { timeout: 240_000 },
  async (t) => {
    const tmp = tempDir('outage');
    const coordDir = path.join(tmp.dir, 'coord');
    mkdirSync(coordDir);
    const holder = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '600'], { stdio: 'ignore' });
    const ns = ['nsenter', '-t', String(holder.pid), '-m', '--'];
    t.diagnostic(
      `setup: mount namespace of pid ${holder.pid}; coordinator ${coordDir} bind-mounted inside it`,
    );
    let c: Awaited<ReturnType<typeof startCluster>> | null = null;
    t.after(async () => {
      await c?.close();
      holder.kill('SIGKILL');
      tmp.cleanup();
    });
    await new Promise((r) => setTimeout(r, 200));
    execFileSync(ns[0]!, [...ns.slice(1), 'mount', '--bind', coordDir, coordDir]);
    c = await startCluster({ hosts: 2, coordinator: `file:${coordDir}`, wrap: ns, prefix: 'outagec' });
    const ip = serviceIp(40);
    const vm = await c.createKv({ ip, host: 'h1' });
    assert.equal(vm.state, 'running');
    const sock = net.connect({ host: ip, port: 6379 });
    t.after(() => sock.destroy());
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    const client = new RespClient(sock);
    assert.equal(await client.ping(5000), '+PONG\r\n');

    execFileSync(ns[0]!, [...ns.slice(1), 'mount', '-o', 'remount,bind,ro', coordDir]);
    t.diagnostic('coordinator is read-only now');
    await waitUntil(
      'h1 to hold kv outputs',
      async () => (/outputs held/.test(c!.hosts[0]!.log()) ? true : undefined),
      30_000,
    );
    // The VM still reads and computes, but its answer does not leave the host.
    assert.equal(await client.ping(1500), '');
    // Nothing that needs arbitration proceeds: a create fails, promptly. (The CLI runs inside the
    // namespace too: outside it, the folder is still writable.)
    const inside = spawn(
      ns[0]!,
      [
        ...ns.slice(1),
        process.execPath,
        repoPath('bin', 'lockstep.js'),
        'vm',
        'create',
        'kv3',
        '--wasm',
        KV,
        '--listen',
        `${serviceIp(42)}:6379`,
        '--no-wait',
        '--coordinator',
        `file:${coordDir}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let insideErr = '';
    inside.stderr.on('data', (b: Buffer) => (insideErr += b.toString()));
    const insideCode = await new Promise<number | null>((r) => inside.on('close', (code) => r(code)));
    assert.equal(insideCode, 1, insideErr);
    // No takeover without the coordinator, even when h1 looks dead to h2: pause h1 past failure
    // detection and the claim's expiry. h2 may decide to take kv over, but cannot win it.
    process.kill(c.hosts[0]!.pid, 'SIGSTOP');
    try {
      await waitUntil(
        'h2 to count h1 as down',
        async () => (/peer h1 is down/.test(c!.hosts[1]!.log()) ? true : undefined),
        20_000,
      );
      await new Promise((r) => setTimeout(r, 7000));
    } finally {
      process.kill(c.hosts[0]!.pid, 'SIGCONT');
    }
    assert.doesNotMatch(c.hosts[1]!.log(), /won kv/);
    // h1 is heard again before the coordinator comes back, so h2 has no reason to take kv then.
    await waitUntil(
      'h2 to hear h1 again',
      async () => (/peer h1 is up/.test(c!.hosts[1]!.log()) ? true : undefined),
      20_000,
    );
    assert.equal(await client.line(100), '');

    execFileSync(ns[0]!, [...ns.slice(1), 'mount', '-o', 'remount,bind,rw', coordDir]);
    t.diagnostic('coordinator is writable again');
    // The reply held since the outage arrives, then the connection works as before.
    const late = await client.line(20_000);
    assert.equal(late, '+PONG\r\n');
    await waitUntil(
      'h1 to log the release',
      async () => (/outputs released/.test(c!.hosts[0]!.log()) ? true : undefined),
      10_000,
    );
    assert.equal(await client.ping(5000), '+PONG\r\n');
    const after = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
    assert.equal(after.primary, 'h1');
    assert.equal(after.generation, vm.generation);
  },
);

test(
  'etcd: coordinator stopped: outputs held, the CLI fails promptly, no takeover; released when it is back',
  { timeout: 240_000 },
  async (t) => {
    const etcd = await startEtcd({ log: (l) => t.diagnostic(l) });
    const tmp = tempDir('outage-etcd');
    let c: Awaited<ReturnType<typeof startCluster>> | null = null;
    t.after(async () => {
      await c?.close();
      await etcd.stop();
      tmp.cleanup();
    });
    t.diagnostic(`setup: etcd ${etcd.spec} (data ${etcd.dataDir}), two hosts`);
    c = await startCluster({ hosts: 2, coordinator: etcd.spec, prefix: 'outagee' });
    const ip = serviceIp(45);
    const vm = await c.createKv({ ip, host: 'h1' });
    const sock = net.connect({ host: ip, port: 6379 });
    t.after(() => sock.destroy());
    await new Promise((r, j) => sock.once('connect', r).once('error', j));
    const client = new RespClient(sock);
    assert.equal(await client.ping(5000), '+PONG\r\n');

    await etcd.kill();
    t.diagnostic('etcd is killed');
    await waitUntil(
      'h1 to hold kv outputs',
      async () => (/outputs held/.test(c!.hosts[0]!.log()) ? true : undefined),
      30_000,
    );
    assert.equal(await client.ping(1500), '');
    // The CLI neither hangs nor pretends: with no coordinator it fails with a message.
    const ls = await c.cli(['vm', 'ls', '--json'], 60_000);
    assert.equal(ls.code, 1, ls.stderr);
    assert.match(ls.stderr, /coordinator|unavailable|reach/i);
    await new Promise((r) => setTimeout(r, 4000));
    assert.doesNotMatch(c.hosts[1]!.log(), /won kv/);

    await etcd.restart();
    t.diagnostic('etcd is back');
    assert.equal(await client.line(30_000), '+PONG\r\n');
    await waitUntil(
      'h1 to log the release',
      async () => (/outputs released/.test(c!.hosts[0]!.log()) ? true : undefined),
      10_000,
    );
    const after = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
    assert.equal(after.primary, 'h1');
    assert.equal(after.generation, vm.generation);
  },
);
