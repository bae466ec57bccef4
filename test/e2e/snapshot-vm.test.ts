/**
 * Snapshots of a running VM at a host call's entry (issue 6), at the VM
 * level: the KV example serves a client, a snapshot is taken while it waits
 * in poll_oneoff (the blocked call gives way, and runs again), the VM goes
 * on serving, and a second VM restored from the snapshot on another address
 * holds the same keys and has the same memory at the same point.
 *
 * Budget: a few seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Vm, type VmSnapshot } from '../../src/vm/vm.js';
import { writeVmSnapshot } from '../../src/snapshot/vm-snapshot.js';
import { kvConfig, loadVm, kvClient as client } from './ft-harness.js';
import { StopReason } from '../../src/vm/wasi/signals.js';
import { tempDir } from './harness.js';

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

test(
  'a snapshot of a serving VM restores elsewhere with its keys and the same memory',
  { timeout: 60_000 },
  async () => {
    const diskA = tempDir('snap-a');
    const diskB = tempDir('snap-b');
    let a: Vm | null = null;
    let b: Vm | null = null;
    try {
      writeFileSync(path.join(diskA.dir, 'note.txt'), 'at the snapshot');
      const freezeDir = path.join(diskA.dir, '..', `${path.basename(diskA.dir)}-frozen`);
      a = await loadVm({ ...kvConfig(diskA.dir, 0, null), freezeDir });
      const [addrA] = await a.start();
      const ra = await client(addrA!.port);
      for (let i = 0; i < 50; i++) assert.equal(await ra.set(`k${i}`, `v${i}`), 'OK');
      assert.equal(await ra.incr('n'), 1);
      // A snapshot with a connection open works too; the connection does not travel (it is reset
      // on the restored side), so the memory comparison below is made with none open.
      const withConn = (await a.snapshot()) as VmSnapshot;
      assert.ok(
        withConn.host.fds.some((f) => f.kind === 'socket'),
        'the open connection is in the table',
      );
      a.thawSnapshotDisk();
      assert.equal(await ra.get('k7'), 'v7', 'the source serves on after a snapshot');
      await ra.quit();
      // Let the server see the close and go back to waiting in poll_oneoff.
      await new Promise((r) => setTimeout(r, 300));
      // The snapshot interrupts that wait, unwinds at the call's entry, and the call runs again.
      const snap = (await a.snapshot()) as VmSnapshot;
      assert.notEqual(snap, null);
      assert.ok(snap.capture.stack.byteLength > 0, 'the stack was unwound into the capture');
      assert.ok(!snap.host.fds.some((f) => f.kind === 'socket'));
      const memoryA = sha(snap.capture.memory);
      // The disk came frozen as at the cut; the restored VM gets that copy.
      const disk = snap.disk;
      assert.ok(disk != null && 'dir' in disk, JSON.stringify(disk));
      // (Guest writes after the cut would be copied-on-write: src/vm/fs/freeze.test.ts.)
      assert.equal(readFileSync(path.join(disk.dir, '0', 'note.txt'), 'utf8'), 'at the snapshot');
      // Written out with its disk, the writer reports its progress from 0 to the whole estimate
      // (memory and the disk's file bytes), never backwards: the console's "cloning N%".
      const reports: [number, number][] = [];
      let written = 0;
      await writeVmSnapshot(
        a,
        snap,
        (pieces) => void (written += pieces.reduce((n, p) => n + p.byteLength, 0)),
        1,
        {
          diskDir: disk.dir,
          onProgress: (done, total) => void reports.push([done, total]),
        },
      );
      const noteBytes = Buffer.byteLength('at the snapshot');
      const expectedTotal = snap.capture.memory.byteLength;
      assert.ok(reports.length >= 3, `progress reports: ${JSON.stringify(reports)}`);
      assert.deepEqual(reports[0]![0], 0);
      const total = reports[0]![1];
      assert.ok(total >= expectedTotal + noteBytes, `total ${total} covers memory and disk`);
      for (let i = 1; i < reports.length; i++) {
        assert.equal(reports[i]![1], total);
        assert.ok(reports[i]![0] >= reports[i - 1]![0], `progress went back: ${JSON.stringify(reports)}`);
      }
      assert.equal(reports.at(-1)![0], total);
      assert.ok(written > 0);
      cpSync(path.join(disk.dir, '0'), diskB.dir, { recursive: true });
      a.thawSnapshotDisk();
      const ra2 = await client(addrA!.port);
      assert.equal(await ra2.incr('n'), 2, 'the source serves on after a snapshot');
      ra2.disconnect();

      assert.equal(readFileSync(path.join(diskB.dir, 'note.txt'), 'utf8'), 'at the snapshot');
      // The thaw happens at the source's next host call (the INCR above made several).
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(!existsSync(disk.dir), 'the frozen copy is gone after the thaw');
      b = await loadVm({ ...kvConfig(diskB.dir, 0, null), restore: snap });
      assert.equal(
        b.snapshotMismatch({ moduleSha256: a.module.sha256, globals: snap.capture.globals.length }),
        null,
      );
      const [addrB] = await b.start();
      // Right after the restore the guest is back in the call it was taken at: a snapshot there
      // has the memory of the first one.
      const again = (await b.snapshot()) as VmSnapshot;
      assert.equal(sha(again.capture.memory), memoryA, 'the restored VM has the memory the snapshot had');
      const rb = await client(addrB!.port);
      assert.equal(await rb.get('k7'), 'v7');
      assert.equal(await rb.get('k49'), 'v49');
      // The INCR after the snapshot happened on the source only.
      assert.equal(await rb.incr('n'), 2);
      rb.disconnect();
    } finally {
      a?.stop(StopReason.HOST);
      b?.stop(StopReason.HOST);
      await Promise.all([a?.wait(), b?.wait()]);
      diskA.cleanup();
      diskB.cleanup();
    }
  },
);

test('a snapshot of another module is refused before anything runs', { timeout: 30_000 }, async () => {
  const disk = tempDir('snap-c');
  try {
    const vm = await loadVm(kvConfig(disk.dir, 0, null));
    assert.match(vm.snapshotMismatch({ moduleSha256: '00'.repeat(32), globals: 1 }) ?? '', /another module/);
  } finally {
    disk.cleanup();
  }
});
