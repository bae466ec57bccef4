/**
 * Hosts find a VM's module by its SHA-256 and fetch it from each other
 * (src/host/modules.ts): a host that must run a VM whose module path it
 * cannot read, or whose path holds other bytes by now, gets the module from a
 * peer's store. That is what makes a module uploaded to one host, or a path
 * on one machine, usable by a backup on another machine.
 *
 * Here the hosts share one machine, so "not on this machine" is played by
 * the path itself: after the FT pair is protected, the file the VM was
 * created from is overwritten with another module. Then the primary's host
 * is killed; the third host, which never ran the VM, is named the new
 * backup, must not run the bytes now at the path, and fetches the original
 * from the surviving host.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { VmStatus } from '../../src/api/backend.js';
import { sha256Of } from '../../src/host/modules.js';
import { KV, redis, serviceIp, startCluster, waitUntil } from './cluster-harness.js';
import { repoPath } from './harness.js';

const RUST_KV = repoPath('examples', 'rust-kv', 'rust-kv.wasm');

test(
  'a host that cannot use the module path fetches the module from a peer by its hash',
  { timeout: 180_000 },
  async (t) => {
    const c = await startCluster({ hosts: 3, profile: 'fast', prefix: 'modules' });
    t.after(() => c.close());
    const ip = serviceIp(80);
    mkdirSync(path.join(c.dir, 'images'), { recursive: true });
    const from = path.join(c.dir, 'images', 'kv-copy.wasm');
    copyFileSync(KV, from);
    const sha = sha256Of(readFileSync(KV));
    t.diagnostic(`setup: 3 hosts (fast profile) in ${c.dir}; kv from ${from} (sha256 ${sha}) at ${ip}:6379`);
    await c.cliJson<VmStatus>([
      'vm',
      'create',
      'kv',
      '--wasm',
      from,
      '--listen',
      `${ip}:6379`,
      '--disk',
      mkdtempSync(path.join(c.dir, 'images', 'kv-')),
      '--host',
      'h1',
      '--ft',
    ]);
    const paired = await waitUntil(
      'kv protected',
      async () => {
        const s = await c.cliJson<VmStatus>(['vm', 'show', 'kv']);
        return s.protection === 'protected' ? s : undefined;
      },
      60_000,
    );
    assert.equal(paired.primary, 'h1');
    const backup = paired.backup!;
    const third = ['h2', 'h3'].find((h) => h !== backup)!;
    for (const k of [1, 2, 3]) assert.equal(await redis(ip, 6379, 'SET', `key${k}`, `value${k}`), 'OK');
    // The path now holds another module: no host may run it for this VM.
    copyFileSync(RUST_KV, from);
    const h1 = c.hosts.find((h) => h.name === 'h1')!;
    process.kill(h1.pid, 'SIGKILL');
    t.diagnostic(`killed h1 (pid ${h1.pid}); ${backup} takes over, ${third} should fetch the module`);
    const again = await waitUntil(
      `kv protected again with ${third} as backup`,
      async () => {
        const s = await c.cliJson<VmStatus>(['vm', 'show', 'kv']).catch(() => undefined);
        return s?.protection === 'protected' && s.backup === third ? s : undefined;
      },
      90_000,
    );
    assert.equal(again.primary, backup);
    const thirdHost = c.hosts.find((h) => h.name === third)!;
    assert.match(thirdHost.log(), new RegExp(`fetched module ${sha.slice(0, 12)}`));
    const stored = path.join(c.dir, 'hosts', third, 'modules', `${sha}.wasm`);
    assert.ok(existsSync(stored), `${stored} exists`);
    assert.equal(sha256Of(readFileSync(stored)), sha);
    for (const k of [1, 2, 3]) assert.equal(await redis(ip, 6379, 'GET', `key${k}`), `value${k}`);
  },
);
