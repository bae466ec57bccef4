/**
 * A VM's snapshot (Vm.snapshot) as a snapshot stream (docs/SNAPSHOT-FORMAT.md),
 * and back.
 *
 * Role: the glue between the vCPU's capture (memory, mutable globals, the
 * unwound stack, the host's resource table, the log position) and the
 * persistent format, plus the check that a snapshot fits the VM it is about
 * to be restored into. Used by `lockstep vm snapshot`, `lockstep run --from`
 * and live clones.
 *
 * Invariants:
 * - What is written is exactly what a restore needs: reading a written
 *   snapshot gives back the same capture (memory, globals, stack, region) and
 *   the same host table.
 * - Globals are written as i64 when the capture holds a bigint and as f64
 *   otherwise: an f64 holds every i32 and f32 value exactly, and the capture
 *   (a JS number) keeps no NaN payload to lose.
 * - A snapshot is restored only into a VM of the same instrumented module,
 *   limits, arguments, environment, listeners and folders; anything else is
 *   refused with a message naming the difference.
 */
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { CALL_DEPTH_MAX, PAGES_PER_MIB, type Vm, type VmSnapshot } from '../vm/vm.js';
import type { HostState } from '../vm/wasi/host.js';
import {
  SNAPSHOT_BLOCK_BYTES,
  SnapshotWriter,
  memorySha256Async,
  nonZeroBlocksIn,
  yieldToLoop,
  readSnapshot,
  type SnapshotFailure,
  type SnapshotHeader,
  type SnapshotSink,
} from './format.js';

/**
 * Writes `snap` of `vm` to `sink`: memory in full (zero blocks are left out
 * by the format) and, with `diskDir` (the snapshot's frozen folders, one
 * subfolder per preopen), the disk as it was at the cut.
 */
export async function writeVmSnapshot(
  vm: Vm,
  snap: VmSnapshot,
  sink: SnapshotSink,
  createdAtMs: number,
  opts: {
    diskDir?: string | null;
    /**
     * Told how far the writer is, in bytes of memory and disk gone through
     * (zero blocks count, though the format leaves them out), after each
     * disk folder and each slice of memory.
     */
    onProgress?: (doneBytes: number, totalBytes: number) => void;
  } = {},
): Promise<void> {
  const w = new SnapshotWriter(sink);
  const memory = snap.capture.memory;
  const diskDir = opts.diskDir ?? null;
  const diskPreopens = diskDir === null ? 0 : vm.preopens.length;
  const progress = opts.onProgress;
  const diskBytesEach: number[] = [];
  if (progress !== undefined)
    for (let i = 0; i < diskPreopens; i++) diskBytesEach.push(await folderBytes(`${diskDir}/${i}`));
  const totalBytes = diskBytesEach.reduce((a, b) => a + b, 0) + memory.byteLength;
  let doneBytes = 0;
  progress?.(0, totalBytes);
  w.header({
    moduleSha256: Buffer.from(vm.module.sha256, 'hex'),
    memoryMaxPages: vm.config.memoryMaxMib * PAGES_PER_MIB,
    callDepthMax: CALL_DEPTH_MAX,
    args: vm.config.args,
    env: vm.config.env,
    listenerCount: vm.config.listen.length,
    preopenGuestPaths: vm.preopens.map((p) => p.guestPath),
    diskPreopens,
    events: snap.events ?? 0,
    memoryBytes: memory.byteLength,
    blockBytes: SNAPSHOT_BLOCK_BYTES,
    base: null,
    createdAtMs,
  });
  w.machine({
    globals: snap.capture.globals.map((value) =>
      typeof value === 'bigint' ? { type: 'i64' as const, value } : { type: 'f64' as const, value },
    ),
    stack: snap.capture.stack,
    regionStart: snap.capture.regionStart,
    regionEnd: snap.capture.regionEnd,
    lastClockNs: snap.host.lastClockNs.map((ns) => BigInt(ns)),
  });
  w.host(Buffer.from(JSON.stringify(snap.host), 'utf8'));
  for (let i = 0; i < diskPreopens; i++) {
    await w.disk(i, `${diskDir}/${i}`);
    doneBytes += diskBytesEach[i] ?? 0;
    progress?.(doneBytes, totalBytes);
  }
  // In slices, letting the event loop in between: the host must go on answering heartbeats.
  const blockCount = memory.byteLength / SNAPSHOT_BLOCK_BYTES;
  const sliceBlocks = (4 * 1024 * 1024) / SNAPSHOT_BLOCK_BYTES;
  for (let b = 0; b < blockCount; b += sliceBlocks) {
    w.blocks(memory, nonZeroBlocksIn(memory, SNAPSHOT_BLOCK_BYTES, b, Math.min(blockCount, b + sliceBlocks)));
    // A sink with back-pressure (a clone's network stream) is let drain before the next slice.
    await w.settled();
    progress?.(doneBytes + Math.min(blockCount, b + sliceBlocks) * SNAPSHOT_BLOCK_BYTES, totalBytes);
    await yieldToLoop();
  }
  w.trailer(await memorySha256Async(memory));
  await w.settled();
}

