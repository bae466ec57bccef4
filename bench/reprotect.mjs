#!/usr/bin/env node
// Re-protection and live migration benchmarks (issue 6), on one 3-host local
// cluster (file: coordinator, fast profile) on loopback. All figures are
// medians over rounds, with a baseline measured in the same run.
//
// 1. Time to re-protect: the example KV server holds --fill-mib MiB of values
//    (its linear memory and its append-only file both grow past that); per
//    round, `lockstep vm ft kv on` is issued and timed until the primary's own
//    API says `protected` (polled every 10 ms): naming the backup, the
//    snapshot, streaming memory and disk to the backup's host, its restore,
//    the attach and the catch-up. Then `vm ft kv off`. The primary's pause for
//    the snapshot is read from its host's log line for the clone. Baseline in
//    the same run: sending the same number of bytes (the clone's size) through
//    one loopback TCP connection between two processes.
// 2. Migration stall: a client sends GETs back to back on one connection
//    (reconnecting at once when it is reset) while `lockstep vm migrate` moves
//    the VM, FT off, to the next host; the stall is the longest gap between two
//    answers. Baseline in the same run: the longest gap over the same time
//    with no migration.
//
// Usage: node bench/reprotect.mjs [--fill-mib 64] [--rounds 5] [--out FILE] [--keep-logs FILE]
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';

import { LOCKSTEP_BIN, ROOT } from './lib/kvbench.mjs';
import { cliArg, median, startHost as startHostIn } from './lib/cluster.mjs';

