/**
 * Virtual IP: the service address of a VM when its hosts are on different
 * machines of one L2 network (DESIGN.md §4, "Service address").
 *
 * Role: the host that becomes primary assigns the VM's address to one of its
 * interfaces (`ip addr add`) and announces it with gratuitous ARP (`arping
 * -U`), so that neighbours which cached the old primary's MAC address send to
 * the new one at once instead of after their cache entry expires. The host
 * that stops being primary removes the address (`ip addr del`).
 *
 * Invariants:
 * - Adding and removing are idempotent: an address that is already there (or
 *   already gone) counts as success, so a retried takeover never fails on its
 *   own earlier half-done attempt.
 * - Every command runs through execFile with an argument vector (never a
 *   shell string) and a hard time limit, so no input is ever parsed by a shell
 *   and no call can hang.
 * - Expected failures (bad input, missing interface, arping failing) are
 *   returned as values with a message; nothing here throws for them.
 *
 * Needs CAP_NET_ADMIN and CAP_NET_RAW (root), iproute2's `ip` and Debian's
 * iputils-arping (`arping` from iputils; its options differ from the other
 * arping package's). IPv4 only: IPv6 has no ARP, it would need unsolicited
 * neighbour advertisements instead.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';

export type VipResult = { ok: true; detail: string } | { ok: false; message: string };

export interface VipOptions {
  /** The interface that carries the address, such as `eth0`. */
  iface: string;
  /** The IPv4 address, without a prefix length. */
  ip: string;
  /**
   * Prefix length of the address; 32 by default. A /32 is its own subnet, so
   * it is never a "secondary" of the interface's main address, and removing
   * it can never take the main address (or other secondaries) with it.
   */
  prefixLen?: number;
  /**
   * Runs the commands inside this network namespace (`ip netns exec NS …`).
   * Production hosts already run in the namespace they serve from and leave
   * this unset; tests that model several machines with namespaces set it.
   */
  netns?: string;
  /** Time limit for the whole call, in milliseconds. */
  timeoutMs?: number;
}

export interface AddVipOptions extends VipOptions {
  /** Gratuitous ARP packets to send, one a second; 3 by default. */
  arpCount?: number;
}

const PREFIX_LEN_DEFAULT = 32;
const ARP_COUNT_DEFAULT = 3;
/**
 * More announcements than this only delay the caller: arping sends one a
 * second, and neighbours update on the first one they receive.
 */
const ARP_COUNT_MAX = 30;
/** Time limit for one `ip` command, which normally takes milliseconds. */
const IP_TIMEOUT_MS_DEFAULT = 10_000;
/** Command output kept for messages. */
const OUTPUT_CHARS_MAX = 2000;
/** Linux interface names are at most 15 bytes (IFNAMSIZ - 1). */
const IFACE_NAME_CHARS_MAX = 15;

/**
 * Assigns the address to the interface, then announces it with gratuitous
 * ARP. It returns after arping has sent every announcement, which takes about
 * `arpCount` seconds; the first one goes out at once.
 *
 * If the address was assigned but arping failed, the address stays assigned
 * (calling again retries both steps, and removeVip undoes it) and the result
 * is a failure: neighbours may keep sending to the old owner until their ARP
 * cache entries expire.
 */
export async function addVip(opts: AddVipOptions): Promise<VipResult> {
  const arpCount = opts.arpCount ?? ARP_COUNT_DEFAULT;
  // arping takes about arpCount seconds; leave room for the ip command around it.
  const timeoutMs = opts.timeoutMs ?? IP_TIMEOUT_MS_DEFAULT + arpCount * 1000;
  const started = Date.now();
  const assigned = await assignVip({ ...opts, timeoutMs });
  if (!assigned.ok) return assigned;
  const announced = await announceVip({
    ...opts,
    arpCount,
    timeoutMs: Math.max(1, timeoutMs - (Date.now() - started)),
  });
  if (!announced.ok) return { ok: false, message: `addVip: ${assigned.detail}, but ${announced.message}` };
  return { ok: true, detail: `${assigned.detail}, announced with ${arpCount} gratuitous ARP` };
}

