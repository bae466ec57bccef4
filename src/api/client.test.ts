// Tests of the API client (client.ts) against the real server (server.ts)
// on 127.0.0.1 with an in-memory backend, and against hosts that misbehave:
// a closed port, a port that accepts and never answers, and several kinds of
// garbage. Every call must end in an ApiResult, within its time bound, and
// fail over exactly when the rules of client.ts say it may.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { inspect } from 'node:util';
import type {
  ApiResult,
  CreateVmRequest,
  HostBackend,
  HostStatus,
  VmStatus,
  CloneAnswer,
  ClusterEvent,
  EventScope,
  EventsPage,
  KillHostAnswer,
  ModuleInfo,
} from './backend.js';
import { ApiClient, parseEndpoint } from './client.js';
import { startApiServer, type ApiServer } from './server.js';

const TOKEN = 'c1e2n3t4c1e2n3t4c1e2n3t4c1e2n3t4';
const TIMEOUT_MS = 200;
/** Room for a loaded test machine above a bound that is otherwise exact. */
const SLACK_MS = 1000;
/** A timeout so long that reaching it means the client waited instead of failing over at once. */
const LONG_TIMEOUT_MS = 5000;

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

/** A backend with a map of VMs that counts the calls that change something. */
class FakeBackend implements HostBackend {
  events(_scope: EventScope, _after: number, _limit: number): EventsPage {
    return { host: 'h1', incarnation: 'inc', cursor: 0, events: [] };
  }
  subscribeEvents(_fn: (e: ClusterEvent) => void): () => void {
    return () => undefined;
  }
  async metrics(): Promise<{ contentType: string; body: string }> {
    return { contentType: 'text/plain', body: '' };
  }
  async uploadModule(): Promise<ApiResult<ModuleInfo>> {
    return { ok: false, error: { code: 'invalid', message: 'not here' } };
  }
  async moduleFile(): Promise<ApiResult<{ path: string; bytes: number }>> {
    return { ok: false, error: { code: 'not-found', message: 'not here' } };
  }
  async killHost(name: string): Promise<ApiResult<KillHostAnswer>> {
    return { ok: false, error: { code: 'not-found', message: `no host named ${name}` } };
  }
  readonly vms = new Map<string, VmStatus>();
  /** How many create, start, stop and remove calls arrived: failover must not repeat them. */
  mutations = 0;

  info() {
    return { name: 'h1', pid: 1234, api: '127.0.0.1:7000', clusterId: 'feedc0de' };
  }
  isPrimaryFor(vm: string): boolean {
    return vm === 'db';
  }
  token(): string {
    return TOKEN;
  }
  async listHosts(): Promise<ApiResult<HostStatus[]>> {
    const host: HostStatus = {
      name: 'h1',
      state: 'up',
      api: '127.0.0.1:7000',
      peer: '127.0.0.1:7001',
      address: '127.0.1.1',
      pid: 1234,
      vms: [...this.vms.keys()],
      local: true,
      fenced: false,
      heartbeatRttMs: 0.25,
    };
    return { ok: true, value: [host] };
  }
  async listVms(): Promise<ApiResult<VmStatus[]>> {
    return { ok: true, value: [...this.vms.values()] };
  }
  async getVm(name: string): Promise<ApiResult<VmStatus>> {
    const vm = this.vms.get(name);
    return vm
      ? { ok: true, value: vm }
      : { ok: false, error: { code: 'not-found', message: `no VM ${name}` } };
  }
  async createVm(req: CreateVmRequest): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    if (this.vms.has(req.name)) return { ok: false, error: { code: 'conflict', message: 'exists' } };
    const vm = sampleVm(req.name, { wasm: req.wasm, address: req.listen });
    this.vms.set(req.name, vm);
    return { ok: true, value: vm };
  }
  async startVm(name: string): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    return this.set(name, 'running');
  }
  async stopVm(name: string): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    return this.set(name, 'stopped');
  }
  async setFt(name: string, _req: { enabled: boolean }): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    return this.set(name, 'running');
  }
  async migrateVm(name: string, _req: { to: string }): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    return this.set(name, 'running');
  }
  async failoverVm(name: string): Promise<ApiResult<VmStatus>> {
    this.mutations++;
    return this.set(name, 'running');
  }
  async removeVm(name: string): Promise<ApiResult<void>> {
    this.mutations++;
    return this.vms.delete(name)
      ? { ok: true, value: undefined }
      : { ok: false, error: { code: 'not-found', message: `no VM ${name}` } };
  }
  async snapshotVm(name: string): Promise<ApiResult<{ body: Buffer[] }>> {
    return { ok: false, error: { code: 'conflict', message: `${name} does not run here` } };
  }
  async cloneVm(name: string): Promise<ApiResult<CloneAnswer>> {
    return { ok: false, error: { code: 'conflict', message: `${name} is not an FT primary here` } };
  }
  async vmLogs(name: string, bytesMax: number): Promise<ApiResult<string>> {
    if (!this.vms.has(name)) return { ok: false, error: { code: 'not-found', message: `no VM ${name}` } };
    return { ok: true, value: `log of ${name}, at most ${bytesMax} bytes\n` };
  }

  private async set(name: string, state: 'running' | 'stopped'): Promise<ApiResult<VmStatus>> {
    const vm = this.vms.get(name);
    if (!vm) return { ok: false, error: { code: 'not-found', message: `no VM ${name}` } };
    const next = { ...vm, state, desired: state };
    this.vms.set(name, next);
    return { ok: true, value: next };
  }
}

