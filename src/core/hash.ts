/**
 * Short non-cryptographic hashes for divergence detection: a backup compares
 * the hash of each host call's arguments (and of the memory a performed call
 * wrote) with the primary's. They detect accidents, not attackers; the log's
 * frames carry CRC32 and the summary carries SHA-256.
 *
 * The mixer is FNV-1a over 32-bit words (Math.imul keeps it in int32), with a
 * final avalanche so that the low 16 bits, which the log keeps, depend on
 * every input bit.
 */

const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;

export function hashStart(): number {
  return FNV_OFFSET;
}

export function hashWord(h: number, w: number): number {
  return Math.imul(h ^ (w | 0), FNV_PRIME);
}

/** Inputs at least this long are mixed in four independent lanes (see hashBytes). */
const LANES_MIN_BYTES = 64;
/** From this length an aligned input is read through an Int32Array view (creating one costs ~100 ns). */
const VIEW_MIN_BYTES = 512;

/** A little-endian 32-bit word of `b` at `i`. */
function wordAt(b: Uint8Array, i: number): number {
  return b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24);
}

/**
 * Mixes bytes in: inputs of 64 bytes or more go through four lanes that
 * each take every fourth little-endian 32-bit word of each 16-byte block
 * (the multiplies then run in parallel), folded into h in lane order; then
 * the remaining whole words, then the remaining bytes, then the length.
 * Arguments such as a poll's subscription array and every socket payload
 * are hashed at every call, so this is on the recorder's hot path.
 */
export function hashBytes(h: number, b: Uint8Array): number {
  return hashRange(h, b, 0, b.byteLength);
}

/**
 * hashBytes of b[start, start + n) without making a view of it (the recorder
 * hashes ranges of guest memory at every call; views are garbage).
 */
export function hashRange(h: number, b: Uint8Array, start: number, n: number): number {
  let i = start;
  const end = start + n;
  if (n >= LANES_MIN_BYTES) {
    let l0 = h;
    let l1 = h ^ 0x9e3779b9;
    let l2 = h ^ 0x85ebca6b;
    let l3 = h ^ 0xc2b2ae35;
    const blocksEnd = start + n - (n % 16);
    const at = b.byteOffset + start;
    if (n >= VIEW_MIN_BYTES && (at & 3) === 0 && LITTLE_ENDIAN) {
      // Aligned and long enough to pay for a view: read whole words straight from memory.
      const w = new Int32Array(b.buffer, at, (blocksEnd - start) >>> 2);
      for (let k = 0; k < w.length; k += 4) {
        l0 = Math.imul(l0 ^ w[k]!, FNV_PRIME);
        l1 = Math.imul(l1 ^ w[k + 1]!, FNV_PRIME);
        l2 = Math.imul(l2 ^ w[k + 2]!, FNV_PRIME);
        l3 = Math.imul(l3 ^ w[k + 3]!, FNV_PRIME);
      }
    } else {
      for (let k = start; k < blocksEnd; k += 16) {
        l0 = Math.imul(l0 ^ wordAt(b, k), FNV_PRIME);
        l1 = Math.imul(l1 ^ wordAt(b, k + 4), FNV_PRIME);
        l2 = Math.imul(l2 ^ wordAt(b, k + 8), FNV_PRIME);
        l3 = Math.imul(l3 ^ wordAt(b, k + 12), FNV_PRIME);
      }
    }
    h = Math.imul(h ^ l0, FNV_PRIME);
    h = Math.imul(h ^ l1, FNV_PRIME);
    h = Math.imul(h ^ l2, FNV_PRIME);
    h = Math.imul(h ^ l3, FNV_PRIME);
    i = blocksEnd;
  }
  for (; i + 4 <= end; i += 4) h = Math.imul(h ^ wordAt(b, i), FNV_PRIME);
  for (; i < end; i++) h = Math.imul(h ^ b[i]!, FNV_PRIME);
  return Math.imul(h ^ n, FNV_PRIME);
}

/** Int32Array reads host-endian words; the lanes' fast path is only taken where that is little-endian. */
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;

/**
 * Folds a bigint argument in as two words: the low and high halves of its
 * 64-bit two's complement. Values within 2^53 (nearly all) take a path
 * without BigInt arithmetic, which would allocate at every call.
 */
export function hashBig(h: number, v: bigint): number {
  const n = Number(v);
  if (Number.isSafeInteger(n)) {
    h = hashWord(h, n >>> 0);
    return hashWord(h, Math.floor(n / 4294967296));
  }
  const u = BigInt.asUintN(64, v);
  h = hashWord(h, Number(u & 0xffffffffn));
  return hashWord(h, Number(u >> 32n));
}

/** The final 16-bit value kept in a log record. */
export function hashFinish16(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h ^ (h >>> 16)) & 0xffff;
}
