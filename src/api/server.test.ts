// Tests of the host API server (server.ts) through real HTTP on 127.0.0.1,
// against an in-memory backend: every route's success path, authentication
// (health open, everything else closed, the token never logged), every kind
// of bad request as a 400 naming the field, the backend's error codes as
// statuses, and a backend that throws or hangs costing one request only.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type {
  ApiError,
  ApiResult,
  CreateVmRequest,
  HostBackend,
  HostInfo,
  HostStatus,
  VmStatus,
  CloneAnswer,
} from './backend.js';
import { ApiErrorBodySchema, HostStatusListSchema, VmStatusListSchema, VmStatusSchema } from './schema.js';
import {
  BODY_BYTES_MAX,
  LOG_BYTES_DEFAULT,
  LOG_BYTES_MAX,
  startApiServer,
  type ApiServer,
} from './server.js';

const TOKEN = 'f00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeedf00dfeed';
const WRONG_TOKEN = 'badc0ffee0ddf00dbadc0ffee0ddf00d';

const errorBodyCheck = TypeCompiler.Compile(ApiErrorBodySchema);
const vmCheck = TypeCompiler.Compile(VmStatusSchema);

/** A backend that keeps VMs in a map, with switches to make its next call fail, throw or hang. */
class FakeBackend implements HostBackend {
  readonly vms = new Map<string, VmStatus>();
  readonly primaries = new Set<string>();
  /** The `bytesMax` of every vmLogs call, in order. */
  readonly logsAsked: number[] = [];
  /** The next backend call returns this error (once). */
  failNext: ApiError | null = null;
  /** The next backend call throws (once). */
  throwNext = false;
  /** The next backend call never settles (once). */
  hangNext = false;

  info(): HostInfo {
    return { name: 'h1', pid: 4242, api: '127.0.0.1:7000', clusterId: 'c0ffee' };
  }
  isPrimaryFor(vm: string): boolean {
    return this.primaries.has(vm);
  }
  token(): string {
    return TOKEN;
  }
  async listHosts(): Promise<ApiResult<HostStatus[]>> {
    return this.gate(() => ({
      ok: true,
      value: [
        {
          name: 'h1',
          state: 'up',
          api: '127.0.0.1:7000',
          peer: '127.0.0.1:7001',
          address: null,
          pid: 4242,
          vms: [...this.vms.keys()],
          heartbeatRttMs: null,
        },
      ],
    }));
  }
  async listVms(): Promise<ApiResult<VmStatus[]>> {
    return this.gate(() => ({ ok: true, value: [...this.vms.values()] }));
  }
  async getVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.find(name));
  }
  async createVm(req: CreateVmRequest): Promise<ApiResult<VmStatus>> {
    return this.gate(() => {
      if (this.vms.has(req.name)) {
        return { ok: false, error: { code: 'conflict', message: `VM ${req.name} already exists` } };
      }
      const vm = sampleVm(req.name, { wasm: req.wasm, address: req.listen, ft: req.ft ?? false });
      this.vms.set(req.name, vm);
      return { ok: true, value: vm };
    });
  }
  async startVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.update(name, { desired: 'running', state: 'running' }));
  }
  async setFt(name: string, req: { enabled: boolean }): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.update(name, { ft: req.enabled }));
  }
  async migrateVm(name: string, _req: { to: string }): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.update(name, { state: 'running' }));
  }
  async failoverVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.update(name, { state: 'running' }));
  }
  async stopVm(name: string): Promise<ApiResult<VmStatus>> {
    return this.gate(() => this.update(name, { desired: 'stopped', state: 'stopped' }));
  }
  async removeVm(name: string): Promise<ApiResult<void>> {
    return this.gate(() => {
      if (!this.vms.delete(name))
        return { ok: false, error: { code: 'not-found', message: `no VM ${name}` } };
      return { ok: true, value: undefined };
    });
  }
  async snapshotVm(name: string): Promise<ApiResult<{ body: Buffer[] }>> {
    return { ok: false, error: { code: 'conflict', message: `${name} does not run here` } };
  }
  async cloneVm(name: string): Promise<ApiResult<CloneAnswer>> {
    return { ok: false, error: { code: 'conflict', message: `${name} is not an FT primary here` } };
  }
  async vmLogs(name: string, bytesMax: number): Promise<ApiResult<string>> {
    return this.gate(() => {
      this.logsAsked.push(bytesMax);
      const found = this.find(name);
      if (!found.ok) return found;
      return { ok: true, value: `hello from ${name}\n`.slice(-bytesMax) };
    });
  }

  private find(name: string): ApiResult<VmStatus> {
    const vm = this.vms.get(name);
    return vm === undefined
      ? { ok: false, error: { code: 'not-found', message: `no VM ${name}` } }
      : { ok: true, value: vm };
  }
  private update(name: string, change: Partial<VmStatus>): ApiResult<VmStatus> {
    const found = this.find(name);
    if (!found.ok) return found;
    const vm = { ...found.value, ...change, generation: found.value.generation + 1 };
    this.vms.set(name, vm);
    return { ok: true, value: vm };
  }
  private async gate<T>(body: () => ApiResult<T>): Promise<ApiResult<T>> {
    if (this.throwNext) {
      this.throwNext = false;
      throw new Error('backend exploded');
    }
    if (this.hangNext) {
      this.hangNext = false;
      return new Promise(() => {});
    }
    if (this.failNext !== null) {
      const error = this.failNext;
      this.failNext = null;
      return { ok: false, error };
    }
    return body();
  }
}

