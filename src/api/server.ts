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
import { createReadStream, existsSync } from 'node:fs';
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import fastifySwagger from '@fastify/swagger';
import type { AddressInfo, Socket } from 'node:net';
import {
  fastify,
  LogController,
  type FastifyInstance,
  type RawServerDefault,
  type ConnectionError,
  type FastifyError,
  type FastifyReply,
  type FastifySchemaValidationError,
} from 'fastify';
import { pino, type Logger } from 'pino';
import { MODULE_BYTES_MAX } from './wire.js';
import type {
  ApiErrorCode,
  ApiResult,
  CloneRequest,
  CreateVmRequest,
  HostBackend,
  MigrateRequest,
  SetFtRequest,
  ClusterEvent,
  EventScope,
} from './backend.js';

/** The clone answer's header: "OFFSET,EVENTS", where the backup's log stream starts. */
export const CLONE_START_HEADER = 'x-lockstep-clone-start';
import {
  CreateVmRequestSchema,
  VmLogsQuerySchema,
  VmNameParamsSchema,
  ModuleParamsSchema,
  CloneRequestSchema,
  SetFtRequestSchema,
  MigrateRequestSchema,
  EventsQuerySchema,
  HostNameParamsSchema,
  ApiErrorBodySchema,
  VmStatusSchema,
  HostStatusSchema,
  HostInfoSchema,
  HealthResponseSchema,
  PrimaryResponseSchema,
  EventsPageSchema,
  ModuleInfoSchema,
  KillHostAnswerSchema,
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
// The largest module one upload may carry (the example guests are well under 1 MiB); in wire.ts, since
// the client bounds a module it fetches by it too.
export { MODULE_BYTES_MAX };
/** The events one `GET /v1/events` returns when `?limit` is absent (and at most, EVENTS_PAGE_MAX). */
export const EVENTS_LIMIT_DEFAULT = 1000;
/**
 * How often an event stream with nothing to say sends a comment: well under
 * the idle-socket bound below, so proxies and the server keep it open.
 */
export const SSE_PING_MS = 15_000;
/** Event streams one host serves at once; each costs a socket and a listener. */
export const SSE_STREAMS_MAX = 64;
/** Events an event stream may have queued for a slow client before it is cut off (it resumes by cursor). */
const SSE_QUEUED_BYTES_MAX = 1024 * 1024;

/** Where the built console is (console/dist at the repository's root, relative to dist/src/api). */
export const CONSOLE_DIR_DEFAULT = fileURLToPath(new URL('../../../console/dist/', import.meta.url));

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
  /** Told every route as it is added (method, URL, and whether the OpenAPI document leaves it out). */
  onRoute?: (route: { method: string; url: string; hidden: boolean }) => void;
  /** The built console's folder (default CONSOLE_DIR_DEFAULT); a missing folder serves a page saying how to build it. */
  consoleDir?: string;
}

export interface ApiServer {
  /** The address actually bound. */
  address: { host: string; port: number };
  /** Stops accepting, lets requests in flight finish, then closes every connection. */
  close(): Promise<void>;
}

/**
 * Routes that answer without a token: health checks (load balancers and
 * scripts), the OpenAPI document, and the console's static files, which
 * carry no data (the page asks for the token and sends it in a header).
 */
const OPEN_ROUTES = new Set([
  '/health',
  '/health/vms/:name/primary',
  '/openapi.json',
  '/',
  '/index.html',
  '/favicon.svg',
  '/assets/*',
]);

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
  const app = await buildApiApp(backend, opts);
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

/** The fastify instance the API is (its logger type is pino's). */
export type ApiApp = FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, Logger>;

/**
 * The API as a fastify instance with every route, not listening yet (the
 * OpenAPI test and generator read its routes and document from here).
 */
