/**
 * The FT primary's log file as a spill buffer (bounded logs, issue 6): what
 * FtPrimarySide writes, keeps, cuts and serves, driven with real log frames
 * through stand-ins for the VM, the channel's server and one session. The
 * real VM and channel are exercised by test/e2e/ft-pair.test.ts and
 * ft-clone.test.ts; here the point is the offsets: every byte a session is
 * handed must be the stream's byte at that logical offset, across cuts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FtPrimarySide } from './ft-pair.js';
import { encodeFrame, FrameKind, preamble, recordsPrefix } from '../ft/log/format.js';
import type { Vm } from '../vm/vm.js';
import type { FtLinkServer, FtPrimaryLink } from '../io/ft-link.js';
import type { StreamPosition } from '../ft/channel.js';
import { Prng } from '../core/prng.js';

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

/** A stand-in VM: it hands the side whatever log bytes the test emits. */
class FakeVm {
  emit: (bytes: Buffer, lastEventSeq: number) => void = () => {};
  released = 0;
  streamFtLog(cb: (bytes: Buffer, lastEventSeq: number) => void): void {
    this.emit = cb;
  }
  releaseAllOutputs(): void {
    this.released++;
  }
  releaseOutputs(): void {}
  throttle(): void {}
  get outputGate(): null {
    return null;
  }
}

interface OfferSeen {
  startFrom(asked: StreamPosition): StreamPosition | string;
  onSession(link: FtPrimaryLink): void;
}

class FakeServer {
  offer?: OfferSeen;
  offerCalls = 0;
  offerFor(_vm: string, o: OfferSeen): void {
    this.offer = o;
    this.offerCalls++;
  }
  withdraw(): void {
    this.offer = undefined;
  }
}

/** A session whose sender accepts bytes only while `open`, and records what it got. */
class FakeLink {
  got: Buffer[] = [];
  open = false;
  isClosed = false;
  overHighWater = false;
  backup = 'hb';
  constructor(readonly session: { start: StreamPosition }) {}
  get spaceBytes(): number {
    return this.open ? 1 << 30 : 0;
  }
  append(bytes: Buffer): { ok: true; overHighWater: boolean } | { ok: false; reason: string } {
    if (!this.open) return { ok: false, reason: 'full' };
    this.got.push(Buffer.from(bytes));
    return { ok: true, overHighWater: false };
  }
  lag(): { events: number; bytes: number; ms: number } {
    return { events: 0, bytes: 0, ms: 0 };
  }
  async close(): Promise<void> {
    this.isClosed = true;
  }
  closeWith(): void {
    this.isClosed = true;
  }
}

