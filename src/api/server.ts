/**
 * The host's HTTP JSON API: authentication, validation, and the mapping of a
 * HostBackend's answers onto HTTP (docs/API.md is the reference).
 *
 * Role: a thin shell around a HostBackend. It decides nothing about VMs or
 * hosts; it checks who is asking and whether the request is well formed,
 * calls the backend, and turns the backend's ApiResult into a status code
 * and a body.
 *
 * Invariants:
 * - Every answer that is not a success has the body
 *   `{"error":{"code":ApiErrorCode,"message":string}}`, whatever went wrong:
 *   a bad request, an unknown route, a backend failure or a backend that
 *   throws. The one exception is the primary check, whose 503 says
 *   `{"primary":false}` because load balancers read it.
 * - Only GET /health and GET /health/vms/:name/primary are open. Every
 *   other route, and every unknown route, first needs
 *   `Authorization: Bearer <token>`; the check runs before the body is read,
 *   so an unauthenticated client cannot make the host parse anything.
 * - The token is compared in constant time and never logged: no log line
 *   carries request headers.
 * - A backend that throws or hangs costs one request a 500 or 503, never
 *   the process: every handler's failure ends in the error handler, and
 *   handlerTimeout bounds how long a request may wait for the backend.
 * - Bodies are bounded (BODY_BYTES_MAX) and so are log tails (LOG_BYTES_MAX).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { Readable } from 'node:stream';
import type { AddressInfo, Socket } from 'node:net';
import {
  fastify,
  LogController,
  type ConnectionError,
  type FastifyError,
  type FastifyReply,
  type FastifySchemaValidationError,
} from 'fastify';
import { pino, type Logger } from 'pino';
import type {
  ApiErrorCode,
  ApiResult,
  CloneRequest,
  CreateVmRequest,
  HostBackend,
  MigrateRequest,
  SetFtRequest,
} from './backend.js';

/** The clone answer's header: "OFFSET,EVENTS", where the backup's log stream starts. */
export const CLONE_START_HEADER = 'x-lockstep-clone-start';
import {
  CreateVmRequestSchema,
  VmLogsQuerySchema,
  VmNameParamsSchema,
  CloneRequestSchema,
  SetFtRequestSchema,
  MigrateRequestSchema,
  type ApiErrorBody,
  type HealthResponse,
  type PrimaryResponse,
} from './schema.js';

/** The largest request body accepted: a CreateVmRequest is well under 1 KiB, and parsing is bounded by this. */
export const BODY_BYTES_MAX = 64 * 1024;
/** The log tail returned when `?bytes` is absent. */
export const LOG_BYTES_DEFAULT = 64 * 1024;
/** The largest log tail one request may ask for, so one call cannot make the host buffer a whole log. */
export const LOG_BYTES_MAX = 8 * 1024 * 1024;

/** How long one request may take from its first byte to its answer, at the socket level. */
const REQUEST_TIMEOUT_MS = 30_000;
/** How long a handler may wait for the backend before the client is told 503, unless the caller says otherwise. */
const BACKEND_TIMEOUT_MS_DEFAULT = 30_000;
/** How long the request headers may take to arrive (slow-loris bound). */
const HEADERS_TIMEOUT_MS = 10_000;
/** How long an idle socket may stay open; bounds the sockets a client can park on the host. */
const CONNECTION_IDLE_TIMEOUT_MS = 60_000;
/** How long an idle keep-alive connection is kept between two requests. */
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/** The longest path segment routed; names are at most 63 characters, so this only bounds abuse. */
const PATH_PARAM_CHARS_MAX = 256;

/** The HTTP status of each error code; backend.ts lists the same pairs. */
export const HTTP_STATUS_BY_CODE: Readonly<Record<ApiErrorCode, number>> = {
  invalid: 400,
  unauthorized: 401,
  'not-found': 404,
  conflict: 409,
  unavailable: 503,
  internal: 500,
};

