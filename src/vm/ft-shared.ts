/**
 * What the vCPU of an FT VM shares with its main thread, besides the rings of
 * its connections: the outgoing event log, the output marks of the Output
 * Rule, and a small control block.
 *
 *   log ring    vCPU -> main   RECORDS frames as `lockstep record` writes them
 *   marks ring  vCPU -> main   one MARK_BYTES entry per output (see below)
 *   control     both           THROTTLE (i32, main): while non-zero the vCPU
 *                              waits at its next host call; REPLAYED (f64,
 *                              a backup's vCPU): calls replayed so far
 *
 * A mark says: "after host call SEQ, connection CONN's tx ring head was HEAD
 * and its output flags included FLAGS". The main thread may put a
 * connection's bytes on the wire, and act on its FIN or close, only up to the
 * latest mark whose SEQ the backup has acknowledged (docs/FT.md, the Output
 * Rule). stdout and stderr are connections with the keys STDOUT_KEY and
 * STDERR_KEY.
 *
 * Invariants:
 * - The vCPU writes a mark after the bytes and flags it covers, so a reader
 *   never sees a mark ahead of its data. The log ring carries whole frames
 *   in pieces; each RECORDS frame says how many calls are complete at its end.
 * - Marks are written whole (MARK_BYTES at once) or not at all, so the reader
 *   never sees half an entry.
 */
import { ByteRing } from '../ft/ring.js';

export const MARK_BYTES = 24;
/** Connection keys of the two standard output streams. */
export const STDOUT_KEY = -1;
export const STDERR_KEY = -2;

/** Room for this many marks: beyond it the vCPU waits at its next output (the throttle of last resort). */
const MARKS_RING_BYTES = 1 << 20; // 43,690 marks
const LOG_RING_BYTES = 8 * 1024 * 1024;

const C_THROTTLE = 0; // i32 index
const C_REPLAYED_F64 = 1; // f64 index: bytes 8..15
const CONTROL_BYTES = 16;

export interface FtSharedSabs {
  log: SharedArrayBuffer;
  marks: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

export interface Mark {
  connKey: number;
  txHead: number;
  flags: number;
  seq: number;
}

export class FtShared {
  readonly log: ByteRing;
  readonly marks: ByteRing;
  private readonly i32: Int32Array;
  private readonly f64: Float64Array;
  private readonly markBuf = new Uint8Array(MARK_BYTES);
  private readonly markView = new DataView(this.markBuf.buffer);

  private constructor(readonly sabs: FtSharedSabs) {
    this.log = ByteRing.attach(sabs.log);
    this.marks = ByteRing.attach(sabs.marks);
    this.i32 = new Int32Array(sabs.control, 0, 2);
    this.f64 = new Float64Array(sabs.control, 0, 2);
  }

  static create(): FtShared {
    return new FtShared({
      log: ByteRing.create(LOG_RING_BYTES).sab,
      marks: ByteRing.create(MARKS_RING_BYTES).sab,
      control: new SharedArrayBuffer(CONTROL_BYTES),
    });
  }

  static attach(sabs: FtSharedSabs): FtShared {
    return new FtShared(sabs);
  }

  // ---- vCPU side

  /** Whether a mark fits now (the vCPU waits at its next output when not). */
  markSpace(): boolean {
    return this.marks.space() >= MARK_BYTES;
  }

  writeMark(m: Mark): boolean {
    if (!this.markSpace()) return false;
    const v = this.markView;
    v.setInt32(0, m.connKey, true);
    v.setUint32(4, m.txHead >>> 0, true);
    v.setUint32(8, m.flags >>> 0, true);
    v.setUint32(12, 0, true);
    v.setFloat64(16, m.seq, true);
    const n = this.marks.tryWrite(this.markBuf);
    if (n !== MARK_BYTES) throw new Error(`mark ring wrote ${n} of ${MARK_BYTES} bytes`);
    return true;
  }

  /**
   * A backup's vCPU: `events` calls are replayed. A plain aligned store: the
   * main thread only reports it as progress, and a stale value is merely late.
   */
  noteReplayed(events: number): void {
    this.f64[C_REPLAYED_F64] = events;
  }

  /** Calls a backup has replayed so far (progress, for lag and "protected"). */
  replayed(): number {
    return this.f64[C_REPLAYED_F64]!;
  }

  /** Marks written and not yet taken by the main thread. */
  pendingMarks(): number {
    return Math.floor(this.marks.buffered() / MARK_BYTES);
  }

  throttled(): boolean {
    return Atomics.load(this.i32, C_THROTTLE) !== 0;
  }

  /** vCPU: sleeps up to timeoutMs while the throttle is on. */
  waitThrottle(timeoutMs: number): void {
    Atomics.wait(this.i32, C_THROTTLE, 1, timeoutMs);
  }

  // ---- main side

  setThrottle(on: boolean): void {
    Atomics.store(this.i32, C_THROTTLE, on ? 1 : 0);
    if (!on) Atomics.notify(this.i32, C_THROTTLE);
  }

  /** Takes every whole mark buffered. */
  takeMarks(): Mark[] {
    const whole = this.marks.buffered() - (this.marks.buffered() % MARK_BYTES);
    if (whole === 0) return [];
    const buf = Buffer.allocUnsafe(whole);
    const n = this.marks.tryRead(buf);
    if (n !== whole) throw new Error(`mark ring read ${n} of ${whole} bytes`);
    const out: Mark[] = [];
    for (let at = 0; at < whole; at += MARK_BYTES) {
      out.push({
        connKey: buf.readInt32LE(at),
        txHead: buf.readUInt32LE(at + 4),
        flags: buf.readUInt32LE(at + 8),
        seq: buf.readDoubleLE(at + 16),
      });
    }
    return out;
  }
}
