/**
 * GuestMemory: the only way host code reads or writes a guest's linear memory.
 *
 * Invariants:
 * - Every access is bounds-checked; an out-of-range pointer throws GuestFault,
 *   which the host-call gate turns into errno FAULT. The host never throws a
 *   RangeError into the guest.
 * - Every byte the host writes into guest memory goes through a method here
 *   that notes the written range in the write journal when journaling is on.
 *   The recorder relies on this: a host call's effect is its return value plus
 *   exactly the journaled ranges, so replay can rebuild it (DESIGN.md §2).
 * - Views are refreshed lazily when memory.grow detaches the old buffer.
 */

export class GuestFault extends Error {
  constructor(
    readonly ptr: number,
    readonly len: number,
  ) {
    super(`guest pointer out of bounds: ${ptr}+${len}`);
  }
}

/** A request the host refuses as invalid (errno INVAL), such as too many iovecs. */
export class GuestInval extends Error {
  constructor() {
    super('invalid argument');
  }
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

export class GuestMemory {
  private buffer: ArrayBuffer;
  private u8: Uint8Array;
  private dv: DataView;
  /**
   * Ranges written since the journal was last reset, as flat (ptr, len) pairs,
   * or null when not journaling. Flat numbers keep the recorder's hot path free
   * of allocations.
   */
  private journal: number[] | null = null;

  constructor(private readonly memory: WebAssembly.Memory) {
    this.buffer = memory.buffer;
    this.u8 = new Uint8Array(this.buffer);
    this.dv = new DataView(this.buffer);
  }

  /** Re-reads memory.buffer if a memory.grow replaced it. Cheap; called at each host-call entry. */
  refresh(): void {
    if (this.memory.buffer !== this.buffer) {
      this.buffer = this.memory.buffer;
      this.u8 = new Uint8Array(this.buffer);
      this.dv = new DataView(this.buffer);
    }
  }

  get byteLength(): number {
    return this.u8.byteLength;
  }

  /** Starts noting written ranges (used by the recorder and the replayer). */
  startJournal(): void {
    this.journal = [];
  }

  /** Forgets the ranges noted so far (at each host call's entry). */
  resetJournal(): void {
    if (this.journal !== null) this.journal.length = 0;
  }

  /** The ranges noted since the last reset, as (ptr, len) pairs; valid until the next reset. */
  journalPairs(): readonly number[] {
    return this.journal ?? [];
  }

  check(ptr: number, len: number): void {
    // Pointers arrive as i32 and may be negative when the guest meant a high u32.
    if (ptr < 0 || len < 0 || ptr + len > this.u8.byteLength) throw new GuestFault(ptr >>> 0, len);
  }

  private noteWrite(ptr: number, len: number): void {
    if (this.journal !== null && len > 0) this.journal.push(ptr, len);
  }

  /** Marks a range as written by code that wrote through a view from `view()` (e.g. a file read). */
  noteExternalWrite(ptr: number, len: number): void {
    this.check(ptr, len);
    this.noteWrite(ptr, len);
  }

  u8At(ptr: number): number {
    this.check(ptr, 1);
    return this.u8[ptr]!;
  }
  u16(ptr: number): number {
    this.check(ptr, 2);
    return this.dv.getUint16(ptr, true);
  }
  u32(ptr: number): number {
    this.check(ptr, 4);
    return this.dv.getUint32(ptr, true);
  }
  u64(ptr: number): bigint {
    this.check(ptr, 8);
    return this.dv.getBigUint64(ptr, true);
  }

  setU8(ptr: number, v: number): void {
    this.check(ptr, 1);
    this.u8[ptr] = v;
    this.noteWrite(ptr, 1);
  }
  setU16(ptr: number, v: number): void {
    this.check(ptr, 2);
    this.dv.setUint16(ptr, v, true);
    this.noteWrite(ptr, 2);
  }
  setU32(ptr: number, v: number): void {
    this.check(ptr, 4);
    this.dv.setUint32(ptr, v >>> 0, true);
    this.noteWrite(ptr, 4);
  }
  setU64(ptr: number, v: bigint): void {
    this.check(ptr, 8);
    this.dv.setBigUint64(ptr, BigInt.asUintN(64, v), true);
    this.noteWrite(ptr, 8);
  }

  /** A live view of guest memory. Writes through it must be noted with noteExternalWrite. */
  view(ptr: number, len: number): Uint8Array {
    this.check(ptr, len);
    return this.u8.subarray(ptr, ptr + len);
  }

  /** A copy of guest bytes, safe to keep after the host call returns. */
  copy(ptr: number, len: number): Uint8Array {
    this.check(ptr, len);
    return this.u8.slice(ptr, ptr + len);
  }

  write(ptr: number, bytes: Uint8Array): void {
    this.check(ptr, bytes.byteLength);
    this.u8.set(bytes, ptr);
    this.noteWrite(ptr, bytes.byteLength);
  }

  fill(ptr: number, len: number, value: number): void {
    this.check(ptr, len);
    this.u8.fill(value, ptr, ptr + len);
    this.noteWrite(ptr, len);
  }

  /** Reads a UTF-8 string; returns null if it is not valid UTF-8 (the caller answers ILSEQ). */
  string(ptr: number, len: number): string | null {
    this.check(ptr, len);
    try {
      return utf8Decoder.decode(this.u8.subarray(ptr, ptr + len));
    } catch {
      return null;
    }
  }

  /** Reads an iovec/ciovec array into views of guest memory. */
  iovecs(ptr: number, count: number): Uint8Array[] {
    if (count < 0 || count > IOVEC_COUNT_MAX) throw new GuestInval();
    const out: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const buf = this.u32(ptr + i * 8);
      const len = this.u32(ptr + i * 8 + 4);
      out.push(this.view(buf, len));
    }
    return out;
  }

  /** The guest pointer at which an iovec view (from iovecs()) starts. */
  offsetOf(view: Uint8Array): number {
    return view.byteOffset;
  }

  /** A snapshot of whole memory for hashing; callers exclude regions they own. */
  whole(): Uint8Array {
    return this.u8;
  }
}

/** Matches Linux's IOV_MAX: a guest cannot make the host walk an unbounded iovec list. */
export const IOVEC_COUNT_MAX = 1024;

/** The one UTF-8 encoder used for both sizes and bytes of args and environ. */
export function encodeUtf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}
