/**
 * A real etcd on a machine of its own: etcd runs inside host h0 of a bridged
 * network (netns-bridge.ts, with a root link) and listens on h0's address.
 * The test process reaches it through the root link, as the etcd3 client
 * does; another host reaches it over the bridge; a cut between that host and
 * h0 makes it unreachable from there only; and pausing, killing and
 * restarting it by pid still work inside the namespace.
 *
 * Clients inside namespaces use etcd's JSON gateway (POST /v3/kv/range) with
 * node's fetch, since etcdctl may not be installed. No test asserts how long
 * anything takes; every wait is bounded in time and in count.
 *
 * Needs root (network namespaces) and etcd (/usr/bin/etcd); skipped otherwise.
 * Budget: about 15 s.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readlinkSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import { BRIDGE_NET_SETUP, createBridgeNet, type BridgeHost, type BridgeNet } from './netns-bridge.js';
import { ETCD_BINARY, etcdAvailable, startEtcd, type EtcdServer } from './etcd.js';

const SKIP =
  process.getuid?.() !== 0
    ? 'needs root for network namespaces'
    : !etcdAvailable()
      ? `etcd is not installed (${ETCD_BINARY})`
      : false;

/** How long one read from inside a namespace waits; a cut makes it wait this long. */
const READ_TIMEOUT_MS = 2_000;
/** How long one call of the etcd3 client may take before the test gives up on it. */
const CLIENT_CALL_TIMEOUT_MS = 5_000;
const KEY = 'lockstep-netns-probe';

/** Reads a key through etcd's JSON gateway; prints its value, MISSING, or ERR … (exit 1). */
const RANGE_JS = `
const [url, key, timeoutMs] = process.argv.slice(1);
fetch(url + '/v3/kv/range', {
  method: 'POST',
  body: JSON.stringify({ key: Buffer.from(key).toString('base64') }),
  signal: AbortSignal.timeout(Number(timeoutMs)),
})
  .then((r) => r.json())
  .then((b) => {
    const kv = (b.kvs || [])[0];
    console.log(kv ? Buffer.from(kv.value, 'base64').toString() : 'MISSING');
  })
  .catch((e) => {
    console.log('ERR ' + (e.name === 'TimeoutError' ? 'TIMEOUT' : e.message));
    process.exit(1);
  });
`;

let bn: BridgeNet | null = null;
let etcd: EtcdServer | null = null;
let client: Etcd3 | null = null;

function context(): string {
  const log = etcd === null ? '' : `\n--- etcd log ---\n${etcd.logTail()}`;
  return `\nnetwork:\n${bn?.setupScript() ?? '(none)'}\n${BRIDGE_NET_SETUP}${log}`;
}

