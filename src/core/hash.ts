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

/**
 * Mixes bytes in four at a time (one multiply per word): arguments such as a
 * poll's subscription array are hashed at every call, so this is on the
 * recorder's hot path.
 */
export function hashBytes(h: number, b: Uint8Array): number {
  const n = b.byteLength;
  const words = n - (n % 4);
  let i = 0;
  for (; i < words; i += 4) {
    h = Math.imul(h ^ (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)), FNV_PRIME);
  }
  for (; i < n; i++) h = Math.imul(h ^ b[i]!, FNV_PRIME);
  return Math.imul(h ^ n, FNV_PRIME);
}

/** Folds a bigint argument in as two words. */
export function hashBig(h: number, v: bigint): number {
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