export interface ApiListen {
  host: string;
  /** 0 lets the system choose; `address.port` tells which it chose. */
  port: number;
}

export interface ApiServerOptions {
  /**
   * Where structured logs go. Absent: info and above to stderr. `false`:
   * nothing at all (tests, and callers that log for themselves).
   */
  logger?: Logger | false;
  /**
   * How long a request may wait for the backend before it is answered 503
   * 'unavailable' (default 30 s). The backend's work is not cancelled; the
   * caller merely stops waiting, so a hung coordinator cannot pile up
   * requests that never answer.
   */
  backendTimeoutMs?: number;
}

export interface ApiServer {
  /** The address actually bound. */
  address: { host: string; port: number };
  /** Stops accepting, lets requests in flight finish, then closes every connection. */
  close(): Promise<void>;
}

/** Routes that answer without a token: health checks, for load balancers and scripts. */
const OPEN_ROUTES = new Set(['/health', '/health/vms/:name/primary']);

/**
 * Starts the API on `listen` and resolves once it accepts connections.
 * It rejects only when it cannot listen (address in use, bad host), which a
 * host daemon treats as a startup failure.
 */
export async function startApiServer(
  backend: HostBackend,
  listen: ApiListen,
  opts: ApiServerOptions = {},
): Promise<ApiServer> {
  const logger =
    opts.logger === undefined
      ? pino(
          {
            name: 'lockstep-api',
            level: 'info',
            // Belt and braces: no code path logs headers, but a future one must not leak the token.
            redact: ['req.headers.authorization', 'headers.authorization'],
          },
          pino.destination(2),
        )
      : opts.logger;

  const app = fastify({
    ...(logger === false ? { logger: false } : { loggerInstance: logger }),
    // Fastify's per-request info lines carry nothing we need at info level;
    // the onResponse hook below logs one line per request at debug instead.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_BYTES_MAX,
    requestTimeout: REQUEST_TIMEOUT_MS,
    handlerTimeout: opts.backendTimeoutMs ?? BACKEND_TIMEOUT_MS_DEFAULT,
    connectionTimeout: CONNECTION_IDLE_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    // A request id sent by the client is not trusted into our logs.
    requestIdHeader: false,
    // Long enough that an over-long VM name reaches validation and gets its
    // own message; longer segments still end in frameworkErrors below.
    routerOptions: { maxParamLength: PATH_PARAM_CHARS_MAX },
    // Errors found while routing (a bad %-escape, an absurd path segment)
    // skip the error handler; they get the same body shape here.
    frameworkErrors: (err, _req, reply) => {
      const message =
        err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a path segment is too long' : 'malformed URL';
      // The option's type is generic over route schemas that do not exist here.
      void (reply as FastifyReply).code(400).send(errorBody('invalid', message));
    },
    // Requests that are not even HTTP never reach fastify's request path; Node
    // hands us the socket, and the answer still has the API's error shape.
    clientErrorHandler: answerClientError,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    ajv: {
      customOptions: {
        // Fastify's defaults would silently drop unknown fields and turn
        // "true" into true; the API refuses both, so callers learn of typos.
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: false,
        // parentSchema in each error gives us the field's description for the message.
        verbose: true,
        allErrors: false,
      },
    },
  });

  // Only JSON bodies exist in this API. Without the text parser, a text/plain
  // body is refused as a wrong content type instead of reaching validation
  // as a string.
  app.removeContentTypeParser('text/plain');

  app.addHook('onRequest', async (req, reply) => {
    if (OPEN_ROUTES.has(req.routeOptions.url ?? '')) return;
    const refusal = authenticate(req.headers.authorization, backend.token());
    if (refusal === null) return;
    void reply
      .code(refusal.status)
      .header('www-authenticate', refusal.challenge)
      .send(errorBody(refusal.status === 401 ? 'unauthorized' : 'unavailable', refusal.message));
    return reply;
  });

  app.addHook('onSend', async (_req, reply, payload) => {
    // API answers describe live state; a proxy or client cache must not replay them.
    void reply.header('cache-control', 'no-store');
    return payload;
  });

  app.addHook('onResponse', async (req, reply) => {
    req.log.debug(
      { method: req.method, route: req.routeOptions.url, status: reply.statusCode, ms: reply.elapsedTime },
      'api request',
    );
  });

  app.setErrorHandler((err: FastifyError, req, reply) => {
    const { status, code, message } = describeError(err);
    if (status >= 500) {
      req.log.error({ err, method: req.method, route: req.routeOptions.url }, 'api request failed');
    }
    // A 500 names the request id instead of the exception text, which may
    // carry paths or internals; the host's log has the rest.
    const shown = status === 500 ? `internal error (request ${req.id}); see the host's log` : message;
    void reply.code(status).send(errorBody(code, shown));
  });

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0] ?? '';
    void reply.code(404).send(errorBody('not-found', `no route ${req.method} ${clip(path, 200)}`));
  });

  // ---- Open routes ------------------------------------------------------

  app.get('/health', async (_req, reply) => {
    const info = backend.info();
    const body: HealthResponse = { ok: true, name: info.name, clusterId: info.clusterId };
    return reply.send(body);
  });

  app.get<{ Params: { name: string } }>(
    '/health/vms/:name/primary',
    { schema: { params: VmNameParamsSchema } },
    async (req, reply) => {
      const primary = backend.isPrimaryFor(req.params.name);
      const body: PrimaryResponse = { primary };
      return reply.code(primary ? 200 : 503).send(body);
    },
  );

  // ---- Authenticated routes ---------------------------------------------

  app.get('/v1/info', async (_req, reply) => reply.send(backend.info()));

  app.get('/v1/hosts', async (_req, reply) => sendResult(reply, await backend.listHosts(), 200));

  app.get('/v1/vms', async (_req, reply) => sendResult(reply, await backend.listVms(), 200));

  app.post<{ Body: CreateVmRequest }>(
    '/v1/vms',
    { schema: { body: CreateVmRequestSchema } },
    async (req, reply) => sendResult(reply, await backend.createVm(req.body), 201),
  );

  const nameRoute = { schema: { params: VmNameParamsSchema } };

  app.get<{ Params: { name: string } }>('/v1/vms/:name', nameRoute, async (req, reply) =>
    sendResult(reply, await backend.getVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string } }>('/v1/vms/:name/start', nameRoute, async (req, reply) =>
    sendResult(reply, await backend.startVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string } }>('/v1/vms/:name/stop', nameRoute, async (req, reply) =>
    sendResult(reply, await backend.stopVm(req.params.name), 200),
  );
  app.post<{ Params: { name: string } }>('/v1/vms/:name/failover', nameRoute, async (req, reply) =>
    sendResult(reply, await backend.failoverVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string }; Body: SetFtRequest }>(
    '/v1/vms/:name/ft',
    { schema: { params: VmNameParamsSchema, body: SetFtRequestSchema } },
    async (req, reply) => sendResult(reply, await backend.setFt(req.params.name, req.body), 200),
  );

  app.post<{ Params: { name: string }; Body: MigrateRequest }>(
    '/v1/vms/:name/migrate',
    { schema: { params: VmNameParamsSchema, body: MigrateRequestSchema } },
    async (req, reply) => sendResult(reply, await backend.migrateVm(req.params.name, req.body), 200),
  );

  app.delete<{ Params: { name: string } }>('/v1/vms/:name', nameRoute, async (req, reply) =>
    sendResult(reply, await backend.removeVm(req.params.name), 204),
  );

  app.post<{ Params: { name: string } }>('/v1/vms/:name/snapshot', nameRoute, async (req, reply) => {
    const result = await backend.snapshotVm(req.params.name);
    if (!result.ok) return sendResult(reply, result, 200);
    return reply.code(200).type('application/octet-stream').send(Readable.from(result.value.body));
  });

  app.post<{ Params: { name: string }; Body: CloneRequest }>(
    '/v1/vms/:name/clone',
    { schema: { params: VmNameParamsSchema, body: CloneRequestSchema } },
    async (req, reply) => {
      const result = await backend.cloneVm(req.params.name, req.body);
      if (!result.ok) return sendResult(reply, result, 200);
      return reply
        .code(200)
        .header(CLONE_START_HEADER, `${result.value.start.offset},${result.value.start.events}`)
        .type('application/octet-stream')
        .send(Array.isArray(result.value.body) ? Readable.from(result.value.body) : result.value.body);
    },
  );

  app.get<{ Params: { name: string }; Querystring: { bytes?: string } }>(
    '/v1/vms/:name/logs',
    { schema: { params: VmNameParamsSchema, querystring: VmLogsQuerySchema } },
    async (req, reply) => {
      const bytesMax = req.query.bytes === undefined ? LOG_BYTES_DEFAULT : Number(req.query.bytes);
      if (!(bytesMax >= 1 && bytesMax <= LOG_BYTES_MAX)) {
        return reply.code(400).send(errorBody('invalid', `query.bytes must be from 1 to ${LOG_BYTES_MAX}`));
      }
      const result = await backend.vmLogs(req.params.name, bytesMax);
      if (!result.ok) return sendResult(reply, result, 200);
      return reply.code(200).type('text/plain; charset=utf-8').send(result.value);
    },
  );

  try {
    await app.listen({ host: listen.host, port: listen.port });
  } catch (e) {
    await app.close().catch(() => undefined);
    throw e;
  }
  // Node's default (60 s) lets a client trickle headers for a minute per socket.
  app.server.headersTimeout = HEADERS_TIMEOUT_MS;
  const bound = app.server.address() as AddressInfo;
  return {
    address: { host: bound.address, port: bound.port },
    close: () => app.close(),
  };
}

