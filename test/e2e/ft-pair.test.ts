/**
 * An FT pair joined by the real logging channel (TCP on loopback, with the
 * authenticated handshake and acknowledgements on receipt), driven by the
 * load client in a separate process (ioredis, histories checked for
 * linearizability). The primary crashes mid-load while the gauge of held
 * outputs is above zero; the backup goes live at the same address.
 *
 * This is the VM-and-channel half of the crash suite: the host daemons that
 * decide who goes live (test-and-set, fencing) join these same pieces.
 *
 * - A correct pair: every acknowledged write is readable after the failover,
 *   and the history is linearizable.
 * - The planted bug "release outputs before the acknowledgement", with a
 *   delay on the channel to widen the window, must make the same check fail.
 * - A backup slowed by a channel delay makes the primary's throttle engage.
 *
 * Reproduce: the seed and setup are printed; LOCKSTEP_TEST_SEED=N fixes the
 * load's seed. Budget: about 30 s on the 2-core CI machine.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Vm } from '../../src/vm/vm.js';
import { kvConfig, loadVm as load, sleep, waitFor, quiet } from './ft-harness.js';
import { StopReason } from '../../src/vm/wasi/signals.js';
import { FtLinkServer } from '../../src/io/ft-link.js';
import { FtBackupSide, FtPrimarySide } from '../../src/host/ft-pair.js';
import { testSeed } from '../../src/core/prng.js';
import { formatCheckResult } from '../checker/linearizability.js';
import { checkFinalReads, loadKeyNames, readKeys } from './load-client.js';
import { loadArgs, readHistory, startLoadProcess } from './load-process.js';
import { tempDir } from './harness.js';

const KEYS = 24;
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) c.kill('SIGKILL');
});

interface Pair {
  port: number;
  primary: Vm;
  backup: Vm;
  pside: FtPrimarySide;
  bside: FtBackupSide;
  server: FtLinkServer;
  backupLogPath: string;
  cleanup(): Promise<void>;
}

/** A primary and a backup in this process, paired over the real channel on loopback. */
async function startPair(o: {
  plantReleaseBeforeAck: boolean;
  plantAckBeforeReceipt?: boolean;
  linkDelayMs: number;
  lagBoundMs?: number;
  /** The backup's environment, when it should differ from the primary's (a replica that cannot follow). */
  backupEnv?: string[];
  events?: { failed: string[]; primaryLost: number };
}): Promise<Pair> {
  const dir = tempDir('ft-pair');
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
  const primary = await load(
    kvConfig(diskP, 0, { mode: 'ft-primary' }, { ftPlantReleaseBeforeAck: o.plantReleaseBeforeAck }),
  );
  const prefix = Vm.logPrefix(primary.logHeader());
  const [addr] = await primary.start();
  const port = addr!.port;
  const pside = new FtPrimarySide({
    vm: primary,
    vmName: 'kv',
    logPath: path.join(dir.dir, 'p.log'),
    prefix,
    server,
    lagBoundMs: o.lagBoundMs ?? 2000,
    log: quiet,
  });
  pside.offer(1, 'hb', incB);
  const backup = await load(
    kvConfig(diskB, port, { mode: 'ft-backup' }, o.backupEnv !== undefined ? { env: o.backupEnv } : {}),
  );
  await backup.start();
  const r = await FtBackupSide.connect({
    key,
    clusterId,
    self: 'hb',
    selfIncarnation: incB,
    linkDelayMs: o.linkDelayMs,
    ...(o.plantAckBeforeReceipt === true ? { receiver: { ackBeforeReceipt: true } } : {}),
    vm: backup,
    vmName: 'kv',
    primaryAddress: server.address(),
    primary: 'hp',
    primaryIncarnation: incP,
    generation: 1,
    log: quiet,
    onFailed: (why) => o.events?.failed.push(why),
    onPrimaryLost: () => {
      if (o.events !== undefined) o.events.primaryLost++;
    },
  });
  if (!r.ok) throw new Error(`the backup could not attach: ${r.reason}`);
  const bside = r.side;
  return {
    port,
    primary,
    backup,
    pside,
    bside,
    server,
    backupLogPath: path.join(dir.dir, 'b.log'),
    async cleanup() {
      primary.stop(StopReason.HOST);
      backup.stop(StopReason.HOST);
      await Promise.all([primary.wait(), backup.wait()]);
      pside.close();
      await bside.close();
      await server.close();
      dir.cleanup();
    },
  };
}

/**
 * Load, crash the primary while outputs are held, fail over, load on; then
 * the history with a final read of every key. Returns the check's verdict.
 */
