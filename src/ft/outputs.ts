/**
 * OutputLedger: the VM's outputs as one SHA-256, in the order the guest made
 * them. Outputs are exactly what DESIGN.md §3's Output Rule holds back: bytes
 * accepted by a socket send or a stdout/stderr write, socket shutdowns, and
 * socket closes.
 *
 * Each output enters the hash framed as (docs/LOG-FORMAT.md):
 *   kind u8 (1 data, 2 shutdown, 3 close) | fd u32 LE | n u32 LE | bytes
 * where n is the byte count for data and the `how` flags for a shutdown.
 *
 * Record and replay feed the same ledger, so a faithful replay prints the
 * same outputSha256 without emitting anything (unless asked to show it).
 */
import { createHash, type Hash } from 'node:crypto';

export const OutputKind = { DATA: 1, SHUTDOWN: 2, CLOSE: 3 } as const;

/** Receives outputs for display (replay --show-output). */
export type OutputObserver = (kind: number, fd: number, bytes: Uint8Array | null, how: number) => void;

/**
 * Outputs are staged here and hashed in pieces of this size: one native hash
 * call per few KiB instead of two or three per send, which a busy server
 * makes for every response.
 */
const STAGE_BYTES = 16 * 1024;

export class OutputLedger {
  private readonly h: Hash = createHash('sha256');
  private readonly stage = Buffer.allocUnsafe(STAGE_BYTES);
  private staged = 0;
  count = 0;
  bytes = 0;

  constructor(private readonly observer: OutputObserver | null = null) {}

  private put(b: Uint8Array): void {
    if (b.byteLength > STAGE_BYTES - this.staged) {
      this.drain();
      if (b.byteLength > STAGE_BYTES) {
        this.h.update(b);
        return;
      }
    }
    this.stage.set(b, this.staged);
    this.staged += b.byteLength;
  }

  private drain(): void {
    if (this.staged > 0) this.h.update(this.stage.subarray(0, this.staged));
    this.staged = 0;
  }

  private frame(kind: number, fd: number, n: number): void {
    if (STAGE_BYTES - this.staged < 9) this.drain();
    const at = this.staged;
    this.stage[at] = kind;
    this.stage.writeUInt32LE(fd >>> 0, at + 1);
    this.stage.writeUInt32LE(n >>> 0, at + 5);
    this.staged += 9;
    this.count++;
  }

  /** The first n bytes spread over `views` were accepted for output on fd. */
  data(fd: number, views: readonly Uint8Array[], n: number): void {
    if (n === 0) return;
    this.frame(OutputKind.DATA, fd, n);
    this.bytes += n;
    let left = n;
    for (const v of views) {
      if (left <= 0) break;
      const k = Math.min(left, v.byteLength);
      const piece = k === v.byteLength ? v : v.subarray(0, k);
      this.put(piece);
      this.observer?.(OutputKind.DATA, fd, piece, 0);
      left -= k;
    }
  }

  shutdown(fd: number, how: number): void {
    this.frame(OutputKind.SHUTDOWN, fd, how);
    this.observer?.(OutputKind.SHUTDOWN, fd, null, how);
  }

  close(fd: number): void {
    this.frame(OutputKind.CLOSE, fd, 0);
    this.observer?.(OutputKind.CLOSE, fd, null, 0);
  }

  /** The hex digest; the ledger cannot be used afterwards. */
  digest(): string {
    this.drain();
    return this.h.digest('hex');
  }
}
