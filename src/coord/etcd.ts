/**
 * The `etcd:HOST:PORT[,…]` coordinator: etcd v3 transactions, for clusters
 * that span machines.
 *
 * Role: maps the Coordinator interface onto etcd's KV API through the npm
 * `etcd3` client, using its low-level KV RPCs (range, txn, deleteRange) so
 * every compare is explicit.
 *
 * Invariants:
 * - Every key lives under a namespace ("/lockstep/" by default), so the store
 *   can share an etcd cluster with others, and a list of prefix P is the
 *   range [ns + P + "/", ns + P + "0"): '0' is the byte after '/', so a
 *   sibling with a longer name ("vms/ab" next to "vms/a") is never included.
 * - A version is the key's mod_revision, as a decimal string. etcd's revision
 *   counter only grows, so a key deleted and created again never gets a
 *   version it had before.
 * - Test-and-set is one transaction: if mod_revision(key) == version (or, for
 *   'absent', create_revision(key) == 0) then put, else read the key. etcd
 *   commits it through its quorum before answering, so a success is durable.
 * - The client does no hidden retrying. etcd3's fault-handling policies are
 *   replaced by a pass-through, every RPC carries a gRPC deadline, and this
 *   module retries on its own, within the call's deadline. A retried write
 *   whose earlier attempt may have been applied recognises its own write by a
 *   random nonce stored with the value; if it cannot tell, it answers
 *   'unavailable' (outcome unknown), never a false 'conflict' or 'ok'.
 * - Stored values are an envelope {"lockstep":1,"w":NONCE,"value":VALUE}; any
 *   other content under the namespace reads as 'corrupt'.
 * - Expected failures are returned as values; close() never waits on the
 *   network.
 */
import { randomBytes } from 'node:crypto';
import {
  Etcd3,
  isRecoverableError,
  type ICompare,
  type IKeyValue,
  type IOptions,
  type IRequestOp,
  type ITxnResponse,
} from 'etcd3';
import {
  COORD_OP_TIMEOUT_MS_DEFAULT,
  coordError,
  type CoordResult,
  type Coordinator,
  type Expect,
  type Versioned,
} from './coordinator.js';
import { Deadline, checkExpect, checkKey, encodeValue, sleep, withDeadline } from './common.js';

export const ETCD_NAMESPACE_DEFAULT = '/lockstep/';
/** The envelope's format version. */
const ENVELOPE_VERSION = 1;
/** etcd revisions are int64: a larger token was never issued. */
const REVISION_MAX = 2n ** 63n - 1n;

/** A version token etcd could never have issued, which therefore compares unequal to every key. */
function neverIssued(expect: Expect): boolean {
  return typeof expect === 'object' && BigInt(expect.version) > REVISION_MAX;
}

const expectText = (expect: Expect): string => (typeof expect === 'object' ? expect.version : expect);

type Policy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/**
 * A cockatiel-compatible policy that runs the call once and passes its result
 * or error through. etcd3's defaults (three retries, and a circuit breaker
 * that refuses calls for five seconds after three failures) would hide an
 * outage for longer than a call's time limit and keep refusing after etcd is
 * back; this module retries by itself, within the deadline.
 */
function passThroughPolicy(): Policy {
  const noEvent = () => ({ dispose: () => undefined });
  const policy = {
    onSuccess: noEvent,
    onFailure: noEvent,
    execute: async <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T, signal?: AbortSignal) =>
      fn({ signal: signal ?? new AbortController().signal }),
  };
  return policy as unknown as Policy;
}

export interface EtcdCoordinatorOptions {
  /** Time limit of every call; COORD_OP_TIMEOUT_MS_DEFAULT if absent. */
  opTimeoutMs?: number;
  /** Prefix of every key in etcd; must start and end with '/'. ETCD_NAMESPACE_DEFAULT if absent. */
  namespace?: string;
  /** The text `description` shows; "etcd:" + the endpoints if absent. */
  description?: string;
  /** Whether open checks, with one read, that etcd answers (default true). */
  probe?: boolean;
}

/**
 * Creates a client for `endpoints` ("HOST:PORT" each) and, unless
 * `probe: false`, checks that etcd answers within the time limit, so an
 * unreachable coordinator is reported when it is opened.
 */
