/**
 * The typed client of the host API (server.ts), used by the CLI.
 *
 * Role: one method per endpoint, each returning an ApiResult, so the CLI
 * never deals with HTTP, sockets or JSON. The wire format is the one of
 * schema.ts on both sides, so the client and the server cannot drift.
 *
 * Invariants:
 * - No method throws or rejects; every failure is an ApiResult error.
 * - No method hangs: each attempt on one endpoint is bounded by timeoutMs,
 *   from the DNS lookup to the last byte of the answer, so a call takes at
 *   most (number of endpoints × timeoutMs).
 * - Every answer is checked against its schema before the caller sees it:
 *   a host (or something else on its port) answering garbage yields an
 *   'internal' error, never a crash or a wrongly shaped value.
 * - Failover (trying the next endpoint) never repeats a request that may
 *   have taken effect:
 *   - every method fails over when the connection could not be made
 *     (refused, unreachable, lookup failure, timeout before connecting),
 *     since the host then cannot have seen the request;
 *   - GETs, which change nothing, also fail over on any other network
 *     failure, on a timeout while waiting for the answer, on a 5xx, and on
 *     an answer that is not a valid API answer;
 *   - a POST or DELETE that reached a host is never sent to another one: if
 *     its answer is lost, the result is 'unavailable' and says that the
 *     request may or may not have taken effect.
 * - The token is sent only to authenticated routes, and is kept in a private
 *   field so it never shows when the client is logged or inspected.
 */
import http from 'node:http';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import type { Static, TSchema } from '@sinclair/typebox';
import type {
  ApiError,
  ApiErrorCode,
  ApiResult,
  CreateVmRequest,
  HostInfo,
  HostStatus,
  VmStatus,
  EventScope,
  EventsPage,
  KillHostAnswer,
} from './backend.js';
import { MODULE_BYTES_MAX } from './wire.js';
import {
  ApiErrorBodySchema,
  EventsPageSchema,
  KillHostAnswerSchema,
  HealthResponseSchema,
  HostInfoSchema,
  HostStatusListSchema,
  PrimaryResponseSchema,
  VmStatusListSchema,
  VmStatusSchema,
  type HealthResponse,
} from './schema.js';

/** Per attempt; short, because the CLI must stay usable while hosts are dead (DESIGN.md §5). */
export const CLIENT_TIMEOUT_MS_DEFAULT = 1500;
/**
 * The largest answer read: the largest log tail the server sends (8 MiB)
 * with room to spare. A host that sends more is broken, and reading on
 * would only grow the CLI's memory.
 */
export const RESPONSE_BYTES_MAX = 16 * 1024 * 1024;

export interface ApiClientOptions {
  /** "HOST:PORT" (or "[IPv6]:PORT") of hosts' APIs, tried in this order. */
  endpoints: string[];
  /** The cluster's API token; null sends no Authorization header (only health checks will succeed). */
  token: string | null;
  /** Bound of one attempt on one endpoint, connection and answer included. Default 1500 ms. */
  timeoutMs?: number;
}

type Method = 'GET' | 'POST' | 'DELETE';

interface CallOptions {
  /** Instead of the client's endpoints. */
  endpoints?: readonly string[];
  /** False for the open health routes, which must not receive the token. */
  authenticated?: boolean;
  /** A larger bound on the answer than RESPONSE_BYTES_MAX (a module). */
  responseBytesMax?: number;
}

/** How a successful answer is read. */
type Expectation =
  | { kind: 'json'; check: TypeCheck<TSchema>; describe: string }
  | { kind: 'text' }
  /** Raw bytes of exactly this Content-Type. */
  | { kind: 'bytes'; contentType: string }
  | { kind: 'empty' }
  | { kind: 'primary' };

interface HttpAnswer {
  status: number;
  contentType: string;
  body: Buffer;
}