let backend: FakeBackend;
let server: ApiServer;
let live: string;
/** A port nothing listens on: connections are refused at once. */
let dead: string;
/** A port that accepts connections and never says a word. */
let silent: string;
const silentSockets = new Set<net.Socket>();
let silentServer: net.Server;
/** Raw TCP servers and HTTP servers answering garbage, by what they answer. */
const garbage: Record<string, string> = {};
const garbageServers: Array<net.Server> = [];

function listenOn(srv: net.Server): Promise<string> {
  return new Promise((resolve) => {
    srv.listen(0, '127.0.0.1', () => resolve(`127.0.0.1:${(srv.address() as net.AddressInfo).port}`));
  });
}

function closeServer(srv: net.Server): Promise<void> {
  return new Promise((resolve) => srv.close(() => resolve()));
}

/** An HTTP server that answers every request with this status, content type and body. */
async function httpGarbage(key: string, status: number, contentType: string, body: string): Promise<void> {
  const srv = http.createServer((_req, res) => {
    res.writeHead(status, { 'content-type': contentType, connection: 'close' });
    res.end(body);
  });
  garbageServers.push(srv);
  garbage[key] = await listenOn(srv);
}

before(async () => {
  backend = new FakeBackend();
  server = await startApiServer(backend, { host: '127.0.0.1', port: 0 }, { logger: false });
  live = `127.0.0.1:${server.address.port}`;

  const closed = net.createServer();
  dead = await listenOn(closed);
  await closeServer(closed);

  silentServer = net.createServer((socket) => {
    silentSockets.add(socket);
    socket.on('close', () => silentSockets.delete(socket));
    socket.on('error', () => undefined);
  });
  silent = await listenOn(silentServer);

  const notHttp = net.createServer((socket) => {
    socket.on('error', () => undefined);
    // Reading is what notices the client's close; a socket never read would keep close() waiting.
    socket.resume();
    socket.end('SSH-2.0-OpenSSH_9.2\r\nthis is not HTTP\r\n\r\n');
  });
  garbageServers.push(notHttp);
  garbage.notHttp = await listenOn(notHttp);

  await httpGarbage('html', 200, 'text/html', '<html>hello</html>');
  await httpGarbage('badJson', 200, 'application/json', '{"name": ');
  await httpGarbage('wrongShape', 200, 'application/json', JSON.stringify({ name: 5, state: 'dancing' }));
  await httpGarbage(
    'bareVm',
    200,
    'application/json',
    JSON.stringify(sampleVm('bare', { extra: 1 } as object)),
  );
  await httpGarbage('proxy502', 502, 'text/html', '<h1>Bad Gateway</h1>');
  await httpGarbage(
    'oddError',
    418,
    'application/json',
    JSON.stringify({ error: { code: 'teapot', message: 1 } }),
  );
});