async function crashUnderLoad(o: {
  plantReleaseBeforeAck: boolean;
  plantAckBeforeReceipt?: boolean;
  linkDelayMs: number;
  seed: number;
}): Promise<{
  linearizable: boolean;
  report: string;
}> {
  const pair = await startPair(o);
  const out = path.join(tempDir('ft-hist').dir, 'history.json');
  try {
    await waitFor(() => pair.pside.state === 'protected', 20_000, 'the pair to be protected');
    const load = startLoadProcess(
      children,
      loadArgs({
        port: pair.port,
        clients: 4,
        keys: KEYS,
        durationMs: 4000,
        opsMax: 500_000,
        seed: o.seed,
        out,
      }),
    );
    await waitFor(() => (load.latest()?.ackedWrites ?? 0) >= 200, 20_000, '200 acknowledged writes');
    // Kill only while the primary holds outputs, so the crash lands inside the window that matters.
    const gate = pair.primary.outputGate!;
    await waitFor(() => gate.heldMarks > 0 || o.plantReleaseBeforeAck, 10_000, 'held outputs');
    const held = gate.heldMarks;
    // The crash: nothing more leaves the primary, its copy and its channel end at once.
    pair.primary.holdOutputs(true);
    pair.primary.stop(StopReason.HOST);
    pair.pside.close();
    await pair.server.close();
    await pair.primary.wait();
    const live = await pair.bside.goLive();
    // As a host does: the new primary continues the log (a live FT VM's log must be drained, or
    // its vCPU waits once the ring is full), alone until a new backup attaches.
    const continued = new FtPrimarySide({
      vm: pair.backup,
      vmName: 'kv',
      logPath: pair.backupLogPath,
      prefix: Vm.logPrefix(pair.backup.logHeader()),
      continueAt: live,
      server: pair.server,
      lagBoundMs: 2000,
      log: quiet,
    });
    continued.runAlone('the primary crashed');
    const stats = await load.exited;
    let backupEnded: unknown = null;
    void pair.backup.wait().then((o) => (backupEnded = o));
    const final = await readKeys('127.0.0.1', pair.port, loadKeyNames(KEYS).all, 10_000).catch((e: Error) => {
      throw new Error(
        `${e.message}; the new primary ${backupEnded === null ? 'still runs' : `ended: ${JSON.stringify(backupEnded)}`}`,
      );
    });
    const ops = readHistory(out);
    const result = checkFinalReads(ops, final);
    const report =
      `seed ${o.seed}, plant ${o.plantReleaseBeforeAck ? 'release-before-ack' : o.plantAckBeforeReceipt === true ? 'ack-before-receipt' : 'none'}, link delay ${o.linkDelayMs} ms: held outputs at the kill ${held}; ` +
      `backup went live after ${live.events} calls; client: ${stats.stdout.trim()}; ${formatCheckResult(result)}`;
    return { linearizable: result.ok === true, report };
  } finally {
    await pair.cleanup();
  }
}

test(
  'FT pair over the channel: kill the primary under load, nothing acknowledged is lost',
  { timeout: 90_000 },
  async (t) => {
    const seed = testSeed();
    const r = await crashUnderLoad({ plantReleaseBeforeAck: false, linkDelayMs: 0, seed });
    t.diagnostic(r.report);
    assert.ok(r.linearizable, r.report);
  },
);

test(
  'the planted bug "release before the acknowledgement" is caught by the same check',
  { timeout: 90_000 },
  async (t) => {
    const seed = 1;
    const r = await crashUnderLoad({ plantReleaseBeforeAck: true, linkDelayMs: 300, seed });
    t.diagnostic(r.report);
    assert.ok(!r.linearizable, `the planted bug went unnoticed: ${r.report}`);
  },
);

test(
  'the planted bug "acknowledge before receipt" is caught by the same check',
  { timeout: 90_000 },
  async (t) => {
    const seed = 1;
    const r = await crashUnderLoad({
      plantReleaseBeforeAck: false,
      plantAckBeforeReceipt: true,
      linkDelayMs: 300,
      seed,
    });
    t.diagnostic(r.report);
    assert.ok(!r.linearizable, `the planted bug went unnoticed: ${r.report}`);
  },
);

test(
  'a backup that cannot replay its primary fails itself, and never reports its primary lost',
  { timeout: 60_000 },
  async () => {
    const events = { failed: [] as string[], primaryLost: 0 };
    const pair = await startPair({
      plantReleaseBeforeAck: false,
      linkDelayMs: 0,
      backupEnv: ['NOT_THE_PRIMARYS=1'],
      events,
    });
    try {
      await waitFor(() => events.failed.length > 0, 20_000, 'the backup to fail');
      assert.match(events.failed[0]!, /cannot replay the primary's log/);
      // The close that follows must not read as the primary's loss: that would let a broken replica go live.
      await sleep(300);
      assert.equal(events.primaryLost, 0);
    } finally {
      await pair.cleanup();
    }
  },
);

test('a slowed backup makes the primary throttle', { timeout: 60_000 }, async (t) => {
  const pair = await startPair({ plantReleaseBeforeAck: false, linkDelayMs: 150, lagBoundMs: 50 });
  const out = path.join(tempDir('ft-hist').dir, 'history.json');
  try {
    await waitFor(() => pair.pside.state === 'protected', 20_000, 'the pair to be protected');
    const load = startLoadProcess(
      children,
      loadArgs({ port: pair.port, clients: 4, keys: KEYS, durationMs: 3000, opsMax: 500_000, seed: 7, out }),
    );
    let engaged = false;
    await waitFor(
      () => {
        engaged ||= pair.pside.throttling;
        return engaged || load.child.exitCode !== null;
      },
      20_000,
      'the throttle',
    );
    load.child.kill('SIGTERM');
    await load.exited;
    t.diagnostic(`throttle engaged: ${engaged}; lag ${JSON.stringify(pair.pside.lag())}`);
    assert.ok(engaged, 'the throttle never engaged with a backup 150 ms behind and a 50 ms bound');
  } finally {
    await pair.cleanup();
  }
});
