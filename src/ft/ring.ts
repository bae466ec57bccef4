/**
 * ByteRing: a bounded single-producer/single-consumer byte stream between two
 * threads, in one SharedArrayBuffer. The recorder's vCPU writes log frames
 * into one for the main thread to store or ship; the replayer's main thread
 * writes validated frames into one for the vCPU to consume.
 *
 *   byte 0              HEADER_BYTES             + capBytes
 *   +-------------------+------------------------+
 *   | Int32 slots       | ring bytes             |
 *   +-------------------+------------------------+
 *
 * Invariants:
 * - HEAD and TAIL are running byte counts modulo 2^32 written by one side
 *   each (producer, consumer) after the bytes they cover; capacity is a power
 *   of two, so (HEAD - TAIL) >>> 0 is the number of buffered bytes.
 * - CLOSED is set once by the producer after its last byte; a consumer that
 *   sees it with nothing buffered has reached the end of the stream.
 * - A side that sleeps raises its WAITING hint first; the other side notifies
 *   only when it flips the hint back, so a busy pair costs no notify calls.
 * - The ring is the bound: a producer that outruns its consumer waits.
 */

import { copyFromRing, copyIntoRing } from '../core/ring-bytes.js';

const S_HEAD = 0;
const S_TAIL = 1;
const S_CLOSED = 2;
const S_CONSUMER_WAITING = 3;
const S_PRODUCER_WAITING = 4;
const S_CAP = 5;
const SLOTS = 8;
const HEADER_BYTES = SLOTS * 4;

/** Default capacity: several frames' worth, so a short stall of the consumer does not stop the guest. */
export const RING_BYTES_DEFAULT = 8 * 1024 * 1024;

export class ByteRing {
  readonly sab: SharedArrayBuffer;
  private readonly i32: Int32Array;
  private readonly data: Uint8Array;
  readonly capBytes: number;

  private constructor(sab: SharedArrayBuffer) {
    this.sab = sab;
    this.i32 = new Int32Array(sab, 0, SLOTS);
    this.capBytes = this.i32[S_CAP]!;
    this.data = new Uint8Array(sab, HEADER_BYTES, this.capBytes);
  }

  static create(capBytes = RING_BYTES_DEFAULT): ByteRing {
    if (!(capBytes >= 16 && (capBytes & (capBytes - 1)) === 0 && capBytes <= 1 << 30))
      throw new Error(`ring capacity must be a power of two: ${capBytes}`);
    const sab = new SharedArrayBuffer(HEADER_BYTES + capBytes);
    new Int32Array(sab, 0, SLOTS)[S_CAP] = capBytes;
    return new ByteRing(sab);
  }

  static attach(sab: SharedArrayBuffer): ByteRing {
    return new ByteRing(sab);
  }

  buffered(): number {
    return (Atomics.load(this.i32, S_HEAD) - Atomics.load(this.i32, S_TAIL)) >>> 0;
  }

  space(): number {
    return this.capBytes - this.buffered();
  }

  closed(): boolean {
    return Atomics.load(this.i32, S_CLOSED) !== 0;
  }

  // ---------------------------------------------------------------- producer

  /** Appends as much of `src` as fits; returns the count. Never blocks. */
  tryWrite(src: Uint8Array): number {
    const head = Atomics.load(this.i32, S_HEAD) >>> 0;
    const n = Math.min(src.byteLength, this.space());
    if (n === 0) return 0;
    copyIntoRing(this.data, head, src.subarray(0, n));
    Atomics.store(this.i32, S_HEAD, (head + n) | 0);
    this.wakeConsumer();
    return n;
  }

  /** Appends all of `src`, sleeping (Atomics.wait) while the ring is full. For worker threads. */
  writeBlocking(src: Uint8Array): void {
    let off = 0;
    while (off < src.byteLength) {
      const k = this.tryWrite(src.subarray(off));
      off += k;
      if (off === src.byteLength) break;
      const tail = Atomics.load(this.i32, S_TAIL);
      Atomics.store(this.i32, S_PRODUCER_WAITING, 1);
      if (this.space() === 0) Atomics.wait(this.i32, S_TAIL, tail, 100);
      Atomics.store(this.i32, S_PRODUCER_WAITING, 0);
    }
  }