/** Sends a backend's answer: its value with `successStatus`, or its error with the matching status. */
function sendResult<T>(reply: FastifyReply, result: ApiResult<T>, successStatus: number): FastifyReply {
  if (!result.ok) {
    const status = HTTP_STATUS_BY_CODE[result.error.code] ?? 500;
    return reply.code(status).send(errorBody(result.error.code, result.error.message));
  }
  if (successStatus === 204) return reply.code(204).send();
  return reply.code(successStatus).send(result.value);
}

function errorBody(code: ApiErrorCode, message: string): ApiErrorBody {
  return { error: { code, message } };
}

export interface AuthRefusal {
  status: 401 | 503;
  challenge: string;
  message: string;
}

const BEARER_RE = /^Bearer +([^\s]+) *$/i;

/**
 * Checks an Authorization header against the token. Null means accepted.
 * Both sides are hashed before the comparison, so timingSafeEqual compares
 * equal lengths and the time taken says nothing about the token's length
 * or contents.
 */
export function authenticate(header: string | undefined, token: string): AuthRefusal | null {
  if (token.length === 0) {
    // A host that has not learnt the cluster's token yet must not accept an empty one.
    return { status: 503, challenge: 'Bearer realm="lockstep"', message: 'this host has no API token yet' };
  }
  if (header === undefined || header.length === 0) {
    return {
      status: 401,
      challenge: 'Bearer realm="lockstep"',
      message: 'missing Authorization header; send "Authorization: Bearer <token>" (lockstep cluster token)',
    };
  }
  const match = BEARER_RE.exec(header);
  if (match === null) {
    return {
      status: 401,
      challenge: 'Bearer realm="lockstep", error="invalid_request"',
      message: 'malformed Authorization header; expected "Bearer <token>"',
    };
  }
  const presented = createHash('sha256')
    .update(match[1] ?? '')
    .digest();
  const expected = createHash('sha256').update(token).digest();
  if (!timingSafeEqual(presented, expected)) {
    return {
      status: 401,
      challenge: 'Bearer realm="lockstep", error="invalid_token"',
      message: 'wrong API token',
    };
  }
  return null;
}

