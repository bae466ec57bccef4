/**
 * The bridged-namespace network (netns-bridge.ts) and the virtual IP it
 * exists to test (src/host/vip.ts): three "machines" on one L2 segment reach
 * each other, a VIP added on one and then moved to another with gratuitous
 * ARP is reached at its new owner by the very next connection, a cut blocks
 * traffic between two hosts until healed, and nothing is left behind. The
 * network has a root link, so the test process reaches the hosts directly (and
 * a cut can block that too); the root link's subnet never clashes with a route
 * of the root namespace, and the root end goes with its network.
 *
 * Reachability is checked with TCP (a node server in one namespace, a node
 * client in another), since ping may not be installed. No test asserts how
 * long anything takes; every wait is bounded in time and in count.
 *
 * Budget: about 25 s (each addVip sends 3 ARP packets a second apart).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import { addVip, hasVip, removeVip } from '../../src/host/vip.js';
import { BRIDGE_NET_SETUP, createBridgeNet, type BridgeHost, type BridgeNet } from './netns-bridge.js';

const execFileP = promisify(execFile);

/** Namespaces isolate ports, so every server can use the same one. */
const PORT = 7000;
/** How long a probe waits for a connection and its reply; a cut makes it wait this long. */
const PROBE_TIMEOUT_MS = 2_000;
const READY_TIMEOUT_MS = 10_000;

/** Answers every connection with its name, after printing `listening` once it is bound. */
const SERVER_JS = `
const [ip, port, name] = process.argv.slice(1);
require('net')
  .createServer((s) => s.end(name + '\\n'))
  .listen(Number(port), ip, () => console.log('listening'));
`;
/** Prints the server's reply (exit 0), or ERR/TIMEOUT (exit 1/2). */
const CLIENT_JS = `
const [ip, port, timeoutMs] = process.argv.slice(1);
let reply = '';
const s = require('net').connect(Number(port), ip);
s.on('data', (d) => (reply += d));
s.on('end', () => { console.log(reply.trim()); process.exit(0); });
s.on('error', (e) => { console.log('ERR ' + e.message); process.exit(1); });
setTimeout(() => { console.log('TIMEOUT'); process.exit(2); }, Number(timeoutMs));
`;

let bn: BridgeNet;

function context(): string {
  return `\nnetwork:\n${bn.setupScript()}\n${BRIDGE_NET_SETUP}`;
}

/** Starts a server in `ns` bound to ip:PORT and waits (bounded) until it listens. */
async function startServer(ns: string, ip: string, name: string): Promise<ChildProcess> {
  const child = bn.spawnIn(ns, process.execPath, ['-e', SERVER_JS, ip, String(PORT), name], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (b: Buffer) => (out += b));
  child.stderr!.on('data', (b: Buffer) => (err += b));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server ${name} in ${ns} not listening on ${ip} after ${READY_TIMEOUT_MS} ms`)),
      READY_TIMEOUT_MS,
    );
    child.stdout!.on('data', () => {
      if (out.includes('listening')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server ${name} in ${ns} exited (${code}) before listening: ${err}${context()}`));
    });
  });
  return child;
}

/** Connects from `ns` to ip:PORT once; the server's name, or ERR/TIMEOUT. */
async function probe(ns: string, ip: string): Promise<string> {
  const r = await bn.exec(
    ns,
    process.execPath,
    ['-e', CLIENT_JS, ip, String(PORT), String(PROBE_TIMEOUT_MS)],
    {
      timeoutMs: PROBE_TIMEOUT_MS + READY_TIMEOUT_MS,
    },
  );
  return r.stdout.trim() || `no output (exit ${r.code}, signal ${r.signal}): ${r.stderr.trim()}`;
}

