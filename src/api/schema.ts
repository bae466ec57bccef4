/**
 * JSON Schemas (TypeBox) of every body the host API accepts or answers.
 *
 * Role: the single runtime description of the wire format. The server
 * (server.ts) hands the request schemas to fastify's ajv; the client
 * (client.ts) checks every answer against the response schemas, so a host
 * answering garbage becomes an error value instead of a crash in the CLI.
 *
 * Invariants:
 * - `Static<typeof X>` is exactly the matching type of backend.ts; the
 *   `Equals` assertions at the bottom fail the build if one drifts.
 * - Request schemas are closed (`additionalProperties: false`): an unknown
 *   field is a 400, because a misspelt option silently ignored is worse than
 *   an error. Response schemas are open, so an older CLI keeps working
 *   against a newer host that added a field.
 * - Request fields carry a `description` phrased to complete "FIELD must
 *   be …"; the server quotes it in its 400 messages, so every rule is stated
 *   once, here.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { NAME_RE } from '../coord/records.js';
import type {
  ApiError,
  CreateVmRequest,
  HostInfo,
  HostStatus,
  Protection,
  VmStatus,
  HostState,
  ApiErrorCode,
  SetFtRequest,
  MigrateRequest,
  ClusterEvent,
  EventKind,
  EventsPage,
  ModuleInfo,
  KillHostAnswer,
  CloneProgress,
} from './backend.js';
import { EVENT_KINDS } from './backend.js';
import type { VmRunState } from '../coord/records.js';

/** Paths and other free strings are bounded so one field cannot use the whole body limit unnoticed. */
const PATH_CHARS_MAX = 4096;
const ARG_CHARS_MAX = 4096;
const LIST_ITEMS_MAX = 256;

/** What a name is, in words, for error messages (NAME_RE is the rule). */
const NAME_RULE = 'a name: 1 to 63 characters from a-z, 0-9, "_" and "-", starting with a letter or digit';

/**
 * IPv4 "IP:PORT" with octets 0-255 and ports 1-65535. IPv4 only, because the
 * service address moves with a gratuitous ARP (DESIGN.md §4), which is IPv4;
 * port 0 is refused because a VM's address must be stable and known.
 */
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const PORT = '([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])';
export const LISTEN_RE = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}:${PORT}$`);

/** An absolute path without NUL bytes: the daemon's working folder is not the caller's, so relative paths would lie. */
const ABSOLUTE_PATH_PATTERN = '^/[^\\u0000]*$';

const NameSchema = Type.String({ pattern: NAME_RE.source, description: NAME_RULE });

// ---- Shared enums --------------------------------------------------------

export const VmRunStateSchema = Type.Union([
  Type.Literal('stopped'),
  Type.Literal('starting'),
  Type.Literal('running'),
  Type.Literal('failed'),
]);

export const ProtectionSchema = Type.Union([
  Type.Literal('off'),
  Type.Literal('syncing'),
  Type.Literal('protected'),
  Type.Literal('reprotecting'),
  Type.Literal('unprotected'),
]);

export const HostStateSchema = Type.Union([
  Type.Literal('up'),
  Type.Literal('suspect'),
  Type.Literal('down'),
  Type.Literal('left'),
]);

export const ApiErrorCodeSchema = Type.Union([
  Type.Literal('invalid'),
  Type.Literal('unauthorized'),
  Type.Literal('not-found'),
  Type.Literal('conflict'),
  Type.Literal('unavailable'),
  Type.Literal('internal'),
]);

// ---- Requests (closed) ---------------------------------------------------

export const CreateVmRequestSchema = Type.Object(
  {
    name: NameSchema,
    wasm: Type.String({
      pattern: ABSOLUTE_PATH_PATTERN,
      maxLength: PATH_CHARS_MAX,
      description: 'the absolute path of the module on the hosts',
    }),
    listen: Type.String({
      pattern: LISTEN_RE.source,
      description: 'IP:PORT with an IPv4 address and a port from 1 to 65535, e.g. 127.0.1.1:8080',
    }),
    disk: Type.Optional(
      Type.Union([Type.String({ pattern: ABSOLUTE_PATH_PATTERN, maxLength: PATH_CHARS_MAX }), Type.Null()], {
        description: 'an absolute folder path, or null',
      }),
    ),
    env: Type.Optional(
      Type.Array(
        Type.String({
          pattern: '^[^=\\u0000]+=[^\\u0000]*$',
          maxLength: ARG_CHARS_MAX,
          description: 'K=V with a non-empty K',
        }),
        { maxItems: LIST_ITEMS_MAX, description: `a list of at most ${LIST_ITEMS_MAX} "K=V" strings` },
      ),
    ),
    args: Type.Optional(
      Type.Array(
        Type.String({
          pattern: '^[^\\u0000]*$',
          maxLength: ARG_CHARS_MAX,
          description: 'a string without NUL bytes',
        }),
        { maxItems: LIST_ITEMS_MAX, description: `a list of at most ${LIST_ITEMS_MAX} strings` },
      ),
    ),
    memoryMaxMib: Type.Optional(
      // A wasm32 memory cannot address more than 4 GiB.
      Type.Integer({ minimum: 1, maximum: 4096, description: 'an integer number of MiB from 1 to 4096' }),
    ),
    ft: Type.Optional(Type.Boolean({ description: 'true or false' })),
    host: Type.Optional(
      Type.Union([NameSchema, Type.Null()], { description: `a host's name (${NAME_RULE}), or null` }),
    ),
  },
  { additionalProperties: false, description: 'a JSON object' },
);

