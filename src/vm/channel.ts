/**
 * Channel: one stream device shared between the vCPU (the guest's worker
 * thread) and the I/O side (the main thread that owns the real sockets).
 *
 * A channel is one SharedArrayBuffer holding a small header and two
 * single-producer/single-consumer byte rings:
 *   - rx: the I/O side produces (bytes received from the peer), the vCPU consumes;
 *   - tx: the vCPU produces (bytes the guest sent), the I/O side consumes.
 *
 *   byte 0                HEADER_BYTES        +rxCapBytes        +txCapBytes
 *   +---------------------+-------------------+------------------+
 *   | Int32 header slots  | rx ring bytes     | tx ring bytes    |
 *   +---------------------+-------------------+------------------+
 *
 * Invariants:
 * - Heads and tails are running byte counts modulo 2^32, each written by exactly
 *   one side with Atomics.store after the data bytes it covers, and read with
 *   Atomics.load; this gives the ordering a SPSC ring needs.
 * - Capacities are powers of two no larger than 2^30, so `head - tail` in
 *   uint32 arithmetic is always the number of buffered bytes.
 * - Flags only ever gain bits (except the WAITING hints), so a reader never
 *   misses a close or an EOF.
 *
 * The vCPU serves reads and writes from the rings without a cross-thread round
 * trip; it blocks (Atomics.wait on the control block) only when the guest
 * really waits. The control block is described by Ctl below.
 */

import { copyFromRing, copyIntoRing } from '../core/ring-bytes.js';

const H_RX_HEAD = 0;
const H_RX_TAIL = 1;
const H_RX_FLAGS = 2;
const H_TX_HEAD = 3;
const H_TX_TAIL = 4;
const H_TX_FLAGS = 5;
const H_RX_CAP = 6;
const H_TX_CAP = 7;
const HEADER_SLOTS = 16;
const HEADER_BYTES = HEADER_SLOTS * 4;

/** rx flags, set by the I/O side. */
export const RxFlag = {
  /** The peer sent FIN: after the buffered bytes, reads return 0. */
  EOF: 1,
  /** The connection was reset or failed: reads fail with CONNRESET. */
  RESET: 2,
  /** The I/O side paused reading because the ring was full; the vCPU pokes it after consuming. */
  PAUSED: 4,
  /** The vCPU has asked for this channel's input (used by stdin, which is read lazily). */
  WANTED: 8,
} as const;

/** tx flags, set by the vCPU. */
export const TxFlag = {
  /** The guest shut down its write side: flush, then send FIN. */
  SHUT_WR: 1,
  /** The guest closed the descriptor: flush, then close the connection. */
  CLOSE: 2,
  /** The guest shut down its read side: further input is discarded. */
  SHUT_RD: 4,
  /** The vCPU waits for tx space; the I/O side wakes it when it drains bytes. */
  WANT_SPACE: 8,
  /** The peer is gone for writing (EPIPE); set by the I/O side in the tx word for the vCPU to see. */
  BROKEN: 16,
} as const;

/** Default ring sizes; 64 KiB each keeps 1024 connections at 128 MiB and matches a typical socket buffer. */
export const RX_CAP_BYTES_DEFAULT = 64 * 1024;
export const TX_CAP_BYTES_DEFAULT = 64 * 1024;
const CAP_BYTES_MAX = 1 << 30;

function assertPow2(n: number): void {
  if (!(n > 0 && n <= CAP_BYTES_MAX && (n & (n - 1)) === 0))
    throw new Error(`ring capacity must be a power of two: ${n}`);
}

export class Channel {
  readonly sab: SharedArrayBuffer;
  private readonly h: Int32Array;
  private readonly rx: Uint8Array;
  private readonly tx: Uint8Array;
  readonly rxCapBytes: number;
  readonly txCapBytes: number;

