/**
 * Containment (DESIGN.md §3.6): a guest that traps, recurses without end,
 * exhausts its memory limit or loops forever is stopped and reported, with
 * the exit status of the contract, and the host carries on. The first tests
 * go through the CLI; the last runs several VMs inside this test process,
 * which must survive all of them while a healthy VM keeps serving.
 *
 * Budget: about 40 s.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { repoPath, runLockstep, startLockstep, tempDir, CACHE_DIR } from './harness.js';
import { Vm } from '../../src/vm/vm.js';
import { StopReason } from '../../src/vm/wasi/signals.js';

const guest = (name: string): string => repoPath('test', 'guests', `${name}.wasm`);

test('a trap exits 134 with a message', { timeout: 30_000 }, async () => {
  const r = await runLockstep(['run', guest('trap')]);
  assert.equal(r.code, 134, r.stderr);
  assert.match(r.stdout, /about to trap/);
  assert.match(r.stderr, /trapped: unreachable/);
});

test('unbounded recursion is stopped by the call-depth limit: 137', { timeout: 30_000 }, async () => {
  const r = await runLockstep(['run', guest('deep_recursion')]);
  assert.equal(r.code, 137, r.stderr);
  assert.match(r.stderr, /call-depth limit/);
  // Moderate recursion is fine.
  const ok = await runLockstep(['run', guest('deep_recursion'), '--', '5000']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /returned from depth 5000/);
});

test('a memory bomb is stopped at the memory limit: 137', { timeout: 30_000 }, async () => {
  const r = await runLockstep(['run', guest('memory_bomb'), '--memory-max-mib', '32']);
  assert.equal(r.code, 137, r.stderr);
  assert.match(r.stderr, /memory limit/);
  const mib = [...r.stdout.matchAll(/allocated (\d+) MiB/g)].map((m) => Number(m[1]));
  assert.ok(mib.length > 5 && mib.at(-1)! <= 32, `allocated ${mib.at(-1)} MiB`);
});

test('an endless loop is stopped by the CPU budget: 137', { timeout: 30_000 }, async () => {
  const a = await runLockstep(['run', guest('endless_loop'), '--cpu-budget', '50000000']);
  assert.equal(a.code, 137, a.stderr);
  assert.match(a.stderr, /CPU budget/);
  assert.match(a.stdout, /looping/);
});

test('an endless loop without host calls still stops on SIGTERM', { timeout: 30_000 }, async () => {
  // endless_loop prints once, then computes without host calls: there is no
  // listener, so wait for its line instead of a listening line.
  const vm = await startLockstep(['run', guest('endless_loop'), '--listen', '127.0.0.1:0']);
  // Signal only once the guest is inside its loop (bounded wait: 20 s).
  for (let i = 0; i < 200 && !vm.stdout().includes('looping'); i++)
    await new Promise((r) => setTimeout(r, 100));
  assert.match(vm.stdout(), /looping/);
  const r = await vm.stop('SIGTERM', 15_000);
  assert.equal(r.code, 143, r.stderr);
  assert.match(r.stderr, /terminated/);
});

test(
  'the host survives trapping, exploding and looping VMs while another keeps serving',
  { timeout: 60_000 },
  async () => {
    const common = {
      env: [],
      listen: [],
      disk: null,
      dirs: [],
      cpuBudget: null,
      cacheDir: CACHE_DIR,
      stdin: null,
    };
    const load = async (name: string, extra: Partial<Parameters<typeof Vm.load>[0]> = {}): Promise<Vm> => {
      const r = await Vm.load({ ...common, wasmPath: guest(name), args: [name], memoryMaxMib: 64, ...extra });
      assert.ok(r.ok, r.ok ? '' : r.error.message);
      return r.vm;
    };
    // A healthy VM: the KV server, serving throughout.
    const disk = tempDir('contain');
    const kv = await load('kv', {
      wasmPath: repoPath('examples', 'kv', 'kv.wasm'),
      listen: [{ host: '127.0.0.1', port: 0 }],
      disk: disk.dir,
      env: ['KV_FSYNC=no'],
    });
    const kvAddr = await kv.start();
    const ping = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const s = net.connect(kvAddr[0]!.port, '127.0.0.1');
        s.on('error', reject);
        s.on('data', (d) => {
          resolve(d.toString());
          s.end();
        });
        s.write('PING\r\n');
      });
    const trap = await load('trap');
    const bomb = await load('memory_bomb', { memoryMaxMib: 16 });
    const loop = await load('endless_loop');
    await Promise.all([trap.start(), bomb.start(), loop.start()]);
    const [t, b] = await Promise.all([trap.wait(), bomb.wait()]);
    assert.equal(t.stop, 'trap');
    assert.equal(b.stop, 'limit');
    loop.stop(StopReason.HOST);
    const l = await loop.wait();
    assert.equal(l.stop, 'killed');
    assert.equal(await ping(), '+PONG\r\n');
    kv.stop(StopReason.HOST);
    assert.equal((await kv.wait()).stop, 'signal');
    disk.cleanup();
  },
);