/** The outcome of one exchange with one endpoint, before its body is interpreted. */
type Exchange =
  | { ok: true; answer: HttpAnswer }
  | {
      ok: false;
      /** Whether the TCP connection was made, i.e. whether the host may have seen the request. */
      connected: boolean;
      /** 'unavailable' for network failures, 'internal' when something answered that is not HTTP. */
      code: ApiErrorCode;
      message: string;
    };

/** An interpreted answer. `trusted` is false for 5xx and for answers that are not valid API answers. */
interface Decoded<T> {
  result: ApiResult<T>;
  trusted: boolean;
}

const checks = {
  vm: TypeCompiler.Compile(VmStatusSchema),
  vms: TypeCompiler.Compile(VmStatusListSchema),
  hosts: TypeCompiler.Compile(HostStatusListSchema),
  info: TypeCompiler.Compile(HostInfoSchema),
  health: TypeCompiler.Compile(HealthResponseSchema),
  primary: TypeCompiler.Compile(PrimaryResponseSchema),
  error: TypeCompiler.Compile(ApiErrorBodySchema),
  events: TypeCompiler.Compile(EventsPageSchema),
  kill: TypeCompiler.Compile(KillHostAnswerSchema),
};

export class ApiClient {
  readonly endpoints: readonly string[];
  readonly timeoutMs: number;
  readonly #token: string | null;

  constructor(opts: ApiClientOptions) {
    this.endpoints = [...opts.endpoints];
    const timeoutMs = opts.timeoutMs ?? CLIENT_TIMEOUT_MS_DEFAULT;
    // A bad timeout would either never fire or fire at once; the default is a safe reading of it.
    this.timeoutMs = Number.isFinite(timeoutMs) && timeoutMs > 0 ? timeoutMs : CLIENT_TIMEOUT_MS_DEFAULT;
    this.#token = opts.token;
  }

  /** The same client, addressing only `endpoint` (to act on one particular host). */
  withEndpoint(endpoint: string): ApiClient {
    return new ApiClient({ endpoints: [endpoint], token: this.#token, timeoutMs: this.timeoutMs });
  }

  info(): Promise<ApiResult<HostInfo>> {
    return this.#json('GET', '/v1/info', undefined, checks.info, 'host info');
  }

  listHosts(): Promise<ApiResult<HostStatus[]>> {
    return this.#json('GET', '/v1/hosts', undefined, checks.hosts, 'host list');
  }

  listVms(): Promise<ApiResult<VmStatus[]>> {
    return this.#json('GET', '/v1/vms', undefined, checks.vms, 'VM list');
  }

  getVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.#json('GET', vmPath(name), undefined, checks.vm, 'VM status');
  }

  createVm(req: CreateVmRequest): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', '/v1/vms', req, checks.vm, 'VM status');
  }

  startVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', `${vmPath(name)}/start`, undefined, checks.vm, 'VM status');
  }

  stopVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', `${vmPath(name)}/stop`, undefined, checks.vm, 'VM status');
  }

  failoverVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', `${vmPath(name)}/failover`, undefined, checks.vm, 'VM status');
  }

  setFt(name: string, enabled: boolean): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', `${vmPath(name)}/ft`, { enabled }, checks.vm, 'VM status');
  }

  migrateVm(name: string, to: string): Promise<ApiResult<VmStatus>> {
    return this.#json('POST', `${vmPath(name)}/migrate`, { to }, checks.vm, 'VM status');
  }

  removeVm(name: string): Promise<ApiResult<void>> {
    return this.#call<void>('DELETE', vmPath(name), undefined, { kind: 'empty' });
  }

  /** The tail of the VM's console log; the host's default (64 KiB) when `bytesMax` is absent. */
  vmLogs(name: string, bytesMax?: number): Promise<ApiResult<string>> {
    const query = bytesMax === undefined ? '' : `?bytes=${encodeURIComponent(String(bytesMax))}`;
    return this.#call<string>('GET', `${vmPath(name)}/logs${query}`, undefined, { kind: 'text' });
  }

  /** The events after `after` (0: all kept) of the host's own feed or of the cluster's as it merged them. */
  events(opts: { scope?: EventScope; after?: number; limit?: number } = {}): Promise<ApiResult<EventsPage>> {
    const q = new URLSearchParams();
    if (opts.scope !== undefined) q.set('scope', opts.scope);
    if (opts.after !== undefined) q.set('after', String(opts.after));
    if (opts.limit !== undefined) q.set('limit', String(opts.limit));
    const query = q.size === 0 ? '' : `?${q.toString()}`;
    return this.#json('GET', `/v1/events${query}`, undefined, checks.events, 'event page');
  }

  /** The module with this SHA-256 from the answering host's store (hosts fetch missing modules so). */
  readModule(sha256: string): Promise<ApiResult<Buffer>> {
    return this.#call<Buffer>(
      'GET',
      `/v1/modules/${encodeURIComponent(sha256)}`,
      undefined,
      { kind: 'bytes', contentType: 'application/wasm' },
      { responseBytesMax: MODULE_BYTES_MAX },
    );
  }

  /** Asks the answering host to kill host `name`'s process ("simulate host failure"; same machine only). */
  killHost(name: string): Promise<ApiResult<KillHostAnswer>> {
    return this.#json(
      'POST',
      `/v1/hosts/${encodeURIComponent(name)}/kill`,
      undefined,
      checks.kill,
      'kill answer',
    );
  }

  /** GET /health on one endpoint, without the token. */
  health(endpoint: string): Promise<ApiResult<HealthResponse>> {
    return this.#json('GET', '/health', undefined, checks.health, 'health answer', {
      endpoints: [endpoint],
      authenticated: false,
    });
  }

  /** Whether the host at `endpoint` is the VM's live primary (its 200 or 503 answer), without the token. */
  isPrimary(endpoint: string, vm: string): Promise<ApiResult<boolean>> {
    return this.#call<boolean>(
      'GET',
      `/health/vms/${encodeURIComponent(vm)}/primary`,
      undefined,
      { kind: 'primary' },
      { endpoints: [endpoint], authenticated: false },
    );
  }

  /** A call whose successful answer is JSON of the schema `check` was compiled from, typed by that schema. */
  #json<S extends TSchema>(
    method: Method,
    path: string,
    body: unknown,
    check: TypeCheck<S>,
    describe: string,
    opts?: CallOptions,
  ): Promise<ApiResult<Static<S>>> {
    return this.#call<Static<S>>(method, path, body, { kind: 'json', check, describe }, opts);
  }

  /** Tries the endpoints in order under the failover rules of the module header. */
  async #call<T>(
    method: Method,
    path: string,
    body: unknown,
    expect: Expectation,
    opts: CallOptions = {},
  ): Promise<ApiResult<T>> {
    const endpoints = opts.endpoints ?? this.endpoints;
    if (endpoints.length === 0) return failure('unavailable', 'no API endpoint to try');
    const headers: Record<string, string> = {
      accept: 'application/json, text/plain',
      'user-agent': 'lockstep-cli',
      // One connection per attempt: a pooled socket the host closed meanwhile
      // would fail after "sending", and forbid a safe failover.
      connection: 'close',
    };
    if (opts.authenticated !== false && this.#token !== null) headers.authorization = `Bearer ${this.#token}`;
    let payload: Buffer | null = null;
    if (body !== undefined) {
      payload = Buffer.from(JSON.stringify(body), 'utf8');
      headers['content-type'] = 'application/json';
    }
    const mayRepeat = method === 'GET';

    // Failures of the endpoints tried so far, for the final message.
    const reasons: string[] = [];
    // The last failure that was an answer rather than silence; its code wins over 'unavailable'.
    let lastAnswered: ApiError | null = null;
    for (const endpoint of endpoints) {
      const target = parseEndpoint(endpoint);
      if (target === null) {
        reasons.push(`${JSON.stringify(endpoint)} is not HOST:PORT`);
        lastAnswered = {
          code: 'invalid',
          message: `API endpoint ${JSON.stringify(endpoint)} is not HOST:PORT`,
        };
        continue;
      }
      const exchanged = await exchange(
        target,
        method,
        path,
        headers,
        payload,
        this.timeoutMs,
        opts.responseBytesMax ?? RESPONSE_BYTES_MAX,
      );
      if (!exchanged.ok) {
        if (exchanged.connected && !mayRepeat) {
          const effect =
            exchanged.code === 'unavailable' ? '; the request may or may not have taken effect' : '';
          return failure(exchanged.code, `host ${endpoint}: ${exchanged.message}${effect}`);
        }
        reasons.push(`${endpoint}: ${exchanged.message}`);
        if (exchanged.code !== 'unavailable') {
          lastAnswered = { code: exchanged.code, message: `host ${endpoint}: ${exchanged.message}` };
        }
        continue;
      }
      const decoded = decode<T>(exchanged.answer, expect, endpoint);
      if (decoded.trusted || !mayRepeat) return decoded.result;
      if (!decoded.result.ok) {
        reasons.push(`${endpoint}: ${decoded.result.error.message}`);
        lastAnswered = decoded.result.error;
      }
    }
    // With one endpoint, its own error is clearer than a summary.
    if (reasons.length === 1 && lastAnswered !== null) return { ok: false, error: lastAnswered };
    const summary =
      reasons.length === 1 ? `cannot reach host ${reasons[0]}` : `every host failed: ${reasons.join('; ')}`;
    return failure(lastAnswered?.code ?? 'unavailable', summary);
  }
}

