/**
 * OutputGate: the Output Rule on an FT primary's main thread (DESIGN.md §3.2,
 * docs/FT.md).
 *
 * Role: read the marks the vCPU leaves after each output (src/vm/ft-shared.ts)
 * and turn the backup's acknowledgements into per-connection allowances: how
 * many tx bytes may go on the wire, and whether a FIN or close may. The
 * NetDevice asks before it drains a connection; the gate drains stdout and
 * stderr itself, into the console's file descriptors.
 *
 * Invariants:
 * - A mark is applied only when `releasedSeq` covers its host call, and marks
 *   are applied in the order they were written, so what leaves is always a
 *   prefix of what the guest sent, per connection.
 * - releasedSeq never goes back. `releaseAll()` (a primary alone, or a
 *   deliberate stop) makes every present and future mark apply at once.
 * - Execution never waits here: only the I/O side consults the gate.
 */
import { writeSync } from 'node:fs';
import { TxFlag, type Channel } from '../vm/channel.js';
import { STDERR_KEY, STDOUT_KEY, type FtShared, type Mark } from '../vm/ft-shared.js';

interface Released {
  /** The tx head (mod 2^32) up to which bytes may leave. */
  head: number;
  /** Output flags (TxFlag.SHUT_WR, TxFlag.CLOSE) that may take effect. */
  flags: number;
}

export interface ConsoleSink {
  ch: Channel;
  /** Host fd the released bytes are written to. */
  fd: number;
}

export class OutputGate {
  /** The highest host call whose outputs may leave (-1: none yet). */
  private releasedSeq = -1;
  private readonly pending: Mark[] = [];
  private pendingHead = 0;
  private readonly released = new Map<number, Released>();
  /** Called after a release made something leave possible (the NetDevice drains). */
  onRelease: () => void = () => {};
  private consoleBroken = false;

  constructor(
    private readonly shared: FtShared,
    private readonly consoles: { stdout: ConsoleSink; stderr: ConsoleSink },
    /** Wakes the vCPU (a console write waiting for ring space). */
    private readonly wakeVcpu: () => void,
    /**
     * TESTING ONLY, a planted bug: release every output at once, without
     * waiting for the backup. The crash suite must catch it (docs/FT.md).
     */
    private readonly plantedReleaseBeforeAck = false,
  ) {
    if (plantedReleaseBeforeAck) this.releasedSeq = Infinity;
  }

  /** Outputs written and not yet released (a gauge for tests and metrics). */
  get heldMarks(): number {
    // Counted without taking marks out of the ring: a full ring is the throttle of last resort.
    return this.pending.length - this.pendingHead + this.shared.pendingMarks();
  }

  get releasedEventSeq(): number {
    return this.releasedSeq;
  }

  /** The backup acknowledged every call up to `ackedEventSeq`. */
  release(ackedEventSeq: number): void {
    if (ackedEventSeq <= this.releasedSeq) {
      this.poll();
      return;
    }
    this.releasedSeq = ackedEventSeq;
    this.poll();
  }

  /** From now on every output leaves at once (no backup is protecting the VM, or it is stopping). */
  releaseAll(): void {
    this.release(Infinity);
  }

  /**
   * A backup attaches: outputs of calls after `seq` wait for it again. Marks
   * up to `seq` apply now (they were released when the gate was open).
   */
  closeAt(seq: number): void {
    this.poll();
    if (this.plantedReleaseBeforeAck) return;
    this.releasedSeq = seq;
  }

  /** Whether outputs leave without waiting for a backup. */
  get open(): boolean {
    return this.releasedSeq === Infinity;
  }

  /** Reads new marks and applies those the released sequence covers; returns whether any applied. */
  poll(): boolean {
    this.ingest();
    let applied = false;
    while (this.pendingHead < this.pending.length) {
      const m = this.pending[this.pendingHead]!;
      if (m.seq > this.releasedSeq) break;
      this.pendingHead++;
      const r = this.released.get(m.connKey);
      if (r === undefined) this.released.set(m.connKey, { head: m.txHead, flags: m.flags });
      else {
        r.head = m.txHead;
        r.flags |= m.flags;
      }
      applied = true;
    }
    if (this.pendingHead > 1024 && this.pendingHead * 2 > this.pending.length) {
      this.pending.splice(0, this.pendingHead);
      this.pendingHead = 0;
    }
    if (applied) {
      this.drainConsole(STDOUT_KEY, this.consoles.stdout);
      this.drainConsole(STDERR_KEY, this.consoles.stderr);
      this.onRelease();
    }
    return applied;
  }

  private ingest(): void {
    for (const m of this.shared.takeMarks()) this.pending.push(m);
  }

  /** Bytes of connection `connKey` that may go on the wire now. */
  allowance(connKey: number, ch: Channel): number {
    const r = this.released.get(connKey);
    if (r === undefined) return 0;
    return (r.head - ch.txTail()) >>> 0;
  }

  /** The output flags of connection `connKey` that may take effect. */
  releasedFlags(connKey: number): number {
    return this.released.get(connKey)?.flags ?? 0;
  }

  /** The connection is gone: its state can go (later marks for it, if any, are harmless). */
  forget(connKey: number): void {
    this.released.delete(connKey);
  }

  private drainConsole(key: number, sink: ConsoleSink): void {
    const n = this.allowance(key, sink.ch);
    if (n === 0) return;
    const bytes = sink.ch.txTake(n);
    if ((sink.ch.txFlags() & TxFlag.WANT_SPACE) !== 0) {
      sink.ch.clearTxFlag(TxFlag.WANT_SPACE);
      this.wakeVcpu();
    }
    if (bytes === null || this.consoleBroken) return;
    try {
      let off = 0;
      while (off < bytes.byteLength) off += writeSync(sink.fd, bytes, off, bytes.byteLength - off);
    } catch {
      // The console file failed (disk full, say): the guest's later console output is dropped,
      // as a closed terminal would drop it; the VM itself carries on.
      this.consoleBroken = true;
    }
  }
}