after(async () => {
  for (const socket of silentSockets) socket.destroy();
  await closeServer(silentServer);
  for (const srv of garbageServers) await closeServer(srv);
  await server.close();
});

function client(endpoints: string[], token: string | null = TOKEN): ApiClient {
  return new ApiClient({ endpoints, token, timeoutMs: TIMEOUT_MS });
}

function assertOk<T>(result: ApiResult<T>): T {
  if (!result.ok) assert.fail(`expected success, got ${result.error.code}: ${result.error.message}`);
  return result.value;
}

function assertFailure<T>(result: ApiResult<T>, code: string, message?: RegExp): void {
  if (result.ok) assert.fail(`expected ${code}, got success: ${JSON.stringify(result.value)}`);
  assert.equal(result.error.code, code, result.error.message);
  assert.deepEqual(Object.keys(result.error).sort(), ['code', 'message']);
  if (message !== undefined) assert.match(result.error.message, message);
}

/** Runs `fn` and returns its result with the milliseconds it took. */
async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const value = await fn();
  return [value, performance.now() - started];
}

test('every method against a live host', async () => {
  const api = client([live]);
  assert.deepEqual(assertOk(await api.info()), backend.info());
  assert.deepEqual(assertOk(await api.listVms()), []);

  const created = assertOk(
    await api.createVm({ name: 'app', wasm: '/srv/app.wasm', listen: '127.0.1.2:80', ft: false }),
  );
  assert.equal(created.name, 'app');
  assert.equal(created.address, '127.0.1.2:80');
  assert.deepEqual(assertOk(await api.getVm('app')), created);
  assert.deepEqual(
    assertOk(await api.listVms()).map((vm) => vm.name),
    ['app'],
  );
  assert.deepEqual(assertOk(await api.listHosts())[0]?.vms, ['app']);
  assert.equal(assertOk(await api.stopVm('app')).state, 'stopped');
  assert.equal(assertOk(await api.startVm('app')).state, 'running');
  assert.equal(assertOk(await api.failoverVm('app')).state, 'running');
  assert.equal(assertOk(await api.vmLogs('app')), 'log of app, at most 65536 bytes\n');
  assert.equal(assertOk(await api.vmLogs('app', 100)), 'log of app, at most 100 bytes\n');
  assert.equal(assertOk(await api.removeVm('app')), undefined);

  assert.deepEqual(assertOk(await api.health(live)), { ok: true, name: 'h1', clusterId: 'feedc0de' });
  assert.equal(assertOk(await api.isPrimary(live, 'db')), true);
  assert.equal(assertOk(await api.isPrimary(live, 'app')), false);
});

test("the host's error answers become ApiErrors with their codes and messages", async () => {
  const api = client([live]);
  assertFailure(await api.getVm('ghost'), 'not-found', /^no VM ghost$/);
  assertFailure(await api.startVm('ghost'), 'not-found');
  assertFailure(await api.removeVm('ghost'), 'not-found');
  assertFailure(await api.vmLogs('ghost'), 'not-found');
  assertFailure(await api.getVm('Bad/Name'), 'invalid', /path\.name/);
  assertFailure(await api.vmLogs('ghost', 0), 'invalid', /query\.bytes/);
  assertFailure(
    await api.createVm({ name: 'x', wasm: 'relative.wasm', listen: '127.0.0.1:80' }),
    'invalid',
    /body\.wasm/,
  );
  assert.ok((await api.createVm({ name: 'dup', wasm: '/d.wasm', listen: '127.0.0.1:81' })).ok);
  assertFailure(await api.createVm({ name: 'dup', wasm: '/d.wasm', listen: '127.0.0.1:81' }), 'conflict');
  assertOk(await api.removeVm('dup'));
});