/**
 * Assigns the address to the interface (`ip addr add`), without announcing
 * it. A host going live calls this before it binds the address, then
 * announces in the background: binding must not wait the seconds arping takes.
 */
export async function assignVip(opts: VipOptions): Promise<VipResult> {
  const prefixLen = opts.prefixLen ?? PREFIX_LEN_DEFAULT;
  const invalid = checkCommon(opts.iface, opts.ip, prefixLen, opts.netns);
  if (invalid !== null) return { ok: false, message: `addVip: ${invalid}` };
  const deadline = Date.now() + (opts.timeoutMs ?? IP_TIMEOUT_MS_DEFAULT);
  const where = `${opts.ip}/${prefixLen} on ${opts.iface}${nsNote(opts.netns)}`;
  const add = await run(
    inNetns(opts.netns, ['ip', 'addr', 'add', `${opts.ip}/${prefixLen}`, 'dev', opts.iface]),
    deadline,
  );
  if (add.ok) return { ok: true, detail: `${where}: assigned` };
  // Newer iproute2 says "Address already assigned"; older ones print the kernel's EEXIST, "File exists".
  if (/already assigned|File exists/i.test(add.output))
    return { ok: true, detail: `${where}: already assigned` };
  return { ok: false, message: `addVip: cannot assign ${where}: ${add.output}` };
}

/**
 * Announces an assigned address with gratuitous ARP (`arping -U`), so that
 * neighbours which cached another host's MAC address for it send here at
 * once. Resolves after the last announcement, about `arpCount` seconds; the
 * first one goes out at once.
 */
export async function announceVip(opts: AddVipOptions): Promise<VipResult> {
  const arpCount = opts.arpCount ?? ARP_COUNT_DEFAULT;
  const invalid =
    checkCommon(opts.iface, opts.ip, PREFIX_LEN_DEFAULT, opts.netns) ??
    (Number.isInteger(arpCount) && arpCount >= 1 && arpCount <= ARP_COUNT_MAX
      ? null
      : `arpCount must be an integer from 1 to ${ARP_COUNT_MAX}, got ${arpCount}`);
  if (invalid !== null) return { ok: false, message: `announceVip: ${invalid}` };
  const deadline = Date.now() + (opts.timeoutMs ?? IP_TIMEOUT_MS_DEFAULT + arpCount * 1000);
  // -U sends unsolicited requests with the address as both sender and target,
  // which updates neighbours' existing cache entries. In this mode arping
  // stops after -c packets; -w is a second bound in case it ever waits for replies.
  const deadlineS = arpCount + 2;
  const arp = await run(
    inNetns(opts.netns, [
      'arping',
      '-U',
      '-c',
      String(arpCount),
      '-w',
      String(deadlineS),
      '-I',
      opts.iface,
      opts.ip,
    ]),
    deadline,
  );
  if (!arp.ok) return { ok: false, message: `gratuitous ARP for ${opts.ip} failed: ${arp.output}` };
  return { ok: true, detail: `${opts.ip} announced with ${arpCount} gratuitous ARP` };
}

/** Removes the address from the interface; an address that is not there counts as removed. */
export async function removeVip(opts: VipOptions): Promise<VipResult> {
  const prefixLen = opts.prefixLen ?? PREFIX_LEN_DEFAULT;
  const invalid = checkCommon(opts.iface, opts.ip, prefixLen, opts.netns);
  if (invalid !== null) return { ok: false, message: `removeVip: ${invalid}` };
  const deadline = Date.now() + (opts.timeoutMs ?? IP_TIMEOUT_MS_DEFAULT);
  const where = `${opts.ip}/${prefixLen} on ${opts.iface}${nsNote(opts.netns)}`;
  const del = await run(
    inNetns(opts.netns, ['ip', 'addr', 'del', `${opts.ip}/${prefixLen}`, 'dev', opts.iface]),
    deadline,
  );
  if (del.ok) return { ok: true, detail: `${where}: removed` };
  // Newer iproute2 says "Address not found"; older ones print the kernel's EADDRNOTAVAIL,
  // "Cannot assign requested address". A missing interface is not matched: it is a
  // configuration error, not an address that is already gone.
  if (/not found|not assigned|Cannot assign/i.test(del.output))
    return { ok: true, detail: `${where}: already absent` };
  return { ok: false, message: `removeVip: cannot remove ${where}: ${del.output}` };
}

