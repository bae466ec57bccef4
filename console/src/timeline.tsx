// The event timeline: what the cluster did, step by step, grouped so that a failover reads as a story.
//
// Grouping rule: events are taken in atMs order and cut into episodes. An episode begins with an
// event that starts a story — a host killed or suspected, a test failover, a migration, FT switched
// on or off, a VM created or removed — or after a quiet gap of more than GROUP_GAP_MS; everything
// after it belongs to it. A host failure noticed by several hosts (each reports its suspicion) stays
// one episode. Each row then says "+N ms" since its episode's first event, and the header names the
// episode and gives its whole span, so "h1 killed → won generation 2 → live (7 ms) → re-protecting →
// protected" reads top to bottom with its durations. Episodes are listed newest first. Times are by
// the clock of the host that saw each event, so across hosts the order is as good as their clocks.
import { useMemo, useState } from 'preact/hooks';
import type { ClusterEvent, EventKind } from './api';
import { clockTime, dayAndTime, durationMs } from './format';

export const GROUP_GAP_MS = 10_000;

export interface EventGroup {
  key: string;
  /** What the episode is about, e.g. "failure of h1" or "fault tolerance on for kv". */
  title: string;
  /** The VMs its events concern. */
  vms: string[];
  events: ClusterEvent[];
  startMs: number;
  endMs: number;
}

/** Host-level events that belong on a VM's own timeline: the failure that moved it. */
export const HOST_FAILURE_KINDS = new Set([
  'host-killed',
  'host-suspect',
  'host-down',
  'fence',
  'fence-failed',
]);

/** The title of an episode that an event of this kind starts, or null when the kind starts none. */
function storyTitle(e: ClusterEvent): string | null {
  switch (e.kind) {
    case 'host-killed':
      return `simulated failure of ${e.peer ?? 'a host'}`;
    case 'host-suspect':
      return `failure of ${e.peer ?? 'a host'}`;
    case 'ft-link-lost':
      return `${e.vm ?? 'a VM'} lost its partner ${e.peer ?? ''}`.trimEnd();
    case 'failover-requested':
      return `test failover of ${e.vm ?? 'a VM'}`;
    case 'migration-requested':
      return `migration of ${e.vm ?? 'a VM'}${e.peer ? ` to ${e.peer}` : ''}`;
    case 'ft-on':
      return `fault tolerance on for ${e.vm ?? 'a VM'}`;
    case 'ft-off':
      return `fault tolerance off for ${e.vm ?? 'a VM'}`;
    case 'vm-created':
      return `${e.vm ?? 'a VM'} created`;
    case 'vm-removed':
      return `${e.vm ?? 'a VM'} removed`;
    default:
      return null;
  }
}

/** Groups events (sorted by atMs) into episodes; see the module comment. */
export function groupEvents(sorted: ClusterEvent[]): EventGroup[] {
  type Open = EventGroup & { failedHost: string | null };
  const groups: Open[] = [];
  let open: Open | null = null;
  for (const e of sorted) {
    const title = storyTitle(e);
    // A suspicion of the host this episode is already about (killed, or suspected by another peer) is
    // part of it, not a new story.
    const sameFailure =
      open !== null &&
      (e.kind === 'host-suspect' || e.kind === 'host-down' || e.kind === 'ft-link-lost') &&
      e.peer !== null &&
      open.failedHost === e.peer;
    const quiet = open === null || e.atMs - open.endMs > GROUP_GAP_MS;
    if (open === null || quiet || (title !== null && !sameFailure)) {
      open = {
        key: e.id,
        title: title ?? (e.vm !== null ? e.vm : 'cluster'),
        vms: [],
        events: [],
        startMs: e.atMs,
        endMs: e.atMs,
        failedHost:
          e.kind === 'host-killed' || e.kind === 'host-suspect' || e.kind === 'ft-link-lost' ? e.peer : null,
      };
      groups.push(open);
    }
    open.events.push(e);
    open.endMs = Math.max(open.endMs, e.atMs);
    if (e.vm !== null && !open.vms.includes(e.vm)) open.vms.push(e.vm);
  }
  return groups.map(({ failedHost: _failedHost, ...g }) => g).sort((a, b) => b.startMs - a.startMs);
}