export async function openEtcdCoordinator(
  endpoints: string[],
  opts: EtcdCoordinatorOptions = {},
): Promise<CoordResult<EtcdCoordinator>> {
  const namespace = opts.namespace ?? ETCD_NAMESPACE_DEFAULT;
  if (!namespace.startsWith('/') || !namespace.endsWith('/')) {
    return coordError(
      'invalid',
      `the etcd namespace ${JSON.stringify(namespace)} must start and end with '/'`,
    );
  }
  if (endpoints.length === 0) return coordError('invalid', 'no etcd endpoint given');
  const coord = new EtcdCoordinator(
    endpoints,
    namespace,
    opts.opTimeoutMs ?? COORD_OP_TIMEOUT_MS_DEFAULT,
    opts.description ?? `etcd:${endpoints.join(',')}`,
  );
  if (opts.probe === false) return { ok: true, value: coord };
  const probe = await coord.probe();
  if (!probe.ok) {
    await coord.close();
    return probe;
  }
  return { ok: true, value: coord };
}

/** The outcome of one RPC attempt loop. */
type Attempt<T> = { ok: true; value: T } | { ok: false; message: string; permanent: boolean };

export class EtcdCoordinator implements Coordinator {
  private readonly client: Etcd3;
  private closed = false;

  /** Use openEtcdCoordinator(); the constructor only creates the (lazy) client. */
  constructor(
    readonly endpoints: string[],
    readonly namespace: string,
    private readonly opTimeoutMs: number,
    readonly description: string,
  ) {
    this.client = new Etcd3({
      hosts: endpoints.map((e) => `http://${e}`),
      // etcd3 1.1.2 declares dialTimeout but does not use it; the per-call deadline is what bounds connecting.
      dialTimeout: opTimeoutMs,
      faultHandling: { host: () => passThroughPolicy(), global: passThroughPolicy() },
      grpcOptions: {
        // Reconnect soon after etcd comes back, instead of gRPC's default backoff of up to two minutes.
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        // A private subchannel pool, so a fresh channel never inherits a backoff from a dead one.
        'grpc.use_local_subchannel_pool': 1,
        // The coordinator is reached directly; an http_proxy in the environment must not capture it.
        'grpc.enable_http_proxy': 0,
      },
    });
  }

  // -- public API --------------------------------------------------------------------------------

  async get<T = unknown>(key: string): Promise<CoordResult<Versioned<T> | null>> {
    const bad = checkKey(key);
    if (bad) return { ok: false, error: bad };
    return this.run<Versioned<T> | null>(`get ${key}`, async (dl) => {
      const r = await this.attempt(dl, (deadline) =>
        this.client.kv.range({ key: this.etcdKey(key) }, { deadline }),
      );
      if (!r.ok) return coordError('unavailable', `get ${key}: ${r.message}`);
      const kv = r.value.kvs[0];
      if (kv === undefined) return { ok: true, value: null };
      return this.decode<T>(kv);
    });
  }

  async list<T = unknown>(prefix: string): Promise<CoordResult<Versioned<T>[]>> {
    const bad = checkKey(prefix, 'prefix');
    if (bad) return { ok: false, error: bad };
    return this.run(`list ${prefix}`, async (dl) => {
      const from = this.etcdKey(`${prefix}/`);
      const to = this.etcdKey(`${prefix}0`);
      const r = await this.attempt(dl, (deadline) =>
        this.client.kv.range(
          { key: from, range_end: to, sort_order: 'Ascend', sort_target: 'Key' },
          { deadline },
        ),
      );
      if (!r.ok) return coordError('unavailable', `list ${prefix}: ${r.message}`);
      const out: Versioned<T>[] = [];
      for (const kv of r.value.kvs) {
        const d = this.decode<T>(kv);
        if (!d.ok) return d;
        out.push(d.value);
      }
      return { ok: true, value: out };
    });
  }

