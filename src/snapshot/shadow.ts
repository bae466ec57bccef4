/**
 * ShadowDiff: finds the memory blocks that changed since the last snapshot by comparing linear
 * memory with a shadow copy of it, so incremental snapshots need no write tracking in the guest
 * and no hashing of every block.
 *
 * Role: the snapshotting host keeps one ShadowDiff per VM. After a full snapshot it calls
 * reset(memory); at each incremental snapshot diff(memory) returns the blocks to write (as
 * SnapshotWriter.blocks' list) and brings the shadow up to date, so the next diff is relative to
 * this snapshot.
 *
 * Invariants:
 * - After reset(m) or diff(m), the shadow equals m byte for byte.
 * - diff returns block indexes in increasing order; a block is listed exactly when some byte in
 *   it differs from the shadow, or when it lies beyond the shadow (memory grew).
 * - Linear memory never shrinks; a smaller memory is a host bug and asserts.
 * - The shadow costs as much memory as the guest's linear memory.
 */
import { SNAPSHOT_BLOCK_BYTES } from './format.js';

/** Blocks compared at once before descending to single blocks: most of memory is unchanged. */
const SPAN_BLOCKS = 16;

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`shadow diff: assertion failed: ${message}`);
}

function asBuffer(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

export class ShadowDiff {
  private shadow: Buffer = Buffer.alloc(0);
  readonly blockBytes: number;

  /** The shadow starts empty, so a first diff lists every block. */
  constructor(options: { blockBytes?: number } = {}) {
    this.blockBytes = options.blockBytes ?? SNAPSHOT_BLOCK_BYTES;
    check(
      Number.isInteger(this.blockBytes) &&
        this.blockBytes > 0 &&
        (this.blockBytes & (this.blockBytes - 1)) === 0,
      'blockBytes is a power of two',
    );
  }

  /** Size of the memory the shadow copies. */
  get memoryBytes(): number {
    return this.shadow.byteLength;
  }

  /** Makes the shadow a copy of `memory` (after a full snapshot, or to start over). */
  reset(memory: Uint8Array): void {
    this.checkSize(memory);
    if (this.shadow.byteLength !== memory.byteLength) this.shadow = Buffer.allocUnsafeSlow(memory.byteLength);
    this.shadow.set(memory);
  }

  /**
   * The indexes of the blocks of `memory` that differ from the shadow, in increasing order, with
   * blocks beyond the shadow (a grown memory) counted as changed; the shadow is updated to
   * `memory`.
   */
  diff(memory: Uint8Array): number[] {
    this.checkSize(memory);
    check(memory.byteLength >= this.shadow.byteLength, 'memory does not shrink');
    const bs = this.blockBytes;
    const mem = asBuffer(memory);
    const old = this.shadow;
    const changed: number[] = [];
    // The shadow's part: compare spans of blocks with one memcmp each (Buffer#compare with
    // ranges allocates nothing), and only the spans that differ block by block.
    const spanBytes = bs * SPAN_BLOCKS;
    for (let at = 0; at < old.byteLength; at += spanBytes) {
      const end = Math.min(old.byteLength, at + spanBytes);
      if (mem.compare(old, at, end, at, end) === 0) continue;
      for (let b = at; b < end; b += bs) {
        if (mem.compare(old, b, b + bs, b, b + bs) !== 0) {
          changed.push(b / bs);
          mem.copy(old, b, b, b + bs);
        }
      }
    }
    if (memory.byteLength > old.byteLength) {
      for (let b = old.byteLength; b < memory.byteLength; b += bs) changed.push(b / bs);
      const grown = Buffer.allocUnsafeSlow(memory.byteLength);
      grown.set(memory);
      this.shadow = grown;
    }
    return changed;
  }

  private checkSize(memory: Uint8Array): void {
    check(memory.byteLength % this.blockBytes === 0, `memory is whole blocks of ${this.blockBytes} bytes`);
  }
}
