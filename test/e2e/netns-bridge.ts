/**
 * An L2 network of N "machines" built from network namespaces, for tests of
 * what spans machines: virtual IPs moved with gratuitous ARP, partitions
 * between a primary and its backup.
 *
 * Layout: one namespace holds a Linux bridge `br0`; each host namespace has
 * an `eth0` whose veth peer (`vN`) sits in the bridge namespace, attached to
 * br0. Host i has 10.X.Y.(10+i)/24, and every namespace has loopback up.
 * Unless asked for a root link, nothing is created in the root namespace: the
 * veth pairs are created with both ends already inside their namespaces, so
 * interface names never clash between runs and a killed run leaves no
 * interface behind in the root namespace. The subnet 10.X.Y is then random per
 * run only so that logs of different runs are told apart; two runs may pick
 * the same one safely, since each network lives entirely inside its own
 * namespaces.
 *
 * Root link (`rootLink: true`): the test process itself joins the segment, so
 * it can reach servers inside the host namespaces directly. One more veth
 * pair, created from inside the bridge namespace with only its far end placed
 * into the test process's namespace (so the bridge end never exists there),
 * has `vroot` on br0 and `lsbXXXXXXXX` (random hex, unique per run) with
 * 10.X.Y.9/24 in the root namespace. That end carries the run prefix as its
 * alias, so a later run can tell whose it is. Since the root namespace then
 * has a route for 10.X.Y.0/24, the subnet must not overlap any route or
 * address already there, other runs' root links included: it is chosen
 * among the free ones, checked again once the link is up (two runs may have
 * chosen at once), and another is tried on a clash.
 *
 * Partitions are iptables DROP rules inside one host's namespace (INPUT
 * and/or OUTPUT, by address), so "cut the primary from its backup" touches
 * only the primary's namespace. Unlike a pulled cable, the side whose OUTPUT
 * chain drops learns of it for UDP (sendto fails with EPERM); TCP just
 * retransmits, as over a dead link. iptables does not filter ARP, so
 * addresses still resolve across a cut; only IP traffic is dropped.
 *
 * Cleanup: every namespace name is this module's prefix, the creator's pid,
 * random hex and a role (`br`, `h0`, …). `remove()` kills what runs inside the
 * namespaces and deletes them (deleting a namespace deletes its veth ends);
 * an exit hook does the same for whatever a failing test left behind, and
 * namespaces of earlier test processes that are no longer alive are swept on
 * creation. The root link goes with its bridge namespace, since deleting one
 * end of a veth pair deletes both; but the kernel destroys a deleted
 * namespace in the background, so the root end can outlive `ip netns del` by
 * some milliseconds. remove() and the exit hook therefore delete the root end
 * first, by name (which is immediate), and the sweep also deletes root links
 * whose alias names a dead test process.
 *
 * Needs root, iproute2's `ip`, and iptables (nft or legacy) for cuts;
 * `BRIDGE_NET_SETUP` says so in failure messages, and `setupScript()` gives
 * the exact commands a run used.
 */
import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promisify } from 'node:util';
import { ROOT, runCollected, type RunResult } from './harness.js';

const execFileP = promisify(execFile);

/** Every namespace this module creates starts with this prefix, then the creator's pid. */
const PREFIX = 'lockstep-br-';
const STALE_NAME = new RegExp(`^${PREFIX}(\\d+)-[0-9a-f]+-(?:br|h\\d+)$`);
/** The alias of a root link: the run prefix, which names the creator's pid. */
const STALE_ALIAS = new RegExp(`^${PREFIX}(\\d+)-[0-9a-f]+-$`);
/** The root link's two ends: on the bridge, and in the root namespace (plus 8 hex digits: 11 of the 15 characters allowed). */
const ROOT_LINK_BRIDGE_END = 'vroot';
const ROOT_LINK_PREFIX = 'lsb';
/** The root end's address, SUBNETPREFIX.9: below the hosts' range and the VIPs'. */
const ROOT_OCTET = 9;
/** How many random subnets a root-linked network tries before giving up on clashes. */
const SUBNET_ATTEMPTS = 8;
/** Random subnets are drawn from 10.200.0.0 to 10.250.255.0, which keeps clear of the low 10.x ranges that real networks often use. */
const SUBNET_SECOND_OCTET_FIRST = 200;
const SUBNET_SECOND_OCTET_LAST = 250;
/** Hosts get .10 to .109 and VIPs .200 to .254, so the two ranges never meet. */
const HOSTS_MAX = 100;
const HOST_OCTET_FIRST = 10;
const VIP_OCTET_FIRST = 200;
const VIP_OCTET_LAST = 254;
/** Time limit for one setup or teardown command, which normally takes milliseconds. */
const COMMAND_TIMEOUT_MS = 10_000;
/** How long iptables may wait for the xtables lock, which legacy iptables shares across namespaces. */
const XTABLES_LOCK_WAIT_S = 5;

