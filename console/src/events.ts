// The live event feed: history from GET /v1/events, then GET /v1/events/stream read with fetch().
//
// EventSource cannot send an Authorization header, and the token must not go in a URL, so the stream
// is read with fetch() and a body reader, and the server-sent-events framing is parsed here.
//
// Invariants:
// - Events are kept once each (by id) and sorted by atMs; at most EVENTS_MAX, the oldest dropped.
// - Every (re)connection first pages through GET /v1/events?after=CURSOR and then streams from the
//   cursor it reached (Last-Event-ID), so a gap while disconnected is filled and nothing is shown twice.
//   A host that restarted (a new incarnation) starts its cursors again, and the feed is then read from 0.
// - Reconnection backs off 1 s, 2 s, 4 s, then 5 s, and a stream silent for longer than
//   STREAM_SILENCE_MS (the host sends `: ping` comments) is treated as dead: a half-open TCP
//   connection would otherwise show "live" forever.
import {
  authNeeded,
  currentToken,
  onAuthChange,
  request,
  setConnectionLost,
  type ClusterEvent,
  type EventsPage,
} from './api';
import { refreshCluster, Store } from './store';

export type FeedStatus = 'connecting' | 'live' | 'reconnecting' | 'unavailable';

export interface FeedState {
  events: ClusterEvent[];
  status: FeedStatus;
  /** Why the feed is not live, for the indicator's tooltip. */
  detail: string | null;
  /** False until the first history page arrived, so screens can say "Loading…". */
  loaded: boolean;
}

const EVENTS_MAX = 5000;
const HISTORY_PAGES_MAX = 50;
const BACKOFF_MS = [1000, 2000, 4000, 5000];
const STREAM_SILENCE_MS = 45_000;
/** When the host has no event routes (an older host), ask again now and then rather than hammering it. */
const UNAVAILABLE_RETRY_MS = 15_000;

export const feedStore = new Store<FeedState>({
  events: [],
  status: 'connecting',
  detail: null,
  loaded: false,
});

const seen = new Set<string>();
let cursor = 0;
let incarnation: string | null = null;
const listeners = new Set<(e: ClusterEvent) => void>();