/** Parses "HOST:PORT" or "[IPv6]:PORT"; null when it is neither or the port is out of range. */
export function parseEndpoint(endpoint: string): { host: string; port: number } | null {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^\s:/[\]]+)):([0-9]{1,5})$/.exec(endpoint);
  if (match === null) return null;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return null;
  return { host: match[1] ?? match[2] ?? '', port };
}

function vmPath(name: string): string {
  // Encoded so that a name with "/" or "?" stays one path segment and the server refuses it as a name.
  return `/v1/vms/${encodeURIComponent(name)}`;
}

function failure<T>(code: ApiErrorCode, message: string): ApiResult<T> {
  return { ok: false, error: { code, message } };
}

/** Reads an answer according to what the call expects, or as an API error body. */
function decode<T>(answer: HttpAnswer, expect: Expectation, endpoint: string): Decoded<T> {
  const garbage = (what: string): Decoded<T> => ({
    result: failure('internal', `host ${endpoint} ${what}`),
    trusted: false,
  });
  const success = answer.status >= 200 && answer.status < 300;

  if (expect.kind === 'primary') {
    // Both answers of the primary check are bodies, not errors: 200 true, 503 false.
    if (answer.status === 200 || answer.status === 503) {
      const parsed = parseJson(answer);
      if (parsed.ok && checks.primary.Check(parsed.value)) {
        return { result: { ok: true, value: parsed.value.primary as T }, trusted: true };
      }
    }
  } else if (success) {
    switch (expect.kind) {
      case 'empty':
        return { result: { ok: true, value: undefined as T }, trusted: true };
      case 'text':
        if (!/^text\/plain\b/i.test(answer.contentType)) {
          return garbage(`answered Content-Type ${JSON.stringify(answer.contentType)} instead of text/plain`);
        }
        return { result: { ok: true, value: answer.body.toString('utf8') as T }, trusted: true };
      case 'bytes':
        if (answer.contentType.split(';')[0]!.trim().toLowerCase() !== expect.contentType) {
          return garbage(
            `answered Content-Type ${JSON.stringify(answer.contentType)} instead of ${expect.contentType}`,
          );
        }
        return { result: { ok: true, value: answer.body as T }, trusted: true };
      case 'json': {
        const parsed = parseJson(answer);
        if (!parsed.ok) return garbage(parsed.message);
        if (!expect.check.Check(parsed.value)) {
          const first = expect.check.Errors(parsed.value).First();
          const where = first === undefined ? '' : ` (at ${first.path || '/'}: ${first.message})`;
          return garbage(`answered JSON that is not a ${expect.describe}${where}`);
        }
        return { result: { ok: true, value: parsed.value as T }, trusted: true };
      }
    }
  }

  const parsed = parseJson(answer);
  if (parsed.ok && checks.error.Check(parsed.value)) {
    // Only code and message: the schema is open, and callers rely on ApiError's exact shape.
    const { code, message } = parsed.value.error;
    return { result: failure(code, message), trusted: answer.status < 500 };
  }
  return garbage(`answered HTTP ${answer.status} without an API error body`);
}