  async put(key: string, value: unknown, expect: Expect): Promise<CoordResult<{ version: string }>> {
    const bad = checkKey(key) ?? checkExpect(expect, true);
    if (bad) return { ok: false, error: bad };
    const text = encodeValue(value);
    if (!text.ok) return text;
    if (neverIssued(expect))
      return coordError('conflict', `put ${key}: version ${expectText(expect)} was never issued`);
    const nonce = randomBytes(12).toString('hex');
    const stored = Buffer.from(
      `{"lockstep":${ENVELOPE_VERSION},"w":"${nonce}","value":${text.value}}`,
      'utf8',
    );
    const k = this.etcdKey(key);
    const compare = this.compareFor(k, expect);
    const request_put = { key: k, value: stored };
    return this.run(`put ${key}`, async (dl) => {
      const r = await this.transact(dl, compare, [{ request_put }], k, (kv) => this.nonceOf(kv) === nonce);
      if (r.kind === 'unavailable') return coordError('unavailable', `put ${key}: ${r.message}`);
      if (r.kind === 'conflict')
        return coordError('conflict', `put ${key}: ${this.conflictMessage(expect, r.current)}`);
      return { ok: true, value: { version: r.revision } };
    });
  }

  async delete(key: string, expect: Exclude<Expect, 'absent'>): Promise<CoordResult<void>> {
    const bad = checkKey(key) ?? checkExpect(expect, false);
    if (bad) return { ok: false, error: bad };
    if (neverIssued(expect))
      return coordError('conflict', `delete ${key}: version ${expectText(expect)} was never issued`);
    const k = this.etcdKey(key);
    return this.run(`delete ${key}`, async (dl) => {
      if (expect === 'any') {
        // Deleting is idempotent without a compare, so retries need no care.
        const r = await this.attempt(dl, (deadline) => this.client.kv.deleteRange({ key: k }, { deadline }));
        return r.ok
          ? { ok: true, value: undefined }
          : coordError('unavailable', `delete ${key}: ${r.message}`);
      }
      const r = await this.transact(
        dl,
        this.compareFor(k, expect),
        [{ request_delete_range: { key: k } }],
        k,
        null,
      );
      if (r.kind === 'unavailable') return coordError('unavailable', `delete ${key}: ${r.message}`);
      if (r.kind === 'conflict') {
        return coordError('conflict', `delete ${key}: ${this.conflictMessage(expect, r.current)}`);
      }
      return { ok: true, value: undefined };
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Etcd3.close() tears the channels down synchronously; it never waits on the network.
    this.client.close();
  }

  /** One cheap read, to learn whether etcd answers at all. */
  async probe(): Promise<CoordResult<void>> {
    return this.run('probe', async (dl) => {
      const key = this.etcdKey('');
      const r = await this.attempt(dl, (deadline) =>
        this.client.kv.range({ key, limit: 1, keys_only: true }, { deadline }),
      );
      if (!r.ok)
        return coordError('unavailable', `cannot reach etcd at ${this.endpoints.join(',')}: ${r.message}`);
      return { ok: true, value: undefined };
    });
  }

  // -- internals ---------------------------------------------------------------------------------

  private etcdKey(key: string): Buffer {
    return Buffer.from(this.namespace + key, 'utf8');
  }

  private run<T>(what: string, body: (dl: Deadline) => Promise<CoordResult<T>>): Promise<CoordResult<T>> {
    if (this.closed) return Promise.resolve(coordError('unavailable', `${what}: the coordinator is closed`));
    return withDeadline(what, this.opTimeoutMs, body);
  }

  private compareFor(k: Buffer, expect: Expect): ICompare[] {
    if (expect === 'any') return [];
    if (expect === 'absent') return [{ key: k, target: 'Create', result: 'Equal', create_revision: 0 }];
    return [{ key: k, target: 'Mod', result: 'Equal', mod_revision: expect.version }];
  }

  private conflictMessage(expect: Expect, current: IKeyValue | null): string {
    const now = current === null ? 'absent' : `at version ${current.mod_revision}`;
    if (expect === 'absent') return `the key exists (${now})`;
    if (expect === 'any') return `the key is ${now}`;
    return `expected version ${expect.version}, the key is ${now}`;
  }

  /**
   * Runs `call` until it succeeds, fails permanently, or the deadline
   * passes. Each attempt may go to another endpoint (etcd3 shuffles them per
   * call), so the first retry is immediate; later ones back off a little.
   */
  private async attempt<T>(dl: Deadline, call: (deadline: Date) => Promise<T>): Promise<Attempt<T>> {
    let last = 'no attempt made';
    for (let n = 0; ; n++) {
      if (this.closed) return { ok: false, message: 'the coordinator is closed', permanent: true };
      const remaining = dl.remainingMs();
      if (remaining <= 0)
        return { ok: false, message: `no answer within ${dl.budgetMs} ms (${last})`, permanent: false };
      try {
        return { ok: true, value: await call(new Date(Date.now() + remaining)) };
      } catch (e) {
        const err = e as Error;
        last = err.message;
        if (!isRecoverableError(err)) return { ok: false, message: last, permanent: true };
      }
      await sleep(Math.min(dl.remainingMs(), 25 * Math.min(n, 8)));
    }
  }

  /**
   * One transaction "if compare then ops else range(key)", retried within the
   * deadline. `mine` recognises this caller's own write in the current value
   * (null: it cannot be recognised, as for a delete). If an attempt failed in
   * a way that may have left it applied, a later failed compare is ambiguous:
   * the caller's write is recognised by its nonce if it is still there, and
   * otherwise the answer is 'unavailable', because the write may have been
   * applied and then overwritten.
   */
  private async transact(
    dl: Deadline,
    compare: ICompare[],
    success: IRequestOp[],
    k: Buffer,
    mine: ((kv: IKeyValue) => boolean) | null,
  ): Promise<
    | { kind: 'ok'; revision: string }
    | { kind: 'conflict'; current: IKeyValue | null }
    | { kind: 'unavailable'; message: string }
  > {
    let maybeApplied = false;
    let last = 'no attempt made';
    for (let n = 0; ; n++) {
      if (this.closed) return { kind: 'unavailable', message: 'the coordinator is closed' };
      const remaining = dl.remainingMs();
      if (remaining <= 0)
        return { kind: 'unavailable', message: `no answer within ${dl.budgetMs} ms (${last})` };
      let res: ITxnResponse;
      try {
        res = await this.client.kv.txn(
          { compare, success, failure: [{ request_range: { key: k } }] },
          { deadline: new Date(Date.now() + remaining) },
        );
      } catch (e) {
        const err = e as Error;
        last = err.message;
        if (!isRecoverableError(err)) return { kind: 'unavailable', message: err.message };
        // A refused connection never carried the request; anything else might have.
        if (!/No connection established|ECONNREFUSED|Connection refused/i.test(err.message))
          maybeApplied = true;
        await sleep(Math.min(dl.remainingMs(), 25 * Math.min(n, 8)));
        continue;
      }
      if (res.succeeded) return { kind: 'ok', revision: String(res.header.revision) };
      const current = res.responses[0]?.response_range?.kvs[0] ?? null;
      if (maybeApplied) {
        if (mine !== null && current !== null && mine(current)) {
          return { kind: 'ok', revision: String(current.mod_revision) };
        }
        return {
          kind: 'unavailable',
          message: 'an earlier attempt may have been applied before the connection failed; outcome unknown',
        };
      }
      return { kind: 'conflict', current };
    }
  }

  private nonceOf(kv: IKeyValue): string | null {
    try {
      const env = JSON.parse(kv.value.toString('utf8')) as { w?: unknown };
      return typeof env.w === 'string' ? env.w : null;
    } catch {
      return null;
    }
  }

  /** Turns a stored envelope back into a Versioned, or 'corrupt' if it is not one. */
  private decode<T>(kv: IKeyValue): CoordResult<Versioned<T>> {
    const key = kv.key.toString('utf8').slice(this.namespace.length);
    let env: unknown;
    try {
      env = JSON.parse(kv.value.toString('utf8'));
    } catch {
      return coordError('corrupt', `etcd key ${this.namespace}${key} does not hold JSON`);
    }
    if (
      typeof env !== 'object' ||
      env === null ||
      (env as { lockstep?: unknown }).lockstep !== ENVELOPE_VERSION ||
      !('value' in env)
    ) {
      return coordError('corrupt', `etcd key ${this.namespace}${key} does not hold a Lockstep record`);
    }
    return { ok: true, value: { key, value: (env as { value: T }).value, version: String(kv.mod_revision) } };
  }
}
