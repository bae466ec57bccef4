/**
 * The cluster's event timeline: what happened, where, and when.
 *
 * Role: every host keeps its own events (failures it detected, test-and-set
 * wins and losses, fences, go-lives, protection changes, migrations…) in a
 * bounded ring, and merges into a second ring the events its peers kept, so
 * any host can answer for the whole cluster (`GET /v1/events`, the console's
 * timeline). The rings decide nothing; they are read by people and tests.
 *
 * Invariants:
 * - An event's `id` is unique in the cluster: `HOST/INCARNATION/SEQ`. The
 *   merged feed holds each id at most once, whatever order copies arrive in.
 * - `cursor` is the position in the answering host's merged feed and only
 *   grows; a client resumes with "everything after cursor C". Cursors of two
 *   hosts are unrelated.
 * - Both rings are bounded (EVENTS_KEPT_MAX); the oldest events go first. A
 *   client that resumes from a cursor older than the ring gets what is left.
 * - `atMs` is the wall clock of the host that saw the event. Hosts on one
 *   machine share it; across machines, ordering by it is as good as their
 *   clock synchronisation.
 */

import type { ClusterEvent, EventKind } from '../api/backend.js';

export type { ClusterEvent, EventKind };

/** How many events each ring keeps: a few hours of a busy cluster, and ~1 MB of memory. */
export const EVENTS_KEPT_MAX = 5000;
/** The most events one read returns. */
export const EVENTS_PAGE_MAX = 1000;

export interface EventInput {
  kind: EventKind;
  vm?: string | null;
  generation?: number | null;
  peer?: string | null;
  durationMs?: number | null;
  message: string;
}

type Listener = (e: ClusterEvent) => void;

/** A bounded ring of events in arrival order, with cursors and listeners. */
export class EventRing {
  private readonly events: ClusterEvent[] = [];
  private readonly ids = new Set<string>();
  private nextCursor = 1;
  private readonly listeners = new Set<Listener>();

  constructor(private readonly keptMax: number = EVENTS_KEPT_MAX) {
    if (!(keptMax >= 1)) throw new Error(`assertion: an event ring keeps at least one event (${keptMax})`);
  }

  /** Adds a copy of `e` with the next cursor and returns it; null (and nothing changes) when its id is here already. */
  add(e: Omit<ClusterEvent, 'cursor'>): ClusterEvent | null {
    if (this.ids.has(e.id)) return null;
    const stored: ClusterEvent = { ...e, cursor: this.nextCursor++ };
    this.events.push(stored);
    this.ids.add(stored.id);
    while (this.events.length > this.keptMax) this.ids.delete(this.events.shift()!.id);
    for (const l of this.listeners) l(stored);
    return stored;
  }

  /** The events after `cursor` (oldest first), at most `limit`. */
  after(cursor: number, limit: number = EVENTS_PAGE_MAX): ClusterEvent[] {
    // Cursors are dense and increasing, so the first one past `cursor` is found by subtraction.
    const first = this.events[0];
    if (first === undefined) return [];
    const start = Math.max(0, cursor + 1 - first.cursor);
    return this.events.slice(start, start + Math.max(0, limit));
  }

  /** The newest event that satisfies `pred`, or undefined. */
  findLast(pred: (e: ClusterEvent) => boolean): ClusterEvent | undefined {
    for (let i = this.events.length - 1; i >= 0; i--) if (pred(this.events[i]!)) return this.events[i];
    return undefined;
  }

  /** The cursor of the newest event, 0 when there is none yet. */
  get cursor(): number {
    return this.nextCursor - 1;
  }

  get size(): number {
    return this.events.length;
  }

  /** Calls `fn` with each event added from now on; returns the unsubscribe function. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

/**
 * One host's two feeds: its own events and the merged cluster's. Its own
 * events enter both at once; a peer's arrive through `merge`.
 */
export class HostEvents {
  readonly local: EventRing;
  readonly cluster: EventRing;
  private seq = 0;

  constructor(
    private readonly host: string,
    readonly incarnation: string,
    private readonly nowMs: () => number,
    keptMax: number = EVENTS_KEPT_MAX,
  ) {
    this.local = new EventRing(keptMax);
    this.cluster = new EventRing(keptMax);
  }

  record(input: EventInput): ClusterEvent {
    const e: Omit<ClusterEvent, 'cursor'> = {
      id: `${this.host}/${this.incarnation}/${++this.seq}`,
      atMs: this.nowMs(),
      host: this.host,
      kind: input.kind,
      vm: input.vm ?? null,
      generation: input.generation ?? null,
      peer: input.peer ?? null,
      durationMs:
        input.durationMs === undefined || input.durationMs === null ? null : Math.round(input.durationMs),
      message: input.message,
    };
    this.cluster.add(e);
    return this.local.add(e)!;
  }

  /** Adds a peer's events to the merged feed; returns how many were new. */
  merge(events: readonly ClusterEvent[]): number {
    let added = 0;
    for (const e of events) {
      const { cursor: _cursor, ...rest } = e;
      if (this.cluster.add(rest) !== null) added++;
    }
    return added;
  }
}

/**
 * Where this host is in one peer's local feed. A peer that restarted has a
 * new incarnation and cursors from 1 again, so its position is forgotten.
 */
export class PeerCursors {
  private readonly at = new Map<string, { incarnation: string; cursor: number }>();

  /** The cursor to ask `peer` for events after. */
  next(peer: string): number {
    return this.at.get(peer)?.cursor ?? 0;
  }

  /**
   * Records a peer's answer: its incarnation and the cursor of the last
   * event received. Returns false when the peer restarted since the last
   * answer (the caller asks again from 0).
   */
  update(peer: string, incarnation: string, cursor: number): boolean {
    const prev = this.at.get(peer);
    if (prev !== undefined && prev.incarnation !== incarnation) {
      this.at.set(peer, { incarnation, cursor: 0 });
      return false;
    }
    this.at.set(peer, { incarnation, cursor: Math.max(cursor, prev?.cursor ?? 0) });
    return true;
  }

  forget(peer: string): void {
    this.at.delete(peer);
  }
}