function parseJson(answer: HttpAnswer): { ok: true; value: unknown } | { ok: false; message: string } {
  if (!/^application\/json\b/i.test(answer.contentType)) {
    return {
      ok: false,
      message: `answered HTTP ${answer.status} with Content-Type ${JSON.stringify(answer.contentType)}, not JSON`,
    };
  }
  try {
    return { ok: true, value: JSON.parse(answer.body.toString('utf8')) as unknown };
  } catch {
    return { ok: false, message: `answered HTTP ${answer.status} with a body that is not valid JSON` };
  }
}

/** Words for the network errors a CLI user may meet. */
const NETWORK_ERRORS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  EHOSTDOWN: 'host down',
  ETIMEDOUT: 'connection timed out',
  ENOTFOUND: 'unknown host name',
  EAI_AGAIN: 'host name lookup failed',
  EPIPE: 'connection closed while sending',
};

/**
 * One HTTP exchange with one endpoint, bounded by `timeoutMs` in total.
 * It resolves and never rejects; the connection is always destroyed at the
 * end, so nothing outlives the attempt.
 */
function exchange(
  target: { host: string; port: number },
  method: Method,
  path: string,
  headers: Record<string, string>,
  payload: Buffer | null,
  timeoutMs: number,
  responseBytesMax: number,
): Promise<Exchange> {
  return new Promise((resolve) => {
    let connected = false;
    let settled = false;
    let req: http.ClientRequest | null = null;
    const finish = (outcome: Exchange): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req?.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      finish({ ok: false, connected, code: 'unavailable', message: `no answer within ${timeoutMs} ms` });
    }, timeoutMs);

    const fail = (e: NodeJS.ErrnoException): void => {
      const code = e.code ?? '';
      if (code.startsWith('HPE_')) {
        finish({ ok: false, connected, code: 'internal', message: 'answered something that is not HTTP' });
        return;
      }
      const words = NETWORK_ERRORS[code] ?? e.message;
      finish({ ok: false, connected, code: 'unavailable', message: words });
    };

    try {
      req = http.request(
        {
          host: target.host,
          port: target.port,
          method,
          path,
          headers: payload === null ? headers : { ...headers, 'content-length': String(payload.length) },
          // No pooling: see the Connection: close header in #call.
          agent: false,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let bytes = 0;
          res.on('data', (chunk: Buffer) => {
            bytes += chunk.length;
            if (bytes > responseBytesMax) {
              finish({
                ok: false,
                connected: true,
                code: 'internal',
                message: `answered more than ${responseBytesMax} bytes`,
              });
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () => {
            finish({
              ok: true,
              answer: {
                status: res.statusCode ?? 0,
                contentType: String(res.headers['content-type'] ?? ''),
                body: Buffer.concat(chunks),
              },
            });
          });
          res.on('error', fail);
          // 'close' without 'end': the connection broke mid-answer (finish ignores it after 'end').
          res.on('close', () => {
            finish({
              ok: false,
              connected: true,
              code: 'unavailable',
              message: 'connection closed mid-answer',
            });
          });
        },
      );
    } catch (e) {
      // http.request throws synchronously on values it cannot send, such as a token with a newline.
      finish({ ok: false, connected: false, code: 'invalid', message: (e as Error).message });
      return;
    }
    req.on('socket', (socket) => {
      if (!socket.connecting && !socket.destroyed) connected = true;
      else
        socket.once('connect', () => {
          connected = true;
        });
    });
    req.on('error', fail);
    req.end(payload ?? undefined);
  });
}