export async function buildApiApp(backend: HostBackend, opts: ApiServerOptions = {}): Promise<ApiApp> {
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
    if (!reply.hasHeader('cache-control')) void reply.header('cache-control', 'no-store');
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

  if (opts.onRoute !== undefined) {
    const tell = opts.onRoute;
    app.addHook('onRoute', (r) => {
      for (const method of Array.isArray(r.method) ? r.method : [r.method])
        tell({ method, url: r.url, hidden: (r.schema as { hide?: boolean } | undefined)?.hide === true });
    });
  }

  // ---- The OpenAPI document ---------------------------------------------
  // Every route below carries its schemas; the document is generated from them (docs/openapi.json
  // is a checked-in copy, and a test keeps the two and the routes in step).
  await app.register(fastifySwagger, {
    openapi: OPENAPI_BASE,
    // Shared schemas appear once, under components.schemas by their $id, and operations refer to them.
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) =>
        typeof json.$id === 'string' ? json.$id : `def-${i}`,
    },
  });
  for (const [id, schema] of Object.entries(SHARED_SCHEMAS)) app.addSchema({ ...schema, $id: id });
  // Response schemas document the answers; they are not used to serialise them (the types in
  // backend.ts already match them, and the client checks every answer).
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  const errors = {
    default: {
      description: 'An error (see "Errors" in docs/API.md)',
      content: { 'application/json': { schema: ref('ApiErrorBody') } },
    },
  };
  const doc = (
    summary: string,
    more: {
      tags?: string[];
      open?: boolean;
      response?: Record<string | number, unknown>;
      description?: string;
    },
  ): Record<string, unknown> => ({
    summary,
    tags: more.tags ?? ['vms'],
    ...(more.description !== undefined ? { description: more.description } : {}),
    ...(more.open === true ? { security: [] } : {}),
    response: { ...more.response, ...errors },
  });
  const binary = (description: string): unknown => ({
    description,
    content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
  });

  // ---- Open routes ------------------------------------------------------

  app.get(
    '/health',
    {
      schema: doc('Liveness of the answering host', {
        tags: ['health'],
        open: true,
        response: { 200: HealthResponseSchema },
      }),
    },
    async (_req, reply) => {
      const info = backend.info();
      const body: HealthResponse = { ok: true, name: info.name, clusterId: info.clusterId };
      return reply.send(body);
    },
  );

  app.get<{ Params: { name: string } }>(
    '/health/vms/:name/primary',
    {
      schema: {
        params: VmNameParamsSchema,
        ...doc('Whether this host is the live primary of the VM (for load balancers)', {
          tags: ['health'],
          open: true,
          response: { 200: PrimaryResponseSchema, 503: PrimaryResponseSchema },
        }),
      },
    },
    async (req, reply) => {
      const primary = backend.isPrimaryFor(req.params.name);
      const body: PrimaryResponse = { primary };
      return reply.code(primary ? 200 : 503).send(body);
    },
  );

  app.get(
    '/openapi.json',
    { schema: doc('This document', { tags: ['health'], open: true, response: { 200: { type: 'object' } } }) },
    async (_req, reply) => reply.send(app.swagger()),
  );

  // ---- The console (open: static files only) ------------------------------

  const consoleDir = opts.consoleDir ?? CONSOLE_DIR_DEFAULT;
  const consoleBuilt = existsSync(`${consoleDir}/index.html`);
  await app.register(fastifyStatic, { root: consoleDir, serve: false });
  const consolePage = { schema: { hide: true } };
  const sendIndex = async (_req: unknown, reply: FastifyReply): Promise<FastifyReply> => {
    if (!consoleBuilt)
      return reply
        .code(503)
        .type('text/html; charset=utf-8')
        .send(
          '<!doctype html><title>Lockstep</title><p>The console is not built on this host. ' +
            'Run <code>npm run build:console</code> (or <code>npm ci</code>) in the Lockstep folder, then reload.</p>',
        );
    // The page is small and changes with each build: never cached, so a rebuilt console shows at once.
    return reply.header('cache-control', 'no-store').sendFile('index.html', { cacheControl: false });
  };
  app.get('/', consolePage, sendIndex);
  app.get('/index.html', consolePage, sendIndex);
  app.get('/favicon.svg', consolePage, async (_req, reply) => reply.sendFile('favicon.svg'));
  app.get<{ Params: { '*': string } }>('/assets/*', consolePage, async (req, reply) =>
    // Built files are named by their content's hash, so they may be cached for good.
    reply.sendFile(`assets/${req.params['*']}`, { maxAge: '365d', immutable: true }),
  );

  // ---- Authenticated routes ---------------------------------------------

  app.get(
    '/v1/info',
    { schema: doc('The answering host', { tags: ['hosts'], response: { 200: HostInfoSchema } }) },
    async (_req, reply) => reply.send(backend.info()),
  );

  app.get(
    '/v1/hosts',
    {
      schema: doc('Every host of the cluster, as the answering host sees it', {
        tags: ['hosts'],
        response: { 200: listOf('HostStatus') },
      }),
    },
    async (_req, reply) => sendResult(reply, await backend.listHosts(), 200),
  );

  app.post<{ Params: { name: string } }>(
    '/v1/hosts/:name/kill',
    {
      schema: {
        params: HostNameParamsSchema,
        ...doc("Simulate a host failure: SIGKILL of that host's process (hosts of a local cluster only)", {
          tags: ['hosts'],
          response: { 202: KillHostAnswerSchema },
        }),
      },
    },
    async (req, reply) => sendResult(reply, await backend.killHost(req.params.name), 202),
  );

  app.get(
    '/v1/vms',
    { schema: doc('Every VM of the cluster', { response: { 200: listOf('VmStatus') } }) },
    async (_req, reply) => sendResult(reply, await backend.listVms(), 200),
  );

  app.post<{ Body: CreateVmRequest }>(
    '/v1/vms',
    {
      schema: {
        body: CreateVmRequestSchema,
        ...doc('Create a VM and start it', { response: { 201: ref('VmStatus') } }),
      },
    },
    async (req, reply) => sendResult(reply, await backend.createVm(req.body), 201),
  );

  const vmRoute = (summary: string, description?: string): { schema: Record<string, unknown> } => ({
    schema: {
      params: VmNameParamsSchema,
      ...doc(summary, {
        response: { 200: ref('VmStatus') },
        ...(description !== undefined ? { description } : {}),
      }),
    },
  });

  app.get<{ Params: { name: string } }>('/v1/vms/:name', vmRoute('One VM'), async (req, reply) =>
    sendResult(reply, await backend.getVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string } }>(
    '/v1/vms/:name/start',
    vmRoute('Start a stopped VM'),
    async (req, reply) => sendResult(reply, await backend.startVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string } }>('/v1/vms/:name/stop', vmRoute('Stop a VM'), async (req, reply) =>
    sendResult(reply, await backend.stopVm(req.params.name), 200),
  );
  app.post<{ Params: { name: string } }>(
    '/v1/vms/:name/failover',
    vmRoute(
      'Test failover',
      'The backup takes over through the same path as a real failure (FT VMs that are protected).',
    ),
    async (req, reply) => sendResult(reply, await backend.failoverVm(req.params.name), 200),
  );

  app.post<{ Params: { name: string }; Body: SetFtRequest }>(
    '/v1/vms/:name/ft',
    {
      schema: {
        params: VmNameParamsSchema,
        body: SetFtRequestSchema,
        ...doc('Switch fault tolerance on or off, without a restart', { response: { 200: ref('VmStatus') } }),
      },
    },
    async (req, reply) => sendResult(reply, await backend.setFt(req.params.name, req.body), 200),
  );

  app.post<{ Params: { name: string }; Body: MigrateRequest }>(
    '/v1/vms/:name/migrate',
    {
      schema: {
        params: VmNameParamsSchema,
        body: MigrateRequestSchema,
        ...doc('Live-migrate the running VM to another host', { response: { 200: ref('VmStatus') } }),
      },
    },
    async (req, reply) => sendResult(reply, await backend.migrateVm(req.params.name, req.body), 200),
  );

  app.delete<{ Params: { name: string } }>(
    '/v1/vms/:name',
    {
      schema: {
        params: VmNameParamsSchema,
        ...doc('Remove a VM and its data', { response: { 204: { type: 'null', description: 'Removed' } } }),
      },
    },
    async (req, reply) => sendResult(reply, await backend.removeVm(req.params.name), 204),
  );

  app.post<{ Params: { name: string } }>(
    '/v1/vms/:name/snapshot',
    {
      schema: {
        params: VmNameParamsSchema,
        ...doc(
          'A snapshot file of the running VM with its disk (docs/SNAPSHOT-FORMAT.md); primary host only',
          {
            response: { 200: binary('The snapshot stream') },
          },
        ),
      },
    },
    async (req, reply) => {
      const result = await backend.snapshotVm(req.params.name);
      if (!result.ok) return sendResult(reply, result, 200);
      return reply.code(200).type('application/octet-stream').send(Readable.from(result.value.body));
    },
  );

  app.post<{ Params: { name: string }; Body: CloneRequest }>(
    '/v1/vms/:name/clone',
    {
      schema: {
        params: VmNameParamsSchema,
        body: CloneRequestSchema,
        ...doc('Host to host: the live clone of an FT primary for the backup the placement names', {
          tags: ['internal'],
          response: { 200: binary(`The snapshot stream; header ${CLONE_START_HEADER}: "OFFSET,EVENTS"`) },
        }),
      },
    },
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
    {
      schema: {
        params: VmNameParamsSchema,
        querystring: VmLogsQuerySchema,
        ...doc("The tail of the VM's console (stdout and stderr)", {
          response: {
            200: { description: 'The tail', content: { 'text/plain': { schema: { type: 'string' } } } },
          },
        }),
      },
    },
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

  // ---- Modules ------------------------------------------------------------

  app.addContentTypeParser(
    ['application/wasm', 'application/octet-stream'],
    { parseAs: 'buffer' },
    (_req, body, done) => done(null, body),
  );

  app.post<{ Body: Buffer }>(
    '/v1/modules',
    {
      bodyLimit: MODULE_BYTES_MAX,
      schema: {
        ...doc('Upload a module; create VMs from the path it answers', {
          tags: ['modules'],
          description: `The body is the .wasm file (Content-Type: application/wasm), at most ${MODULE_BYTES_MAX} bytes.`,
          response: { 201: ModuleInfoSchema },
        }),
      },
    },
    async (req, reply) => {
      if (!Buffer.isBuffer(req.body) || req.body.byteLength === 0)
        return reply
          .code(400)
          .send(errorBody('invalid', "the body must be the module's bytes (Content-Type: application/wasm)"));
      return sendResult(reply, await backend.uploadModule(req.body), 201);
    },
  );

  app.get<{ Params: { sha256: string } }>(
    '/v1/modules/:sha256',
    {
      schema: {
        params: ModuleParamsSchema,
        ...doc("A module from this host's store, by its SHA-256", {
          tags: ['modules'],
          description:
            "Hosts fetch a VM's module from each other by its hash when the path it was created from is not on " +
            'their machine (an upload, another machine) or has changed since.',
          response: {
            200: {
              description: 'The module',
              content: { 'application/wasm': { schema: { type: 'string', format: 'binary' } } },
            },
          },
        }),
      },
    },
    async (req, reply) => {
      const result = await backend.moduleFile(req.params.sha256);
      if (!result.ok) return sendResult(reply, result, 200);
      return reply
        .code(200)
        .type('application/wasm')
        .header('content-length', result.value.bytes)
        .send(createReadStream(result.value.path));
    },
  );

  // ---- Events and metrics -----------------------------------------------

  app.get<{ Querystring: { after?: string; limit?: string; scope?: EventScope } }>(
    '/v1/events',
    {
      schema: {
        querystring: EventsQuerySchema,
        ...doc('The event timeline after a cursor (oldest first)', {
          tags: ['events'],
          response: { 200: EventsPageSchema },
        }),
      },
    },
    async (req, reply) => {
      const limit = req.query.limit === undefined ? EVENTS_LIMIT_DEFAULT : Number(req.query.limit);
      if (!(limit >= 1 && limit <= EVENTS_LIMIT_DEFAULT))
        return reply
          .code(400)
          .send(errorBody('invalid', `query.limit must be from 1 to ${EVENTS_LIMIT_DEFAULT}`));
      return reply.send(backend.events(req.query.scope ?? 'cluster', Number(req.query.after ?? '0'), limit));
    },
  );

  let streams = 0;
  // Event streams never end by themselves: closing the server ends them, or it would wait for them.
  const liveStreams = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    for (const res of liveStreams) res.end();
  });
  app.get<{ Querystring: { after?: string; limit?: string; scope?: EventScope } }>(
    '/v1/events/stream',
    {
      schema: {
        querystring: EventsQuerySchema,
        ...doc('The event timeline as server-sent events', {
          tags: ['events'],
          description:
            'Each message is `id: CURSOR`, `event: lockstep`, `data: <a ClusterEvent as JSON>`. The backlog after ' +
            '`Last-Event-ID` (or `?after=`) comes first; a comment line is sent every ' +
            `${SSE_PING_MS / 1000} s while nothing happens.`,
          response: {
            200: {
              description: 'The stream',
              content: { 'text/event-stream': { schema: { type: 'string' } } },
            },
          },
        }),
      },
    },
    async (req, reply) => {
      if (streams >= SSE_STREAMS_MAX)
        return reply
          .code(503)
          .send(errorBody('unavailable', `this host serves ${SSE_STREAMS_MAX} event streams already`));
      const lastId = req.headers['last-event-id'];
      const fromHeader = typeof lastId === 'string' && /^[0-9]{1,15}$/.test(lastId) ? Number(lastId) : null;
      const after = fromHeader ?? Number(req.query.after ?? '0');
      const scope = req.query.scope ?? 'cluster';
      streams++;
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        // Proxies that buffer (nginx) would hold the events back otherwise.
        'x-accel-buffering': 'no',
      });
      let sentCursor = after;
      const write = (e: ClusterEvent): void => {
        if (e.cursor <= sentCursor) return;
        sentCursor = e.cursor;
        // A client that does not read is cut off rather than buffered without bound; it resumes by cursor.
        if (res.writableLength > SSE_QUEUED_BYTES_MAX) {
          res.destroy();
          return;
        }
        res.write(`id: ${e.cursor}\nevent: lockstep\ndata: ${JSON.stringify(e)}\n\n`);
      };
      // Subscribed before the backlog is read, so nothing falls between the two (write() skips repeats).
      const pending: ClusterEvent[] = [];
      let live = false;
      const unsubscribe =
        scope === 'cluster'
          ? backend.subscribeEvents((e) => (live ? write(e) : pending.push(e)))
          : () => undefined;
      res.write(`retry: 2000\n\n`);
      for (let page = backend.events(scope, after, EVENTS_LIMIT_DEFAULT); page.events.length > 0;) {
        for (const e of page.events) write(e);
        page = backend.events(scope, sentCursor, EVENTS_LIMIT_DEFAULT);
      }
      for (const e of pending) write(e);
      live = true;
      const ping = setInterval(() => res.write(': ping\n\n'), SSE_PING_MS);
      liveStreams.add(res);
      const end = (): void => {
        clearInterval(ping);
        unsubscribe();
        liveStreams.delete(res);
        streams--;
      };
      res.once('close', end);
    },
  );

  app.get(
    '/metrics',
    {
      schema: doc('Prometheus metrics of the answering host (text exposition format)', {
        tags: ['metrics'],
        response: {
          200: { description: 'The metrics', content: { 'text/plain': { schema: { type: 'string' } } } },
        },
      }),
    },
    async (_req, reply) => {
      const m = await backend.metrics();
      return reply.code(200).type(m.contentType).send(m.body);
    },
  );

  await app.ready();
  // The instance's logger type follows the `logger` option's branch; callers need neither.
  return app as unknown as ApiApp;
}

