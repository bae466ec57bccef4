/**
 * An L2 network of N "machines" built from network namespaces, for tests of
 * what spans machines: virtual IPs moved with gratuitous ARP, partitions
 * between a primary and its backup.
 *
 * Layout: one namespace holds a Linux bridge `br0`; each host namespace has
 * an `eth0` whose veth peer (`vN`) sits in the bridge namespace, attached to
 * br0. Host i has 10.X.Y.(10+i)/24, and every namespace has loopback up.
 * Nothing is created in the root namespace: the veth pairs are created with
 * both ends already inside their namespaces, so interface names never clash
 * between runs and a killed run leaves no interface behind in the root
 * namespace. The subnet 10.X.Y is random per run only so that logs of
 * different runs are told apart; two runs may pick the same one safely, since
 * each network lives entirely inside its own namespaces.
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
 * creation.
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
  'addresses with `ip -n H addr add 10.X.Y.Z/24 dev eth0`, links up; `ip netns del NAME` afterwards';

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
   * host, or any address such as a VIP), with rules in a's namespace only:
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

const liveNamespaces = new Set<string>();
const liveChildren = new Set<ChildProcess>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.once('exit', () => {
    for (const c of liveChildren) c.kill('SIGKILL');
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

/** Deletes namespaces that earlier test processes created and could not delete (they were killed). */
async function sweepStale(): Promise<void> {
  const { stdout } = await execFileP('ip', ['netns', 'list'], { timeout: COMMAND_TIMEOUT_MS });
  for (const line of stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = STALE_NAME.exec(name);
    if (m === null || Number(m[1]) === process.pid || alive(Number(m[1]))) continue;
    await deleteNamespace(name).catch(() => {});
  }
}

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
 * Creates the bridge and `hosts` host namespaces, wired and addressed. On any
 * failure it deletes what it created and throws with the commands it ran.
 */
export async function createBridgeNet(opts: { hosts: number; subnet?: string }): Promise<BridgeNet> {
  if (!Number.isInteger(opts.hosts) || opts.hosts < 1 || opts.hosts > HOSTS_MAX)
    throw new Error(`hosts must be an integer from 1 to ${HOSTS_MAX}, got ${opts.hosts}`);
  hookExit();
  await sweepStale();

  // 200..250 keeps clear of the low 10.x ranges that real networks often use.
  const subnetPrefix =
    opts.subnet !== undefined ? parseSubnet(opts.subnet) : `10.${randomInt(200, 251)}.${randomInt(0, 256)}`;
  const runPrefix = `${PREFIX}${process.pid}-${randomBytes(4).toString('hex')}-`;
  const bridgeNs = `${runPrefix}br`;
  const hosts: BridgeHost[] = Array.from({ length: opts.hosts }, (_, i) => ({
    name: `h${i}`,
    ns: `${runPrefix}h${i}`,
    iface: 'eth0',
    ip: `${subnetPrefix}.${HOST_OCTET_FIRST + i}`,
  }));
  const script: string[] = [];
  const created: string[] = [];

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

  try {
    await addNamespace(bridgeNs);
    await ipCmd(['-n', bridgeNs, 'link', 'add', 'br0', 'type', 'bridge']);
    await ipCmd(['-n', bridgeNs, 'link', 'set', 'br0', 'up']);
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
    for (const name of created.reverse()) await deleteNamespace(name).catch(() => {});
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
      return [`# ${runPrefix}*: subnet ${subnetPrefix}.0/24`, ...script].join('\n');
    },
    async remove() {
      if (removed) return;
      for (const c of children) c.kill('SIGKILL');
      // Either order works: deleting either end of a veth pair deletes both.
      const errors: string[] = [];
      for (const name of [...hosts.map((h) => h.ns), bridgeNs]) {
        await deleteNamespace(name).catch((e: Error) => errors.push(`${name}: ${e.message}`));
      }
      if (errors.length > 0) throw new Error(`cannot delete namespaces:\n${errors.join('\n')}`);
      removed = true;
    },
  };
}
