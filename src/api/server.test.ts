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
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
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
  ClusterEvent,
  EventScope,
  EventsPage,
  KillHostAnswer,
  ModuleInfo,
} from './backend.js';
import { ApiErrorBodySchema, HostStatusListSchema, VmStatusListSchema, VmStatusSchema } from './schema.js';
import { EventRing } from '../host/events.js';
import {
  BODY_BYTES_MAX,
  MODULE_BYTES_MAX,
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
  readonly ring = new EventRing(100);
  private eventSeq = 0;
  /** The bytes of every module uploaded, in order. */
  readonly uploads: Buffer[] = [];
  readonly killed: string[] = [];
  /** A timeline event, as the daemon would record one. */
  fire(message: string): void {
    this.ring.add({
      id: `h1/inc/${++this.eventSeq}`,
      atMs: 1_700_000_000_000 + this.eventSeq,
      host: 'h1',
      kind: 'go-live',
      vm: 'web',
      generation: 2,
      peer: 'h2',
      durationMs: 12,
      message,
    });
  }
  events(_scope: EventScope, after: number, limit: number): EventsPage {
    return {
      host: 'h1',
      incarnation: 'inc',
      cursor: this.ring.cursor,
      events: this.ring.after(after, limit),
    };
  }
  subscribeEvents(fn: (e: ClusterEvent) => void): () => void {
    return this.ring.subscribe(fn);
  }
  async metrics(): Promise<{ contentType: string; body: string }> {
    return {
      contentType: 'text/plain; version=0.0.4; charset=utf-8',
      body: `lockstep_vm_count ${this.vms.size}\n`,
    };
  }
  async uploadModule(bytes: Buffer): Promise<ApiResult<ModuleInfo>> {
    return this.gate(() => {
      this.uploads.push(bytes);
      return {
        ok: true,
        value: { path: '/data/modules/x.wasm', sha256: 'a'.repeat(64), bytes: bytes.byteLength },
      };
    });
  }
  /** Modules this backend "holds", by hash. */
  readonly moduleFiles = new Map<string, string>();
  async moduleFile(sha256: string): Promise<ApiResult<{ path: string; bytes: number }>> {
    return this.gate(() => {
      const file = this.moduleFiles.get(sha256);
      if (file === undefined)
        return { ok: false, error: { code: 'not-found', message: `no module ${sha256}` } };
      return { ok: true, value: { path: file, bytes: readFileSync(file).byteLength } };
    });
  }
  async killHost(name: string): Promise<ApiResult<KillHostAnswer>> {
    return this.gate(() => {
      if (name !== 'h2') return { ok: false, error: { code: 'not-found', message: `no host named ${name}` } };
      this.killed.push(name);
      return { ok: true, value: { host: name, pid: 4343 } };
    });
  }
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
          local: true,
          fenced: false,
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
    logEvents: null,
    clone: null,
    sampledAtMs: null,
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
  body?: string | Buffer;
  /** Default application/json when there is a body. Null sends none. */
  contentType?: string | null;
}

let server: ApiServer;
let consoleDir: string;
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
  consoleDir = mkdtempSync(path.join(tmpdir(), 'lockstep-console-test-'));
  mkdirSync(path.join(consoleDir, 'assets'));
  writeFileSync(
    path.join(consoleDir, 'index.html'),
    '<!doctype html><title>Lockstep</title><div id="app"></div>',
  );
  writeFileSync(path.join(consoleDir, 'assets', 'main-abc123.js'), 'console.log("hi")');
  server = await startApiServer(
    backend,
    { host: '127.0.0.1', port: 0 },
    { logger: pino({ level: 'debug' }, sink), consoleDir },
  );
});