/** Answers several operations share: the document names them once (components.schemas). */
const SHARED_SCHEMAS = {
  VmStatus: VmStatusSchema,
  HostStatus: HostStatusSchema,
  ApiErrorBody: ApiErrorBodySchema,
};

function ref(id: keyof typeof SHARED_SCHEMAS): { $ref: string } {
  return { $ref: `${id}#` };
}

function listOf(id: keyof typeof SHARED_SCHEMAS): { type: 'array'; items: { $ref: string } } {
  return { type: 'array', items: ref(id) };
}

/** The document's fixed part; the paths come from the routes. */
export const OPENAPI_BASE = {
  openapi: '3.0.3',
  info: {
    title: 'Lockstep host API',
    version: '1',
    description:
      'Every host of a Lockstep cluster serves this API and answers for the whole cluster. ' +
      'docs/API.md explains authentication, errors and limits.',
  },
  components: {
    securitySchemes: {
      bearer: {
        type: 'http' as const,
        scheme: 'bearer',
        description: "The cluster's API token (`lockstep cluster token`)",
      },
    },
  },
  security: [{ bearer: [] }],
  tags: [
    { name: 'vms', description: 'Virtual machines' },
    { name: 'hosts', description: 'Hosts of the cluster' },
    { name: 'events', description: 'The event timeline' },
    { name: 'modules', description: 'Uploaded modules' },
    { name: 'metrics', description: 'Prometheus metrics' },
    { name: 'health', description: 'Open checks' },
    { name: 'internal', description: 'Host to host' },
  ],
};

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
