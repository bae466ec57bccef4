/**
 * The coordinator: the cluster's arbiter and the home of its desired state.
 *
 * Role: a small versioned key-value store with compare-and-set, which is all
 * the cluster needs from an arbiter. Two backends implement it, `file:DIR`
 * (test-and-set on shared storage, the way VMware FT arbitrates) and
 * `etcd:HOST:PORT[,…]` (etcd v3 transactions); one conformance suite
 * (test/conformance/) runs against both.
 *
 * Invariants every backend keeps:
 * - put() with `expect` a version or 'absent' is an atomic test-and-set:
 *   among concurrent callers that expect the same version, from any number
 *   of processes, at most one gets `ok: true` (exactly one when none of them
 *   is cut off); the others get a 'conflict', or 'unavailable' when they
 *   cannot know the outcome (a connection lost after sending, a file: writer
 *   paused across a garbage collection). 'conflict' always means "you lost".
 * - A value read is one that some put() wrote, whole: records are never
 *   torn, even by a crash in the middle of a write.
 * - A put() that returned ok is durable (fsynced, or committed by etcd's
 *   quorum) before it returns.
 * - Versions are opaque tokens: compare them only for equality. A key that
 *   is deleted and created again gets a version never seen before for it.
 * - Nothing here depends on wall-clock time or file ages: a paused process
 *   that wakes up late still loses every test-and-set it should lose.
 * - An unreachable or failing store is an expected state: every call returns
 *   `{ ok: false, error: { code: 'unavailable' } }` within `opTimeoutMs`
 *   instead of throwing or hanging.
 *
 * Keys are '/'-separated paths of [A-Za-z0-9._-] segments (see KEY_RE);
 * values are JSON-serialisable objects of at most VALUE_BYTES_MAX bytes.
 */

/** A key: segments of letters, digits, '.', '_' and '-', joined by '/'. No leading or trailing '/'. */
export const KEY_RE = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(\/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,7}$/;
/** The largest value, as UTF-8 JSON. Desired state is small; big blobs (modules, disks) never go here. */
export const VALUE_BYTES_MAX = 64 * 1024;
/** Default time limit of one coordinator call. */
export const COORD_OP_TIMEOUT_MS_DEFAULT = 2000;

export type CoordErrorCode =
  /** The store could not be reached or did not answer in time. Nothing is known about the outcome of a write. */
  | 'unavailable'
  /** The compare failed: the key's version is not the one expected. */
  | 'conflict'
  /** The caller's input is invalid (bad key, value too big, not JSON). */
  | 'invalid'
  /** The store answered with something it should never hold (a damaged record). */
  | 'corrupt';

export interface CoordError {
  code: CoordErrorCode;
  message: string;
}

export type CoordResult<T> = { ok: true; value: T } | { ok: false; error: CoordError };

export interface Versioned<T = unknown> {
  key: string;
  value: T;
  version: string;
}

/** What a put() compares before it writes. */
export type Expect =
  /** The key must not exist. */
  | 'absent'
  /** No compare: last writer wins. Only for records a single writer owns. */
  | 'any'
  /** The key must exist with exactly this version. */
  | { version: string };

export interface Coordinator {
  /** The string it was opened from, e.g. "file:/var/lib/lockstep/coord". */
  readonly description: string;

  get<T = unknown>(key: string): Promise<CoordResult<Versioned<T> | null>>;

  /** Every key under `prefix + '/'` (recursively), sorted by key. */
  list<T = unknown>(prefix: string): Promise<CoordResult<Versioned<T>[]>>;

  /** Writes `value` if the compare holds; returns the new version. */
  put(key: string, value: unknown, expect: Expect): Promise<CoordResult<{ version: string }>>;

  /** Deletes the key if the compare holds ('absent' is invalid here). Deleting a missing key with 'any' is ok. */
  delete(key: string, expect: Exclude<Expect, 'absent'>): Promise<CoordResult<void>>;

  /** Releases connections and handles. Idempotent. */
  close(): Promise<void>;
}

export function coordError(code: CoordErrorCode, message: string): { ok: false; error: CoordError } {
  return { ok: false, error: { code, message } };
}
