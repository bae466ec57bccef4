// The console's view of the host API: the wire types (src/api/backend.ts's, imported as types) and
// one fetch wrapper that adds the token and turns every failure into an ApiFailure value.
//
// Invariants:
// - The token travels only in the Authorization header, never in a URL, so it stays out of server
//   logs, the browser history and Referer headers.
// - No call throws: network errors, error bodies and garbage answers all become `{ ok: false }` with a
//   message fit to show to the user. A 401 also flips the global auth state so the sign-in panel shows.
// - Fields that newer hosts add (logEvents, clone, sampledAtMs, local, fenced) are filled in by the
//   normalisers below when a host that predates them leaves them out, so the console works against it.

// The wire types are the server's own (type-only: nothing of the server is bundled).
export type * from '../../src/api/wire.js';
import type {
  VmStatus,
  HostStatus,
  HostInfo,
  EventsPage,
  ModuleInfo,
  KillHostAnswer,
  CreateVmRequest,
} from '../../src/api/wire.js';

/**
 * Why a call failed. `code` is the API's code when a host answered with an error body, or 'network'
 * when no answer came (the host is down or unreachable), which the UI reports as a connection loss.
 */
export interface ApiFailure {
  code: string;
  status: number;
  message: string;
}

export type Result<T> = { ok: true; value: T } | { ok: false; error: ApiFailure };

const TOKEN_KEY = 'lockstep.token';