function sampleVm(name: string, over: Partial<VmStatus> = {}): VmStatus {
  return {
    name,
    state: 'running',
    ft: false,
    protection: 'off',
    reason: null,
    primary: 'h1',
    backup: null,
    address: '127.0.1.1:8080',
    lagMs: null,
    lagEvents: null,
    lagBytes: null,
    desired: 'running',
    generation: 1,
    wasm: '/srv/app.wasm',
    disk: null,
    exitCode: null,
    heldOutputs: null,
    logBytes: null,
    logFileBytes: null,
    ...over,
  };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: unknown;
}

interface CallOptions {
  /** Sent as "Bearer <token>"; null sends no Authorization header. Default: the right token. */
  token?: string | null;
  /** Sent verbatim instead of one built from `token`. */
  authorization?: string;
  body?: string;
  /** Default application/json when there is a body. Null sends none. */
  contentType?: string | null;
}

let server: ApiServer;
let backend: FakeBackend;
const logLines: string[] = [];

/** One request with exactly the headers asked for (fetch would add its own). */
function call(method: string, path: string, opts: CallOptions = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  const token = opts.token === undefined ? TOKEN : opts.token;
  if (opts.authorization !== undefined) headers.authorization = opts.authorization;
  else if (token !== null) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) {
    const contentType = opts.contentType === undefined ? 'application/json' : opts.contentType;
    if (contentType !== null) headers['content-type'] = contentType;
    headers['content-length'] = String(Buffer.byteLength(opts.body));
  }
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: server.address.port, method, path, headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown = undefined;
          if (String(res.headers['content-type'] ?? '').startsWith('application/json'))
            json = JSON.parse(text);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Asserts the status, the error code, the one error shape, and optionally words of the message. */
function assertError(answer: Answer, status: number, code: string, message?: RegExp): void {
  assert.equal(answer.status, status, answer.text);
  assert.ok(errorBodyCheck.Check(answer.json), `not an API error body: ${answer.text}`);
  const body = answer.json as { error: ApiError };
  assert.equal(body.error.code, code);
  if (message !== undefined) assert.match(body.error.message, message);
}

const goodCreate: CreateVmRequest = {
  name: 'web',
  wasm: '/srv/web.wasm',
  listen: '127.0.1.1:8080',
  disk: '/var/lib/web',
  env: ['A=1', 'EMPTY='],
  args: ['--port', '3'],
  memoryMaxMib: 64,
  ft: true,
  host: null,
};

before(async () => {
  backend = new FakeBackend();
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(chunk.toString('utf8'));
      done();
    },
  });
  server = await startApiServer(
    backend,
    { host: '127.0.0.1', port: 0 },
    { logger: pino({ level: 'debug' }, sink) },
  );
});

after(() => server.close());

test('the server reports the address it bound', () => {
  assert.equal(server.address.host, '127.0.0.1');
  assert.ok(server.address.port > 0);
});

test('GET /health is open and names the host and cluster', async () => {
  const answer = await call('GET', '/health', { token: null });
  assert.equal(answer.status, 200);
  assert.deepEqual(answer.json, { ok: true, name: 'h1', clusterId: 'c0ffee' });
  assert.equal(answer.headers['cache-control'], 'no-store');
});

test('GET /health/vms/:name/primary is open: 200 on the primary, 503 elsewhere', async () => {
  backend.primaries.add('db');
  const yes = await call('GET', '/health/vms/db/primary', { token: null });
  assert.equal(yes.status, 200);
  assert.deepEqual(yes.json, { primary: true });
  const no = await call('GET', '/health/vms/other/primary', { token: null });
  assert.equal(no.status, 503);
  assert.deepEqual(no.json, { primary: false });
  assertError(
    await call('GET', '/health/vms/Not%20A%20Name/primary', { token: null }),
    400,
    'invalid',
    /path\.name/,
  );
});