/** The bytes of the regular files under `dir` (for progress only: a racing change merely skews it). */
async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  const entries = await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isFile()) continue;
    const st = await lstat(path.join(e.parentPath, e.name)).catch(() => null);
    total += st?.size ?? 0;
  }
  return total;
}

export type ReadVmSnapshotResult =
  { ok: true; snapshot: VmSnapshot; header: SnapshotHeader } | SnapshotFailure;

/**
 * Reads a snapshot stream back into what Vm's `restore` takes, and its disk
 * (if it carries one) into `diskInto/N` per preopen. Damage is a value, never
 * a throw (I/O errors of the source or the disk propagate).
 */
export async function readVmSnapshot(
  source: Uint8Array | AsyncIterable<Uint8Array>,
  opts: { diskInto?: string } = {},
): Promise<ReadVmSnapshotResult> {
  const r = await readSnapshot(source, null, opts);
  if (!r.ok) return r;
  let host: HostState;
  try {
    host = JSON.parse(Buffer.from(r.host).toString('utf8')) as HostState;
  } catch (e) {
    return {
      ok: false,
      code: 'corrupt',
      message: `the host table is not JSON: ${(e as Error).message}`,
      offset: 0,
    };
  }
  if (host === null || typeof host !== 'object' || host.v !== 1 || !Array.isArray(host.fds))
    return { ok: false, code: 'corrupt', message: 'the host table is not a version 1 table', offset: 0 };
  return {
    ok: true,
    header: r.header,
    snapshot: {
      capture: {
        memory: r.memory,
        globals: r.machine.globals.map((g) => g.value),
        stack: r.machine.stack,
        regionStart: r.machine.regionStart,
        regionEnd: r.machine.regionEnd,
        resumeValue: 0,
      },
      host,
      events: r.header.events,
    },
  };
}

/** Why a snapshot with `h` cannot be restored into `vm`, or null when it fits. */
export function snapshotMismatch(h: SnapshotHeader, vm: Vm, globals: number): string | null {
  const module = vm.snapshotMismatch({ moduleSha256: Buffer.from(h.moduleSha256).toString('hex'), globals });
  if (module !== null) return module;
  if (h.memoryMaxPages !== vm.config.memoryMaxMib * PAGES_PER_MIB)
    return `its memory limit is ${h.memoryMaxPages / PAGES_PER_MIB} MiB, this VM's ${vm.config.memoryMaxMib} MiB`;
  if (h.callDepthMax !== CALL_DEPTH_MAX) return 'it was taken with another call-depth limit';
  if (h.args.join('\0') !== vm.config.args.join('\0'))
    return `its arguments are ${JSON.stringify(h.args)}, this VM's ${JSON.stringify(vm.config.args)}`;
  if (h.env.join('\0') !== vm.config.env.join('\0')) return "its environment differs from this VM's";
  if (h.listenerCount !== vm.config.listen.length)
    return `it has ${h.listenerCount} listeners, this VM ${vm.config.listen.length}`;
  const mine = vm.preopens.map((p) => p.guestPath);
  if (h.preopenGuestPaths.join('\0') !== mine.join('\0'))
    return `its folders are ${JSON.stringify(h.preopenGuestPaths)}, this VM's ${JSON.stringify(mine)}`;
  return null;
}