type Tone = 'good' | 'warn' | 'bad' | 'info' | 'neutral';

/** How each kind looks (every kind this version knows; a newer host's other kinds render with the generic look). */
const KINDS: Record<EventKind, { tone: Tone; icon: string }> = {
  'host-up': { tone: 'good', icon: '▲' },
  'host-suspect': { tone: 'warn', icon: '?' },
  'host-down': { tone: 'bad', icon: '▼' },
  'host-removed': { tone: 'neutral', icon: '−' },
  'host-killed': { tone: 'bad', icon: '✕' },
  'ft-link-lost': { tone: 'bad', icon: '⚡' },
  'tas-won': { tone: 'good', icon: '✓' },
  'tas-lost': { tone: 'info', icon: '·' },
  fence: { tone: 'warn', icon: '▮' },
  'fence-failed': { tone: 'bad', icon: '!' },
  'go-live': { tone: 'good', icon: '▶' },
  'go-live-failed': { tone: 'bad', icon: '!' },
  'running-alone': { tone: 'warn', icon: '◐' },
  'vm-created': { tone: 'info', icon: '+' },
  'vm-started': { tone: 'good', icon: '▶' },
  'vm-stopped': { tone: 'neutral', icon: '■' },
  'vm-failed': { tone: 'bad', icon: '✕' },
  'vm-removed': { tone: 'neutral', icon: '−' },
  protection: { tone: 'info', icon: '◆' },
  clone: { tone: 'info', icon: '⇉' },
  'ft-on': { tone: 'good', icon: '◆' },
  'ft-off': { tone: 'neutral', icon: '◇' },
  'failover-requested': { tone: 'warn', icon: '⇄' },
  'migration-requested': { tone: 'info', icon: '→' },
  migrated: { tone: 'good', icon: '→' },
  'outputs-held': { tone: 'warn', icon: '‖' },
  'outputs-released': { tone: 'good', icon: '»' },
};

export function KindBadge({ kind }: { kind: string }) {
  const look = (KINDS as Partial<Record<string, { tone: Tone; icon: string }>>)[kind] ?? {
    tone: 'neutral' as Tone,
    icon: '•',
  };
  return (
    <span class={`kind kind-${look.tone}`}>
      <span class="kind-icon" aria-hidden="true">
        {look.icon}
      </span>
      {kind}
    </span>
  );
}

function EventRow({ e, offsetMs, showVm }: { e: ClusterEvent; offsetMs: number | null; showVm: boolean }) {
  return (
    <li class="event-row" data-kind={e.kind}>
      <div class="event-when">
        <time dateTime={new Date(e.atMs).toISOString()} title={new Date(e.atMs).toString()}>
          {clockTime(e.atMs)}
        </time>
        {offsetMs !== null && <span class="event-offset">+{Math.round(offsetMs)} ms</span>}
      </div>
      <div class="event-what">
        <div class="event-tags">
          <KindBadge kind={e.kind} />
          {showVm && e.vm && (
            <a class="tag tag-vm" href={`#/vm/${encodeURIComponent(e.vm)}`}>
              {e.vm}
            </a>
          )}
          <span class="tag" title="the host that saw it">
            seen by {e.host}
          </span>
          {e.generation !== null && e.generation !== undefined && <span class="tag">gen {e.generation}</span>}
          {e.durationMs !== null && e.durationMs !== undefined && (
            <span class="tag tag-duration">took {durationMs(e.durationMs)}</span>
          )}
        </div>
        <p class="event-message">{e.message}</p>
      </div>
    </li>
  );
}

interface TimelineProps {
  events: ClusterEvent[];
  /** Set on a VM's page: only that VM's events, and no VM filter. */
  vm?: string;
  loaded: boolean;
  emptyText?: string;
}

/** Rows shown before "Show older"; the feed can hold thousands of events. */
const ROWS_PAGE = 200;

