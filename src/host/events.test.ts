/**
 * The event rings: cursors only grow, ids are kept once whatever order
 * copies arrive in, the rings stay bounded, and a restarted peer is read
 * again from its first event.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventRing, HostEvents, PeerCursors, type ClusterEvent } from './events.js';

function ev(id: string, message = id): Omit<ClusterEvent, 'cursor'> {
  return {
    id,
    atMs: 1,
    host: 'h1',
    kind: 'go-live',
    vm: 'kv',
    generation: 1,
    peer: null,
    durationMs: null,
    message,
  };
}

test('a ring numbers events in arrival order, keeps each id once, and pages by cursor', () => {
  const r = new EventRing(10);
  assert.equal(r.cursor, 0);
  assert.deepEqual(r.after(0), []);
  assert.equal(r.add(ev('a'))?.cursor, 1);
  assert.equal(r.add(ev('b'))?.cursor, 2);
  assert.equal(r.add(ev('a', 'again')), null);
  assert.equal(r.cursor, 2);
  assert.deepEqual(
    r.after(0).map((e) => e.message),
    ['a', 'b'],
  );
  assert.deepEqual(
    r.after(1).map((e) => e.id),
    ['b'],
  );
  assert.deepEqual(r.after(2), []);
  assert.deepEqual(
    r.after(0, 1).map((e) => e.id),
    ['a'],
  );
});

test('a ring is bounded: the oldest go first, and a stale cursor gets what is left', () => {
  const r = new EventRing(3);
  for (let i = 1; i <= 5; i++) r.add(ev(`e${i}`));
  assert.equal(r.size, 3);
  assert.deepEqual(
    r.after(0).map((e) => e.id),
    ['e3', 'e4', 'e5'],
  );
  assert.deepEqual(
    r.after(4).map((e) => e.id),
    ['e5'],
  );
  // An id that left the ring is new again (it is not remembered without bound).
  assert.notEqual(r.add(ev('e1')), null);
});

test('listeners hear each new event once, and stop when unsubscribed', () => {
  const r = new EventRing(10);
  const heard: string[] = [];
  const off = r.subscribe((e) => heard.push(e.id));
  r.add(ev('a'));
  r.add(ev('a'));
  off();
  r.add(ev('b'));
  assert.deepEqual(heard, ['a']);
});

test("a host's own events enter both feeds; a peer's only the merged one, once", () => {
  let now = 1000;
  const h1 = new HostEvents('h1', 'inc1', () => now);
  const h2 = new HostEvents('h2', 'inc2', () => now);
  const mine = h1.record({ kind: 'tas-won', vm: 'kv', generation: 4, message: 'won kv generation 4' });
  assert.equal(mine.id, 'h1/inc1/1');
  assert.equal(mine.atMs, 1000);
  assert.equal(mine.peer, null);
  now = 1007.6;
  h2.record({ kind: 'go-live', vm: 'kv', generation: 4, durationMs: 6.6, message: 'live' });
  const page = h2.local.after(0);
  assert.equal(page[0]!.durationMs, 7);
  assert.equal(h1.merge(page), 1);
  assert.equal(h1.merge(page), 0);
  assert.equal(h1.local.size, 1);
  assert.deepEqual(
    h1.cluster.after(0).map((e) => `${e.host}:${e.kind}`),
    ['h1:tas-won', 'h2:go-live'],
  );
});

test('peer cursors advance, and a restarted peer (new incarnation) is read from the start again', () => {
  const c = new PeerCursors();
  assert.equal(c.next('h2'), 0);
  assert.equal(c.update('h2', 'a', 5), true);
  assert.equal(c.next('h2'), 5);
  assert.equal(c.update('h2', 'a', 3), true);
  assert.equal(c.next('h2'), 5);
  assert.equal(c.update('h2', 'b', 2), false);
  assert.equal(c.next('h2'), 0);
  c.forget('h2');
  assert.equal(c.next('h2'), 0);
});