/** Calls fn with each event that arrives live (not with history); returns the unsubscribe function. */
export function onLiveEvent(fn: (e: ClusterEvent) => void): () => void {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function isEvent(x: unknown): x is ClusterEvent {
  const e = x as ClusterEvent;
  return typeof e === 'object' && e !== null && typeof e.id === 'string' && typeof e.atMs === 'number';
}

function addEvents(batch: ClusterEvent[], live: boolean): void {
  const fresh = batch.filter((e) => isEvent(e) && !seen.has(e.id));
  if (fresh.length === 0) return;
  for (const e of fresh) seen.add(e.id);
  let events = [...feedStore.get().events, ...fresh].sort((a, b) => a.atMs - b.atMs || a.cursor - b.cursor);
  if (events.length > EVENTS_MAX) {
    for (const e of events.slice(0, events.length - EVENTS_MAX)) seen.delete(e.id);
    events = events.slice(events.length - EVENTS_MAX);
  }
  feedStore.set({ events });
  if (live) {
    for (const e of fresh) for (const fn of listeners) fn(e);
    refreshCluster();
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function waitForAuth(): Promise<void> {
  return new Promise((resolve) => {
    const off = onAuthChange(() => {
      if (!authNeeded) {
        off();
        resolve();
      }
    });
  });
}

type Outcome = 'ok' | 'missing' | 'failed';

/** Pages through the history after the cursor. 'missing' means the host has no event routes. */
async function catchUp(): Promise<{ outcome: Outcome; message: string | null }> {
  for (let page = 0; page < HISTORY_PAGES_MAX; page++) {
    const r = await request<EventsPage>(`/v1/events?after=${cursor}`);
    if (!r.ok) return { outcome: r.error.status === 404 ? 'missing' : 'failed', message: r.error.message };
    const p = r.value;
    if (p.incarnation !== undefined && incarnation !== null && p.incarnation !== incarnation) {
      // The host restarted and its cursors started again: read its feed from the beginning.
      incarnation = p.incarnation;
      cursor = 0;
      continue;
    }
    if (p.incarnation !== undefined) incarnation = p.incarnation;
    addEvents(p.events ?? [], feedStore.get().loaded);
    feedStore.set({ loaded: true });
    const advanced = typeof p.cursor === 'number' && p.cursor > cursor;
    if (advanced) cursor = p.cursor;
    if (!advanced || (p.events ?? []).length === 0) break;
  }
  return { outcome: 'ok', message: null };
}

/**
 * Parses server-sent events from a growing text buffer. Returns the complete messages and the
 * unfinished rest. Lines starting with ':' are comments (the keepalive pings).
 */
export function parseSse(buffer: string): {
  messages: { id: string | null; event: string | null; data: string }[];
  rest: string;
} {
  const messages: { id: string | null; event: string | null; data: string }[] = [];
  const normalised = buffer.replace(/\r\n?/g, '\n');
  const blocks = normalised.split('\n\n');
  const rest = blocks.pop() ?? '';
  for (const block of blocks) {
    let id: string | null = null;
    let event: string | null = null;
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length > 0) messages.push({ id, event, data: data.join('\n') });
  }
  return { messages, rest };
}

/** Streams events until the stream ends or fails. */
async function stream(): Promise<{ outcome: Outcome; message: string | null }> {
  const token = currentToken();
  if (token === null) return { outcome: 'failed', message: 'no token' };
  const abort = new AbortController();
  let watchdog: ReturnType<typeof setTimeout> | null = null;
  const feed = () => {
    if (watchdog !== null) clearTimeout(watchdog);
    watchdog = setTimeout(() => abort.abort(), STREAM_SILENCE_MS);
  };
  try {
    feed();
    const res = await fetch(`/v1/events/stream?after=${cursor}`, {
      headers: {
        Authorization: `Bearer ${token}`,
        Accept: 'text/event-stream',
        'Last-Event-ID': String(cursor),
      },
      signal: abort.signal,
      cache: 'no-store',
    });
    setConnectionLost(false);
    if (res.status === 404) return { outcome: 'missing', message: 'this host has no event stream' };
    if (res.status === 401) {
      // Let the shared request path flip the sign-in state, with the API's own message.
      await request('/v1/info');
      return { outcome: 'failed', message: 'the token was refused' };
    }
    if (!res.ok || !res.body) return { outcome: 'failed', message: `HTTP ${res.status}` };
    feedStore.set({ status: 'live', detail: null });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    while (true) {
      const { value, done } = await reader.read();
      if (done) return { outcome: 'ok', message: 'the host closed the stream' };
      feed();
      buffer += value;
      const { messages, rest } = parseSse(buffer);
      buffer = rest;
      const batch: ClusterEvent[] = [];
      for (const m of messages) {
        try {
          const e = JSON.parse(m.data) as ClusterEvent;
          batch.push(e);
          const id = Number(m.id ?? e.cursor);
          if (Number.isFinite(id) && id > cursor) cursor = id;
        } catch {
          // A message that is not an event (a future kind of message) is skipped, not fatal.
        }
      }
      addEvents(batch, true);
    }
  } catch (err) {
    if (!abort.signal.aborted) setConnectionLost(true);
    return {
      outcome: 'failed',
      message: abort.signal.aborted ? 'the stream went silent' : String((err as Error).message ?? err),
    };
  } finally {
    if (watchdog !== null) clearTimeout(watchdog);
    abort.abort();
  }
}

let started = false;

export function startEventFeed(): void {
  if (started) return;
  started = true;
  void run();
}

async function run(): Promise<void> {
  let attempt = 0;
  while (true) {
    if (authNeeded) {
      feedStore.set({ status: 'reconnecting', detail: 'signed out' });
      await waitForAuth();
    }
    const history = await catchUp();
    let result = history;
    if (history.outcome === 'ok') result = await stream();
    if (result.outcome === 'missing') {
      feedStore.set({ status: 'unavailable', detail: result.message, loaded: true });
      await sleep(UNAVAILABLE_RETRY_MS);
      continue;
    }
    // A stream that was live for a while starts its backoff again; one that fails at once backs off.
    if (feedStore.get().status === 'live') attempt = 0;
    feedStore.set({ status: 'reconnecting', detail: result.message });
    await sleep(BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)] ?? 5000);
    attempt++;
  }
}