/**
 * Whether the interface carries the address (with any prefix length). A
 * missing interface carries nothing, so the answer is false. It rejects only
 * for arguments that are not an interface name and an IPv4 address, or when
 * `ip` cannot be run or prints something that is not the JSON it documents,
 * since then there is no answer to give.
 */
export async function hasVip(
  iface: string,
  ip: string,
  opts: { netns?: string; timeoutMs?: number } = {},
): Promise<boolean> {
  const invalid = checkCommon(iface, ip, PREFIX_LEN_DEFAULT, opts.netns);
  if (invalid !== null) throw new Error(`hasVip: ${invalid}`);
  const deadline = Date.now() + (opts.timeoutMs ?? IP_TIMEOUT_MS_DEFAULT);
  const show = await run(inNetns(opts.netns, ['ip', '-j', 'addr', 'show', 'dev', iface]), deadline);
  if (!show.ok) {
    if (/does not exist|Cannot find device/i.test(show.output)) return false;
    throw new Error(`hasVip: ip addr show dev ${iface}${nsNote(opts.netns)} failed: ${show.output}`);
  }
  let links: unknown;
  try {
    links = JSON.parse(show.stdout);
  } catch {
    throw new Error(`hasVip: ip -j addr show printed no JSON: ${clip(show.stdout)}`);
  }
  if (!Array.isArray(links)) throw new Error(`hasVip: ip -j addr show printed ${clip(show.stdout)}`);
  return links.some(
    (link: { addr_info?: { family?: string; local?: string }[] }) =>
      Array.isArray(link.addr_info) && link.addr_info.some((a) => a.family === 'inet' && a.local === ip),
  );
}

/** A message for bad arguments, or null. Checked before anything runs, so commands see only sane values. */
function checkCommon(iface: string, ip: string, prefixLen: number, netns: string | undefined): string | null {
  if (!net.isIPv4(ip)) return `ip must be an IPv4 address, got ${JSON.stringify(ip)}`;
  if (!Number.isInteger(prefixLen) || prefixLen < 0 || prefixLen > 32)
    return `prefixLen must be an integer from 0 to 32, got ${prefixLen}`;
  // A leading '-' would be read as an option by ip or arping; '/' and spaces are never in interface names.
  if (
    typeof iface !== 'string' ||
    iface === '' ||
    iface.length > IFACE_NAME_CHARS_MAX ||
    iface.startsWith('-') ||
    /[\s/:]/.test(iface)
  )
    return `iface must be an interface name (1 to ${IFACE_NAME_CHARS_MAX} characters), got ${JSON.stringify(iface)}`;
  if (netns !== undefined && (netns === '' || netns.startsWith('-') || /[\s/]/.test(netns)))
    return `netns must be a namespace name, got ${JSON.stringify(netns)}`;
  return null;
}

function inNetns(netns: string | undefined, argv: string[]): string[] {
  return netns === undefined ? argv : ['ip', 'netns', 'exec', netns, ...argv];
}

function nsNote(netns: string | undefined): string {
  return netns === undefined ? '' : ` in netns ${netns}`;
}

function clip(s: string): string {
  const t = s.trim();
  return t.length <= OUTPUT_CHARS_MAX ? t : `${t.slice(0, OUTPUT_CHARS_MAX)}…`;
}

interface Ran {
  ok: boolean;
  stdout: string;
  /** What to show in a message: stderr and stdout (arping reports some errors on stdout), and why it stopped. */
  output: string;
}