/** `p`, or a rejection naming `what` after timeoutMs, so a hung client call fails its test. */
async function within<T>(timeoutMs: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads KEY from inside namespace `ns`: its value, MISSING, or ERR …. */
async function readFrom(ns: string): Promise<string> {
  const r = await bn!.exec(
    ns,
    process.execPath,
    ['-e', RANGE_JS, `http://${etcd!.endpoint}`, KEY, String(READ_TIMEOUT_MS)],
    { timeoutMs: READ_TIMEOUT_MS + 10_000 },
  );
  return r.stdout.trim() || `no output (exit ${r.code}, signal ${r.signal}): ${r.stderr.trim()}`;
}

/** Reads from `ns` until the reply is `want`, at most `attempts` times; the last reply. */
async function readFromUntil(ns: string, want: string, attempts: number): Promise<string> {
  let last = '';
  for (let i = 0; i < attempts; i++) {
    last = await readFrom(ns);
    if (last === want) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return last;
}

/** Whether etcd answers its /health endpoint from the test process within a second. */
async function healthyFromRoot(): Promise<boolean> {
  try {
    const res = await fetch(`http://${etcd!.endpoint}/health`, { signal: AbortSignal.timeout(1000) });
    return res.ok && ((await res.json()) as { health?: unknown }).health === 'true';
  } catch {
    return false;
  }
}

describe('etcd inside a host namespace of a bridged network', { skip: SKIP }, () => {
  before(async () => {
    bn = await createBridgeNet({ hosts: 3, rootLink: true });
    const h0 = bn.hosts[0]!;
    try {
      etcd = await startEtcd({ listenHost: h0.ip, wrap: ['ip', 'netns', 'exec', h0.ns] });
    } catch (e) {
      throw new Error(`${(e as Error).message}${context()}`, { cause: e });
    }
    client = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  });

  after(async () => {
    client?.close();
    await etcd?.stop();
    await bn?.remove();
  });

  test('it is healthy and serves the test process through the root link', { timeout: 30_000 }, async () => {
    const h0 = bn!.hosts[0]!;
    assert.equal(etcd!.listenHost, h0.ip);
    assert.equal(etcd!.endpoint, `${h0.ip}:${etcd!.clientPort}`);
    assert.equal(etcd!.spec, `etcd:${h0.ip}:${etcd!.clientPort}`);
    // `ip netns exec` execs etcd, so the pid that pause and kill signal is etcd's.
    assert.equal(readlinkSync(`/proc/${etcd!.pid()}/exe`), ETCD_BINARY, `pid ${etcd!.pid()}${context()}`);
    assert.ok(await healthyFromRoot(), `health from the root${context()}`);
    await within(CLIENT_CALL_TIMEOUT_MS, 'put', client!.put(KEY).value('v1').exec());
    const got = await within(CLIENT_CALL_TIMEOUT_MS, 'get', client!.get(KEY).string());
    assert.equal(got, 'v1', `get from the root${context()}`);
  });

  test(
    'another host reads it; a cut between that host and h0 blocks it there only',
    { timeout: 60_000 },
    async () => {
      const [h0, h1, h2] = bn!.hosts as [BridgeHost, BridgeHost, BridgeHost];
      await within(CLIENT_CALL_TIMEOUT_MS, 'put', client!.put(KEY).value('v2').exec());
      try {
        assert.equal(await readFromUntil(h1.ns, 'v2', 5), 'v2', `h1 -> etcd on h0${context()}`);
        assert.equal(await readFromUntil(h2.ns, 'v2', 5), 'v2', `h2 -> etcd on h0${context()}`);

        await bn!.cut(h1.ns, h0.ns, 'both');
        const cutReply = await readFrom(h1.ns);
        assert.match(cutReply, /^ERR /, `h1 -> etcd on h0 passed the cut${context()}`);
        // Everyone else still reaches it.
        assert.equal(await readFromUntil(h2.ns, 'v2', 5), 'v2', `h2 -> etcd during the cut${context()}`);
        const got = await within(CLIENT_CALL_TIMEOUT_MS, 'get during the cut', client!.get(KEY).string());
        assert.equal(got, 'v2', `root -> etcd during the cut${context()}`);

        await bn!.heal(h1.ns, h0.ns, 'both');
        assert.equal(await readFromUntil(h1.ns, 'v2', 5), 'v2', `h1 -> etcd after heal${context()}`);
      } finally {
        await bn!.heal();
      }
    },
  );

  test('pause, resume, kill and restart work by pid inside the namespace', { timeout: 60_000 }, async () => {
    const h2 = bn!.hosts[2]!;
    await within(CLIENT_CALL_TIMEOUT_MS, 'put', client!.put(KEY).value('v3').exec());
    etcd!.pause();
    try {
      assert.equal(await healthyFromRoot(), false, `a paused etcd answered${context()}`);
    } finally {
      etcd!.resume();
    }
    let healthy = false;
    for (let i = 0; i < 50 && !healthy; i++) {
      healthy = await healthyFromRoot();
      if (!healthy) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(healthy, `not healthy again after resume${context()}`);

    const oldPid = etcd!.pid();
    await etcd!.kill();
    assert.equal(etcd!.running(), false);
    assert.match(await readFrom(h2.ns), /^ERR /, `h2 reached a killed etcd${context()}`);
    await etcd!.restart();
    assert.notEqual(etcd!.pid(), oldPid);
    assert.equal(readlinkSync(`/proc/${etcd!.pid()}/exe`), ETCD_BINARY);
    // Same ports, same data: the key written before the kill is there.
    assert.equal(await readFromUntil(h2.ns, 'v3', 5), 'v3', `h2 -> etcd after restart${context()}`);
  });
});