/** Path parameters of every /v1/vms/:name route and of the primary health check. */
export const VmNameParamsSchema = Type.Object({ name: NameSchema }, { additionalProperties: false });
export const ModuleParamsSchema = Type.Object(
  { sha256: Type.String({ pattern: '^[0-9a-f]{64}$', description: '64 lowercase hex digits' }) },
  { additionalProperties: false },
);

/** POST /v1/vms/:name/clone (host to host): which backup asks, at which generation. */
export const CloneRequestSchema = Type.Object(
  {
    backup: NameSchema,
    incarnation: Type.String({ minLength: 1, maxLength: 64 }),
    generation: Type.Integer({ minimum: 1 }),
  },
  { additionalProperties: false },
);

/** POST /v1/vms/:name/ft: switch fault tolerance on or off on a running VM. */
export const SetFtRequestSchema = Type.Object({ enabled: Type.Boolean() }, { additionalProperties: false });

/** POST /v1/vms/:name/migrate: move the running VM to host `to`. */
export const MigrateRequestSchema = Type.Object({ to: NameSchema }, { additionalProperties: false });

/**
 * `?bytes=N` of the logs route. A digit string rather than an integer: the
 * server's ajv does not coerce types (so `"ft":"true"` stays an error in
 * bodies), and the range is checked by the handler, with its own message.
 */
export const VmLogsQuerySchema = Type.Object(
  {
    bytes: Type.Optional(
      Type.String({ pattern: '^[0-9]{1,10}$', description: 'a whole number of bytes, e.g. 65536' }),
    ),
  },
  { additionalProperties: false },
);

/**
 * `?after=C&limit=N&scope=local|cluster` of the events routes; digit strings
 * for the same reason as `bytes` above.
 */
export const EventsQuerySchema = Type.Object(
  {
    after: Type.Optional(
      Type.String({ pattern: '^[0-9]{1,15}$', description: 'a cursor: a whole number, e.g. 0' }),
    ),
    limit: Type.Optional(
      Type.String({ pattern: '^[0-9]{1,4}$', description: 'a whole number of events from 1 to 1000' }),
    ),
    scope: Type.Optional(
      Type.Union([Type.Literal('local'), Type.Literal('cluster')], {
        description: '"local" (this host\'s own events) or "cluster" (merged)',
      }),
    ),
  },
  { additionalProperties: false },
);

/** Path parameters of /v1/hosts/:name routes. */
export const HostNameParamsSchema = Type.Object({ name: NameSchema }, { additionalProperties: false });

// ---- Responses (open) ----------------------------------------------------

export const CloneProgressSchema = Type.Object({
  doneBytes: Type.Integer({ minimum: 0 }),
  totalBytes: Type.Integer({ minimum: 0 }),
});

export const VmStatusSchema = Type.Object({
  name: Type.String(),
  state: VmRunStateSchema,
  ft: Type.Boolean(),
  protection: ProtectionSchema,
  reason: Type.Union([Type.String(), Type.Null()]),
  primary: Type.Union([Type.String(), Type.Null()]),
  backup: Type.Union([Type.String(), Type.Null()]),
  address: Type.String(),
  lagMs: Type.Union([Type.Number({ minimum: 0 }), Type.Null()]),
  lagEvents: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  lagBytes: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  desired: Type.Union([Type.Literal('running'), Type.Literal('stopped')]),
  generation: Type.Integer({ minimum: 0 }),
  wasm: Type.String(),
  disk: Type.Union([Type.String(), Type.Null()]),
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  heldOutputs: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  logBytes: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  logFileBytes: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  logEvents: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  clone: Type.Union([CloneProgressSchema, Type.Null()]),
  sampledAtMs: Type.Union([Type.Number(), Type.Null()]),
});

export const VmStatusListSchema = Type.Array(VmStatusSchema);

