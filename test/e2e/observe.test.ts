/**
 * The control API's live parts on a cluster of real host processes (issue 7):
 *
 * - /metrics parses as Prometheus text (every sample belongs to a family
 *   with HELP and TYPE, values are numbers), has the per-VM and per-host
 *   figures the issue names, and its figures move when the load moves:
 *   the log counters grow and the bandwidth gauge rises under
 *   redis-benchmark, then falls back to zero once the load stops.
 * - The event timeline any host serves is the cluster's: a host that did
 *   nothing itself reports the primary's test-and-set, clone and
 *   protection events, each id once, cursors increasing; the SSE stream
 *   delivers a live event.
 * - Modules upload to a host and a VM runs from the stored path; a file
 *   that is not WebAssembly is refused.
 * - "Simulate host failure" refuses unknown hosts (the kill itself is in
 *   the browser test, test/e2e/console.test.ts).
 *
 * Reproduce: the cluster folder and service addresses are printed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import type { ClusterEvent, EventsPage, HostStatus, VmStatus } from '../../src/api/backend.js';
import { startCluster, serviceIp, waitUntil, KV, type LocalCluster } from './cluster-harness.js';
import { tempDir } from './harness.js';

interface Family {
  help: string | null;
  type: string | null;
  samples: { labels: Record<string, string>; value: number }[];
}

/**
 * A strict reader of the Prometheus text format (0.0.4): comments are HELP
 * or TYPE (or free comments), every sample's family was declared, label
 * values are quoted with the three escapes, values are Go floats.
 */
function parsePrometheus(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const family = (name: string): Family => {
    let f = families.get(name);
    if (f === undefined) {
      f = { help: null, type: null, samples: [] };
      families.set(name, f);
    }
    return f;
  };
  const lines = text.split('\n');
  assert.equal(lines.at(-1), '', 'the exposition ends with a newline');
  for (const [i, line] of lines.slice(0, -1).entries()) {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    if (line.startsWith('# HELP ')) {
      const m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
      assert.ok(m, `bad HELP, ${where}`);
      family(m[1]!).help = m[2]!;
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      assert.ok(m, `bad TYPE, ${where}`);
      family(m[1]!).type = m[2]!;
      continue;
    }
    if (line.startsWith('#') || line === '') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([^ ]+)( -?[0-9]+)?$/.exec(line);
    assert.ok(m, `bad sample, ${where}`);
    const labels: Record<string, string> = {};
    if (m[3] !== undefined && m[3] !== '') {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\[\\"n])*)"(,|$)/gy;
      let consumed = 0;
      for (let l = re.exec(m[3]); l !== null; l = re.exec(m[3])) {
        labels[l[1]!] = l[2]!;
        consumed = re.lastIndex;
      }
      assert.equal(consumed, m[3].length, `bad labels, ${where}`);
    }
    const raw = m[4]!;
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' ? NaN : Number(raw);
    assert.ok(raw === 'NaN' || !Number.isNaN(value), `bad value, ${where}`);
    // Histogram and summary samples carry suffixes of their family's name.
    const name = m[1]!;
    const base = [name, name.replace(/_(bucket|sum|count)$/, '')].find((n) => families.get(n)?.type != null);
    assert.ok(base !== undefined, `sample of an undeclared family, ${where}`);
    family(base).samples.push({ labels, value });
  }
  for (const [name, f] of families) {
    assert.ok(f.help !== null && f.type !== null, `${name} lacks HELP or TYPE`);
  }
  return families;
}

function one(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string>,
): number | undefined {
  const f = families.get(name);
  const s = f?.samples.find((x) => Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value;
}

async function api<T>(c: LocalCluster, hostApi: string, p: string, init: RequestInit = {}): Promise<T> {
  const token = (await c.cli(['cluster', 'token'])).stdout.trim();
  const r = await fetch(`http://${hostApi}${p}`, {
    ...init,
    headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string>) },
  });
  const body = r.headers.get('content-type')?.includes('json') ? await r.json() : await r.text();
  if (!r.ok) throw new Error(`${init.method ?? 'GET'} ${p} answered ${r.status}: ${JSON.stringify(body)}`);
  return body as T;
}

async function metricsOf(c: LocalCluster, hostApi: string): Promise<Map<string, Family>> {
  return parsePrometheus(await api<string>(c, hostApi, '/metrics'));
}

