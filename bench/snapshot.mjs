#!/usr/bin/env node
// Snapshot benchmarks (issue 6), in one process with the compiled VM core:
//
// 1. Pause: the example KV server holds about --fill-mib MiB of values (its
//    linear memory grows past that), then --rounds snapshots are taken while
//    it idles; each reports how long the guest was held (unwind, copy of
//    memory, host table, resume). Baseline in the same run: a plain copy of
//    the same number of bytes on this thread (Buffer.from), the figure the
//    issue quotes as "about 10 ms for 64 MiB".
// 2. Size: a full snapshot file, and an incremental one after a few small
//    writes (blocks found by ShadowDiff against the first capture), with the
//    share of 4 KiB blocks that changed.
//
// Usage: node bench/snapshot.mjs [--fill-mib 64] [--rounds 7] [--out FILE]
// Needs `npm run build` (or `npx tsc -p .`) first: it imports dist/.
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => path.join(root, 'dist', 'src', p);
const { Vm } = await import(dist('vm/vm.js'));
const { writeVmSnapshot } = await import(dist('snapshot/vm-snapshot.js'));
const { SnapshotWriter, SNAPSHOT_BLOCK_BYTES, memorySha256 } = await import(dist('snapshot/format.js'));
const { ShadowDiff } = await import(dist('snapshot/shadow.js'));

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? dflt : process.argv[i + 1];
};
const fillMib = Number(arg('fill-mib', '64'));
const rounds = Number(arg('rounds', '7'));
const out = arg('out', null);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const disk = mkdtempSync(path.join(os.tmpdir(), 'lockstep-bench-snap-'));
const loaded = await Vm.load({
  wasmPath: path.join(root, 'examples', 'kv', 'kv.wasm'),
  args: ['kv'],
  env: [],
  listen: [{ host: '127.0.0.1', port: 0 }],
  disk,
  dirs: [],
  memoryMaxMib: Math.max(256, fillMib * 3),
  cpuBudget: null,
});
if (!loaded.ok) throw new Error(loaded.error.message);
const vm = loaded.vm;
const [addr] = await vm.start();
const r = new Redis({ port: addr.port, lazyConnect: true, maxRetriesPerRequest: 0 });
await r.connect();
const valueBytes = 256 * 1024;
const value = 'x'.repeat(valueBytes);
for (let i = 0; i < Math.ceil((fillMib * 1024 * 1024) / valueBytes); i++) await r.set(`big:${i}`, value);
process.stderr.write(`filled ${fillMib} MiB of values\n`);

const pauses = [];
const copies = [];
let first = null;
for (let i = 0; i < rounds; i++) {
  const snap = await vm.snapshot();
  pauses.push(snap.pauseMs);
  first ??= snap;
  const t0 = performance.now();
  Buffer.from(snap.capture.memory);
  copies.push(performance.now() - t0);
}
const memoryBytes = first.capture.memory.byteLength;

// Size: full, then incremental after a few small writes.
let fullBytes = 0;
await writeVmSnapshot(vm, first, (p) => (fullBytes += p.reduce((n, x) => n + x.byteLength, 0)), Date.now());
const shadow = new ShadowDiff();
shadow.diff(first.capture.memory);
for (let i = 0; i < 20; i++) await r.set(`small:${i}`, `v${i}`);
const second = await vm.snapshot();
const dirty = shadow.diff(second.capture.memory);
let incrBytes = 0;
const w = new SnapshotWriter((p) => (incrBytes += p.reduce((n, x) => n + x.byteLength, 0)));
w.header({
  moduleSha256: Buffer.from(vm.module.sha256, 'hex'),
  memoryMaxPages: vm.config.memoryMaxMib * 16,
  callDepthMax: 10_000,
  args: vm.config.args,
  env: vm.config.env,
  listenerCount: 1,
  preopenGuestPaths: ['/data'],
  diskPreopens: 0,
  events: 0,
  memoryBytes: second.capture.memory.byteLength,
  blockBytes: SNAPSHOT_BLOCK_BYTES,
  base: memorySha256(first.capture.memory),
  createdAtMs: Date.now(),
});
w.machine({
  globals: second.capture.globals.map((v) =>
    typeof v === 'bigint' ? { type: 'i64', value: v } : { type: 'f64', value: v },
  ),
  stack: second.capture.stack,
  regionStart: second.capture.regionStart,
  regionEnd: second.capture.regionEnd,
  lastClockNs: second.host.lastClockNs.map((x) => BigInt(x)),
});
w.host(Buffer.from(JSON.stringify(second.host)));
w.blocks(second.capture.memory, dirty);
w.trailer(memorySha256(second.capture.memory));
r.disconnect();
vm.stop(3);
await vm.wait();
rmSync(disk, { recursive: true, force: true });

const totalBlocks = memoryBytes / SNAPSHOT_BLOCK_BYTES;
const result = {
  date: new Date().toISOString(),
  host: { cpus: os.cpus().length, node: process.version },
  fillMib,
  memoryMib: memoryBytes / 1048576,
  rounds,
  pauseMs: { median: median(pauses), all: pauses.map((x) => +x.toFixed(2)) },
  copyMs: { median: median(copies), all: copies.map((x) => +x.toFixed(2)) },
  pauseOverCopy: median(pauses) / median(copies),
  fullSnapshotBytes: fullBytes,
  incremental: {
    dirtyBlocks: dirty.length,
    dirtyShare: dirty.length / totalBlocks,
    bytes: incrBytes,
    bytesPerDirtyBlock: incrBytes / Math.max(1, dirty.length),
  },
  memorySha256: createHash('sha256').update(first.capture.memory).digest('hex').slice(0, 16),
};
console.log(JSON.stringify(result, null, 2));
if (out) writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