/** Runs argv to completion or until the deadline (then SIGKILL); never rejects. */
function run(argv: string[], deadline: number): Promise<Ran> {
  const [cmd, ...args] = argv;
  const timeoutMs = Math.max(1, deadline - Date.now());
  return new Promise((resolve) => {
    execFile(
      cmd!,
      args,
      { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 1 << 20, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err === null) {
          resolve({ ok: true, stdout, output: clip(`${stderr}\n${stdout}`) });
          return;
        }
        const e = err as NodeJS.ErrnoException & { killed?: boolean; signal?: string | null };
        let why: string;
        if (e.code === 'ENOENT') why = `${cmd} is not installed (not found on PATH)`;
        else if (e.killed === true || e.signal === 'SIGKILL') why = `no answer within ${timeoutMs} ms`;
        else if (typeof e.code === 'number') why = `exit status ${e.code}`;
        else why = e.message;
        const text = clip(`${stderr}\n${stdout}`);
        resolve({
          ok: false,
          stdout,
          output: `${text === '' ? '' : `${text} `}(${argv.join(' ')}: ${why})`,
        });
      },
    );
  });
}

/**
 * The service addresses of the VMs a host runs as primary, when the host has
 * `--vip-interface`. The host claims a VM's address before the VM binds it
 * (at start, at go-live, when a primary continues alone) and releases it when
 * its copy stops. Loopback and wildcard addresses are left alone: they bind
 * without setup, on one machine.
 */
export interface ServiceAddresses {
  /** Assigns `ip` here (so it can be bound) and announces it in the background. */
  claim(ip: string): Promise<VipResult>;
  /** Removes `ip` from here; an address that is not here counts as removed. */
  release(ip: string): Promise<VipResult>;
}

/** Whether an address is one a host must assign before binding it (not loopback, not a wildcard). */
export function needsVip(ip: string): boolean {
  return net.isIPv4(ip) && !ip.startsWith('127.') && ip !== '0.0.0.0';
}

export class InterfaceVips implements ServiceAddresses {
  /**
   * The last operation on each address: operations on one address run in
   * the order they were called, so a stopping copy's release can never land
   * after the claim of the copy that replaced it on this host.
   */
  private readonly tail = new Map<string, Promise<unknown>>();

  constructor(
    private readonly iface: string,
    private readonly log: { info(o: object, msg: string): void; warn(o: object, msg: string): void },
    private readonly arpCount = ARP_COUNT_DEFAULT,
  ) {}

  claim(ip: string): Promise<VipResult> {
    return this.serial(ip, () => this.claimNow(ip));
  }

  release(ip: string): Promise<VipResult> {
    return this.serial(ip, () => this.releaseNow(ip));
  }

  private serial(ip: string, op: () => Promise<VipResult>): Promise<VipResult> {
    const next = (this.tail.get(ip) ?? Promise.resolve()).then(op, op);
    this.tail.set(ip, next);
    void next.then(() => {
      if (this.tail.get(ip) === next) this.tail.delete(ip);
    });
    return next;
  }

  private async claimNow(ip: string): Promise<VipResult> {
    if (!needsVip(ip)) return { ok: true, detail: `${ip} needs no virtual IP` };
    const r = await assignVip({ iface: this.iface, ip });
    if (!r.ok) return r;
    this.log.info({ ip, iface: this.iface }, `service address ${r.detail}`);
    // Not awaited: arping takes arpCount seconds, and the VM must bind now.
    void announceVip({ iface: this.iface, ip, arpCount: this.arpCount }).then((a) => {
      if (!a.ok) this.log.warn({ ip, iface: this.iface }, a.message);
    });
    return r;
  }

  private async releaseNow(ip: string): Promise<VipResult> {
    if (!needsVip(ip)) return { ok: true, detail: `${ip} needs no virtual IP` };
    const r = await removeVip({ iface: this.iface, ip });
    if (r.ok) this.log.info({ ip, iface: this.iface }, `service address ${r.detail}`);
    else this.log.warn({ ip, iface: this.iface }, r.message);
    return r;
  }
}