/**
 * Answers a connection whose request Node could not parse (or that timed
 * out) and closes it. 408 and 431 keep their HTTP meaning; the body carries
 * 'invalid' like every other client mistake.
 */
function answerClientError(err: ConnectionError, socket: Socket): void {
  // A reset or destroyed socket has nobody left to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = 'malformed HTTP request';
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = `request not received within ${REQUEST_TIMEOUT_MS} ms`;
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'request headers too large';
  }
  const body = JSON.stringify(errorBody('invalid', message));
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
        `Connection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}

/** Messages for fastify's own request errors, which otherwise speak of fastify's internals. */
const FASTIFY_MESSAGES: Readonly<Record<string, string>> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'body is not valid JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'body is empty but Content-Type says application/json',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'Content-Type must be application/json',
  FST_ERR_CTP_BODY_TOO_LARGE: `body is larger than ${BODY_BYTES_MAX} bytes`,
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'Content-Length does not match the body',
};

/** Turns any error reaching the error handler into a status, a code and a message for the caller. */
function describeError(err: FastifyError): { status: number; code: ApiErrorCode; message: string } {
  if (err.validation !== undefined && err.validation.length > 0) {
    return {
      status: 400,
      code: 'invalid',
      message: describeValidation(err.validationContext, err.validation),
    };
  }
  const known = err.code === undefined ? undefined : FASTIFY_MESSAGES[err.code];
  if (known !== undefined) return { status: 400, code: 'invalid', message: known };
  const status = typeof err.statusCode === 'number' ? err.statusCode : 500;
  // Every client mistake is a 400 in this API, whatever fastify would have said (413, 415…).
  if (status >= 400 && status < 500) return { status: 400, code: 'invalid', message: err.message };
  if (status === 503) return { status: 503, code: 'unavailable', message: err.message };
  return { status: 500, code: 'internal', message: err.message };
}

/** ajv's error objects, with the `parentSchema` that its verbose option adds. */
type VerboseValidationError = FastifySchemaValidationError & { parentSchema?: { description?: unknown } };

const CONTEXT_NAMES: Readonly<Record<string, string>> = {
  body: 'body',
  params: 'path',
  querystring: 'query',
};

/**
 * One sentence naming the field at fault and the rule it broke. With
 * allErrors off, ajv stops at the first failing keyword, so the last error
 * is the one that failed (earlier ones are the branches of an anyOf).
 */
function describeValidation(context: string | undefined, errors: FastifySchemaValidationError[]): string {
  const e = errors[errors.length - 1] as VerboseValidationError;
  const where =
    (CONTEXT_NAMES[context ?? ''] ?? context ?? 'request') +
    e.instancePath
      .split('/')
      .slice(1)
      .map((segment) => segment.replaceAll('~1', '/').replaceAll('~0', '~'))
      .map((segment) => (/^[0-9]+$/.test(segment) ? `[${segment}]` : `.${clip(segment, 64)}`))
      .join('');
  if (e.keyword === 'required') {
    return `${where} is missing the field ${JSON.stringify(String(e.params.missingProperty))}`;
  }
  if (e.keyword === 'additionalProperties') {
    return `${where} has an unknown field ${JSON.stringify(clip(String(e.params.additionalProperty), 64))}`;
  }
  const description = e.parentSchema?.description;
  if (typeof description === 'string') return `${where} must be ${description}`;
  return `${where} ${e.message ?? 'is invalid'}`;
}

function clip(text: string, charsMax: number): string {
  return text.length <= charsMax ? text : `${text.slice(0, charsMax)}…`;
}
