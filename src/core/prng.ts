/**
 * Prng: a small seeded pseudo-random generator for tests and fault injection.
 *
 * Role: xoshiro128** (Blackman and Vigna), whose 128-bit state is filled from
 * the seed by splitmix32. It is fast, has no bad seeds, and needs no host
 * entropy, so a seed printed by a run is enough to draw the same sequence again.
 *
 * Invariants:
 * - Pure: the sequence depends only on the seed and the stream number.
 * - Never used for anything the guest sees as randomness: that comes from the
 *   Entropy capability (src/io/entropy.ts). This generator only decides how a
 *   hostile test network behaves.
 * - Seeds are non-negative safe integers (up to 2^53 - 1); both 32-bit halves
 *   count, and the stream number gives independent sequences per user (one
 *   per connection, say) from one seed.
 */

/** One step of splitmix32: advances `state` and returns a well-mixed 32-bit word. */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0) {
    if (!Number.isSafeInteger(seed) || seed < 0) throw new RangeError(`bad seed: ${seed}`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / 2 ** 32) >>> 0;
    const st = { s: lo };
    // Fold the high half and the stream number in through the mixer, so nearby seeds and
    // streams start far apart.
    st.s = (splitmix32(st) ^ hi) | 0;
    st.s = (splitmix32(st) ^ Math.imul(stream >>> 0, 0x632be5ab)) | 0;
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    if ((this.a | this.b | this.c | this.d) === 0) this.d = 1; // the one state xoshiro cannot leave
  }

  /** The next 32-bit unsigned integer (xoshiro128**). */
  nextU32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** A float in [0, 1). */
  next(): number {
    return this.nextU32() / 2 ** 32;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** An integer in [lo, hi], both included. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
}

/** A function returning floats in [0, 1) drawn from `new Prng(seed)`: the form randomized tests want. */
export function seededRandom(seed: number): () => number {
  const p = new Prng(seed >>> 0);
  return () => p.next();
}

/**
 * The seed of a randomized test run: LOCKSTEP_TEST_SEED when set (to replay a
 * failure), else a fresh one. Tests print it, so any failure reproduces.
 */
export function testSeed(): number {
  const env = process.env['LOCKSTEP_TEST_SEED'];
  if (env !== undefined && /^\d+$/.test(env)) return Number(env);
  return Math.floor(Math.random() * 2 ** 31);
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
