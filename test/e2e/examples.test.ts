/**
 * The other example guests under `lockstep run`: the session store (timers,
 * randomness, clocks; C) and the Rust std KV server, each driven over TCP
 * from this process, as a client would.
 *
 * Budget: about 30 s.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { repoPath, startLockstep, tempDir } from './harness.js';

/** A line-protocol client: send a line, await the reply line. */
class LineClient {
  private buf = '';
  private waiters: { resolve: (line: string) => void; reject: (e: Error) => void }[] = [];
  private constructor(private readonly s: net.Socket) {
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      this.buf += d;
      for (let i = this.buf.indexOf('\n'); i >= 0 && this.waiters.length > 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i).replace(/\r$/, '');
        this.buf = this.buf.slice(i + 1);
        this.waiters.shift()!.resolve(line);
      }
    });
    s.on('close', () => {
      for (const w of this.waiters.splice(0)) w.reject(new Error('connection closed before a reply'));
    });
  }
  static connect(port: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new LineClient(s)));
      s.once('error', reject);
    });
  }
  ask(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.s.write(line + '\n');
    });
  }
  close(): void {
    this.s.end();
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('sessions: random ids, expiry driven by poll timeouts, both clocks', { timeout: 30_000 }, async () => {
  const vm = await startLockstep([
    'run',
    repoPath('examples', 'sessions', 'sessions.wasm'),
    '--listen',
    '127.0.0.1:0',
  ]);
  try {
    const c = await LineClient.connect(vm.addresses[0]!.port);
    const a = await c.ask('NEW 300');
    const b = await c.ask('NEW 60000');
    assert.match(a, /^OK [0-9a-f]{32}$/);
    assert.match(b, /^OK [0-9a-f]{32}$/);
    assert.notEqual(a, b);
    const idA = a.slice(3);
    assert.match(await c.ask(`GET ${idA}`), /^OK \d+$/);
    assert.equal(await c.ask('COUNT'), 'OK 2');
    const t1 = (await c.ask('TIME')).split(' ');
    await sleep(500);
    // The 300 ms session expired on the guest's own timer, with no request in between.
    assert.equal(await c.ask(`GET ${idA}`), 'ERR not found');
    assert.equal(await c.ask('COUNT'), 'OK 1');
    const t2 = (await c.ask('TIME')).split(' ');
    assert.ok(BigInt(t2[1]!) - BigInt(t1[1]!) >= 400_000_000n, 'monotonic advanced by the sleep');
    assert.ok(BigInt(t2[2]!) > 1_600_000_000n * 1_000_000_000n, 'realtime is plausible');
    assert.equal(await c.ask('NOPE'), 'ERR unknown command');
    assert.equal(await c.ask('QUIT'), 'OK bye');
    c.close();
  } finally {
    await vm.stop();
  }
});

test(
  'Rust std KV: TcpListener::from_raw_fd(3), with its log on /data across a restart',
  { timeout: 60_000 },
  async () => {
    const disk = tempDir('rustkv');
    const wasm = repoPath('examples', 'rust-kv', 'rust-kv.wasm');
    let vm = await startLockstep(['run', wasm, '--listen', '127.0.0.1:0', '--disk', disk.dir]);
    try {
      let c = await LineClient.connect(vm.addresses[0]!.port);
      assert.match(await c.ask('SET colour blue'), /^OK/);
      assert.match(await c.ask('SET shape round'), /^OK/);
      assert.match(await c.ask('GET colour'), /blue/);
      assert.match(await c.ask('COUNT'), /2/);
      c.close();
      await vm.stop();
      vm = await startLockstep(['run', wasm, '--listen', '127.0.0.1:0', '--disk', disk.dir]);
      c = await LineClient.connect(vm.addresses[0]!.port);
      assert.match(await c.ask('GET shape'), /round/);
      c.close();
    } finally {
      await vm.stop();
      disk.cleanup();
    }
  },
);