/** What a reader needs to rebuild such a network by hand. */
export const BRIDGE_NET_SETUP =
  'bridged namespaces need root, iproute2 and iptables: `ip netns add BR; ip -n BR link add br0 type bridge`; ' +
  'per host `ip netns add H; ip -n BR link add vN type veth peer name eth0 netns H; ip -n BR link set vN master br0`, ' +
  'addresses with `ip -n H addr add 10.X.Y.Z/24 dev eth0`, links up; with a root link also ' +
  '`ip -n BR link add vroot type veth peer name lsbXXXXXXXX netns 1; ip -n BR link set vroot master br0; ' +
  'ip addr add 10.X.Y.9/24 dev lsbXXXXXXXX`, links up; `ip netns del NAME` afterwards ' +
  '(and `ip link del lsbXXXXXXXX`, which otherwise lingers briefly)';

export interface BridgeHost {
  /** `h0`, `h1`, …: the role part of the namespace name. */
  readonly name: string;
  readonly ns: string;
  /** The host's interface on the bridge, inside its namespace. */
  readonly iface: string;
  readonly ip: string;
}

export type CutDirection = 'both' | 'a-to-b' | 'b-to-a';

export interface BridgeNet {
  readonly bridgeNs: string;
  readonly hosts: readonly BridgeHost[];
  /** The first three octets of the subnet, such as `10.213.7`; the network is SUBNETPREFIX.0/24. */
  readonly subnetPrefix: string;
  /** The part every namespace name of this run starts with. */
  readonly runPrefix: string;
  /**
   * With `rootLink`, the test process's own address on the segment,
   * SUBNETPREFIX.9, through which it reaches every host; else null. It is no
   * host: cut(a, rootIp) cuts host a from the test process.
   */
  readonly rootIp: string | null;
  /** With `rootLink`, the root namespace's end of the link (`lsb` and 8 hex digits); else null. */
  readonly rootIface: string | null;
  /** An address in the subnet that no host has, for a virtual IP: SUBNETPREFIX.(200+n). */
  vip(n: number): string;
  /** The host a namespace name, host name (`h1`) or host address belongs to. */
  host(nsOrIp: string): BridgeHost;
  /** Runs `cmd args` inside namespace `ns` to completion, or until timeoutMs (then SIGKILL). */
  exec(ns: string, cmd: string, args: string[], opts?: { timeoutMs?: number }): Promise<RunResult>;
  /**
   * Starts `cmd args` inside namespace `ns` (as `ip netns exec NS CMD ARGS`,
   * which execs, so the child's pid is the command's). remove() kills it.
   */
  spawnIn(ns: string, cmd: string, args: string[], opts?: SpawnOptions): ChildProcess;
  /**
   * Drops IP traffic between host `a` (a namespace or host name) and `b` (a
   * host, or any address such as a VIP or rootIp), with rules in a's namespace only:
   * `both` drops a's packets to b (OUTPUT) and b's packets to a (INPUT);
   * `a-to-b` and `b-to-a` drop one direction. Cutting what is already cut
   * adds nothing.
   */
  cut(a: string, b: string, how?: CutDirection): Promise<void>;
  /** Removes the rules of cut(a, b, how); with no arguments, of every cut. */
  heal(a?: string, b?: string, how?: CutDirection): Promise<void>;
  /** The commands that built this network, one shell line each, for failure messages. */
  setupScript(): string;
  /** Kills what runs in the namespaces and deletes them; safe to call twice. */
  remove(): Promise<void>;
}

