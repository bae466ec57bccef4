// Tests of the output ledger (outputs.ts): the SHA-256 framing that
// docs/LOG-FORMAT.md documents (kind u8 | fd u32 LE | n u32 LE | bytes),
// computed here by hand for a small sequence, the counts, the observer, and
// that the digest depends on how bytes are split between outputs but not on
// how one output's bytes are spread over iovecs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { OutputKind, OutputLedger } from './outputs.js';

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

test('the digest of a small sequence, framed by hand', () => {
  const ledger = new OutputLedger();
  ledger.data(1, [Buffer.from('hel'), Buffer.from('lo!!')], 5);
  ledger.shutdown(5, 2);
  ledger.data(5, [Buffer.from('PONG\r\n')], 6);
  ledger.close(5);
  const expected = createHash('sha256')
    .update(Buffer.concat([Buffer.of(1), u32(1), u32(5), Buffer.from('hello')]))
    .update(Buffer.concat([Buffer.of(2), u32(5), u32(2)]))
    .update(Buffer.concat([Buffer.of(1), u32(5), u32(6), Buffer.from('PONG\r\n')]))
    .update(Buffer.concat([Buffer.of(3), u32(5), u32(0)]))
    .digest('hex');
  assert.equal(ledger.count, 4);
  assert.equal(ledger.bytes, 11);
  assert.equal(ledger.digest(), expected);
});

test('an empty ledger is the SHA-256 of nothing; empty writes are not outputs', () => {
  const ledger = new OutputLedger();
  ledger.data(1, [Buffer.from('ignored')], 0);
  ledger.data(2, [], 0);
  assert.equal(ledger.count, 0);
  assert.equal(ledger.digest(), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});

test('one output spread over iovecs hashes as its bytes; a split into two outputs does not', () => {
  const one = new OutputLedger();
  one.data(1, [Buffer.from('abcdef')], 6);
  const iovecs = new OutputLedger();
  iovecs.data(1, [Buffer.from('ab'), Buffer.from(''), Buffer.from('cd'), Buffer.from('efXYZ')], 6);
  const two = new OutputLedger();
  two.data(1, [Buffer.from('abc')], 3);
  two.data(1, [Buffer.from('def')], 3);
  const otherFd = new OutputLedger();
  otherFd.data(2, [Buffer.from('abcdef')], 6);
  const d1 = one.digest();
  assert.equal(iovecs.digest(), d1, 'only the first n bytes of the iovecs count');
  assert.notEqual(two.digest(), d1, 'the framing keeps output boundaries');
  assert.notEqual(otherFd.digest(), d1, 'the descriptor is part of an output');
});

test('the observer sees each piece, shutdowns and closes, in order', () => {
  const seen: [number, number, string | null, number][] = [];
  const ledger = new OutputLedger((kind, fd, bytes, how) =>
    seen.push([kind, fd, bytes === null ? null : Buffer.from(bytes).toString(), how]),
  );
  ledger.data(1, [Buffer.from('ab'), Buffer.from('cdef')], 4);
  ledger.shutdown(4, 1);
  ledger.close(4);
  assert.deepEqual(seen, [
    [OutputKind.DATA, 1, 'ab', 0],
    [OutputKind.DATA, 1, 'cd', 0],
    [OutputKind.SHUTDOWN, 4, null, 1],
    [OutputKind.CLOSE, 4, null, 0],
  ]);
});

test('descriptor numbers are framed as u32', () => {
  const ledger = new OutputLedger();
  ledger.close(0xfffffffe);
  const expected = createHash('sha256')
    .update(Buffer.concat([Buffer.of(3), u32(0xfffffffe), u32(0)]))
    .digest('hex');
  assert.equal(ledger.digest(), expected);
});