test(
  'metrics parse and move with the load; the timeline is the cluster’s; uploads run',
  { timeout: 180_000 },
  async () => {
    const c = await startCluster({ hosts: 3, prefix: 'observe' });
    const ip = serviceIp(41);
    process.stderr.write(`observe: cluster ${c.dir}, VM kv at ${ip}:6379\n`);
    try {
      const vm = await c.createKv({ ip, host: 'h1', extraArgs: ['--ft'] });
      assert.equal(vm.primary, 'h1');
      await waitUntil(
        'kv protected',
        async () =>
          (await c.cliJson<VmStatus>(['vm', 'show', 'kv'])).protection === 'protected' ? true : undefined,
        60_000,
      );
      const h1 = c.hosts[0]!.api;
      const h3 = c.hosts[2]!.api;

      // ---- Metrics: the figures the issue names, parsed strictly.
      const first = await metricsOf(c, h1);
      assert.equal(one(first, 'lockstep_vm_state', { vm: 'kv', role: 'primary', state: 'running' }), 1);
      assert.equal(one(first, 'lockstep_vm_ft_state', { vm: 'kv', protection: 'protected' }), 1);
      assert.equal(one(first, 'lockstep_vm_ft_state', { vm: 'kv', protection: 'unprotected' }), 0);
      for (const name of [
        'lockstep_vm_lag_seconds',
        'lockstep_vm_lag_bytes',
        'lockstep_vm_held_outputs',
        'lockstep_vm_log_bytes_total',
        'lockstep_vm_log_events_total',
      ])
        assert.notEqual(one(first, name, { vm: 'kv' }), undefined, `${name} for kv`);
      assert.ok(first.has('lockstep_vm_failovers_total'));
      for (const peer of ['h2', 'h3']) {
        const rtt = one(first, 'lockstep_host_heartbeat_rtt_seconds', { peer });
        assert.ok(rtt !== undefined && rtt >= 0, `heartbeat RTT to ${peer}: ${rtt}`);
      }
      // The backup's host reports its copy as a backup, and no primary figures for it.
      const backupHost = (await c.cliJson<VmStatus>(['vm', 'show', 'kv'])).backup!;
      const backupMetrics = await metricsOf(c, c.hosts.find((h) => h.name === backupHost)!.api);
      assert.equal(
        one(backupMetrics, 'lockstep_vm_state', { vm: 'kv', role: 'backup', state: 'running' }),
        1,
      );
      assert.equal(one(backupMetrics, 'lockstep_vm_log_bytes_total', { vm: 'kv' }), undefined);

      // ---- The figures move with the load.
      const idle = await waitUntil(
        'an idle bandwidth of zero before the load',
        async () => {
          const m = await metricsOf(c, h1);
          return one(m, 'lockstep_vm_log_bytes_per_second', { vm: 'kv' }) === 0 ? m : undefined;
        },
        20_000,
        500,
      );
      const bench = spawnSync(
        'redis-benchmark',
        ['-h', ip, '-p', '6379', '-n', '20000', '-c', '8', '-t', 'set', '-q'],
        { encoding: 'utf8', timeout: 60_000 },
      );
      assert.equal(bench.status, 0, bench.stderr);
      const loaded = await metricsOf(c, h1);
      const bytesBefore = one(idle, 'lockstep_vm_log_bytes_total', { vm: 'kv' })!;
      const bytesAfter = one(loaded, 'lockstep_vm_log_bytes_total', { vm: 'kv' })!;
      const eventsBefore = one(idle, 'lockstep_vm_log_events_total', { vm: 'kv' })!;
      const eventsAfter = one(loaded, 'lockstep_vm_log_events_total', { vm: 'kv' })!;
      process.stderr.write(
        `observe: log ${bytesBefore} -> ${bytesAfter} bytes, ${eventsBefore} -> ${eventsAfter} calls; ` +
          `bandwidth now ${one(loaded, 'lockstep_vm_log_bytes_per_second', { vm: 'kv' })} B/s\n`,
      );
      // 20,000 SETs each log at least their request's bytes.
      assert.ok(bytesAfter - bytesBefore > 20_000 * 20, `the log grew by ${bytesAfter - bytesBefore} bytes`);
      assert.ok(eventsAfter - eventsBefore > 20_000, `calls grew by ${eventsAfter - eventsBefore}`);
      assert.ok(one(loaded, 'lockstep_vm_log_bytes_per_second', { vm: 'kv' })! > 0, 'bandwidth under load');
      // Once the load stops, the bandwidth window empties again.
      await waitUntil(
        'the bandwidth back to zero after the load',
        async () => {
          const m = await metricsOf(c, h1);
          return one(m, 'lockstep_vm_log_bytes_per_second', { vm: 'kv' }) === 0 ? true : undefined;
        },
        20_000,
        500,
      );

      // ---- The timeline from a host that did nothing itself for kv.
      const page = await api<EventsPage>(c, h3, '/v1/events');
      const ids = new Set(page.events.map((e) => e.id));
      assert.equal(ids.size, page.events.length, 'each event once');
      for (let i = 1; i < page.events.length; i++)
        assert.ok(page.events[i]!.cursor > page.events[i - 1]!.cursor, 'cursors increase');
      const fromH1 = page.events.filter((e) => e.host === 'h1' && e.vm === 'kv').map((e) => e.kind);
      for (const kind of ['vm-created', 'tas-won', 'vm-started', 'clone', 'protection'])
        assert.ok(fromH1.includes(kind as ClusterEvent['kind']), `h3's timeline has h1's ${kind}: ${fromH1}`);
      const protectedEvent = page.events.find(
        (e) => e.kind === 'protection' && e.vm === 'kv' && /is protected/.test(e.message),
      );
      assert.ok(protectedEvent !== undefined, 'the protected event');
      assert.ok(protectedEvent.atMs > 1.6e12 && protectedEvent.atMs < 4e12, 'timestamps are epoch ms');

      // ---- The CLI reads the same timeline.
      const cli = await c.cli(['cluster', 'events', '--vm', 'kv', '--json']);
      assert.equal(cli.code, 0, cli.stderr);
      const cliEvents = cli.stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as ClusterEvent);
      assert.ok(cliEvents.every((e) => e.vm === 'kv'));
      assert.ok(
        cliEvents.some((e) => e.id === protectedEvent.id),
        'the CLI prints the protected event',
      );
      const plain = await c.cli(['cluster', 'events']);
      assert.match(plain.stdout, /h1 +protection +kv is protected/);

      // ---- The stream: a live event arrives (FT off, told by the host that took the request).
      const token = (await c.cli(['cluster', 'token'])).stdout.trim();
      const ac = new AbortController();
      const stream = await fetch(`http://${h3}/v1/events/stream?after=${page.cursor}`, {
        headers: { authorization: `Bearer ${token}` },
        signal: ac.signal,
      });
      assert.equal(stream.status, 200);
      const reader = stream.body!.getReader();
      const offDone = c.cliJson<VmStatus>(['vm', 'ft', 'kv', 'off']);
      let text = '';
      const deadline = performance.now() + 20_000;
      // The stream is read until the event comes or the deadline cuts it (the abort ends the read).
      const cut = setTimeout(() => ac.abort(), deadline - performance.now());
      try {
        while (!/"kind":"ft-off"/.test(text)) {
          const { value, done } = await reader.read();
          if (done) break;
          text += Buffer.from(value).toString('utf8');
        }
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      } finally {
        clearTimeout(cut);
      }
      ac.abort();
      assert.match(text, /"kind":"ft-off"/, `the stream did not deliver ft-off: ${text.slice(-2000)}`);
      await offDone;

      // ---- Modules: upload, run from the stored path; garbage is refused.
      const stored = await api<{ path: string; sha256: string; bytes: number }>(c, h3, '/v1/modules', {
        method: 'POST',
        headers: { 'content-type': 'application/wasm' },
        body: readFileSync(KV),
      });
      assert.equal(stored.bytes, readFileSync(KV).byteLength);
      const disk = tempDir('observe-disk');
      try {
        const ip2 = serviceIp(42);
        const up = await c.cliJson<VmStatus>([
          'vm',
          'create',
          'kv2',
          '--wasm',
          stored.path,
          '--listen',
          `${ip2}:6379`,
          '--disk',
          disk.dir,
        ]);
        assert.equal(up.state, 'running');
        const garbage = await fetch(`http://${h3}/v1/modules`, {
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/wasm' },
          body: Buffer.from('not a module at all'),
        });
        assert.equal(garbage.status, 400);
        assert.match(JSON.stringify(await garbage.json()), /not a valid WebAssembly module/);
      } finally {
        disk.cleanup();
      }

      // ---- Hosts: all local, none fenced; an unknown host cannot be killed.
      const hosts = await api<HostStatus[]>(c, h3, '/v1/hosts');
      assert.deepEqual(
        hosts.map((h) => [h.name, h.state, h.local, h.fenced]),
        [
          ['h1', 'up', true, false],
          ['h2', 'up', true, false],
          ['h3', 'up', true, false],
        ],
      );
      const kill = await fetch(`http://${h3}/v1/hosts/h9/kill`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(kill.status, 404);
    } finally {
      await c.close();
    }
  },
);