  private constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.h = new Int32Array(sab, 0, HEADER_SLOTS);
    this.rxCapBytes = this.h[H_RX_CAP]!;
    this.txCapBytes = this.h[H_TX_CAP]!;
    this.rx = new Uint8Array(sab, HEADER_BYTES, this.rxCapBytes);
    this.tx = new Uint8Array(sab, HEADER_BYTES + this.rxCapBytes, this.txCapBytes);
  }

  static create(rxCapBytes = RX_CAP_BYTES_DEFAULT, txCapBytes = TX_CAP_BYTES_DEFAULT): Channel {
    assertPow2(rxCapBytes);
    assertPow2(txCapBytes);
    const sab = new SharedArrayBuffer(HEADER_BYTES + rxCapBytes + txCapBytes);
    const h = new Int32Array(sab, 0, HEADER_SLOTS);
    h[H_RX_CAP] = rxCapBytes;
    h[H_TX_CAP] = txCapBytes;
    return new Channel(sab);
  }

  /** Attaches to a channel created on the other side. */
  static attach(sab: SharedArrayBuffer): Channel {
    return new Channel(sab);
  }

  // ---- rx: produced by the I/O side, consumed by the vCPU ----

  rxAvailable(): number {
    return (Atomics.load(this.h, H_RX_HEAD) - Atomics.load(this.h, H_RX_TAIL)) >>> 0;
  }

  rxSpace(): number {
    return this.rxCapBytes - this.rxAvailable();
  }

  /** I/O side: appends as much of `src` as fits; returns the number of bytes taken. */
  rxPush(src: Uint8Array): number {
    const head = Atomics.load(this.h, H_RX_HEAD) >>> 0;
    const n = Math.min(src.byteLength, this.rxSpace());
    copyIntoRing(this.rx, head, src.subarray(0, n));
    Atomics.store(this.h, H_RX_HEAD, (head + n) | 0);
    return n;
  }

  /**
   * vCPU: copies buffered bytes into `dsts` in order; returns the count. With
   * peek, the bytes stay buffered.
   */
  rxPull(dsts: readonly Uint8Array[], peek = false): number {
    const tail = Atomics.load(this.h, H_RX_TAIL) >>> 0;
    let avail = this.rxAvailable();
    let pos = tail;
    let total = 0;
    for (const dst of dsts) {
      if (avail === 0) break;
      const n = Math.min(dst.byteLength, avail);
      copyFromRing(this.rx, pos, dst.subarray(0, n));
      pos += n;
      avail -= n;
      total += n;
    }
    if (!peek) Atomics.store(this.h, H_RX_TAIL, pos | 0);
    return total;
  }

  /** vCPU: drops buffered input (after SHUT_RD). */
  rxDiscard(): void {
    Atomics.store(this.h, H_RX_TAIL, Atomics.load(this.h, H_RX_HEAD));
  }

  rxFlags(): number {
    return Atomics.load(this.h, H_RX_FLAGS);
  }
  setRxFlag(flag: number): void {
    Atomics.or(this.h, H_RX_FLAGS, flag);
  }
  clearRxFlag(flag: number): void {
    Atomics.and(this.h, H_RX_FLAGS, ~flag);
  }

  // ---- tx: produced by the vCPU, consumed by the I/O side ----

  txBuffered(): number {
    return (Atomics.load(this.h, H_TX_HEAD) - Atomics.load(this.h, H_TX_TAIL)) >>> 0;
  }

  txSpace(): number {
    return this.txCapBytes - this.txBuffered();
  }

  /** vCPU: appends as much of the sources as fits, in order; returns the count. */
  txPush(srcs: readonly Uint8Array[]): number {
    const head = Atomics.load(this.h, H_TX_HEAD) >>> 0;
    let space = this.txSpace();
    let pos = head;
    let total = 0;
    for (const src of srcs) {
      if (space === 0) break;
      const n = Math.min(src.byteLength, space);
      copyIntoRing(this.tx, pos, src.subarray(0, n));
      pos += n;
      space -= n;
      total += n;
    }
    Atomics.store(this.h, H_TX_HEAD, pos | 0);
    return total;
  }

  /** The running count of bytes the vCPU has pushed (mod 2^32): an output mark's position. */
  txHead(): number {
    return Atomics.load(this.h, H_TX_HEAD) >>> 0;
  }

  /** The running count of bytes the I/O side has taken (mod 2^32). */
  txTail(): number {
    return Atomics.load(this.h, H_TX_TAIL) >>> 0;
  }

  /**
   * I/O side: takes buffered tx bytes as a fresh Buffer (or null when none),
   * at most `maxBytes` of them: an FT primary takes only what the backup has
   * acknowledged.
   */
  txTake(maxBytes = Infinity): Buffer | null {
    const tail = Atomics.load(this.h, H_TX_TAIL) >>> 0;
    const n = Math.min(this.txBuffered(), maxBytes);
    if (n <= 0) return null;
    const out = Buffer.allocUnsafe(n);
    copyFromRing(this.tx, tail, out);
    Atomics.store(this.h, H_TX_TAIL, (tail + n) | 0);
    return out;
  }

  txFlags(): number {
    return Atomics.load(this.h, H_TX_FLAGS);
  }
  setTxFlag(flag: number): void {
    Atomics.or(this.h, H_TX_FLAGS, flag);
  }
  clearTxFlag(flag: number): void {
    Atomics.and(this.h, H_TX_FLAGS, ~flag);
  }
}