export const HostStatusSchema = Type.Object({
  name: Type.String(),
  state: HostStateSchema,
  api: Type.String(),
  peer: Type.String(),
  address: Type.Union([Type.String(), Type.Null()]),
  pid: Type.Integer({ minimum: 0 }),
  vms: Type.Array(Type.String()),
  heartbeatRttMs: Type.Union([Type.Number({ minimum: 0 }), Type.Null()]),
  local: Type.Boolean(),
  fenced: Type.Boolean(),
});

export const HostStatusListSchema = Type.Array(HostStatusSchema);

export const HostInfoSchema = Type.Object({
  name: Type.String(),
  pid: Type.Integer({ minimum: 0 }),
  api: Type.String(),
  clusterId: Type.String(),
});

export const EventKindSchema = Type.Union(EVENT_KINDS.map((k) => Type.Literal(k)));

export const ClusterEventSchema = Type.Object({
  id: Type.String(),
  cursor: Type.Integer({ minimum: 1 }),
  atMs: Type.Number(),
  host: Type.String(),
  kind: EventKindSchema,
  vm: Type.Union([Type.String(), Type.Null()]),
  generation: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()]),
  peer: Type.Union([Type.String(), Type.Null()]),
  durationMs: Type.Union([Type.Number({ minimum: 0 }), Type.Null()]),
  message: Type.String(),
});

/** GET /v1/events. */
export const EventsPageSchema = Type.Object({
  host: Type.String(),
  incarnation: Type.String(),
  cursor: Type.Integer({ minimum: 0 }),
  events: Type.Array(ClusterEventSchema),
});

/** POST /v1/modules. */
export const ModuleInfoSchema = Type.Object({
  path: Type.String(),
  sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
  bytes: Type.Integer({ minimum: 0 }),
});

/** POST /v1/hosts/:name/kill. */
export const KillHostAnswerSchema = Type.Object({ host: Type.String(), pid: Type.Integer({ minimum: 0 }) });

/** GET /health. */
export const HealthResponseSchema = Type.Object({
  ok: Type.Literal(true),
  name: Type.String(),
  clusterId: Type.String(),
});
export type HealthResponse = Static<typeof HealthResponseSchema>;

/** GET /health/vms/:name/primary: 200 with true, 503 with false. */
export const PrimaryResponseSchema = Type.Object({ primary: Type.Boolean() });
export type PrimaryResponse = Static<typeof PrimaryResponseSchema>;

export const ApiErrorSchema = Type.Object({ code: ApiErrorCodeSchema, message: Type.String() });

/** Every non-2xx answer of the API (except the primary check's 503) has this body. */
export const ApiErrorBodySchema = Type.Object({ error: ApiErrorSchema });
export type ApiErrorBody = Static<typeof ApiErrorBodySchema>;

// ---- Compile-time agreement with backend.ts --------------------------------

/**
 * True only when A and B are the same type (not merely assignable either
 * way), so an optional-versus-required or literal-versus-string drift fails.
 */
export type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;

/** Forces its argument to be `true` at compile time; unused at run time. */
function assertType<_T extends true>(): void {}

assertType<Equals<Static<typeof VmRunStateSchema>, VmRunState>>();
assertType<Equals<Static<typeof ProtectionSchema>, Protection>>();
assertType<Equals<Static<typeof HostStateSchema>, HostState>>();
assertType<Equals<Static<typeof ApiErrorCodeSchema>, ApiErrorCode>>();
assertType<Equals<Static<typeof ApiErrorSchema>, ApiError>>();
assertType<Equals<Static<typeof VmStatusSchema>, VmStatus>>();
assertType<Equals<Static<typeof SetFtRequestSchema>, SetFtRequest>>();
assertType<Equals<Static<typeof MigrateRequestSchema>, MigrateRequest>>();
assertType<Equals<Static<typeof HostStatusSchema>, HostStatus>>();
assertType<Equals<Static<typeof HostInfoSchema>, HostInfo>>();
assertType<Equals<Static<typeof CreateVmRequestSchema>, CreateVmRequest>>();
assertType<Equals<Static<typeof CloneProgressSchema>, CloneProgress>>();
assertType<Equals<Static<typeof EventKindSchema>, EventKind>>();
assertType<Equals<Static<typeof ClusterEventSchema>, ClusterEvent>>();
assertType<Equals<Static<typeof EventsPageSchema>, EventsPage>>();
assertType<Equals<Static<typeof ModuleInfoSchema>, ModuleInfo>>();
assertType<Equals<Static<typeof KillHostAnswerSchema>, KillHostAnswer>>();

/** Re-exported so callers need one import for schema work. */
export type { Static, TSchema };