test('authenticated routes refuse a missing, wrong or malformed token with 401 and a Bearer challenge', async () => {
  const cases: CallOptions[] = [
    { token: null },
    { token: WRONG_TOKEN },
    { token: TOKEN.slice(0, -1) },
    { token: `${TOKEN}0` },
    { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` },
    { authorization: 'Bearer' },
    { authorization: 'Bearer ' },
    { authorization: `Bearer ${TOKEN} extra` },
    { authorization: TOKEN },
  ];
  for (const opts of cases) {
    for (const [method, path] of [
      ['GET', '/v1/info'],
      ['GET', '/v1/hosts'],
      ['GET', '/v1/vms'],
      ['GET', '/v1/vms/web'],
      ['POST', '/v1/vms/web/start'],
      ['POST', '/v1/vms/web/stop'],
      ['POST', '/v1/vms/web/failover'],
      ['POST', '/v1/vms/web/ft'],
      ['POST', '/v1/vms/web/migrate'],
      ['DELETE', '/v1/vms/web'],
      ['GET', '/v1/vms/web/logs'],
      ['GET', '/v1/no-such-route'],
    ] as const) {
      const answer = await call(method, path, opts);
      assertError(answer, 401, 'unauthorized');
      assert.match(String(answer.headers['www-authenticate']), /^Bearer\b/, `${method} ${path}`);
    }
  }
});

test('authentication comes before the body is parsed', async () => {
  const answer = await call('POST', '/v1/vms', { token: null, body: '{not json' });
  assertError(answer, 401, 'unauthorized');
});

test('the scheme name is case-insensitive', async () => {
  const answer = await call('GET', '/v1/info', { authorization: `bearer ${TOKEN}` });
  assert.equal(answer.status, 200);
});

test('GET /v1/info', async () => {
  const answer = await call('GET', '/v1/info');
  assert.equal(answer.status, 200);
  assert.deepEqual(answer.json, backend.info());
});

test('a VM through its life: create, show, list, stop, start, logs, remove', async () => {
  const created = await call('POST', '/v1/vms', { body: JSON.stringify(goodCreate) });
  assert.equal(created.status, 201, created.text);
  assert.ok(vmCheck.Check(created.json));
  assert.equal((created.json as VmStatus).name, 'web');
  assert.equal((created.json as VmStatus).ft, true);

  const shown = await call('GET', '/v1/vms/web');
  assert.equal(shown.status, 200);
  assert.deepEqual(shown.json, created.json);

  const listed = await call('GET', '/v1/vms');
  assert.equal(listed.status, 200);
  assert.ok(TypeCompiler.Compile(VmStatusListSchema).Check(listed.json));
  assert.deepEqual(
    (listed.json as VmStatus[]).map((vm) => vm.name),
    ['web'],
  );

  const hosts = await call('GET', '/v1/hosts');
  assert.equal(hosts.status, 200);
  assert.ok(TypeCompiler.Compile(HostStatusListSchema).Check(hosts.json));
  assert.deepEqual((hosts.json as HostStatus[])[0]?.vms, ['web']);

  const stopped = await call('POST', '/v1/vms/web/stop');
  assert.equal(stopped.status, 200);
  assert.equal((stopped.json as VmStatus).state, 'stopped');
  const started = await call('POST', '/v1/vms/web/start');
  assert.equal(started.status, 200);
  assert.equal((started.json as VmStatus).state, 'running');

  const logs = await call('GET', '/v1/vms/web/logs');
  assert.equal(logs.status, 200);
  assert.match(String(logs.headers['content-type']), /^text\/plain/);
  assert.equal(logs.text, 'hello from web\n');
  const tail = await call('GET', '/v1/vms/web/logs?bytes=4');
  assert.equal(tail.text, 'web\n');
  assert.deepEqual(backend.logsAsked.slice(-2), [LOG_BYTES_DEFAULT, 4]);
  const most = await call('GET', `/v1/vms/web/logs?bytes=${LOG_BYTES_MAX}`);
  assert.equal(most.status, 200);

  const removed = await call('DELETE', '/v1/vms/web');
  assert.equal(removed.status, 204);
  assert.equal(removed.text, '');
  assertError(await call('GET', '/v1/vms/web'), 404, 'not-found', /web/);
});

test('a create with only the required fields is accepted', async () => {
  const answer = await call('POST', '/v1/vms', {
    body: JSON.stringify({ name: 'min', wasm: '/a.wasm', listen: '10.0.0.1:1' }),
  });
  assert.equal(answer.status, 201, answer.text);
  assert.equal((await call('DELETE', '/v1/vms/min')).status, 204);
});

test('bad requests are 400s whose message names the field', async () => {
  const post = (body: string, contentType?: string | null) => call('POST', '/v1/vms', { body, contentType });
  const good = (over: Record<string, unknown>) => JSON.stringify({ ...goodCreate, name: 'bad', ...over });

  assertError(await post('{"name": "x",'), 400, 'invalid', /not valid JSON/);
  assertError(await post(''), 400, 'invalid', /empty/);
  assertError(await post(good({}), 'text/plain'), 400, 'invalid', /Content-Type must be application\/json/);
  assertError(await post(good({}), null), 400, 'invalid', /Content-Type/);
  assertError(await post('[]'), 400, 'invalid', /body must be a JSON object/);
  assertError(await post('null'), 400, 'invalid', /body/);
  assertError(await post(JSON.stringify({ name: 'x', listen: '127.0.0.1:80' })), 400, 'invalid', /"wasm"/);
  assertError(await post(good({ colour: 'blue' })), 400, 'invalid', /unknown field "colour"/);
  assertError(await post(good({ ft: 'true' })), 400, 'invalid', /body\.ft must be true or false/);
  assertError(await post(good({ memoryMaxMib: 1.5 })), 400, 'invalid', /body\.memoryMaxMib/);
  assertError(await post(good({ memoryMaxMib: 0 })), 400, 'invalid', /body\.memoryMaxMib/);
  assertError(await post(good({ name: 'Web!' })), 400, 'invalid', /body\.name must be a name/);
  assertError(await post(good({ name: 'x'.repeat(64) })), 400, 'invalid', /body\.name/);
  assertError(await post(good({ name: 5 })), 400, 'invalid', /body\.name/);
  assertError(await post(good({ listen: 'localhost:80' })), 400, 'invalid', /body\.listen must be IP:PORT/);
  assertError(await post(good({ listen: '127.0.0.1:0' })), 400, 'invalid', /body\.listen/);
  assertError(await post(good({ listen: '127.0.0.1:65536' })), 400, 'invalid', /body\.listen/);
  assertError(await post(good({ listen: '256.0.0.1:80' })), 400, 'invalid', /body\.listen/);
  assertError(
    await post(good({ wasm: 'relative.wasm' })),
    400,
    'invalid',
    /body\.wasm must be the absolute path/,
  );
  assertError(await post(good({ disk: 'relative' })), 400, 'invalid', /body\.disk/);
  assertError(await post(good({ env: ['A=1', 'NOEQUALS'] })), 400, 'invalid', /body\.env\[1\] must be K=V/);
  assertError(await post(good({ args: [1] })), 400, 'invalid', /body\.args\[0\]/);
  assertError(await post(good({ host: 'Bad Host' })), 400, 'invalid', /body\.host/);
  assertError(await post(good({}).replace('{', '{"__proto__":{"admin":true},')), 400, 'invalid');
  assertError(
    await post(good({ args: ['x'.repeat(BODY_BYTES_MAX)] })),
    400,
    'invalid',
    /larger than 65536 bytes/,
  );

  assertError(await call('GET', '/v1/vms/Upper'), 400, 'invalid', /path\.name must be a name/);
  assertError(await call('GET', '/v1/vms/a%2Fb'), 400, 'invalid', /path\.name/);
  assertError(await call('POST', '/v1/vms/-x/start'), 400, 'invalid', /path\.name/);
  assertError(await call('GET', '/v1/vms/web/logs?bytes=0'), 400, 'invalid', /query\.bytes/);
  assertError(
    await call('GET', `/v1/vms/web/logs?bytes=${LOG_BYTES_MAX + 1}`),
    400,
    'invalid',
    /query\.bytes/,
  );
  assertError(await call('GET', '/v1/vms/web/logs?bytes=lots'), 400, 'invalid', /query\.bytes/);
  assertError(await call('GET', '/v1/vms/web/logs?bytes=-1'), 400, 'invalid', /query\.bytes/);
  assertError(await call('GET', '/v1/vms/web/logs?lines=5'), 400, 'invalid', /unknown field "lines"/);

  // None of these reached the backend.
  assert.equal(backend.vms.has('bad'), false);
});

test('requests that fail before routing still get a 400 in the error shape', async () => {
  assertError(await call('GET', '/v1/vms/%zz'), 400, 'invalid', /malformed URL/);
  assertError(await call('GET', `/v1/vms/${'a'.repeat(100)}`), 400, 'invalid', /path\.name must be a name/);
  assertError(await call('GET', `/v1/vms/${'a'.repeat(1000)}`), 400, 'invalid', /too long/);

  // Not HTTP at all: Node's parser refuses it, and the socket still gets the API's body.
  const raw = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(server.address.port, '127.0.0.1', () => socket.write('HELLO THERE\r\n\r\n'));
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
  assert.match(raw, /^HTTP\/1\.1 400 /);
  const body: unknown = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4));
  assert.ok(errorBodyCheck.Check(body), raw);
});

test('unknown routes and unknown methods are 404s in the error shape', async () => {
  assertError(await call('GET', '/v1/nothing'), 404, 'not-found', /no route GET \/v1\/nothing/);
  assertError(await call('PUT', '/v1/vms'), 404, 'not-found');
  assertError(await call('GET', '/'), 404, 'not-found');
});

test("the backend's error codes become their statuses", async () => {
  assertError(await call('GET', '/v1/vms/ghost'), 404, 'not-found', /ghost/);
  assertError(await call('POST', '/v1/vms/ghost/start'), 404, 'not-found');
  assertError(await call('DELETE', '/v1/vms/ghost'), 404, 'not-found');
  assertError(await call('GET', '/v1/vms/ghost/logs'), 404, 'not-found');

  const body = JSON.stringify({ ...goodCreate, name: 'twice' });
  assert.equal((await call('POST', '/v1/vms', { body })).status, 201);
  assertError(await call('POST', '/v1/vms', { body }), 409, 'conflict', /already exists/);

  const codes = [
    ['invalid', 400],
    ['unauthorized', 401],
    ['not-found', 404],
    ['conflict', 409],
    ['unavailable', 503],
    ['internal', 500],
  ] as const;
  for (const [code, status] of codes) {
    backend.failNext = { code, message: `the coordinator says ${code}` };
    assertError(await call('GET', '/v1/vms'), status, code, new RegExp(`says ${code}`));
  }
  backend.failNext = { code: 'unavailable', message: 'coordinator unreachable' };
  assertError(await call('GET', '/v1/hosts'), 503, 'unavailable', /coordinator unreachable/);
});

test('a backend that throws costs one 500, is logged, and the server keeps serving', async () => {
  backend.throwNext = true;
  const answer = await call('GET', '/v1/vms');
  assertError(answer, 500, 'internal', /request .*host's log/);
  assert.doesNotMatch(answer.text, /exploded/, 'the exception text stays in the log');
  assert.ok(logLines.some((line) => line.includes('backend exploded')));
  assert.equal((await call('GET', '/v1/vms')).status, 200);
  assert.equal((await call('GET', '/health', { token: null })).status, 200);
});

test('a backend that hangs is answered 503 after backendTimeoutMs', async () => {
  const slowBackend = new FakeBackend();
  const slow = await startApiServer(
    slowBackend,
    { host: '127.0.0.1', port: 0 },
    { logger: false, backendTimeoutMs: 200 },
  );
  try {
    slowBackend.hangNext = true;
    const answer = await new Promise<Answer>((resolve, reject) => {
      http
        .get(
          {
            host: '127.0.0.1',
            port: slow.address.port,
            path: '/v1/vms',
            headers: { authorization: `Bearer ${TOKEN}` },
            agent: false,
          },
          (res) => {
            let text = '';
            res.on('data', (c: Buffer) => (text += c.toString()));
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: JSON.parse(text) }),
            );
          },
        )
        .on('error', reject);
    });
    assertError(answer, 503, 'unavailable');
  } finally {
    await slow.close();
  }
});

test('the token never reaches the log', async () => {
  // Exercise requests with the right and a wrong token, a failure and a 500 at debug level.
  await call('GET', '/v1/info');
  await call('GET', '/v1/info', { token: WRONG_TOKEN });
  backend.throwNext = true;
  await call('GET', '/v1/vms');
  assert.ok(logLines.length > 0, 'the test logger received lines');
  for (const line of logLines) {
    assert.ok(!line.includes(TOKEN), `token in log line: ${line}`);
    assert.ok(!line.includes(WRONG_TOKEN), `presented token in log line: ${line}`);
  }
});

test('startApiServer rejects when the address is taken', async () => {
  await assert.rejects(
    startApiServer(new FakeBackend(), { host: '127.0.0.1', port: server.address.port }, { logger: false }),
  );
});