/** Probes until the reply is `want`, at most `attempts` times; the last reply. */
async function probeUntil(ns: string, ip: string, want: string, attempts: number): Promise<string> {
  let last = '';
  for (let i = 0; i < attempts; i++) {
    last = await probe(ns, ip);
    if (last === want) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return last;
}

/** Connects from the test process itself (the root namespace) to ip:PORT once; the server's name, or ERR/TIMEOUT. */
function probeFromRoot(ip: string): Promise<string> {
  return new Promise((resolve) => {
    let reply = '';
    const s = net.connect(PORT, ip);
    const timer = setTimeout(() => {
      s.destroy();
      resolve('TIMEOUT');
    }, PROBE_TIMEOUT_MS);
    s.on('data', (d: Buffer) => (reply += d.toString()));
    s.on('end', () => {
      clearTimeout(timer);
      resolve(reply.trim());
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      resolve(`ERR ${e.message}`);
    });
  });
}

/** Probes from the root namespace until the reply is `want`, at most `attempts` times; the last reply. */
async function probeFromRootUntil(ip: string, want: string, attempts: number): Promise<string> {
  let last = '';
  for (let i = 0; i < attempts; i++) {
    last = await probeFromRoot(ip);
    if (last === want) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return last;
}

/** The names of the root namespace's interfaces. */
async function rootLinks(): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['-j', 'link', 'show'], { timeout: 10_000 });
  return (JSON.parse(stdout) as { ifname: string }[]).map((l) => l.ifname);
}

/** The root namespace's routes (every table) through `iface`. */
async function rootRoutesVia(iface: string): Promise<string[]> {
  const { stdout } = await execFileP('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], {
    timeout: 10_000,
  });
  return (JSON.parse(stdout) as { dst: string; dev?: string }[])
    .filter((r) => r.dev === iface)
    .map((r) => r.dst);
}

async function neighbours(ns: string): Promise<string> {
  return (await bn.exec(ns, 'ip', ['neigh', 'show'])).stdout.trim();
}

async function macOf(ns: string, iface: string): Promise<string> {
  const r = await bn.exec(ns, 'ip', ['-j', 'link', 'show', 'dev', iface]);
  const links = JSON.parse(r.stdout) as { address: string }[];
  return links[0]!.address;
}

before(async () => {
  bn = await createBridgeNet({ hosts: 3, rootLink: true });
  process.stderr.write(
    `netns-bridge: bridge ${bn.bridgeNs}, hosts ${bn.hosts.map((h) => `${h.ns}=${h.ip}`).join(' ')}, ` +
      `subnet ${bn.subnetPrefix}.0/24, root link ${bn.rootIface}=${bn.rootIp}\n`,
  );
});

after(async () => {
  await bn?.remove();
});

test('three hosts on the bridge reach each other over TCP', { timeout: 60_000 }, async () => {
  const servers = [];
  for (const h of bn.hosts) servers.push(await startServer(h.ns, h.ip, h.name));
  try {
    for (const from of bn.hosts)
      for (const to of bn.hosts) {
        if (from === to) continue;
        const reply = await probeUntil(from.ns, to.ip, to.name, 5);
        assert.equal(reply, to.name, `${from.name} -> ${to.name} (${to.ip})${context()}`);
      }
  } finally {
    for (const s of servers) s.kill('SIGKILL');
  }
});