/**
 * The control block shared by one VM's vCPU and its I/O side.
 *
 * WAKE is the word the vCPU sleeps on; the I/O side bumps it after any change
 * the vCPU might be waiting for. IO is the word the I/O side waits on
 * (Atomics.waitAsync); the vCPU bumps it after producing work. MSG counts
 * messages the I/O side has posted to the vCPU's port, so the vCPU drains its
 * port (receiveMessageOnPort) only when something is there. STOP asks the
 * vCPU to stop at its next host call. VCPU_WAITING and IO_WAITING are raised
 * by a side just before it sleeps; whoever flips one back to 0 sends the
 * single notify, so a burst of events costs one wake-up.
 */
export const CtlSlot = {
  WAKE: 0,
  IO: 1,
  MSG: 2,
  STOP: 3,
  VCPU_WAITING: 4,
  IO_WAITING: 5,
  /** Snapshots asked for so far (a counter): the vCPU takes one at its next host call's entry. */
  SNAPSHOT: 6,
  /** Thaws asked for (a counter): the vCPU deletes the frozen copy of the disk of the last snapshot. */
  THAW: 7,
  /**
   * The guest's memory size in 64 KiB pages as the vCPU last saw it (when it
   * waited): what a snapshot's staging buffer must hold.
   */
  MEMORY_PAGES: 8,
} as const;
const CTL_SLOTS = 9;

export class Ctl {
  readonly i32: Int32Array;
  constructor(readonly sab: SharedArrayBuffer = new SharedArrayBuffer(CTL_SLOTS * 4)) {
    this.i32 = new Int32Array(sab);
  }
  /** Wakes the vCPU if it sleeps; safe and cheap when it does not. */
  wakeVcpu(): void {
    Atomics.add(this.i32, CtlSlot.WAKE, 1);
    // Only the side that flips the hint from 1 to 0 notifies: one wake-up per sleep, not one per event.
    if (Atomics.compareExchange(this.i32, CtlSlot.VCPU_WAITING, 1, 0) === 1)
      Atomics.notify(this.i32, CtlSlot.WAKE);
  }
  /** Tells the I/O side there is work. */
  pokeIo(): void {
    Atomics.add(this.i32, CtlSlot.IO, 1);
    // Same protocol as wakeVcpu: the I/O side raises IO_WAITING before it compares IO
    // in Atomics.waitAsync, so skipping the notify while it is busy loses no wake-up.
    if (Atomics.compareExchange(this.i32, CtlSlot.IO_WAITING, 1, 0) === 1)
      Atomics.notify(this.i32, CtlSlot.IO);
  }
  /** I/O side: announces that it is about to wait on IO (see pokeIo). */
  ioWaiting(on: boolean): void {
    Atomics.store(this.i32, CtlSlot.IO_WAITING, on ? 1 : 0);
  }
  wakeSeq(): number {
    return Atomics.load(this.i32, CtlSlot.WAKE);
  }
  /**
   * vCPU: sleeps until WAKE moves past `seen` or the timeout passes. The
   * VCPU_WAITING hint lets the I/O side skip notify calls while the vCPU runs.
   */
  waitVcpu(seen: number, timeoutMs: number): void {
    Atomics.store(this.i32, CtlSlot.VCPU_WAITING, 1);
    Atomics.wait(this.i32, CtlSlot.WAKE, seen, timeoutMs);
    Atomics.store(this.i32, CtlSlot.VCPU_WAITING, 0);
  }
  requestStop(reason: number): void {
    Atomics.store(this.i32, CtlSlot.STOP, reason);
    // Bump WAKE unconditionally and notify, so a vCPU about to sleep sees the change.
    Atomics.add(this.i32, CtlSlot.WAKE, 1);
    Atomics.notify(this.i32, CtlSlot.WAKE);
  }
  stopRequested(): number {
    return Atomics.load(this.i32, CtlSlot.STOP);
  }
  /** Asks the vCPU for a snapshot at its next host call's entry (a blocked call is restarted). */
  requestSnapshot(): void {
    Atomics.add(this.i32, CtlSlot.SNAPSHOT, 1);
    Atomics.add(this.i32, CtlSlot.WAKE, 1);
    Atomics.notify(this.i32, CtlSlot.WAKE);
  }
  snapshotRequests(): number {
    return Atomics.load(this.i32, CtlSlot.SNAPSHOT);
  }
  /** Asks the vCPU to drop the frozen disk of the last snapshot (it was copied away). */
  requestThaw(): void {
    Atomics.add(this.i32, CtlSlot.THAW, 1);
    Atomics.add(this.i32, CtlSlot.WAKE, 1);
    Atomics.notify(this.i32, CtlSlot.WAKE);
  }
  /** vCPU: the guest's memory is this many pages now. */
  publishMemoryPages(pages: number): void {
    Atomics.store(this.i32, CtlSlot.MEMORY_PAGES, pages);
  }
  memoryPages(): number {
    return Atomics.load(this.i32, CtlSlot.MEMORY_PAGES);
  }
  thawRequests(): number {
    return Atomics.load(this.i32, CtlSlot.THAW);
  }
}
