/**
 * What both coordinator backends share: checking the caller's input, and
 * bounding every call in time.
 *
 * Role: the backends (file.ts, etcd.ts) must give the same answer to the
 * same bad input, so the checks live here once. The conformance suite
 * (test/conformance/coord.test.ts) holds both backends to them.
 *
 * Invariants:
 * - A call that fails a check has written nothing: the checks run before any
 *   I/O.
 * - Version tokens are decimal strings without a leading zero on both
 *   backends, so a malformed token is 'invalid' everywhere, and a well-formed
 *   token that was never issued is a 'conflict' everywhere.
 * - Time limits use the monotonic clock (performance.now()), never the wall
 *   clock, which can jump.
 */
import { KEY_RE, VALUE_BYTES_MAX, coordError, type CoordError, type CoordResult } from './coordinator.js';

/** The shape of every version token both backends issue: a positive decimal integer. */
export const VERSION_TOKEN_RE = /^[1-9][0-9]{0,18}$/;

/** Returns an 'invalid' error if `key` is not a key (see KEY_RE), or null if it is one. */
export function checkKey(key: unknown, what = 'key'): CoordError | null {
  if (typeof key !== 'string') return { code: 'invalid', message: `${what} must be a string` };
  if (!KEY_RE.test(key)) {
    const shown = key.length > 80 ? `${key.slice(0, 80)}…` : key;
    return {
      code: 'invalid',
      message: `${what} ${JSON.stringify(shown)} is not a key: it must be 1 to 8 '/'-separated segments of [A-Za-z0-9._-] that do not start with '.'`,
    };
  }
  return null;
}

/**
 * Serialises a value to the JSON text stored for it. A value JSON cannot
 * represent (undefined, a function, a BigInt, a cycle) or one larger than
 * VALUE_BYTES_MAX is 'invalid'.
 */
export function encodeValue(value: unknown): CoordResult<string> {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (e) {
    return coordError('invalid', `the value is not JSON-serialisable: ${(e as Error).message}`);
  }
  if (typeof text !== 'string') return coordError('invalid', 'the value is not JSON-serialisable');
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > VALUE_BYTES_MAX) {
    return coordError(
      'invalid',
      `the value is ${bytes} bytes of JSON, more than the limit of ${VALUE_BYTES_MAX}`,
    );
  }
  return { ok: true, value: text };
}

/**
 * Checks an `expect` argument. 'absent' is refused where it has no meaning
 * (delete). A version token must look like one (VERSION_TOKEN_RE).
 */
export function checkExpect(expect: unknown, allowAbsent: boolean): CoordError | null {
  if (expect === 'any') return null;
  if (expect === 'absent') {
    return allowAbsent ? null : { code: 'invalid', message: "expect 'absent' has no meaning for delete" };
  }
  if (typeof expect === 'object' && expect !== null && 'version' in expect) {
    const version = (expect as { version: unknown }).version;
    if (typeof version === 'string' && VERSION_TOKEN_RE.test(version)) return null;
    return {
      code: 'invalid',
      message: `expect.version ${JSON.stringify(version)} is not a version token (a positive decimal string)`,
    };
  }
  return { code: 'invalid', message: "expect must be 'absent', 'any' or { version }" };
}

/** A point in monotonic time by which a call must have answered. */
export class Deadline {
  private readonly atMs: number;

  constructor(readonly budgetMs: number) {
    this.atMs = performance.now() + budgetMs;
  }

  remainingMs(): number {
    return Math.max(0, this.atMs - performance.now());
  }

  expired(): boolean {
    return performance.now() >= this.atMs;
  }
}

/** The error a call returns when its time limit ran out. */
export function timeoutError(what: string, opTimeoutMs: number): { ok: false; error: CoordError } {
  return coordError('unavailable', `${what}: no answer within ${opTimeoutMs} ms`);
}

/**
 * Runs `body` with a deadline of `opTimeoutMs` and returns its result, or an
 * 'unavailable' error if it has not finished by then. The body keeps running
 * in the background after a timeout (an I/O call cannot be taken back), which
 * is why 'unavailable' means "the outcome of a write is unknown". A throw
 * from the body, which would be a bug, also becomes 'unavailable' rather than
 * escaping to the caller.
 */
export function withDeadline<T>(
  what: string,
  opTimeoutMs: number,
  body: (deadline: Deadline) => Promise<CoordResult<T>>,
): Promise<CoordResult<T>> {
  // The body's own deadline comes a little earlier than the hard stop, so a body that gives up by
  // itself can say why (the last error it saw) instead of a bare timeout.
  const deadline = new Deadline(Math.max(1, opTimeoutMs - Math.min(100, Math.floor(opTimeoutMs / 10))));
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(timeoutError(what, opTimeoutMs)), opTimeoutMs);
    body(deadline).then(
      (r) => {
        clearTimeout(timer);
        resolve(r);
      },
      (e: unknown) => {
        clearTimeout(timer);
        resolve(coordError('unavailable', `${what}: ${e instanceof Error ? e.message : String(e)}`));
      },
    );
  });
}

/** Waits `ms` milliseconds; used between retries so contending callers do not spin. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