after(async () => {
  await server.close();
  rmSync(consoleDir, { recursive: true, force: true });
});

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
  // Every authenticated operation of the OpenAPI document (so a new route is covered by itself),
  // with a sample name in its path.
  const doc = (await call('GET', '/openapi.json', { token: null })).json as {
    paths: Record<string, Record<string, { security?: unknown[] }>>;
  };
  const documented: [string, string][] = [];
  for (const [p, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      if (!(Array.isArray(op.security) && op.security.length === 0))
        documented.push([
          method.toUpperCase(),
          p.replace('{name}', 'web').replace('{sha256}', 'a'.repeat(64)),
        ]);
  assert.ok(documented.length >= 19, `${documented.length} authenticated operations documented`);
  for (const opts of cases) {
    for (const [method, path] of [
      ...documented,
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
    ] as [string, string][]) {
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
  assertError(await call('GET', '/nothing'), 404, 'not-found');
  // Unknown routes are authenticated, even next to the open console files.
  assertError(await call('GET', '/nothing', { token: null }), 401, 'unauthorized');
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

// ---- The console, events, metrics, modules, host kill ----------------------

test('the console is served at / without a token; its assets too; a missing build says how to build it', async () => {
  const page = await call('GET', '/', { token: null });
  assert.equal(page.status, 200, page.text);
  assert.match(String(page.headers['content-type']), /text\/html/);
  assert.match(page.text, /<div id="app">/);
  const asset = await call('GET', '/assets/main-abc123.js', { token: null });
  assert.equal(asset.status, 200);
  assert.match(String(asset.headers['cache-control']), /immutable/);
  assert.equal((await call('GET', '/assets/nope.js', { token: null })).status, 404);
  // Path tricks stay inside the console folder.
  assert.notEqual((await call('GET', '/assets/..%2f..%2fetc%2fpasswd', { token: null })).status, 200);
  const bare = await startApiServer(
    backend,
    { host: '127.0.0.1', port: 0 },
    { logger: false, consoleDir: path.join(consoleDir, 'not-built') },
  );
  try {
    const r = await fetch(`http://127.0.0.1:${bare.address.port}/`);
    assert.equal(r.status, 503);
    assert.match(await r.text(), /npm run build:console/);
  } finally {
    await bare.close();
  }
});

test('GET /openapi.json is open and names the bearer scheme', async () => {
  const doc = await call('GET', '/openapi.json', { token: null });
  assert.equal(doc.status, 200);
  const body = doc.json as {
    openapi: string;
    paths: Record<string, unknown>;
    components: { securitySchemes: object };
  };
  assert.match(body.openapi, /^3\./);
  assert.ok('/v1/vms/{name}/ft' in body.paths);
  assert.ok('bearer' in body.components.securitySchemes);
});

test('GET /v1/events pages the timeline by cursor; auth and bad queries are refused', async () => {
  assertError(await call('GET', '/v1/events', { token: null }), 401, 'unauthorized');
  assertError(await call('GET', '/v1/events', { token: WRONG_TOKEN }), 401, 'unauthorized');
  assertError(await call('GET', '/v1/events?after=-1'), 400, 'invalid', /query\.after must be a cursor/);
  assertError(await call('GET', '/v1/events?limit=0'), 400, 'invalid', /query\.limit must be from 1/);
  assertError(await call('GET', '/v1/events?scope=galaxy'), 400, 'invalid', /query\.scope/);
  assertError(await call('GET', '/v1/events?colour=red'), 400, 'invalid', /unknown field "colour"/);
  const before = (await call('GET', '/v1/events')).json as { cursor: number };
  backend.fire('web: live on h2 at generation 2 (go-live took 12 ms)');
  backend.fire('second');
  const page = await call('GET', `/v1/events?after=${before.cursor}&limit=1`);
  assert.equal(page.status, 200);
  const body = page.json as { cursor: number; events: { message: string; cursor: number }[]; host: string };
  assert.equal(body.host, 'h1');
  assert.equal(body.cursor, before.cursor + 2);
  assert.deepEqual(
    body.events.map((e) => e.message),
    ['web: live on h2 at generation 2 (go-live took 12 ms)'],
  );
  const rest = (await call('GET', `/v1/events?after=${body.events[0]!.cursor}`)).json as typeof body;
  assert.deepEqual(
    rest.events.map((e) => e.message),
    ['second'],
  );
});

/** Reads server-sent events from `path` until `count` arrived; returns them and the raw text. */
async function readSse(
  path: string,
  headers: Record<string, string>,
  count: number,
  whileOpen: () => void,
): Promise<{ status: number; events: { id: string; data: { message: string } }[]; contentType: string }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 10_000);
  try {
    const r = await fetch(`http://127.0.0.1:${server.address.port}${path}`, { headers, signal: ac.signal });
    const events: { id: string; data: { message: string } }[] = [];
    if (r.status !== 200 || r.body === null)
      return { status: r.status, events, contentType: r.headers.get('content-type') ?? '' };
    const reader = r.body.getReader();
    let text = '';
    let poked = false;
    while (events.length < count) {
      const { value, done } = await reader.read();
      if (done) break;
      const chunk = Buffer.from(value).toString('utf8');
      text += chunk;
      const blocks = text.split('\n\n');
      text = blocks.pop() ?? '';
      for (const b of blocks) {
        const id = /^id: (.*)$/m.exec(b)?.[1];
        const data = /^data: (.*)$/m.exec(b)?.[1];
        if (id !== undefined && data !== undefined) events.push({ id, data: JSON.parse(data) });
      }
      // The stream is open (its first line arrived): now the live part can be provoked.
      if (!poked && chunk.includes('retry:')) {
        poked = true;
        whileOpen();
      }
    }
    ac.abort();
    return { status: r.status, events, contentType: r.headers.get('content-type') ?? '' };
  } finally {
    clearTimeout(timer);
  }
}

test('GET /v1/events/stream sends the backlog after Last-Event-ID, then live events', async () => {
  const auth = { authorization: `Bearer ${TOKEN}` };
  const refused = await readSse('/v1/events/stream', {}, 0, () => undefined);
  assert.equal(refused.status, 401);
  const start = (await call('GET', '/v1/events')).json as { cursor: number };
  backend.fire('backlog one');
  backend.fire('backlog two');
  const got = await readSse(
    '/v1/events/stream',
    { ...auth, 'last-event-id': String(start.cursor + 1) },
    2,
    () => backend.fire('live three'),
  );
  assert.equal(got.status, 200);
  assert.match(got.contentType, /text\/event-stream/);
  // The first backlog event is before the Last-Event-ID, so it is not sent again.
  assert.deepEqual(
    got.events.map((e) => e.data.message),
    ['backlog two', 'live three'],
  );
  assert.deepEqual(
    got.events.map((e) => Number(e.id)),
    [start.cursor + 2, start.cursor + 3],
  );
});

test('GET /metrics needs the token and answers Prometheus text', async () => {
  assertError(await call('GET', '/metrics', { token: null }), 401, 'unauthorized');
  const m = await call('GET', '/metrics');
  assert.equal(m.status, 200);
  assert.match(String(m.headers['content-type']), /^text\/plain/);
  assert.match(m.text, /^lockstep_vm_count [0-9]+$/m);
});

test('POST /v1/modules stores the bytes; wrong type, empty, too large and no token are refused', async () => {
  const wasm = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
  assertError(
    await call('POST', '/v1/modules', { token: null, body: wasm, contentType: 'application/wasm' }),
    401,
    'unauthorized',
  );
  const ok = await call('POST', '/v1/modules', { body: wasm, contentType: 'application/wasm' });
  assert.equal(ok.status, 201, ok.text);
  assert.deepEqual(ok.json, { path: '/data/modules/x.wasm', sha256: 'a'.repeat(64), bytes: 8 });
  assert.deepEqual(backend.uploads.at(-1), wasm);
  assertError(
    await call('POST', '/v1/modules', { body: 'text', contentType: 'text/plain' }),
    400,
    'invalid',
    /Content-Type/,
  );
  assertError(
    await call('POST', '/v1/modules', { body: Buffer.alloc(0), contentType: 'application/wasm' }),
    400,
    'invalid',
  );
  assertError(
    await call('POST', '/v1/modules', { body: '{"a":1}', contentType: 'application/json' }),
    400,
    'invalid',
    /module's bytes/,
  );
  backend.failNext = { code: 'invalid', message: 'the upload is not a valid WebAssembly module' };
  assertError(
    await call('POST', '/v1/modules', { body: wasm, contentType: 'application/wasm' }),
    400,
    'invalid',
    /not a valid WebAssembly/,
  );
});

test('GET /v1/modules/SHA256 answers a held module as application/wasm; unknown and malformed hashes are refused', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'lockstep-api-mod-'));
  try {
    const bytes = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);
    const sha = 'b'.repeat(64);
    writeFileSync(path.join(dir, 'm.wasm'), bytes);
    backend.moduleFiles.set(sha, path.join(dir, 'm.wasm'));
    const got = await new Promise<{ status: number; type: string; body: Buffer }>((resolve, reject) => {
      http
        .get(
          {
            host: '127.0.0.1',
            port: server.address.port,
            path: `/v1/modules/${sha}`,
            headers: { authorization: `Bearer ${TOKEN}` },
            agent: false,
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({
                status: res.statusCode ?? 0,
                type: String(res.headers['content-type']),
                body: Buffer.concat(chunks),
              }),
            );
          },
        )
        .on('error', reject);
    });
    assert.equal(got.status, 200);
    assert.equal(got.type, 'application/wasm');
    assert.deepEqual(got.body, bytes);
    assertError(await call('GET', `/v1/modules/${sha}`, { token: null }), 401, 'unauthorized');
    assertError(await call('GET', `/v1/modules/${'c'.repeat(64)}`), 404, 'not-found');
    for (const bad of ['B'.repeat(64), 'b'.repeat(63), 'b'.repeat(65), '..%2Fetc%2Fpasswd'])
      assertError(await call('GET', `/v1/modules/${bad}`), 400, 'invalid');
  } finally {
    backend.moduleFiles.clear();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('POST /v1/modules refuses a body over the module limit before reading it all', async () => {
  // The declared length alone is enough for the refusal: the bytes are never sent.
  const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: server.address.port,
        method: 'POST',
        path: '/v1/modules',
        headers: {
          authorization: `Bearer ${TOKEN}`,
          'content-type': 'application/wasm',
          'content-length': String(MODULE_BYTES_MAX + 1),
        },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('error', reject);
    req.write(Buffer.alloc(1024));
  });
  assert.equal(answer.status, 400, answer.text);
  assert.match(answer.text, /larger than/);
});