test('a VIP moves from h0 to h1 with gratuitous ARP', { timeout: 60_000 }, async () => {
  const [h0, h1, h2] = bn.hosts as [BridgeHost, BridgeHost, BridgeHost];
  const vip = bn.vip(0);
  const where = (ns: string): { netns: string; iface: string; ip: string } => ({
    netns: ns,
    iface: 'eth0',
    ip: vip,
  });
  const servers: ChildProcess[] = [];
  try {
    const added = await addVip({ ...where(h0.ns), arpCount: 1 });
    assert.ok(added.ok, `addVip on h0: ${JSON.stringify(added)}${context()}`);
    assert.equal(await hasVip('eth0', vip, { netns: h0.ns }), true);
    assert.equal(await hasVip('eth0', vip, { netns: h1.ns }), false);
    // Adding what is there already succeeds.
    const again = await addVip({ ...where(h0.ns), arpCount: 1 });
    assert.ok(again.ok && /already assigned/.test(again.detail), JSON.stringify(again));

    servers.push(await startServer(h0.ns, vip, 'h0'));
    // This also puts h0's MAC into h2's ARP cache, which the move must then replace.
    assert.equal(await probeUntil(h2.ns, vip, 'h0', 5), 'h0', `h2 -> VIP on h0${context()}`);

    const removed = await removeVip(where(h0.ns));
    assert.ok(removed.ok, `removeVip on h0: ${JSON.stringify(removed)}`);
    assert.equal(await hasVip('eth0', vip, { netns: h0.ns }), false);
    // Removing what is gone already succeeds. h0's server stays up, bound to an
    // address it no longer has, so a connection that still reached h0 would show.
    const removedAgain = await removeVip(where(h0.ns));
    assert.ok(removedAgain.ok && /already absent/.test(removedAgain.detail), JSON.stringify(removedAgain));

    const moved = await addVip(where(h1.ns));
    assert.ok(moved.ok, `addVip on h1: ${JSON.stringify(moved)}${context()}`);
    servers.push(await startServer(h1.ns, vip, 'h1'));

    // The gratuitous ARP has replaced h0's MAC in h2's cache: the very next
    // connection goes to h1, without waiting for the old entry to expire.
    const h1Mac = await macOf(h1.ns, 'eth0');
    const neigh = await neighbours(h2.ns);
    assert.match(neigh, new RegExp(`^${vip.replace(/\./g, '\\.')} .*lladdr ${h1Mac}`, 'm'), `h2's ARP cache`);
    const reply = await probe(h2.ns, vip);
    assert.equal(reply, 'h1', `h2 -> VIP after the move; h2's neighbours:\n${neigh}${context()}`);
  } finally {
    for (const s of servers) s.kill('SIGKILL');
    await removeVip(where(h1.ns));
  }
});

test('vip functions report bad input and missing interfaces as values', { timeout: 30_000 }, async () => {
  const h0 = bn.hosts[0]!;
  const bad = await addVip({ netns: h0.ns, iface: 'eth0', ip: 'not-an-ip' });
  assert.ok(!bad.ok && /IPv4/.test(bad.message), JSON.stringify(bad));
  const noIface = await addVip({ netns: h0.ns, iface: 'nosuch0', ip: bn.vip(1), arpCount: 1 });
  assert.ok(!noIface.ok && /nosuch0/.test(noIface.message), JSON.stringify(noIface));
  const noIfaceDel = await removeVip({ netns: h0.ns, iface: 'nosuch0', ip: bn.vip(1) });
  assert.ok(!noIfaceDel.ok, JSON.stringify(noIfaceDel));
  assert.equal(await hasVip('nosuch0', bn.vip(1), { netns: h0.ns }), false);
});

test('cut blocks TCP between two hosts both ways, heal restores it', { timeout: 60_000 }, async () => {
  const [h0, h1, h2] = bn.hosts as [BridgeHost, BridgeHost, BridgeHost];
  const servers: ChildProcess[] = [];
  try {
    for (const h of [h0, h1]) servers.push(await startServer(h.ns, h.ip, h.name));
    assert.equal(await probeUntil(h0.ns, h1.ip, 'h1', 5), 'h1', `h0 -> h1 before the cut${context()}`);

    // The rules live in h0's namespace only.
    await bn.cut(h0.ns, h1.ns, 'both');
    const there = await probe(h0.ns, h1.ip);
    assert.notEqual(there, 'h1', `h0 -> h1 passed the cut${context()}`);
    const back = await probe(h1.ns, h0.ip);
    assert.notEqual(back, 'h0', `h1 -> h0 passed the cut${context()}`);
    // The cut is between h0 and h1 only.
    assert.equal(await probeUntil(h2.ns, h1.ip, 'h1', 5), 'h1', `h2 -> h1 during the cut${context()}`);
    assert.equal(await probeUntil(h2.ns, h0.ip, 'h0', 5), 'h0', `h2 -> h0 during the cut${context()}`);

    await bn.heal(h0.ns, h1.ns, 'both');
    assert.equal(await probeUntil(h0.ns, h1.ip, 'h1', 5), 'h1', `h0 -> h1 after heal${context()}`);
    assert.equal(await probeUntil(h1.ns, h0.ip, 'h0', 5), 'h0', `h1 -> h0 after heal${context()}`);
  } finally {
    for (const s of servers) s.kill('SIGKILL');
    await bn.heal();
  }
});