/** Reads the stored token; localStorage can throw in private modes, which then means "no token". */
export function storedToken(): string | null {
  try {
    return window.localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function storeToken(token: string | null): void {
  try {
    if (token === null) window.localStorage.removeItem(TOKEN_KEY);
    else window.localStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Without storage the token lives only as long as the page, which is still usable.
  }
  memoryToken = token;
  for (const fn of authListeners) fn();
}

let memoryToken: string | null = null;

export function currentToken(): string | null {
  return memoryToken ?? storedToken();
}

/**
 * Moves a token given in the URL fragment (`#token=X`, `#/vm/kv?token=X`, `#/vm/kv&token=X`) into
 * storage and removes it from the address bar, so that it is neither bookmarked nor shared by copying
 * the URL. Returns whether a token was found.
 */
export function adoptTokenFromHash(): boolean {
  const hash = window.location.hash;
  const match = /[#?&]token=([^&]*)/.exec(hash);
  if (!match) return false;
  const token = decodeURIComponent(match[1] ?? '').trim();
  let rest = hash.slice(0, match.index) + hash.slice(match.index + match[0].length);
  // What remains may be '#', '#/vm/kv?' or '#/vm/kv?&a=b'; tidy the separators it leaves behind.
  rest = rest.replace(/[?&]$/, '').replace(/\?&/, '?');
  if (rest === '' || rest === '#') rest = '#/';
  window.history.replaceState(null, '', window.location.pathname + window.location.search + rest);
  if (token !== '') signIn(token);
  return token !== '';
}

type AuthListener = () => void;
const authListeners = new Set<AuthListener>();

/** Whether the last call was refused for its token: the sign-in panel shows while this is true. */
export let authNeeded = currentToken() === null;

export function onAuthChange(fn: AuthListener): () => void {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

function setAuthNeeded(needed: boolean): void {
  if (authNeeded === needed) return;
  authNeeded = needed;
  for (const fn of authListeners) fn();
}

/** Whether a host refused the token we had, so the sign-in panel can say so. */
export let tokenRefused = false;

export function signIn(token: string): void {
  authNeeded = false;
  tokenRefused = false;
  storeToken(token);
}

export function signOut(): void {
  authNeeded = true;
  tokenRefused = false;
  storeToken(null);
}

/** Whether the answering host could not be reached on the last attempt; the header shows a banner then. */
export let connectionLost = false;
const connectionListeners = new Set<() => void>();

export function onConnectionChange(fn: () => void): () => void {
  connectionListeners.add(fn);
  return () => connectionListeners.delete(fn);
}

export function setConnectionLost(lost: boolean): void {
  if (connectionLost === lost) return;
  connectionLost = lost;
  for (const fn of connectionListeners) fn();
}

/**
 * A bound on every request: the API itself answers within 30 s or says 503, so waiting longer only
 * hides a dead host behind a spinner.
 */
const REQUEST_TIMEOUT_MS = 35_000;

export interface RequestOptions {
  method?: string;
  body?: unknown;
  /** Raw bytes (a module upload) instead of JSON. */
  rawBody?: Blob;
  contentType?: string;
  /** 'text' for the console log tail. */
  as?: 'json' | 'text' | 'none';
  signal?: AbortSignal;
}

export async function request<T>(path: string, options: RequestOptions = {}): Promise<Result<T>> {
  const token = currentToken();
  if (token === null) {
    setAuthNeeded(true);
    return { ok: false, error: { code: 'unauthorized', status: 401, message: 'No API token yet.' } };
  }
  const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
  let body: BodyInit | undefined;
  if (options.rawBody !== undefined) {
    body = options.rawBody;
    headers['Content-Type'] = options.contentType ?? 'application/octet-stream';
  } else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers['Content-Type'] = 'application/json';
  }
  const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
  let res: Response;
  try {
    res = await fetch(path, { method: options.method ?? 'GET', headers, body, signal, cache: 'no-store' });
  } catch (err) {
    if (options.signal?.aborted) {
      return { ok: false, error: { code: 'aborted', status: 0, message: 'Cancelled.' } };
    }
    setConnectionLost(true);
    const why = timeout.aborted ? 'no answer within 35 s' : String((err as Error).message ?? err);
    return {
      ok: false,
      error: { code: 'network', status: 0, message: `Cannot reach host ${window.location.host} (${why}).` },
    };
  }
  setConnectionLost(false);
  if (res.status === 401) {
    tokenRefused = true;
    setAuthNeeded(true);
  }
  if (!res.ok) return { ok: false, error: await readFailure(res) };
  setAuthNeeded(false);
  try {
    if (options.as === 'none' || res.status === 204) return { ok: true, value: undefined as T };
    if (options.as === 'text') return { ok: true, value: (await res.text()) as T };
    return { ok: true, value: (await res.json()) as T };
  } catch (err) {
    return {
      ok: false,
      error: { code: 'internal', status: res.status, message: `The host sent an unreadable answer: ${err}` },
    };
  }
}

/** Turns an error answer into a failure, keeping the API's own message whenever it sent one. */
async function readFailure(res: Response): Promise<ApiFailure> {
  const text = await res.text().catch(() => '');
  try {
    const parsed = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    if (parsed.error && typeof parsed.error.message === 'string') {
      return {
        code: typeof parsed.error.code === 'string' ? parsed.error.code : 'internal',
        status: res.status,
        message: parsed.error.message,
      };
    }
  } catch {
    // Not the API's error body: a proxy or an older host answered. Fall through to a generic message.
  }
  const snippet = text.trim().slice(0, 200);
  return {
    code: res.status === 404 ? 'not-found' : 'internal',
    status: res.status,
    message: `HTTP ${res.status} ${res.statusText}${snippet ? `: ${snippet}` : ''}`,
  };
}

function normaliseVm(raw: VmStatus): VmStatus {
  return {
    ...raw,
    lagMs: raw.lagMs ?? null,
    lagEvents: raw.lagEvents ?? null,
    lagBytes: raw.lagBytes ?? null,
    heldOutputs: raw.heldOutputs ?? null,
    logBytes: raw.logBytes ?? null,
    logFileBytes: raw.logFileBytes ?? null,
    logEvents: raw.logEvents ?? null,
    clone: raw.clone ?? null,
    sampledAtMs: raw.sampledAtMs ?? null,
  };
}

function normaliseHost(raw: HostStatus): HostStatus {
  return {
    ...raw,
    vms: raw.vms ?? [],
    heartbeatRttMs: raw.heartbeatRttMs ?? null,
    local: raw.local ?? false,
    fenced: raw.fenced ?? false,
  };
}

function mapResult<A, B>(r: Result<A>, fn: (a: A) => B): Result<B> {
  return r.ok ? { ok: true, value: fn(r.value) } : r;
}

const vmPath = (name: string) => `/v1/vms/${encodeURIComponent(name)}`;

export const api = {
  info: () => request<HostInfo>('/v1/info'),
  hosts: async () => mapResult(await request<HostStatus[]>('/v1/hosts'), (hs) => hs.map(normaliseHost)),
  vms: async () => mapResult(await request<VmStatus[]>('/v1/vms'), (vs) => vs.map(normaliseVm)),
  vm: async (name: string, signal?: AbortSignal) =>
    mapResult(await request<VmStatus>(vmPath(name), { signal }), normaliseVm),
  createVm: async (req: CreateVmRequest) =>
    mapResult(await request<VmStatus>('/v1/vms', { method: 'POST', body: req }), normaliseVm),
  uploadModule: (file: Blob) =>
    request<ModuleInfo>('/v1/modules', { method: 'POST', rawBody: file, contentType: 'application/wasm' }),
  start: async (name: string) =>
    mapResult(await request<VmStatus>(`${vmPath(name)}/start`, { method: 'POST' }), normaliseVm),
  stop: async (name: string) =>
    mapResult(await request<VmStatus>(`${vmPath(name)}/stop`, { method: 'POST' }), normaliseVm),
  failover: async (name: string) =>
    mapResult(await request<VmStatus>(`${vmPath(name)}/failover`, { method: 'POST' }), normaliseVm),
  setFt: async (name: string, enabled: boolean) =>
    mapResult(
      await request<VmStatus>(`${vmPath(name)}/ft`, { method: 'POST', body: { enabled } }),
      normaliseVm,
    ),
  migrate: async (name: string, to: string) =>
    mapResult(
      await request<VmStatus>(`${vmPath(name)}/migrate`, { method: 'POST', body: { to } }),
      normaliseVm,
    ),
  remove: (name: string) => request<void>(vmPath(name), { method: 'DELETE', as: 'none' }),
  logs: (name: string, bytes: number) =>
    request<string>(`${vmPath(name)}/logs?bytes=${bytes}`, { as: 'text' }),
  killHost: (name: string) =>
    request<KillHostAnswer>(`/v1/hosts/${encodeURIComponent(name)}/kill`, { method: 'POST' }),
  events: (after: number) => request<EventsPage>(`/v1/events?after=${after}`),
};