test('POST /v1/hosts/:name/kill answers 202; unknown hosts, bad names and no token are refused', async () => {
  assertError(await call('POST', '/v1/hosts/h2/kill', { token: null }), 401, 'unauthorized');
  const ok = await call('POST', '/v1/hosts/h2/kill');
  assert.equal(ok.status, 202, ok.text);
  assert.deepEqual(ok.json, { host: 'h2', pid: 4343 });
  assert.deepEqual(backend.killed, ['h2']);
  assertError(await call('POST', '/v1/hosts/h9/kill'), 404, 'not-found', /no host named h9/);
  assertError(await call('POST', '/v1/hosts/Bad!Name/kill'), 400, 'invalid', /path\.name must be a name/);
  backend.failNext = { code: 'conflict', message: 'host h2 runs on another machine' };
  assertError(await call('POST', '/v1/hosts/h2/kill'), 409, 'conflict', /another machine/);
});

test('FT, migration, failover, snapshot and clone: good bodies reach the backend, bad ones are 400s', async () => {
  await call('DELETE', '/v1/vms/ops');
  const created = await call('POST', '/v1/vms', {
    body: JSON.stringify({ ...goodCreate, name: 'ops', ft: false }),
  });
  assert.equal(created.status, 201, created.text);
  const on = await call('POST', '/v1/vms/ops/ft', { body: JSON.stringify({ enabled: true }) });
  assert.equal(on.status, 200, on.text);
  assert.equal((on.json as VmStatus).ft, true);
  for (const [body, message] of [
    ['{}', /missing the field "enabled"/],
    ['{"enabled":"yes"}', /body\.enabled/],
    ['{"enabled":true,"force":1}', /unknown field "force"/],
    ['[]', /body/],
  ] as const)
    assertError(await call('POST', '/v1/vms/ops/ft', { body }), 400, 'invalid', message);
  assertError(await call('POST', '/v1/vms/nope/ft', { body: '{"enabled":true}' }), 404, 'not-found');

  const moved = await call('POST', '/v1/vms/ops/migrate', { body: JSON.stringify({ to: 'h2' }) });
  assert.equal(moved.status, 200, moved.text);
  for (const [body, message] of [
    ['{}', /missing the field "to"/],
    ['{"to":"Bad Host!"}', /body\.to must be a name/],
    ['{"to":"h2","when":"now"}', /unknown field "when"/],
  ] as const)
    assertError(await call('POST', '/v1/vms/ops/migrate', { body }), 400, 'invalid', message);

  assert.equal((await call('POST', '/v1/vms/ops/failover')).status, 200);
  assertError(await call('POST', '/v1/vms/nope/failover'), 404, 'not-found');
  assertError(await call('POST', '/v1/vms/ops/snapshot'), 409, 'conflict', /does not run here/);
  assertError(
    await call('POST', '/v1/vms/ops/clone', {
      body: JSON.stringify({ backup: 'h2', incarnation: 'ab', generation: 0 }),
    }),
    400,
    'invalid',
    /body\.generation/,
  );
  assertError(
    await call('POST', '/v1/vms/ops/clone', {
      body: JSON.stringify({ backup: 'h2', incarnation: 'ab', generation: 1 }),
    }),
    409,
    'conflict',
    /not an FT primary here/,
  );
  assert.equal((await call('DELETE', '/v1/vms/ops')).status, 204);
});