test(
  'the root link reaches a host over TCP; a cut from the root address blocks it',
  { timeout: 60_000 },
  async () => {
    const [h0, h1] = bn.hosts as [BridgeHost, BridgeHost, BridgeHost];
    const rootIp = bn.rootIp;
    assert.equal(rootIp, `${bn.subnetPrefix}.9`);
    assert.match(bn.rootIface ?? '', /^lsb[0-9a-f]{8}$/);
    assert.ok(
      (await rootLinks()).includes(bn.rootIface!),
      `${bn.rootIface} in the root namespace${context()}`,
    );
    // Only the root end is in the root namespace; the bridge end stays on the bridge.
    assert.ok(!(await rootLinks()).includes('vroot'), `vroot in the root namespace${context()}`);
    const servers: ChildProcess[] = [];
    try {
      servers.push(await startServer(h0.ns, h0.ip, 'h0'));
      assert.equal(await probeFromRootUntil(h0.ip, 'h0', 5), 'h0', `root -> h0${context()}`);

      await bn.cut(h0.ns, rootIp!, 'both');
      const cutReply = await probeFromRoot(h0.ip);
      assert.notEqual(cutReply, 'h0', `root -> h0 passed the cut${context()}`);
      // The cut is between h0 and the root only.
      assert.equal(await probeUntil(h1.ns, h0.ip, 'h0', 5), 'h0', `h1 -> h0 during the cut${context()}`);

      await bn.heal(h0.ns, rootIp!, 'both');
      assert.equal(await probeFromRootUntil(h0.ip, 'h0', 5), 'h0', `root -> h0 after heal${context()}`);
    } finally {
      for (const s of servers) s.kill('SIGKILL');
      await bn.heal();
    }
  },
);

test(
  'a root link never takes a subnet that the root namespace routes already',
  { timeout: 30_000 },
  async () => {
    await assert.rejects(
      createBridgeNet({ hosts: 1, rootLink: true, subnet: bn.subnetPrefix }),
      /clashes with the root namespace/,
    );
    // Random subnets avoid it, and each other.
    const other = await createBridgeNet({ hosts: 1, rootLink: true });
    try {
      assert.notEqual(other.subnetPrefix, bn.subnetPrefix);
    } finally {
      await other.remove();
    }
  },
);

test('without rootLink nothing is made in the root namespace', { timeout: 30_000 }, async () => {
  const before = await rootLinks();
  const plain = await createBridgeNet({ hosts: 1 });
  try {
    assert.equal(plain.rootIp, null);
    assert.equal(plain.rootIface, null);
    assert.deepEqual(
      await rootLinks(),
      before,
      `root interfaces with a plain network:\n${plain.setupScript()}`,
    );
  } finally {
    await plain.remove();
  }
});

test('deleting the bridge namespace alone takes the root end with it', { timeout: 30_000 }, async () => {
  // As when a killed run's namespaces are swept: nothing deletes the root end by name.
  const other = await createBridgeNet({ hosts: 1, rootLink: true });
  const iface = other.rootIface!;
  try {
    assert.ok((await rootLinks()).includes(iface));
    await execFileP('ip', ['netns', 'del', other.bridgeNs], { timeout: 10_000 });
    // The kernel destroys the namespace in the background: wait for it, bounded.
    let left = true;
    for (let i = 0; i < 50 && left; i++) {
      left = (await rootLinks()).includes(iface);
      if (left) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(
      left,
      false,
      `${iface} still in the root namespace 5 s after its bridge namespace was deleted`,
    );
  } finally {
    await other.remove();
  }
});

test('remove() leaves no namespace or root link of this run behind', { timeout: 30_000 }, async () => {
  await bn.remove();
  await bn.remove();
  const { stdout } = await execFileP('ip', ['netns', 'list'], { timeout: 10_000 });
  const left = stdout.split('\n').filter((l) => l.startsWith(bn.runPrefix));
  assert.deepEqual(left, [], `namespaces left after remove()`);
  // remove() deletes the root end by name, so it is gone at once, with its route.
  const links = await rootLinks();
  assert.ok(!links.includes(bn.rootIface!), `${bn.rootIface} left after remove(): ${links.join(' ')}`);
  assert.deepEqual(await rootRoutesVia(bn.rootIface!), [], `routes through ${bn.rootIface} after remove()`);
});
