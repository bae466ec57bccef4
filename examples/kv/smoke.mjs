// smoke.mjs - drives a running kv server (native or under Lockstep) with
// ioredis and raw sockets, and exits non-zero on the first wrong answer.
//
// Usage: node examples/kv/smoke.mjs PORT [HOST]
// It uses keys under the "smoke:" prefix and deletes them at the end.

import net from 'node:net';
import assert from 'node:assert/strict';
import Redis from 'ioredis';

const port = Number(process.argv[2] ?? 6379);
const host = process.argv[3] ?? '127.0.0.1';

/** Sends raw bytes, in the given pieces, and returns the reply once it has `want` bytes. */
function raw(pieces, want) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, host);
    const chunks = [];
    let got = 0;
    s.on('data', (d) => {
      chunks.push(d);
      got += d.length;
      if (got >= want) {
        s.destroy();
        resolve(Buffer.concat(chunks));
      }
    });
    s.on('error', reject);
    s.on('connect', async () => {
      for (const p of pieces) {
        s.write(p);
        await new Promise((r) => setTimeout(r, 20));
      }
    });
  });
}

const r = new Redis({ port, host, connectionName: 'smoke', db: 0, lazyConnect: true });
await r.connect();
assert.equal(await r.ping(), 'PONG');
assert.equal(await r.client('GETNAME'), 'smoke');
assert.equal(await r.set('smoke:a', '1'), 'OK');
assert.equal(await r.get('smoke:a'), '1');
assert.equal(await r.incr('smoke:a'), 2);
assert.equal(await r.exists('smoke:a', 'smoke:none'), 1);

// Binary-safe keys and values, including NUL and CRLF bytes.
const bin = Buffer.from([0, 1, 2, 13, 10, 255, 0]);
await r.set(Buffer.from('smoke:\0\r\nbin'), bin);
assert.deepEqual(await r.getBuffer(Buffer.from('smoke:\0\r\nbin')), bin);

// A large value (8 MiB) in both directions.
const big = Buffer.alloc(8 << 20, 0x61);
big[12345] = 0;
await r.set('smoke:big', big);
assert.ok((await r.getBuffer('smoke:big')).equals(big));

// Pipelining through ioredis.
const p = r.pipeline();
for (let i = 0; i < 1000; i++) p.set(`smoke:p${i}`, String(i));
for (let i = 0; i < 1000; i++) p.get(`smoke:p${i}`);
const res = await p.exec();
for (let i = 0; i < 1000; i++) assert.equal(res[1000 + i][1], String(i));

// Errors: unknown command, wrong arity, not an integer.
await assert.rejects(r.call('NOSUCH', 'x'), /unknown command 'NOSUCH'/);
await assert.rejects(r.call('GET'), /wrong number of arguments/);
await r.set('smoke:s', 'abc');
await assert.rejects(r.incr('smoke:s'), /not an integer/);

// A request split at awkward places, plus inline commands, on a raw socket.
const split = ['*3\r\n$3\r\nSE', 'T\r\n$7\r\nsmoke:x\r', '\n$2\r\nhi\r\n', 'PING\r\nGET smoke:x\n'];
assert.equal((await raw(split, 19)).toString(), '+OK\r\n+PONG\r\n$2\r\nhi\r\n');

const keys = await r.keys('smoke:*');
assert.ok(keys.length >= 1004);
assert.equal(await r.del(...keys), keys.length);
assert.equal(await r.quit(), 'OK');
console.log('smoke: ok');