export function Timeline({ events, vm, loaded, emptyText }: TimelineProps) {
  const [vmFilter, setVmFilter] = useState('');
  const [kindFilter, setKindFilter] = useState('');
  const [rowsMax, setRowsMax] = useState(ROWS_PAGE);

  // A VM's own timeline also shows the host failures around it: they are what moved it.
  const scoped = useMemo(
    () =>
      vm === undefined
        ? events
        : events.filter((e) => e.vm === vm || (e.vm === null && HOST_FAILURE_KINDS.has(e.kind))),
    [events, vm],
  );
  const vmNames = useMemo(() => [...new Set(scoped.flatMap((e) => (e.vm ? [e.vm] : [])))].sort(), [scoped]);
  const kinds = useMemo(() => [...new Set(scoped.map((e) => e.kind))].sort(), [scoped]);
  const groups = useMemo(() => {
    const filtered = scoped.filter(
      (e) =>
        (vmFilter === '' || (vmFilter === '-' ? e.vm === null : e.vm === vmFilter)) &&
        (kindFilter === '' || e.kind === kindFilter),
    );
    return groupEvents(filtered);
  }, [scoped, vmFilter, kindFilter]);

  let rowsLeft = rowsMax;
  const shown: EventGroup[] = [];
  for (const g of groups) {
    if (rowsLeft <= 0) break;
    shown.push(g);
    rowsLeft -= g.events.length;
  }

  return (
    <div class="timeline" data-testid="timeline">
      <div class="filters">
        {vm === undefined && (
          <label>
            VM
            <select value={vmFilter} onChange={(e) => setVmFilter(e.currentTarget.value)}>
              <option value="">All VMs</option>
              <option value="-">Cluster events (no VM)</option>
              {vmNames.map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
        )}
        <label>
          Kind
          <select value={kindFilter} onChange={(e) => setKindFilter(e.currentTarget.value)}>
            <option value="">All kinds</option>
            {kinds.map((k) => (
              <option key={k} value={k}>
                {k}
              </option>
            ))}
          </select>
        </label>
      </div>
      {!loaded && <p class="muted">Loading…</p>}
      {loaded && groups.length === 0 && (
        <p class="empty-note">{emptyText ?? 'No events yet. They appear here as the cluster acts.'}</p>
      )}
      {shown.map((g) => (
        <section class="event-group" key={g.key}>
          <header class="event-group-head">
            <span class="event-group-title">
              {g.title}
              {vm === undefined &&
                g.vms.map((n) => (
                  <a key={n} class="tag" href={`#/vm/${encodeURIComponent(n)}`}>
                    {n}
                  </a>
                ))}
            </span>
            <span class="muted">
              {dayAndTime(g.startMs)} · {g.events.length} {g.events.length === 1 ? 'event' : 'events'}
              {g.events.length > 1 && <> · over {durationMs(g.endMs - g.startMs)}</>}
            </span>
          </header>
          <ol class="event-list">
            {g.events.map((e, i) => (
              <EventRow
                key={e.id}
                e={e}
                offsetMs={i === 0 ? null : e.atMs - g.startMs}
                showVm={vm === undefined}
              />
            ))}
          </ol>
        </section>
      ))}
      {shown.length < groups.length && (
        <button type="button" class="button" onClick={() => setRowsMax(rowsMax + ROWS_PAGE)}>
          Show older events
        </button>
      )}
    </div>
  );
}

/** The last few events, one line each, for the cluster view. */
export function RecentEvents({
  events,
  loaded,
  count,
}: {
  events: ClusterEvent[];
  loaded: boolean;
  count: number;
}) {
  const recent = events.slice(-count).reverse();
  if (!loaded) return <p class="muted">Loading…</p>;
  if (recent.length === 0) return <p class="empty-note">No events yet.</p>;
  return (
    <ol class="recent-events">
      {recent.map((e) => (
        <li key={e.id}>
          <time class="mono">{clockTime(e.atMs)}</time>
          <KindBadge kind={e.kind} />
          <span class="recent-message">{e.message}</span>
        </li>
      ))}
    </ol>
  );
}