  /** Appends all of `src`, awaiting space while the ring is full. For the main thread. */
  async writeAsync(src: Uint8Array): Promise<void> {
    let off = 0;
    while (off < src.byteLength) {
      off += this.tryWrite(src.subarray(off));
      if (off === src.byteLength) break;
      const tail = Atomics.load(this.i32, S_TAIL);
      Atomics.store(this.i32, S_PRODUCER_WAITING, 1);
      if (this.space() === 0) {
        const w = Atomics.waitAsync(this.i32, S_TAIL, tail, 100);
        if (w.async) await w.value;
      }
      Atomics.store(this.i32, S_PRODUCER_WAITING, 0);
    }
  }

  /** Resolves when there is space or after timeoutMs. For the main thread. */
  async waitWritable(timeoutMs: number): Promise<void> {
    if (this.space() > 0) return;
    const tail = Atomics.load(this.i32, S_TAIL);
    Atomics.store(this.i32, S_PRODUCER_WAITING, 1);
    if (this.space() === 0) {
      const w = Atomics.waitAsync(this.i32, S_TAIL, tail, timeoutMs);
      if (w.async) await w.value;
    }
    Atomics.store(this.i32, S_PRODUCER_WAITING, 0);
  }

  /** Marks the end of the stream (after the last write). */
  close(): void {
    Atomics.store(this.i32, S_CLOSED, 1);
    Atomics.add(this.i32, S_HEAD, 0);
    Atomics.store(this.i32, S_CONSUMER_WAITING, 0);
    Atomics.notify(this.i32, S_HEAD);
  }

  private wakeConsumer(): void {
    if (Atomics.compareExchange(this.i32, S_CONSUMER_WAITING, 1, 0) === 1) Atomics.notify(this.i32, S_HEAD);
  }

  // ---------------------------------------------------------------- consumer

  /** Copies up to dst.byteLength buffered bytes into dst; returns the count. Never blocks. */
  tryRead(dst: Uint8Array): number {
    const tail = Atomics.load(this.i32, S_TAIL) >>> 0;
    const n = Math.min(dst.byteLength, this.buffered());
    if (n === 0) return 0;
    copyFromRing(this.data, tail, dst.subarray(0, n));
    Atomics.store(this.i32, S_TAIL, (tail + n) | 0);
    if (Atomics.compareExchange(this.i32, S_PRODUCER_WAITING, 1, 0) === 1) Atomics.notify(this.i32, S_TAIL);
    return n;
  }

  /** Takes every buffered byte as a fresh Buffer, or null when none. */
  take(): Buffer | null {
    const n = this.buffered();
    if (n === 0) return null;
    const out = Buffer.allocUnsafe(n);
    this.tryRead(out);
    return out;
  }

  /**
   * Fills dst completely, sleeping while the ring is empty. Returns false if
   * the stream ended first (bytes read so far are in dst). For worker threads;
   * `interrupted` is polled while sleeping so a stop request is not missed.
   */
  readBlocking(dst: Uint8Array, interrupted: () => boolean): boolean {
    let off = 0;
    while (off < dst.byteLength) {
      off += this.tryRead(dst.subarray(off));
      if (off === dst.byteLength) break;
      if (this.closed() && this.buffered() === 0) return false;
      if (interrupted()) return false;
      const head = Atomics.load(this.i32, S_HEAD);
      Atomics.store(this.i32, S_CONSUMER_WAITING, 1);
      if (this.buffered() === 0 && !this.closed()) Atomics.wait(this.i32, S_HEAD, head, 50);
      Atomics.store(this.i32, S_CONSUMER_WAITING, 0);
    }
    return true;
  }

  /** Resolves when bytes are buffered or the stream is closed (or after timeoutMs). For the main thread. */
  async waitReadable(timeoutMs: number): Promise<void> {
    if (this.buffered() > 0 || this.closed()) return;
    const head = Atomics.load(this.i32, S_HEAD);
    Atomics.store(this.i32, S_CONSUMER_WAITING, 1);
    if (this.buffered() > 0 || this.closed()) {
      Atomics.store(this.i32, S_CONSUMER_WAITING, 0);
      return;
    }
    const w = Atomics.waitAsync(this.i32, S_HEAD, head, timeoutMs);
    if (w.async) await w.value;
    Atomics.store(this.i32, S_CONSUMER_WAITING, 0);
  }
}
