#!/usr/bin/env node
// Cluster failover timings: how long after kill -9 of a VM's host (1) the
// survivors declare it down and (2) the VM answers again on another host (an
// HA restart, no FT), per timing profile. Each run starts a fresh 3-host
// cluster with a file: coordinator, places the example KV server on h1,
// kills h1 with `lockstep host kill`, and polls the service address with a
// RESP PING every 20 ms.
//
// Machines here are noisy, so each figure is also given as a ratio to what
// the profile promises (detection: failAfterMs; restart: failAfterMs or the
// claim's TTL + margin, whichever is later), and the median over the runs is
// what counts.
//
// Usage: node bench/cluster.mjs [--runs N] [--profiles default,fast] [--out FILE]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { LOCKSTEP_BIN, ROOT } from './lib/kvbench.mjs';
import { cliArg, median, ping, startHost } from './lib/cluster.mjs';

const root = ROOT;
const bin = LOCKSTEP_BIN;
const arg = cliArg;
const runs = Number(arg('--runs', '5'));
const profiles = arg('--profiles', 'default,fast').split(',');
const out = arg('--out', null);
const { HOST_PROFILES } = await import(path.join(root, 'dist', 'src', 'host', 'timings.js'));
const RUN_LIMIT_MS = 60_000;

async function oneRun(profile, i) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-cluster-'));
  const coordinator = `file:${path.join(dir, 'coord')}`;
  const hosts = [];
  try {
    for (const n of ['h1', 'h2', 'h3']) hosts.push(await startHost(dir, n, coordinator, profile));
    const image = path.join(dir, 'image');
    mkdirSync(image);
    const ip = `127.0.${100 + (process.pid % 100)}.${10 + i}`;
    const env = { ...process.env, LOCKSTEP_COORDINATOR: coordinator };
    const c = spawnSync(
      process.execPath,
      [
        bin,
        'vm',
        'create',
        'kv',
        '--wasm',
        path.join(root, 'examples', 'kv', 'kv.wasm'),
        '--listen',
        `${ip}:6379`,
        '--disk',
        image,
        '--host',
        'h1',
        '--json',
      ],
      { env, encoding: 'utf8' },
    );
    if (c.status !== 0) throw new Error(`vm create: ${c.stderr}`);
    // A quiet second for heartbeats and claims to settle.
    await new Promise((r) => setTimeout(r, 1000));
    const killedAt = performance.now();
    hosts[0].child.kill('SIGKILL');
    let detectedMs = null;
    let servedMs = null;
    while (performance.now() - killedAt < RUN_LIMIT_MS && (servedMs === null || detectedMs === null)) {
      if (detectedMs === null && hosts.slice(1).some((h) => /"peer":"h1",[^}]*"state":"down"/.test(h.log())))
        detectedMs = performance.now() - killedAt;
      if (servedMs === null && (await ping(ip, 6379))) servedMs = performance.now() - killedAt;
      await new Promise((r) => setTimeout(r, 20));
    }
    return { detectedMs, servedMs };
  } finally {
    for (const h of hosts) h.child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = {
  date: new Date().toISOString(),
  node: process.version,
  cpus: os.cpus().length,
  runs,
  profiles: {},
};
for (const profile of profiles) {
  const t = HOST_PROFILES[profile];
  const promisedDetectMs = t.membership.failAfterMs;
  const promisedServeMs = Math.max(t.membership.failAfterMs, t.claimTtlMs + t.claimExpiryMarginMs);
  const samples = [];
  for (let i = 0; i < runs; i++) {
    const r = await oneRun(profile, i);
    samples.push(r);
    process.stderr.write(
      `bench: ${profile} run ${i + 1}/${runs}: down after ${r.detectedMs?.toFixed(0)} ms, serving again after ${r.servedMs?.toFixed(0)} ms\n`,
    );
  }
  const det = median(samples.map((s) => s.detectedMs));
  const srv = median(samples.map((s) => s.servedMs));
  results.profiles[profile] = {
    promisedDetectMs,
    promisedServeMs,
    samples,
    detectedMsMedian: det,
    servedMsMedian: srv,
    detectRatio: det === null ? null : det / promisedDetectMs,
    serveRatio: srv === null ? null : srv / promisedServeMs,
  };
}
process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
if (out) writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