test('a wrong or absent token is unauthorized, but health checks need none', async () => {
  assertFailure(await client([live], 'nope').listVms(), 'unauthorized', /wrong API token/);
  assertFailure(await client([live], null).listVms(), 'unauthorized', /missing Authorization/);
  assertOk(await client([live], null).health(live));
  assertOk(await client([live], null).isPrimary(live, 'db'));
});

test('a 4xx answer is final: a GET does not fail over to the next host', async () => {
  // Had the client failed over, the garbage host behind would have made these 'internal'.
  const next = garbage.html ?? '';
  assertFailure(await client([live, next]).getVm('ghost'), 'not-found', /^no VM ghost$/);
  assertFailure(await client([live, next], 'nope').listVms(), 'unauthorized');
});

test('calls fail over from a closed port to a live host at once, POSTs included', async () => {
  const api = new ApiClient({ endpoints: [dead, live], token: TOKEN, timeoutMs: LONG_TIMEOUT_MS });
  const [listed, listMs] = await timed(() => api.listVms());
  assertOk(listed);
  assert.ok(listMs < LONG_TIMEOUT_MS / 2, `took ${listMs} ms`);

  const before = backend.mutations;
  const [created, createMs] = await timed(() =>
    api.createVm({ name: 'moved', wasm: '/m.wasm', listen: '127.0.1.3:80' }),
  );
  assert.equal(assertOk(created).name, 'moved');
  assert.ok(createMs < LONG_TIMEOUT_MS / 2, `took ${createMs} ms`);
  assertOk(await api.removeVm('moved'));
  assert.equal(backend.mutations, before + 2);
});

test('every endpoint dead: unavailable, naming each', async () => {
  const slowToGiveUp = new ApiClient({ endpoints: [dead, dead], token: TOKEN, timeoutMs: LONG_TIMEOUT_MS });
  const [result, ms] = await timed(() => slowToGiveUp.listVms());
  assertFailure(result, 'unavailable', /connection refused.*connection refused/);
  assert.ok(ms < LONG_TIMEOUT_MS / 2, `took ${ms} ms`);
  assertFailure(await client([dead]).createVm({ name: 'x', wasm: '/x', listen: '1.2.3.4:5' }), 'unavailable');
  assertFailure(await client([dead]).health(dead), 'unavailable', /refused/);
  assertFailure(await client([dead]).isPrimary(dead, 'db'), 'unavailable');
});

test('a host that accepts and never answers costs one timeout, then a GET fails over', async () => {
  const [result, ms] = await timed(() => client([silent, live]).listVms());
  assertOk(result);
  assert.ok(ms >= TIMEOUT_MS - 20, `failed over after ${ms} ms, before the timeout`);
  assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);

  const [alone, aloneMs] = await timed(() => client([silent]).getVm('x'));
  assertFailure(alone, 'unavailable', new RegExp(`no answer within ${TIMEOUT_MS} ms`));
  assert.ok(aloneMs < TIMEOUT_MS + SLACK_MS, `took ${aloneMs} ms`);

  const [health, healthMs] = await timed(() => client([]).health(silent));
  assertFailure(health, 'unavailable');
  assert.ok(healthMs < TIMEOUT_MS + SLACK_MS);
});

test('a POST that reached a silent host is not repeated elsewhere', async () => {
  const before = backend.mutations;
  const [result, ms] = await timed(() =>
    client([silent, live]).createVm({ name: 'once', wasm: '/o.wasm', listen: '127.0.1.4:80' }),
  );
  assertFailure(result, 'unavailable', /may or may not have taken effect/);
  assert.ok(ms < TIMEOUT_MS + SLACK_MS, `took ${ms} ms`);
  assertFailure(await client([silent, live]).stopVm('x'), 'unavailable', /may or may not/);
  assertFailure(await client([silent, live]).removeVm('x'), 'unavailable', /may or may not/);
  assert.equal(backend.mutations, before, 'the live host never saw the request');
});

