/**
 * Live clone (issue 6), in one process over the real channel: the primary
 * runs alone under load, a backup is made from a snapshot of the running
 * primary (memory, stack, host table and the disk as at the cut) instead of
 * replaying from the first event, catches up from the snapshot's place in
 * the log, becomes protected, and takes over when the primary crashes while
 * it holds outputs. The client history across all of it, with a final read
 * of every key, must be linearizable.
 *
 * Reproduce: the seed and setup are printed (LOCKSTEP_TEST_SEED fixes the
 * load's seed). Budget: about 15 s.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { FileSystem } from '../../src/vm/fs/fs.js';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Vm, type VmSnapshot } from '../../src/vm/vm.js';
import { kvConfig, loadVm as load, waitFor, quiet } from './ft-harness.js';
import { StopReason } from '../../src/vm/wasi/signals.js';
import { FtLinkServer } from '../../src/io/ft-link.js';
import { FtBackupSide, FtPrimarySide } from '../../src/host/ft-pair.js';
import { testSeed } from '../../src/core/prng.js';
import { formatCheckResult } from '../checker/linearizability.js';
import { mergeHistories } from '../checker/history.js';
import { checkFinalReads, loadKeyNames, readKeys } from './load-client.js';
import { loadArgs, readHistory, startLoadProcess } from './load-process.js';
import { tempDir } from './harness.js';

const KEYS = 24;
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

test(
  'live clone: a backup restored from a snapshot of the running primary catches up, and takes over with every acknowledged write',
  { timeout: 90_000 },
  async (t) => {
    const seed = testSeed();
    const dir = tempDir('ft-clone');
    const diskP = path.join(dir.dir, 'disk-p');
    const diskB = path.join(dir.dir, 'disk-b');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(diskP);
    mkdirSync(diskB);
    const key = randomBytes(32);
    const clusterId = randomBytes(16).toString('hex');
    const incP = randomBytes(8).toString('hex');
    const incB = randomBytes(8).toString('hex');
    const server = await FtLinkServer.listen(
      { host: '127.0.0.1', port: 0 },
      { key, clusterId, self: 'hp', selfIncarnation: incP },
    );
    let primary: Vm | null = null;
    let backup: Vm | null = null;
    let bside: FtBackupSide | null = null;
    const outs = ['h1', 'h2', 'h3'].map((h) => path.join(dir.dir, `${h}.json`));
    try {
      primary = await load(
        kvConfig(diskP, 0, { mode: 'ft-primary' }, { freezeDir: path.join(dir.dir, 'frozen') }),
      );
      const [addr] = await primary.start();
      const port = addr!.port;
      const prefix = Vm.logPrefix(primary.logHeader());
      const pside = new FtPrimarySide({
        vm: primary,
        vmName: 'kv',
        logPath: path.join(dir.dir, 'p.log'),
        prefix,
        server,
        lagBoundMs: 2000,
        // Small, so that the cut of a sent part happens in this short run too.
        compactBytes: 64 * 1024,
        log: quiet,
      });
      pside.runAlone('no backup yet');
      let fileBytesMax = 0;
      const sampler = setInterval(() => (fileBytesMax = Math.max(fileBytesMax, pside.logFileBytes)), 5);
      t.after(() => clearInterval(sampler));
      t.diagnostic(`setup: KV primary on 127.0.0.1:${port}, seed ${seed}, files in ${dir.dir}`);

      // Unprotected for a while: this is the state a clone must carry over.
      const first = startLoadProcess(
        children,
        loadArgs({ port, clients: 4, keys: KEYS, durationMs: 1500, opsMax: 200_000, seed, out: outs[0]! }),
      );
      await first.exited;
      // Bounded logs: with no backup, nothing needs the log, and the file holds only its prefix.
      assert.ok(pside.logBytes > prefix.byteLength * 10, `the log grew: ${pside.logBytes} bytes`);
      assert.equal(pside.logFileBytes, prefix.byteLength);

      const load2 = startLoadProcess(
        children,
        loadArgs({
          port,
          clients: 4,
          keys: KEYS,
          durationMs: 4000,
          opsMax: 500_000,
          seed: seed + 1,
          out: outs[1]!,
        }),
      );
      await waitFor(() => (load2.latest()?.ackedWrites ?? 0) >= 100, 20_000, '100 acknowledged writes');
      // The offer comes first: from here on outputs wait for the new backup, so nothing the
      // snapshot lacks can leave before the backup has it.
      pside.offer(1, 'hb', incB);
      // As LocalVm.clone does: the log keeps everything until the snapshot's position is known.
      pside.cloneBegins();
      const snap = (await primary.snapshot()) as VmSnapshot;
      assert.notEqual(snap, null);
      assert.equal(typeof snap.events, 'number');
      const start = await pside.cloneStart(snap.events!);
      const disk = snap.disk;
      assert.ok(disk != null && 'dir' in disk, JSON.stringify(disk));
      FileSystem.copyFrozenTree(path.join(disk.dir, '0'), diskB);
      primary.thawSnapshotDisk();
      t.diagnostic(
        `snapshot at call ${snap.events} (log offset ${start.offset}), memory ${snap.capture.memory.byteLength} bytes, disk ${disk.files} files`,
      );

      backup = await load({ ...kvConfig(diskB, port, { mode: 'ft-backup' }), restore: snap });
      await backup.start();
      const r = await FtBackupSide.connect({
        key,
        clusterId,
        self: 'hb',
        selfIncarnation: incB,
        vm: backup,
        vmName: 'kv',
        primaryAddress: server.address(),
        primary: 'hp',
        primaryIncarnation: incP,
        generation: 1,
        log: quiet,
        clone: { start, prefix: Vm.logPrefix(backup.logHeader()) },
      });
      if (!r.ok) throw new Error(`the clone could not attach: ${r.reason}`);
      bside = r.side;
      let backupEnded: unknown = null;
      void backup.wait().then((o) => (backupEnded = o));
      await waitFor(() => pside.state === 'protected', 60_000, 'the cloned backup to catch up').catch(
        (e: Error) => {
          throw new Error(
            `${e.message}: protection ${pside.state}, lag ${JSON.stringify(pside.lag())}, backup ${backupEnded === null ? 'runs' : JSON.stringify(backupEnded)}, attached ${bside?.attached}`,
          );
        },
      );

      await load2.exited;
      // Once the backup has been handed everything, the file holds only the prefix again.
      await waitFor(() => pside.logFileBytes === prefix.byteLength, 20_000, 'the sent log to be dropped');
      t.diagnostic(
        `log: ${pside.logBytes} bytes written in all; the file peaked at ${fileBytesMax} bytes (prefix ${prefix.byteLength})`,
      );
      // The crash, under load, while the primary holds outputs.
      const load3 = startLoadProcess(
        children,
        loadArgs({
          port,
          clients: 4,
          keys: KEYS,
          durationMs: 4000,
          opsMax: 500_000,
          seed: seed + 2,
          out: outs[2]!,
        }),
      );
      await waitFor(() => (load3.latest()?.ackedWrites ?? 0) >= 100, 20_000, '100 acknowledged writes');
      const gate = primary.outputGate!;
      await waitFor(() => gate.heldMarks > 0, 10_000, 'held outputs');
      const held = gate.heldMarks;
      primary.holdOutputs(true);
      primary.stop(StopReason.HOST);
      pside.close();
      await primary.wait();
      const live = await bside.goLive();
      const continued = new FtPrimarySide({
        vm: backup,
        vmName: 'kv',
        logPath: path.join(dir.dir, 'b.log'),
        prefix: Vm.logPrefix(backup.logHeader()),
        continueAt: live,
        server,
        lagBoundMs: 2000,
        log: quiet,
      });
      continued.runAlone('the primary crashed');
      const stats = await load3.exited;
      const final = await readKeys('127.0.0.1', port, loadKeyNames(KEYS).all, 10_000);
      const result = checkFinalReads(mergeHistories(outs.map((o) => readHistory(o))), final);
      t.diagnostic(
        `held outputs at the kill ${held}; the clone went live after ${live.events} calls; client ${stats.stdout.trim()}; ${formatCheckResult(result)}`,
      );
      assert.equal(result.ok, true, formatCheckResult(result));
    } finally {
      primary?.stop(StopReason.HOST);
      backup?.stop(StopReason.HOST);
      await Promise.all([primary?.wait(), backup?.wait()]);
      await bside?.close();
      await server.close();
      dir.cleanup();
    }
  },
);