const root = ROOT;
const bin = LOCKSTEP_BIN;
const arg = cliArg;
const fillMib = Number(arg('--fill-mib', '64'));
const rounds = Number(arg('--rounds', '5'));
const out = arg('--out', null);
const keepLogs = arg('--keep-logs', null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round1 = (x) => Math.round(x * 10) / 10;

const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-reprotect-'));
const coordinator = `file:${path.join(dir, 'coord')}`;
const env = { ...process.env, LOCKSTEP_COORDINATOR: coordinator };
const hosts = new Map();
const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

function lockstep(...args) {
  const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8', timeout: 180_000 });
  if (r.status !== 0) throw new Error(`lockstep ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

let token = null;
/** One call to host `host`'s API (cheap enough to poll every 10 ms, unlike spawning the CLI). */
async function api(host, method, pathname, body) {
  token ??= spawnSync(process.execPath, [bin, 'cluster', 'token'], { env, encoding: 'utf8' }).stdout.trim();
  const res = await globalThis.fetch(`http://${hosts.get(host).api}${pathname}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return res.json();
}

/** Sends `bytes` through one loopback TCP connection to a child process; ms from connect to its last byte. */
async function loopbackCopyMs(bytes) {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const s=require('net').createServer(c=>{let n=0;c.on('data',d=>{n+=d.length;if(n>=${bytes})c.end('k')})}).listen(0,'127.0.0.1',()=>console.log(s.address().port))`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.add(child);
  const port = await new Promise((r) => child.stdout.once('data', (d) => r(Number(String(d).trim()))));
  const chunk = Buffer.alloc(1024 * 1024, 7);
  const t0 = performance.now();
  await new Promise((resolve, reject) => {
    const c = net.connect({ host: '127.0.0.1', port }, async () => {
      for (let sent = 0; sent < bytes; sent += chunk.byteLength)
        if (!c.write(chunk)) await new Promise((r) => c.once('drain', r));
    });
    c.on('data', () => resolve());
    c.on('error', reject);
  });
  const ms = performance.now() - t0;
  child.kill();
  return ms;
}

/** GETs back to back for `ms`, reconnecting at once after a reset; the longest gap between answers. */
async function longestGapMs(ip, ms, during = async () => {}) {
  let gapMax = 0;
  let last = performance.now();
  let stop = false;
  let answers = 0;
  let resets = 0;
  const loop = (async () => {
    while (!stop) {
      const r = new Redis({
        host: ip,
        port: 6379,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: null,
      });
      r.on('error', () => {});
      try {
        await r.connect();
        while (!stop) {
          await r.get('small');
          const now = performance.now();
          gapMax = Math.max(gapMax, now - last);
          last = now;
          answers++;
        }
      } catch {
        resets++;
        await sleep(1);
      } finally {
        r.disconnect();
      }
    }
  })();
  const t0 = performance.now();
  await during();
  const left = ms - (performance.now() - t0);
  if (left > 0) await sleep(left);
  stop = true;
  await loop;
  return { gapMaxMs: gapMax, answers, resets };
}

const results = { date: new Date().toISOString(), fillMib, rounds, reprotect: [], migrate: [] };
try {
  for (const name of ['h1', 'h2', 'h3']) {
    const h = await startHostIn(dir, name, coordinator, 'fast');
    children.add(h.child);
    hosts.set(name, h);
  }
  const image = path.join(dir, 'image');
  mkdirSync(image);
  const ip = '127.0.0.47';
  lockstep(
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
    '--memory-max-mib',
    String(Math.max(256, fillMib * 3)),
    '--json',
  );
  const r = new Redis({ host: ip, port: 6379, lazyConnect: true, maxRetriesPerRequest: 0 });
  await r.connect();
  const valueBytes = 256 * 1024;
  const value = 'x'.repeat(valueBytes);
  for (let i = 0; i < Math.ceil((fillMib * 1024 * 1024) / valueBytes); i++) await r.set(`big:${i}`, value);
  await r.set('small', 'v');
  r.disconnect();
  process.stderr.write(`filled ${fillMib} MiB\n`);

  // 1. Re-protection.
  for (let k = 0; k < rounds; k++) {
    const logBefore = new Map([...hosts].map(([n, h]) => [n, h.log().length]));
    const primary = lockstep('vm', 'show', 'kv', '--json').primary;
    // Timed from the API call (the CLI's own start-up is not the cluster's work) to the
    // primary's own live view saying protected.
    const t0 = performance.now();
    await api(primary, 'POST', '/v1/vms/kv/ft', { enabled: true });
    let s = null;
    for (;;) {
      s = await api(primary, 'GET', '/v1/vms/kv').catch(() => null);
      if (s?.protection === 'protected') break;
      if (performance.now() - t0 > 120_000)
        throw new Error(`not protected after 120 s: ${JSON.stringify(s)}`);
      await sleep(10);
    }
    const ms = performance.now() - t0;
    const lines = [...hosts]
      .map(([n, h]) => h.log().slice(logBefore.get(n)))
      .join('')
      .split('\n')
      .filter((l) => l.startsWith('{'));
    // The host logs show the steps: the placement won, the clone made, the backup attached.
    const at = (re) => {
      const l = lines.find((x) => re.test(x));
      return l ? Date.parse(JSON.parse(l).time) : null;
    };
    const line = lines.find((l) => l.includes('"pauseMs"'));
    const sent = lines.find((l) => /clone for \w+ sent/.test(l));
    const clone = { ...(line ? JSON.parse(line) : {}), ...(sent ? { bytes: JSON.parse(sent).bytes } : {}) };
    const placedAt = at(/won kv generation/);
    const clonedAt = at(/clone for/);
    const attachedAt = at(/attached; (protected|syncing)/);
    const baseMs = await loopbackCopyMs(clone.bytes ?? fillMib * 2 * 1024 * 1024);
    const row = {
      ms,
      pauseMs: clone.pauseMs ?? null,
      cloneBytes: clone.bytes ?? null,
      baseMs,
      backup: s.backup,
      placeToCloneMs: placedAt !== null && clonedAt !== null ? clonedAt - placedAt : null,
      cloneToAttachMs: clonedAt !== null && attachedAt !== null ? attachedAt - clonedAt : null,
    };
    results.reprotect.push(row);
    process.stderr.write(
      `re-protect ${k + 1}/${rounds}: ${Math.round(ms)} ms to protected (backup ${s.backup}; placed->cloned ${row.placeToCloneMs} ms, cloned->attached ${row.cloneToAttachMs} ms), clone ${clone.bytes} bytes, pause ${clone.pauseMs} ms; loopback copy of the same bytes ${Math.round(baseMs)} ms\n`,
    );
    lockstep('vm', 'ft', 'kv', 'off', '--json');
    await sleep(1000);
  }

  // 2. Migration stall, FT off, around the hosts.
  for (let k = 0; k < rounds; k++) {
    const base = await longestGapMs(ip, 3000);
    const from = lockstep('vm', 'show', 'kv', '--json').primary;
    const to = ['h1', 'h2', 'h3'][(['h1', 'h2', 'h3'].indexOf(from) + 1) % 3];
    let moveMs = 0;
    const m = await longestGapMs(ip, 3000, async () => {
      // Not spawnSync: the client's loop must run while the command does.
      const t0 = performance.now();
      const p = spawn(
        process.execPath,
        [bin, 'vm', 'migrate', 'kv', '--to', to, '--json', '--timeout-ms', '120000'],
        {
          env,
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      let err = '';
      p.stderr.on('data', (d) => (err += d));
      const code = await new Promise((res) => p.once('exit', res));
      if (code !== 0) throw new Error(`vm migrate: ${err}`);
      moveMs = performance.now() - t0;
    });
    results.migrate.push({
      from,
      to,
      stallMs: m.gapMaxMs,
      baseGapMs: base.gapMaxMs,
      resets: m.resets,
      moveMs,
    });
    process.stderr.write(
      `migrate ${k + 1}/${rounds} ${from}->${to}: longest gap ${Math.round(m.gapMaxMs)} ms (no migration: ${Math.round(base.gapMaxMs)} ms), ${m.resets} reconnects, the command took ${Math.round(moveMs)} ms\n`,
    );
  }

  const rp = results.reprotect;
  const mg = results.migrate;
  results.summary = {
    reprotectMsMedian: round1(median(rp.map((x) => x.ms))),
    reprotectMsMin: round1(Math.min(...rp.map((x) => x.ms))),
    reprotectMsMax: round1(Math.max(...rp.map((x) => x.ms))),
    cloneBytesMedian: median(rp.map((x) => x.cloneBytes ?? 0)),
    pauseMsMedian: median(rp.map((x) => x.pauseMs ?? 0)),
    loopbackCopyMsMedian: round1(median(rp.map((x) => x.baseMs))),
    reprotectOverLoopbackCopy: round1(median(rp.map((x) => x.ms / x.baseMs))),
    migrateStallMsMedian: round1(median(mg.map((x) => x.stallMs))),
    migrateStallMsMax: round1(Math.max(...mg.map((x) => x.stallMs))),
    baseGapMsMedian: round1(median(mg.map((x) => x.baseGapMs))),
    migrateCommandMsMedian: round1(median(mg.map((x) => x.moveMs))),
  };
  process.stderr.write(`${JSON.stringify(results.summary, null, 2)}\n`);
  if (out !== null) writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
} finally {
  if (keepLogs !== null) writeFileSync(keepLogs, [...hosts.values()].map((h) => h.log()).join(''));
  for (const c of children) c.kill('SIGKILL');
  await sleep(200);
  rmSync(dir, { recursive: true, force: true });
}