export interface BridgeNetOptions {
  /** How many host namespaces, 1 to 100. */
  hosts: number;
  /** `10.X.Y` or `10.X.Y.0/24`; random if absent. With rootLink, one that clashes in the root namespace is an error. */
  subnet?: string;
  /** Also link the root namespace (the test process) to the bridge as SUBNETPREFIX.9 (default false). */
  rootLink?: boolean;
}

const liveNamespaces = new Set<string>();
const liveRootLinks = new Set<string>();
const liveChildren = new Set<ChildProcess>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL');
    // Root ends first: they would otherwise outlive their namespace for a moment.
    for (const iface of liveRootLinks) deleteLinkSync(iface);
    for (const name of liveNamespaces) deleteNamespaceSync(name);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The pids of processes inside a namespace (`ip netns pids`), which keep it alive after `ip netns del`. */
function parsePids(stdout: string): number[] {
  return stdout
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((pid) => Number.isSafeInteger(pid) && pid > 1 && pid !== process.pid);
}

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone: nothing to do.
    }
  }
}

/**
 * Kills the processes inside the namespace, then deletes it. A process left
 * inside would keep the namespace, and its veth ends, alive without a name.
 */
async function deleteNamespace(name: string): Promise<void> {
  const pids = await execFileP('ip', ['netns', 'pids', name], { timeout: COMMAND_TIMEOUT_MS }).then(
    (r) => parsePids(r.stdout),
    () => [],
  );
  killPids(pids);
  await execFileP('ip', ['netns', 'del', name], { timeout: COMMAND_TIMEOUT_MS }).catch((e: Error) => {
    // Deleting a name that is already gone is the goal reached, not a failure.
    if (!/No such file/i.test(e.message)) throw e;
  });
  liveNamespaces.delete(name);
}

