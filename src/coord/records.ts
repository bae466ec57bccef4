/**
 * The records the cluster keeps in the coordinator, and where.
 *
 * Role: one place that names every key and the shape of its value, so the
 * host daemon, the CLI and the docs agree (docs/CLUSTER.md draws the layout).
 *
 * Invariants:
 * - Every record carries `v: 1`, its format version; a reader refuses others.
 * - Desired state (`vms/<name>/spec`) is written only through a compare on
 *   its version; placement (`vms/<name>/placement`) is the VM's generation
 *   and changes only by test-and-set; a claim and a host record have one
 *   writer each (the host named in them) and use last-writer-wins.
 * - Secrets (`cluster`) are readable by anyone who can read the coordinator:
 *   access to the coordinator is the trust boundary.
 */

export const RECORD_VERSION = 1;

export const KEY_CLUSTER = 'cluster';
export const hostKey = (name: string): string => `hosts/${name}`;
export const HOSTS_PREFIX = 'hosts';
export const VMS_PREFIX = 'vms';
export const vmSpecKey = (name: string): string => `vms/${name}/spec`;
export const vmPlacementKey = (name: string): string => `vms/${name}/placement`;
export const vmClaimKey = (name: string): string => `vms/${name}/claim`;
export const vmStatusKey = (name: string): string => `vms/${name}/status`;

/** Names of hosts and VMs: what a key segment allows, and short. */
export const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** The cluster's identity and shared secrets, created by the first host to start. */
export interface ClusterRecord {
  v: 1;
  /** Random 16-byte hex id; frames name it so two clusters never mix. */
  clusterId: string;
  /** 32 random bytes, hex: the HMAC key of every host-to-host frame. */
  secretHex: string;
  /** 32 random bytes, hex: the API bearer token. */
  tokenHex: string;
}

/** A host's registration; written by the host itself at start and when it leaves. */
export interface HostRecord {
  v: 1;
  name: string;
  /** Random per process start: frames from an older incarnation are replays. */
  incarnation: string;
  pid: number;
  /** The process start time in clock ticks since boot (/proc/PID/stat field 22): a reused pid has another. */
  pidStartTicks: number;
  /** /proc/sys/kernel/random/boot_id: the local fence agent acts only on its own machine. */
  bootId: string;
  /** The host API, "HOST:PORT". */
  api: string;
  /** The heartbeat endpoint (UDP), "HOST:PORT". */
  peer: string;
  /** `--address`, or null. */
  address: string | null;
  nodeVersion: string;
  arch: string;
  /** 'up' while it runs; 'left' after a clean stop (peers then do not count it as failed). */
  state: 'up' | 'left';
  /** Wall-clock ms of the start, for people only; nothing decides on it. */
  startedAtMs: number;
  /** The FT logging channel's listener, "HOST:PORT" (backups connect to it); absent before FT. */
  ft?: string;
  /** How a host taking over from this one fences it (src/host/fence.ts); absent means local. */
  fence?: { agent: 'local' } | { agent: 'command'; command: string } | { agent: 'vip' };
  /**
   * `--vip-interface`: the interface this host puts its VMs' service
   * addresses on, and the network namespace it runs in (by `ip netns` name,
   * null for the initial one), so a `vip` fence agent can take them away.
   */
  vip?: { iface: string; netns: string | null };
}

export type DesiredState = 'running' | 'stopped';

/** What the user asked for. */
export interface VmSpec {
  v: 1;
  name: string;
  /** Absolute path the module was read from at creation; hosts find it by `wasmSha256` (src/host/modules.ts). */
  wasmPath: string;
  wasmSha256: string;
  /** The service address, "IP:PORT". */
  listen: string;
  /** Absolute path of the initial disk image (a folder), or null. */
  disk: string | null;
  env: string[];
  args: string[];
  memoryMaxMib: number;
  /** The wish for fault tolerance; `lockstep vm ft NAME on|off` changes it on a running VM. */
  ft: boolean;
  desired: DesiredState;
  /**
   * A live migration asked for (`lockstep vm migrate`): move the primary to
   * `to`. It applies only while the placement is at `generation`: the
   * handover, or any failover meanwhile, moves the generation on and ends it.
   */
  migrate?: { to: string; generation: number } | null;
}

/** Where the VM runs. Its version is the VM's generation: every change is a test-and-set. */
export interface VmPlacement {
  v: 1;
  /** Counts placements; a takeover moves it on by one. */
  generation: number;
  primary: string | null;
  backup: string | null;
  /** Written by hosts before live clones (the disk as at the log's first event); ignored now. */
  ftBase?: string | null;
  /**
   * A handover (migration, test failover): the incarnation of the backup the
   * writer saw protected at the previous generation. That backup may go live
   * at once, without waiting to read a status record saying so.
   */
  caughtUp?: string;
}

/** The renewable claim of the host running an unprotected VM. */
export interface VmClaim {
  v: 1;
  holder: string;
  incarnation: string;
  generation: number;
  /** Moves on at every renewal; observers judge expiry by watching it stand still. */
  counter: number;
  /** The holder's own promise: it holds outputs if it has not renewed within this many ms. */
  ttlMs: number;
}

export type VmRunState = 'stopped' | 'starting' | 'running' | 'failed';

/** The last state a host reported for a VM it runs, for readers that cannot reach it. */
export interface VmStatusRecord {
  v: 1;
  host: string;
  generation: number;
  state: VmRunState;
  /** Why it failed or stopped, for people. */
  message: string | null;
  exitCode: number | null;
  /** FT: the primary's live view of its protection (never the desired state). */
  ft?: {
    protection: 'unprotected' | 'reprotecting' | 'syncing' | 'protected';
    reason: string | null;
    lagMs: number | null;
    /** Events and log bytes written and not yet acknowledged (absent in records of older hosts). */
    lagEvents?: number | null;
    lagBytes?: number | null;
    /** Outputs written and not yet released (a gauge; tests kill the primary only while it is above 0). */
    heldOutputs: number;
    /** The backup this protection speaks of (absent in records of older hosts). */
    backup?: string | null;
    backupIncarnation?: string | null;
    /**
     * The log at this generation (bytes, host calls) and the log file's size,
     * a clone's progress, and when these were measured (epoch ms); absent in
     * records of older hosts.
     */
    logBytes?: number;
    logFileBytes?: number;
    logEvents?: number;
    clone?: { doneBytes: number; totalBytes: number } | null;
    sampledAtMs?: number;
  };
}