function setup(compactBytes: number): {
  vm: FakeVm;
  server: FakeServer;
  side: FtPrimarySide;
  prefix: Buffer;
  logPath: string;
  stream: Buffer[];
  emitFrames(n: number): void;
  cleanup(): void;
} {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lockstep-ft-pair-'));
  const logPath = path.join(dir, 'ft.log');
  const vm = new FakeVm();
  const server = new FakeServer();
  // The header's content does not matter here, only that the prefix is kept as it is.
  const prefix = Buffer.concat([preamble(), encodeFrame(FrameKind.HEADER, Buffer.from('header'))]);
  const stream: Buffer[] = [prefix];
  const side = new FtPrimarySide({
    vm: vm as unknown as Vm,
    vmName: 'kv',
    logPath,
    prefix,
    server: {
      offer: (n: string, o: OfferSeen) => server.offerFor(n, o),
      withdraw: () => server.withdraw(),
    } as unknown as FtLinkServer,
    lagBoundMs: 1000,
    compactBytes,
    log: quiet,
  });
  const rng = new Prng(1);
  let seq = 0;
  return {
    vm,
    server,
    side,
    prefix,
    logPath,
    stream,
    emitFrames(n) {
      for (let i = 0; i < n; i++) {
        const count = 1 + rng.int(0, 2);
        const body = Buffer.concat([
          recordsPrefix(seq, count),
          Buffer.alloc(200 + rng.int(0, 799), seq & 0xff),
        ]);
        const frame = Buffer.from(encodeFrame(FrameKind.RECORDS, body));
        seq += count;
        stream.push(frame);
        vm.emit(frame, seq - 1);
      }
    },
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

const waitTurn = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

test('with no backup nothing is written: the file is the prefix, the stream goes on', () => {
  const s = setup(4096);
  try {
    s.emitFrames(50);
    assert.equal(s.side.logBytes, Buffer.concat(s.stream).byteLength);
    assert.equal(s.side.logFileBytes, s.prefix.byteLength);
    assert.deepEqual(readFileSync(s.logPath), s.prefix);
    assert.ok(s.vm.released >= 1, 'outputs leave at once with no backup');
  } finally {
    s.side.close();
    s.cleanup();
  }
});

test('a clone start keeps the log from the cut; a session behind is served the exact stream across cuts', async () => {
  const s = setup(4096);
  try {
    s.emitFrames(20);
    s.side.offer(1, 'hb', 'inc');
    const offer = s.server.offer!;
    // Dropped before the offer: a backup can no longer start from the first event.
    assert.match(String(offer.startFrom({ offset: 0, events: 0 })), /snapshot/);
    s.side.cloneBegins();
    s.emitFrames(5);
    const cutEvents = s.side.events;
    const start = await s.side.cloneStart(cutEvents);
    assert.equal(start.offset, s.side.logBytes);
    // While the clone streams, the primary goes on: all of it is kept for the backup.
    s.emitFrames(200);
    const kept = s.side.logFileBytes;
    // From the cut on; a little more before it (less than one cut's worth) may remain.
    const fromCut = s.prefix.byteLength + (s.side.logBytes - start.offset);
    assert.ok(kept >= fromCut && kept < fromCut + 4096, `kept ${kept}, from the cut ${fromCut}`);
    assert.deepEqual(offer.startFrom({ offset: start.offset, events: start.events }), start);
    assert.equal(typeof offer.startFrom({ offset: start.offset + 1, events: start.events }), 'string');

    // The session opens with its sender full: the bytes pile up in the file.
    const link = new FakeLink({ start });
    offer.onSession(link as unknown as FtPrimaryLink);
    s.emitFrames(100);
    // Now the sender takes what the file holds, cutting the sent part as it goes, while more comes.
    link.open = true;
    for (let i = 0; i < 10; i++) {
      s.emitFrames(30);
      await waitTurn();
    }
    await waitTurn();
    const all = Buffer.concat(s.stream);
    assert.deepEqual(
      Buffer.concat(link.got),
      all.subarray(start.offset),
      'the session got the stream from the cut',
    );
    // Everything was handed over: the file is the prefix again.
    assert.equal(s.side.logFileBytes, s.prefix.byteLength);
    assert.deepEqual(readFileSync(s.logPath), s.prefix);
    // A caught-up session takes new bytes straight from the vCPU: nothing is written.
    s.emitFrames(10);
    assert.equal(s.side.logFileBytes, s.prefix.byteLength);
    assert.deepEqual(Buffer.concat(link.got), Buffer.concat(s.stream).subarray(start.offset));
  } finally {
    s.side.close();
    s.cleanup();
  }
});

test('a backlog is cut once its sent part is big: the file stays within twice the backlog and the cut size', async () => {
  const compactBytes = 8192;
  const s = setup(compactBytes);
  try {
    s.side.offer(1, 'hb', 'inc');
    const offer = s.server.offer!;
    s.side.cloneBegins();
    s.emitFrames(3);
    const start = await s.side.cloneStart(s.side.events);
    const link = new FakeLink({ start });
    offer.onSession(link as unknown as FtPrimaryLink);
    // A sender that takes bytes only now and then: the backlog grows and shrinks.
    let fileBytesMax = 0;
    let cuts = 0;
    let last = s.side.logFileBytes;
    for (let round = 0; round < 40; round++) {
      link.open = round % 4 === 3;
      s.emitFrames(12);
      await waitTurn();
      const now = s.side.logFileBytes;
      if (now < last) cuts++;
      last = now;
      fileBytesMax = Math.max(fileBytesMax, now);
    }
    link.open = true;
    s.emitFrames(1);
    await waitTurn();
    assert.ok(cuts > 0, 'the file was cut while the backup was behind');
    assert.deepEqual(Buffer.concat(link.got), Buffer.concat(s.stream).subarray(start.offset));
    assert.equal(s.side.logFileBytes, s.prefix.byteLength);
    assert.ok(
      s.side.logBytes > 4 * fileBytesMax,
      `the stream (${s.side.logBytes}) outgrew the file (${fileBytesMax})`,
    );
  } finally {
    s.side.close();
    s.cleanup();
  }
});

test('a first backup may start from event 0 only while the whole log is kept', () => {
  const s = setup(4096);
  try {
    s.side.offer(1, 'hb', 'inc');
    s.emitFrames(30);
    // Offered before any bytes were dropped: the whole log is kept for an event-0 session.
    assert.deepEqual(s.server.offer!.startFrom({ offset: 0, events: 0 }), { offset: 0, events: 0 });
    assert.equal(s.side.logFileBytes, s.side.logBytes);
    assert.deepEqual(readFileSync(s.logPath), Buffer.concat(s.stream));
    // Alone again: nothing is needed any more.
    s.side.runAlone('test');
    assert.equal(s.side.logFileBytes, s.prefix.byteLength);
  } finally {
    s.side.close();
    s.cleanup();
  }
});