test('garbage answers are internal errors, never crashes or wrongly typed values', async () => {
  const one = (key: string) => client([garbage[key] ?? '']);
  assertFailure(await one('notHttp').listVms(), 'internal', /not HTTP/);
  assertFailure(await one('html').listVms(), 'internal', /text\/html.*not JSON/);
  assertFailure(await one('html').vmLogs('x'), 'internal', /text\/html/);
  assertFailure(await one('badJson').info(), 'internal', /not valid JSON/);
  assertFailure(await one('wrongShape').getVm('x'), 'internal', /not a VM status/);
  assertFailure(await one('wrongShape').listVms(), 'internal', /not a VM list/);
  assertFailure(await one('wrongShape').listHosts(), 'internal', /not a host list/);
  assertFailure(await one('wrongShape').health(garbage.wrongShape ?? ''), 'internal', /health answer/);
  assertFailure(await one('wrongShape').isPrimary(garbage.wrongShape ?? '', 'db'), 'internal');
  assertFailure(await one('proxy502').listVms(), 'internal', /HTTP 502 without an API error body/);
  assertFailure(await one('oddError').listVms(), 'internal', /HTTP 418 without an API error body/);
  assertFailure(await one('notHttp').createVm({ name: 'x', wasm: '/x', listen: '1.2.3.4:5' }), 'internal');
  // Extra fields are tolerated: a newer host may add some.
  assert.equal(assertOk(await one('bareVm').getVm('bare')).name, 'bare');
});

test('a GET fails over past garbage; a POST answered with garbage does not', async () => {
  assertOk(await client([garbage.html ?? '', garbage.notHttp ?? '', live]).listVms());
  const before = backend.mutations;
  assertFailure(
    await client([garbage.proxy502 ?? '', live]).createVm({ name: 'g', wasm: '/g', listen: '1.2.3.4:5' }),
    'internal',
  );
  assert.equal(backend.mutations, before);
  // When every host failed, the summary names them all and the answered failure's code wins.
  assertFailure(await client([dead, garbage.html ?? '']).listVms(), 'internal', /refused.*text\/html/);
});

test('withEndpoint addresses one host with the same token and timeout', async () => {
  const api = client([dead]);
  const one = api.withEndpoint(live);
  assert.deepEqual(one.endpoints, [live]);
  assert.equal(one.timeoutMs, TIMEOUT_MS);
  assertOk(await one.listVms());
  assertFailure(await api.listVms(), 'unavailable');
});

test('bad endpoints and an empty list are error values', async () => {
  assertFailure(await client([]).listVms(), 'unavailable', /no API endpoint/);
  assertFailure(await client(['nonsense']).listVms(), 'invalid', /not HOST:PORT/);
  assertFailure(await client(['http://127.0.0.1:80']).listVms(), 'invalid');
  assertOk(await client(['nonsense', live]).listVms());
  assertFailure(await client([live], 'token\nwith newline').listVms(), 'invalid');
});

test('parseEndpoint', () => {
  assert.deepEqual(parseEndpoint('127.0.0.1:8080'), { host: '127.0.0.1', port: 8080 });
  assert.deepEqual(parseEndpoint('localhost:1'), { host: 'localhost', port: 1 });
  assert.deepEqual(parseEndpoint('[::1]:65535'), { host: '::1', port: 65535 });
  for (const bad of ['', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:65536', ':80', '::1:80', 'a b:1', 'h:1:2']) {
    assert.equal(parseEndpoint(bad), null, bad);
  }
});

test('the token does not show when the client is inspected or serialised', () => {
  const api = client([live]);
  assert.ok(!inspect(api, { depth: 5 }).includes(TOKEN));
  assert.ok(!JSON.stringify(api).includes(TOKEN));
});

test('a zero or negative timeout falls back to the default instead of never or always firing', () => {
  assert.equal(new ApiClient({ endpoints: [], token: null, timeoutMs: 0 }).timeoutMs, 1500);
  assert.equal(new ApiClient({ endpoints: [], token: null, timeoutMs: Number.NaN }).timeoutMs, 1500);
  assert.equal(new ApiClient({ endpoints: [], token: null }).timeoutMs, 1500);
});