function deleteNamespaceSync(name: string): void {
  try {
    const out = execFileSync('ip', ['netns', 'pids', name], {
      timeout: COMMAND_TIMEOUT_MS,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    killPids(parsePids(out));
  } catch {
    // No such namespace, or no pids to read: deletion below decides.
  }
  try {
    execFileSync('ip', ['netns', 'del', name], { timeout: COMMAND_TIMEOUT_MS, stdio: 'ignore' });
  } catch {
    // Already gone: nothing to do.
  }
}

/**
 * Deletes a link of the root namespace, and with it its veth peer. Unlike
 * deleting the peer's namespace, this takes effect before it returns.
 */
async function deleteLink(iface: string): Promise<void> {
  await execFileP('ip', ['link', 'del', 'dev', iface], { timeout: COMMAND_TIMEOUT_MS }).catch((e: Error) => {
    // A link already gone (with its namespace) is the goal reached, not a failure.
    if (!/Cannot find device|does not exist/i.test(e.message)) throw e;
  });
  liveRootLinks.delete(iface);
}

function deleteLinkSync(iface: string): void {
  try {
    execFileSync('ip', ['link', 'del', 'dev', iface], { timeout: COMMAND_TIMEOUT_MS, stdio: 'ignore' });
  } catch {
    // Already gone: nothing to do.
  }
}

/**
 * Deletes namespaces, and root links, that earlier test processes created
 * and could not delete (they were killed).
 */
async function sweepStale(): Promise<void> {
  const { stdout } = await execFileP('ip', ['netns', 'list'], { timeout: COMMAND_TIMEOUT_MS });
  for (const line of stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = STALE_NAME.exec(name);
    if (m === null || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await deleteNamespace(name).catch(() => {});
  }
  // A stale root link normally went with its bridge namespace just now; this
  // catches one whose namespace is kept alive some other way, and one of a
  // run killed between creating the link and naming its owner (no alias: left
  // to its namespace).
  const links = await execFileP('ip', ['-j', 'link', 'show'], { timeout: COMMAND_TIMEOUT_MS }).then(
    (r) => JSON.parse(r.stdout) as { ifname?: string; ifalias?: string }[],
    () => [],
  );
  for (const link of links) {
    const m = STALE_ALIAS.exec(link.ifalias ?? '');
    if (m === null || link.ifname === undefined || !link.ifname.startsWith(ROOT_LINK_PREFIX)) continue;
    if (Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await deleteLink(link.ifname).catch(() => {});
  }
}

/** An IPv4 network as a 32-bit number and a prefix length. */
interface Net4 {
  readonly base: number;
  readonly bits: number;
}

function parseNet4(text: string): Net4 | null {
  const [addr, bitsText] = text.split('/');
  const octets = (addr ?? '').split('.').map(Number);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255)) return null;
  const bits = bitsText === undefined ? 32 : Number(bitsText);
  if (!Number.isInteger(bits) || bits < 0 || bits > 32) return null;
  return { base: octets.reduce((acc, o) => acc * 256 + o, 0), bits };
}

/** Whether two networks share an address: their bases agree on the shorter prefix. */
function overlaps(a: Net4, b: Net4): boolean {
  const bits = Math.min(a.bits, b.bits);
  const size = 2 ** (32 - bits);
  return Math.floor(a.base / size) === Math.floor(b.base / size);
}

/**
 * Routes (every table) and addresses of the root namespace that overlap
 * SUBNETPREFIX.0/24, except those on `ownIface`; one line each, empty if the
 * subnet is free there. Routes shorter than /8 (the default route, a VPN's
 * 0.0.0.0/1) do not count: every local network is more specific than they
 * are, and takes only its own addresses from them.
 */
async function rootClashes(subnetPrefix: string, ownIface: string | null): Promise<string[]> {
  const subnet = parseNet4(`${subnetPrefix}.0/24`)!;
  const [routes, addrs] = await Promise.all([
    execFileP('ip', ['-j', '-4', 'route', 'show', 'table', 'all'], { timeout: COMMAND_TIMEOUT_MS }),
    execFileP('ip', ['-j', '-4', 'addr', 'show'], { timeout: COMMAND_TIMEOUT_MS }),
  ]);
  const clashes: string[] = [];
  for (const r of JSON.parse(routes.stdout) as {
    dst?: string;
    dev?: string;
    table?: string;
    type?: string;
  }[]) {
    if (r.dst === undefined || r.dst === 'default' || r.dev === ownIface) continue;
    const dst = parseNet4(r.dst);
    if (dst === null || dst.bits < 8 || !overlaps(dst, subnet)) continue;
    clashes.push(`route ${r.type ?? 'unicast'} ${r.dst} dev ${r.dev ?? '?'} table ${r.table ?? 'main'}`);
  }
  type Addr = { family?: string; local?: string; prefixlen?: number };
  for (const link of JSON.parse(addrs.stdout) as { ifname?: string; addr_info?: Addr[] }[]) {
    if (link.ifname === ownIface) continue;
    for (const a of link.addr_info ?? []) {
      const net = a.local === undefined ? null : parseNet4(`${a.local}/${a.prefixlen ?? 32}`);
      if (net !== null && overlaps(net, subnet))
        clashes.push(`address ${a.local}/${a.prefixlen} on ${link.ifname ?? '?'}`);
    }
  }
  return clashes;
}

function randomSubnet(): string {
  return `10.${randomInt(SUBNET_SECOND_OCTET_FIRST, SUBNET_SECOND_OCTET_LAST + 1)}.${randomInt(0, 256)}`;
}

/** A random subnet free in the root namespace, by what `ip` shows now; bounded in tries. */
async function freeRootSubnet(): Promise<string> {
  const tried: string[] = [];
  for (let i = 0; i < 64; i++) {
    const prefix = randomSubnet();
    const clashes = await rootClashes(prefix, null);
    if (clashes.length === 0) return prefix;
    tried.push(`${prefix}.0/24: ${clashes.join('; ')}`);
  }
  throw new Error(`no free subnet for a root link after ${tried.length} tries:\n${tried.join('\n')}`);
}

/** The subnet clashed in the root namespace once the link was up: another one may not. */
class SubnetClash extends Error {}

/**
 * The iptables command that works inside namespaces here, found once per
 * process. Debian's `iptables` is the nf_tables variant; kernels built without
 * nf_tables have only the legacy x_tables, and some without x_tables have only
 * nf_tables, so each is tried with a harmless rule added and deleted again.
 * One variant is used for every rule of the process, since heal must delete a
 * rule with the same variant that added it.
 */
let iptablesFound: Promise<string> | null = null;

function findIptables(ns: string): Promise<string> {
  iptablesFound ??= (async () => {
    const tried: string[] = [];
    for (const cmd of ['iptables', 'iptables-legacy', 'iptables-nft']) {
      // 192.0.2.0/24 is TEST-NET-1, which no test uses.
      const rule = ['-s', '192.0.2.1', '-j', 'DROP'];
      try {
        await execFileP(
          'ip',
          ['netns', 'exec', ns, cmd, '-w', `${XTABLES_LOCK_WAIT_S}`, '-I', 'INPUT', ...rule],
          {
            timeout: COMMAND_TIMEOUT_MS,
          },
        );
        await execFileP(
          'ip',
          ['netns', 'exec', ns, cmd, '-w', `${XTABLES_LOCK_WAIT_S}`, '-D', 'INPUT', ...rule],
          {
            timeout: COMMAND_TIMEOUT_MS,
          },
        );
        return cmd;
      } catch (e) {
        tried.push(`${cmd}: ${(e as Error).message.trim()}`);
      }
    }
    throw new Error(
      `no working iptables inside a namespace (apt-get install iptables):\n${tried.join('\n')}`,
    );
  })();
  // A failed search is not cached, so that a later call (after installing iptables) can succeed.
  iptablesFound.catch(() => {
    iptablesFound = null;
  });
  return iptablesFound;
}

function parseSubnet(s: string): string {
  const m = /^(10)\.(\d{1,3})\.(\d{1,3})(?:\.0\/24)?$/.exec(s);
  if (m === null || Number(m[2]) > 255 || Number(m[3]) > 255)
    throw new Error(`subnet must be 10.X.Y or 10.X.Y.0/24, got ${JSON.stringify(s)}`);
  return `10.${Number(m[2])}.${Number(m[3])}`;
}

function shellQuote(argv: string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/**
 * Creates the bridge and `hosts` host namespaces, wired and addressed, and
 * with `rootLink` the link from the root namespace. On any failure it deletes
 * what it created and throws with the commands it ran.
 */
export async function createBridgeNet(opts: BridgeNetOptions): Promise<BridgeNet> {
  if (!Number.isInteger(opts.hosts) || opts.hosts < 1 || opts.hosts > HOSTS_MAX)
    throw new Error(`hosts must be an integer from 1 to ${HOSTS_MAX}, got ${opts.hosts}`);
  const given = opts.subnet !== undefined ? parseSubnet(opts.subnet) : null;
  hookExit();
  await sweepStale();
  if (opts.rootLink !== true) return build(opts.hosts, given ?? randomSubnet(), false);

  if (given !== null) {
    const clashes = await rootClashes(given, null);
    if (clashes.length > 0)
      throw new Error(
        `subnet ${given}.0/24 clashes with the root namespace, where a root link would route it: ${clashes.join('; ')}`,
      );
  }
  // A given subnet is tried once: retrying could only meet the same clash.
  const attempts = given === null ? SUBNET_ATTEMPTS : 1;
  const failures: string[] = [];
  for (let attempt = 0; attempt < attempts; attempt++) {
    const subnetPrefix = given ?? (await freeRootSubnet());
    try {
      return await build(opts.hosts, subnetPrefix, true);
    } catch (e) {
      if (!(e instanceof SubnetClash)) throw e;
      failures.push(e.message);
    }
  }
  throw new Error(
    `no subnet stayed free in the root namespace in ${attempts} tries (runs starting at once?):\n` +
      `${failures.join('\n')}\n${BRIDGE_NET_SETUP}`,
  );
}

/** Builds one network on `subnetPrefix`; throws SubnetClash (after cleaning up) if the root link met another route. */
async function build(hostCount: number, subnetPrefix: string, rootLink: boolean): Promise<BridgeNet> {
  const runPrefix = `${PREFIX}${process.pid}-${randomBytes(4).toString('hex')}-`;
  const bridgeNs = `${runPrefix}br`;
  const hosts: BridgeHost[] = Array.from({ length: hostCount }, (_, i) => ({
    name: `h${i}`,
    ns: `${runPrefix}h${i}`,
    iface: 'eth0',
    ip: `${subnetPrefix}.${HOST_OCTET_FIRST + i}`,
  }));
  const rootIface = rootLink ? `${ROOT_LINK_PREFIX}${randomBytes(4).toString('hex')}` : null;
  const rootIp = rootLink ? `${subnetPrefix}.${ROOT_OCTET}` : null;
  const script: string[] = [];
  const created: string[] = [];
  let rootLinkCreated = false;

  const ipCmd = async (args: string[]): Promise<void> => {
    script.push(shellQuote(['ip', ...args]));
    await execFileP('ip', args, { timeout: COMMAND_TIMEOUT_MS });
  };
  const addNamespace = async (name: string): Promise<void> => {
    await ipCmd(['netns', 'add', name]);
    created.push(name);
    liveNamespaces.add(name);
    await ipCmd(['-n', name, 'link', 'set', 'lo', 'up']);
  };
  const cleanUp = async (): Promise<void> => {
    if (rootLinkCreated && rootIface !== null) await deleteLink(rootIface).catch(() => {});
    for (const name of created.reverse()) await deleteNamespace(name).catch(() => {});
  };

  try {
    await addNamespace(bridgeNs);
    await ipCmd(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
    await ipCmd(['-n', bridgeNs, 'link', 'set', 'br0', 'up']);
    if (rootIface !== null && rootIp !== null) {
      // Made inside the bridge namespace with only the far end placed into this
      // process's namespace (by pid), so the bridge end's name never exists in
      // the root namespace. Made before the hosts, so a clash costs little.
      await ipCmd([
        '-n',
        bridgeNs,
        'link',
        'add',
        ROOT_LINK_BRIDGE_END,
        'type',
        'veth',
        'peer',
        'name',
        rootIface,
        'netns',
        String(process.pid),
      ]);
      rootLinkCreated = true;
      liveRootLinks.add(rootIface);
      // The alias names the owner, for the sweep of a later run if this one is killed.
      await ipCmd(['link', 'set', 'dev', rootIface, 'alias', runPrefix]);
      await ipCmd(['-n', bridgeNs, 'link', 'set', ROOT_LINK_BRIDGE_END, 'master', 'br0']);
      await ipCmd(['-n', bridgeNs, 'link', 'set', ROOT_LINK_BRIDGE_END, 'up']);
      await ipCmd(['addr', 'add', `${rootIp}/24`, 'dev', rootIface]);
      await ipCmd(['link', 'set', 'dev', rootIface, 'up']);
      // Checked again now that the route exists: another run may have taken the
      // same subnet since it was chosen. Of two that did, the later one sees the
      // earlier one's route here, so at most one keeps it.
      const clashes = await rootClashes(subnetPrefix, rootIface);
      if (clashes.length > 0) throw new SubnetClash(`${subnetPrefix}.0/24: ${clashes.join('; ')}`);
    }
    for (const [i, h] of hosts.entries()) {
      await addNamespace(h.ns);
      // Created in the bridge namespace with the peer placed straight into the host's:
      // no name ever exists in the root namespace.
      await ipCmd([
        '-n',
        bridgeNs,
        'link',
        'add',
        `v${i}`,
        'type',
        'veth',
        'peer',
        'name',
        h.iface,
        'netns',
        h.ns,
      ]);
      await ipCmd(['-n', bridgeNs, 'link', 'set', `v${i}`, 'master', 'br0']);
      await ipCmd(['-n', bridgeNs, 'link', 'set', `v${i}`, 'up']);
      await ipCmd(['-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', h.iface]);
      await ipCmd(['-n', h.ns, 'link', 'set', h.iface, 'up']);
    }
  } catch (e) {
    await cleanUp();
    if (e instanceof SubnetClash) throw e;
    throw new Error(
      `cannot build the bridged network: ${(e as Error).message}\ncommands run:\n${script.join('\n')}\n${BRIDGE_NET_SETUP}`,
      { cause: e },
    );
  }

  const children = new Set<ChildProcess>();
  /** Rules in place, keyed by namespace and rule text, so heal deletes exactly what cut added. */
  const rules = new Map<string, { ns: string; rule: string[] }>();
  let removed = false;

  const host = (nsOrIp: string): BridgeHost => {
    const h = hosts.find((x) => x.ns === nsOrIp || x.name === nsOrIp || x.ip === nsOrIp);
    if (h === undefined) throw new Error(`no host ${JSON.stringify(nsOrIp)} in ${runPrefix}*`);
    return h;
  };
  const addressOf = (b: string): string => {
    if (/^\d+\.\d+\.\d+\.\d+$/.test(b)) return b;
    return host(b).ip;
  };
  const rulesFor = (a: string, b: string, how: CutDirection): { ns: string; rule: string[] }[] => {
    const ns = host(a).ns;
    const ip = addressOf(b);
    const out: { ns: string; rule: string[] }[] = [];
    if (how !== 'b-to-a') out.push({ ns, rule: ['OUTPUT', '-d', ip, '-j', 'DROP'] });
    if (how !== 'a-to-b') out.push({ ns, rule: ['INPUT', '-s', ip, '-j', 'DROP'] });
    return out;
  };
  const iptables = async (ns: string, op: '-I' | '-D', rule: string[]): Promise<void> => {
    const cmd = await findIptables(ns);
    await execFileP('ip', ['netns', 'exec', ns, cmd, '-w', `${XTABLES_LOCK_WAIT_S}`, op, ...rule], {
      timeout: COMMAND_TIMEOUT_MS,
    });
  };

  return {
    bridgeNs,
    hosts,
    subnetPrefix,
    runPrefix,
    rootIp,
    rootIface,
    vip(n) {
      const octet = VIP_OCTET_FIRST + n;
      if (!Number.isInteger(n) || n < 0 || octet > VIP_OCTET_LAST)
        throw new Error(`vip(n) needs n from 0 to ${VIP_OCTET_LAST - VIP_OCTET_FIRST}, got ${n}`);
      return `${subnetPrefix}.${octet}`;
    },
    host,
    exec(ns, cmd, args, o = {}) {
      return runCollected('ip', ['netns', 'exec', ns, cmd, ...args], {
        timeoutMs: o.timeoutMs ?? COMMAND_TIMEOUT_MS,
        cwd: ROOT,
        live: liveChildren,
      });
    },
    spawnIn(ns, cmd, args, o = {}) {
      const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { cwd: ROOT, ...o });
      children.add(child);
      liveChildren.add(child);
      child.once('exit', () => {
        children.delete(child);
        liveChildren.delete(child);
      });
      return child;
    },
    async cut(a, b, how = 'both') {
      for (const r of rulesFor(a, b, how)) {
        const key = `${r.ns} ${r.rule.join(' ')}`;
        if (rules.has(key)) continue;
        await iptables(r.ns, '-I', r.rule);
        rules.set(key, r);
      }
    },
    async heal(a, b, how = 'both') {
      const wanted =
        a === undefined || b === undefined
          ? [...rules.values()]
          : rulesFor(a, b, how).filter((r) => rules.has(`${r.ns} ${r.rule.join(' ')}`));
      for (const r of wanted) {
        await iptables(r.ns, '-D', r.rule);
        rules.delete(`${r.ns} ${r.rule.join(' ')}`);
      }
    },
    setupScript() {
      const root = rootIface === null ? '' : `, root link ${rootIface} = ${rootIp}`;
      return [`# ${runPrefix}*: subnet ${subnetPrefix}.0/24${root}`, ...script].join('\n');
    },
    async remove() {
      if (removed) return;
      for (const c of children) c.kill('SIGKILL');
      const errors: string[] = [];
      // The root end first, by name: deleting its namespace would delete it too,
      // but in the background, so it could still be listed when remove() returns.
      if (rootIface !== null)
        await deleteLink(rootIface).catch((e: Error) => errors.push(`${rootIface}: ${e.message}`));
      // Either order works: deleting either end of a veth pair deletes both.
      for (const name of [...hosts.map((h) => h.ns), bridgeNs]) {
        await deleteNamespace(name).catch((e: Error) => errors.push(`${name}: ${e.message}`));
      }
      if (errors.length > 0) throw new Error(`cannot delete namespaces:\n${errors.join('\n')}`);
      removed = true;
    },
  };
}
