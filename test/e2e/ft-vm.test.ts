/**
 * An FT pair of VMs in one process, without the cluster: the primary's log
 * stream is fed straight into the backup, and the test plays the channel's
 * part (acknowledging what the backup received). This pins down the VM side
 * of fault tolerance (docs/FT.md): the Output Rule holds every reply until
 * its host call is acknowledged, the backup replays the primary exactly, and
 * at go-live it continues with the primary's state at the same address.
 *
 * Budget: about 10 s on the 2-core CI machine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { Vm } from '../../src/vm/vm.js';
import { kvConfig, loadVm as load, kvClient as client } from './ft-harness.js';
import { StopReason } from '../../src/vm/wasi/signals.js';
import { tempDir } from './harness.js';

/** Resolves with the next reply bytes, or null when none came within `ms`. */
function replyWithin(s: net.Socket, ms: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const t = setTimeout(() => {
      s.off('data', on);
      resolve(null);
    }, ms);
    const on = (b: Buffer): void => {
      clearTimeout(t);
      resolve(b);
    };
    s.once('data', on);
  });
}

test(
  'FT pair in one process: the Output Rule, exact replay, go-live with the state',
  { timeout: 60_000 },
  async () => {
    const diskP = tempDir('ft-p');
    const diskB = tempDir('ft-b');
    let primary: Vm | null = null;
    let backup: Vm | null = null;
    try {
      primary = await load(kvConfig(diskP.dir, 0, { mode: 'ft-primary' }));
      const prefix = Vm.logPrefix(primary.logHeader());
      const [addr] = await primary.start();
      const port = addr!.port;
      backup = await load(kvConfig(diskB.dir, port, { mode: 'ft-backup' }));
      await backup.start();
      backup.feedLog(prefix);

      // The test is the channel: what the backup has received is acknowledged, unless acks are held.
      let acksHeld = false;
      let received = -1;
      const b = backup;
      const p = primary;
      primary.streamFtLog((bytes, lastEventSeq) => {
        b.feedLog(bytes);
        received = lastEventSeq;
        if (!acksHeld) p.releaseOutputs(received);
      });

      const c = await client(port);
      assert.equal(await c.set('greeting', 'hello'), 'OK');
      for (let i = 1; i <= 20; i++) assert.equal(await c.incr('counter'), i);

      // Output Rule: with acknowledgements held, the reply waits, though the primary has computed it.
      acksHeld = true;
      const raw = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1', () => resolve(s));
        s.once('error', reject);
      });
      raw.write('*1\r\n$4\r\nPING\r\n');
      assert.equal(await replyWithin(raw, 500), null, 'a reply left before its host call was acknowledged');
      assert.ok((primary.outputGate?.heldMarks ?? 0) > 0, 'the gate holds the reply');
      const late = replyWithin(raw, 10_000);
      acksHeld = false;
      primary.releaseOutputs(received);
      assert.equal((await late)?.toString(), '+PONG\r\n');
      raw.destroy();

      // The primary dies with an unacknowledged write: its reply never leaves, so losing it is allowed.
      acksHeld = true;
      c.disconnect();
      primary.holdOutputs(true);
      primary.stop(StopReason.HOST);
      await primary.wait();
      primary = null;

      const { addresses, events } = await backup.goLive();
      assert.equal(addresses[0]!.port, port);
      assert.ok(events > 20, `the backup replayed ${events} calls`);
      const c2 = await client(port);
      assert.equal(await c2.get('greeting'), 'hello');
      assert.equal(await c2.incr('counter'), 21);
      c2.disconnect();
    } finally {
      primary?.stop(StopReason.HOST);
      backup?.stop(StopReason.HOST);
      await primary?.wait();
      await backup?.wait();
      diskP.cleanup();
      diskB.cleanup();
    }
  },
);
