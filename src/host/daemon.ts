/**
 * HostDaemon: one Lockstep host, the I/O shell around the cluster's pure logic.
 *
 * Role: wire the coordinator, the heartbeat transport, the membership state
 * machine, the reconciler and the VM core together, and serve the host API.
 * Decisions are made by pure code (src/cluster/membership.ts, reconcile.ts);
 * this module gathers their inputs and carries out their actions.
 *
 * Loops (each runs one pass at a time, never overlapping itself):
 * - membership tick (heartbeatIntervalMs / 2): heartbeats out, failure
 *   detection, and the claim-hold check;
 * - registry refresh (registryRefreshMs): the hosts' records, so new peers are
 *   heartbeated and incarnations known to the replay guard;
 * - reconcile (reconcileIntervalMs, and at once after a change);
 * - claim renewal (claimRenewMs) for every VM this host runs.
 *
 * Invariants:
 * - Nothing that needs arbitration happens without the coordinator: a pass
 *   whose reads fail does nothing, and a VM is started only after this host
 *   won its placement and wrote its claim.
 * - A VM whose claim has not been renewed for claimTtlMs − claimHoldMarginMs
 *   has every network output held until a renewal succeeds again; if the
 *   renewal finds another generation in place, the VM is stopped and what it
 *   held is dropped.
 * - Every host-to-host frame is authenticated with the cluster secret and
 *   checked against replays; every rejection is counted and logged.
 * - A takeover fences the old host before the VM starts here.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rm, stat, open as openFile } from 'node:fs/promises';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { Coordinator, Versioned } from '../coord/coordinator.js';
import { openCoordinator } from '../coord/open.js';
import { ModuleStore, sha256Of } from './modules.js';
import {
  HOSTS_PREFIX,
  KEY_CLUSTER,
  NAME_RE,
  VMS_PREFIX,
  hostKey,
  vmClaimKey,
  vmPlacementKey,
  vmSpecKey,
  vmStatusKey,
  type ClusterRecord,
  type HostRecord,
  type VmClaim,
  type VmPlacement,
  type VmSpec,
  type VmStatusRecord,
} from '../coord/records.js';
import type {
  ApiResult,
  CloneAnswer,
  CloneRequest,
  MigrateRequest,
  SetFtRequest,
  CreateVmRequest,
  HostBackend,
  HostInfo,
  HostStatus,
  VmStatus,
  ClusterEvent,
  EventScope,
  EventsPage,
  KillHostAnswer,
  ModuleInfo,
} from '../api/backend.js';
import { startApiServer } from '../api/server.js';
import { ApiClient } from '../api/client.js';
import {
  Membership,
  tickIntervalMs,
  type HeartbeatMsg,
  type MembershipAction,
} from '../cluster/membership.js';
import {
  FrameKind,
  HEARTBEAT_CHANNEL,
  ReplayGuard,
  decodeFrame,
  decodeHeartbeat,
  encodeFrame,
  encodeHeartbeat,
} from '../cluster/frame.js';
import { PeerUdp, parseHostPort } from '../io/peer-udp.js';
import {
  chooseHost,
  decide,
  type ClaimObservation,
  type PeerView,
  type ReconcileAction,
} from '../cluster/reconcile.js';
import { FT_OFF_REASON, ftReason, vmView } from '../cluster/vm-view.js';
import { LocalVm, vmDataDir, type FtServices, type LocalRole } from './local-vm.js';
import { FtLinkServer } from '../io/ft-link.js';
import { liveness, netnsName, selfIdentity } from './proc.js';
import { fenceHost, type FenceSpec } from './fence.js';
import { InterfaceVips, type ServiceAddresses } from './vip.js';
import type { HostTimings } from './timings.js';
import { MEMORY_MAX_MIB_DEFAULT, MEMORY_MAX_MIB_LIMIT } from '../vm/vm.js';
import { parseListen } from '../io/net-device.js';
import { HostEvents, PeerCursors, type EventInput } from './events.js';
import { HostMetrics, type VmCopyFigures } from './metrics.js';

export interface HostOptions {
  name: string;
  dataDir: string;
  coordinator: string;
  /** The host's own IP for heartbeats (and, later, the logging channel); loopback when null. */
  address: string | null;
  api: { host: string; port: number };
  timings: HostTimings;
  logger: Logger;
  /** Testing only: use this secret instead of the cluster's (a host that does not know the secret). */
  secretOverrideHex?: string | null;
  /** FT: above this replay lag (ms) a primary is slowed at its host calls (default 500). */
  ftLagBoundMs?: number;
  /** TESTING ONLY: delay every FT frame this host receives as a backup (widens windows). */
  ftLinkDelayMs?: number;
  cacheDir?: string;
  /** Monotonic milliseconds. */
  nowMs?: () => number;
  /** The wall clock (epoch ms) stamped on events and live figures; Date.now by default. */
  wallMs?: () => number;
  /** How other hosts fence this one; local by default. */
  fence?: FenceSpec;
  /**
   * The interface this host puts its VMs' service addresses on (virtual IPs,
   * moved with `ip addr` and gratuitous ARP); null: addresses are bound as
   * they are (loopback addresses on one machine).
   */
  vipInterface?: string | null;
  /**
   * TESTING ONLY, a planted bug: "skip the generation compare". An FT member
   * that loses its partner acts on generation N+1 at once, without the
   * test-and-set, and no copy of this host ever stops because the coordinator
   * names a newer generation. The partition and pause suites must catch it.
   */
  plantSkipGenerationCompare?: boolean;
  /**
   * TESTING ONLY: wraps the coordinator this host opened, so a test can widen
   * the window between two of its writes (see the create-order test).
   */
  wrapCoordinator?: (c: Coordinator) => Coordinator;
}

export type HostStartError = { code: 'usage' | 'coordinator' | 'conflict' | 'io'; message: string };

/** Rejected frames are logged at most this often per reason (they are always counted). */
/** How long a clone request waits for this host to offer the VM to the asking backup. */
const CLONE_OFFER_WAIT_MS = 3000;
/**
 * How long a member dropped from a placement is not named backup again: more
 * than the default failure detection (2.5 s), so a crashed host is judged
 * down first; short enough that a host that was only cut off briefly is a
 * candidate again soon.
 */
const AVOID_DROPPED_BACKUP_MS = 10_000;
/** How long shutdown waits for its VMs to stop before it leaves the cluster anyway. */
const SHUTDOWN_VM_WAIT_MS = 10_000;
/** One peer's time to send a module (at most 64 MiB) to a host that lacks it. */
const MODULE_FETCH_TIMEOUT_MS = 15_000;
/** How often the module store is cleared of modules no VM uses. */
const MODULE_PRUNE_MS = 10 * 60 * 1000;
/** How often each peer's new events are pulled into this host's merged timeline. */
const EVENTS_PULL_MS = 500;
/** How often the log is sampled for the bandwidth metric. */
const METRICS_SAMPLE_MS = 1000;
/** "Simulate host failure" of the answering host itself: the answer leaves before the process dies. */
const SELF_KILL_DELAY_MS = 200;
const REJECT_LOG_INTERVAL_MS = 5000;
/** An FT backup that failed to start or attach is tried again after this long. */
const BACKUP_RETRY_MS = 1000;
/**
 * How long a restarted primary host waits for its VM's backup to take over
 * before it starts the VM from its own disk. A backup with a live replica
 * wins within the failure detection time; one that has not by then holds no
 * replica (its host restarted too), and waiting longer would wait forever.
 */
const FT_BACKUP_TAKEOVER_GRACE_MS = 10_000;
/** Frames from unknown incarnations make the host re-read the registry at most this often. */
const REFRESH_EARLY_MIN_MS = 500;
/** Sources remembered for rate-limiting rejection logs; beyond this the memory is reset. */
const REJECT_LOG_SOURCES_MAX = 1024;

interface ClaimSeen {
  key: string;
  sinceMs: number;
  claim: VmClaim;
}

export class HostDaemon implements HostBackend {
  private readonly membership: Membership;
  private readonly guard = new ReplayGuard();
  private hostRecords = new Map<string, HostRecord>();
  private readonly localVms = new Map<string, LocalVm>();
  /** VMs this host won by takeover and must fence before starting: vm → host to fence. */
  private readonly pendingFence = new Map<string, string>();
  private readonly claimSeen = new Map<string, ClaimSeen>();
  /** The placement version last read per VM, and since when (monotonic ms) it has been that. */
  private readonly placementSeen = new Map<string, { version: string; sinceMs: number }>();
  private readonly claimCounter = new Map<string, number>();
  /** Start time (monotonic ms) of the last successful claim renewal, per local VM. */
  private readonly claimRenewedAtMs = new Map<string, number>();
  private readonly outputsHeld = new Set<string>();
  private readonly rejected = new Map<string, { count: number; loggedAtMs: number }>();
  private readonly rejectLoggedAtMs = new Map<string, number>();
  private heartbeatSeq = 0;
  private readonly timers: NodeJS.Timeout[] = [];
  private reconcileRunning = false;
  private reconcileAgain = false;
  private renewRunning = false;
  private stopping = false;
  private apiAddress = '';
  private apiClose: (() => Promise<void>) | null = null;
  private ftServer: FtLinkServer | null = null;
  private readonly backupStartAtMs = new Map<string, number>();
  private ftServices: FtServices | null = null;
  private readonly addresses: ServiceAddresses | null;
  /** Since when (monotonic ms) this restarted host has waited for a VM's backup to take over. */
  private readonly backupTakeoverWaitSinceMs = new Map<string, number>();
  private readonly incarnation = randomBytes(8).toString('hex');
  /** This machine's boot id: hosts that share it are on this machine ("local"). */
  private readonly bootId = selfIdentity().bootId;
  private readonly nowMs: () => number;
  private readonly wallMs: () => number;
  private readonly log: Logger;
  /** This host's events and the cluster's as merged here (src/host/events.ts). */
  private readonly timeline: HostEvents;
  private readonly peerEventCursors = new PeerCursors();
  private eventPullRunning = false;
  private readonly metricsHub: HostMetrics;
  /** The protection each local primary was last seen in, so changes become events. */
  private readonly protectionSeen = new Map<string, string>();
  /** Members this host dropped from a placement (took over from, or lost as backup), and when. */
  private readonly droppedMembersAtMs = new Map<string, number>();

  /**
   * The hosts not to name as a new backup now: those dropped within
   * AVOID_DROPPED_BACKUP_MS, unless they have registered again since (a
   * restarted host is a fresh candidate). After the window, the failure
   * detector's judgement stands alone.
   */
  private backupsToAvoid(now: number): ReadonlySet<string> {
    const out = new Set<string>();
    for (const [h, at] of this.droppedMembersAtMs) {
      const rec = this.hostRecords.get(h);
      const restarted = rec !== undefined && rec.startedAtMs > this.wallMs() - (now - at);
      if (now - at > AVOID_DROPPED_BACKUP_MS || restarted) this.droppedMembersAtMs.delete(h);
      else out.add(h);
    }
    return out;
  }

  /** Whether each VM's spec asks for FT, as of the last read (for metrics). */
  private ftWanted = new Map<string, boolean>();
  /** The modules the VMs' specs name, as of the last read (the store keeps them); null before one. */
  private modulesInUse: Set<string> | null = null;
  /** This host's module store (src/host/modules.ts). */
  private readonly modules: ModuleStore;

  private constructor(
    private readonly opts: HostOptions,
    private readonly coord: Coordinator,
    private readonly cluster: ClusterRecord,
    private readonly secret: Buffer,
    private readonly udp: PeerUdp,
  ) {
    this.nowMs = opts.nowMs ?? (() => performance.now());
    this.wallMs = opts.wallMs ?? (() => Date.now());
    this.log = opts.logger;
    this.timeline = new HostEvents(opts.name, this.incarnation, this.wallMs);
    this.metricsHub = new HostMetrics(
      opts.name,
      {
        vms: () => this.vmFigures(),
        peers: () =>
          this.membership.peers().map((p) => ({ name: p.name, state: p.state, rttMsMedian: p.rttMsMedian })),
      },
      this.nowMs,
    );
    this.membership = new Membership({ self: opts.name, ...opts.timings.membership });
    this.addresses =
      opts.vipInterface != null
        ? new InterfaceVips(opts.vipInterface, this.log.child({ part: 'vip' }))
        : null;
    this.modules = new ModuleStore({
      dir: path.join(opts.dataDir, 'modules'),
      tmpSuffix: this.incarnation,
      // Up peers first; a suspect one may still answer.
      peers: () => {
        const view = this.hostView();
        const ranked = [...this.hostRecords.values()]
          .filter(
            (h) => h.name !== opts.name && (view.get(h.name) === 'up' || view.get(h.name) === 'suspect'),
          )
          .sort((a, b) => Number(view.get(a.name) !== 'up') - Number(view.get(b.name) !== 'up'));
        return ranked.map((h) => ({ name: h.name, api: h.api }));
      },
      fetchFromPeer: async (api, sha256) => {
        const client = new ApiClient({
          endpoints: [api],
          token: this.cluster.tokenHex,
          timeoutMs: MODULE_FETCH_TIMEOUT_MS,
        });
        const r = await client.readModule(sha256);
        if (!r.ok) return { ok: false, message: r.error.message };
        this.log.info(
          { sha256, from: api, bytes: r.value.byteLength },
          `fetched module ${sha256.slice(0, 12)}… (${r.value.byteLength} bytes) from ${api}`,
        );
        return { ok: true, bytes: r.value };
      },
    });
  }

  static async start(
    opts: HostOptions,
  ): Promise<{ ok: true; host: HostDaemon } | { ok: false; error: HostStartError }> {
    if (!NAME_RE.test(opts.name))
      return fail(
        'usage',
        `bad host name ${JSON.stringify(opts.name)}: use a-z, 0-9, '-' and '_' (at most 63)`,
      );
    if (opts.fence?.agent === 'vip' && (opts.vipInterface ?? null) === null)
      return fail(
        'usage',
        '--fence vip needs --vip-interface: the agent removes addresses from that interface',
      );
    if (opts.vipInterface != null && !existsSync(`/sys/class/net/${opts.vipInterface}`))
      return fail('usage', `--vip-interface ${opts.vipInterface}: no such network interface here`);
    try {
      mkdirSync(opts.dataDir, { recursive: true });
    } catch (e) {
      return fail('io', `cannot create the data folder ${opts.dataDir}: ${(e as Error).message}`);
    }
    const opened = await openCoordinator(opts.coordinator, { opTimeoutMs: opts.timings.coordOpTimeoutMs });
    if (!opened.ok) return fail('coordinator', `coordinator ${opts.coordinator}: ${opened.error.message}`);
    const coord = opts.wrapCoordinator ? opts.wrapCoordinator(opened.value) : opened.value;
    const closeOnFail = async <T>(r: T): Promise<T> => {
      await coord.close();
      return r;
    };
    const cluster = await ensureCluster(coord);
    if (!cluster.ok) return closeOnFail(fail('coordinator', cluster.message));
    // A second process under the same name would fight the first for its VMs.
    const existing = await coord.get<HostRecord>(hostKey(opts.name));
    if (!existing.ok) return closeOnFail(fail('coordinator', `coordinator: ${existing.error.message}`));
    if (existing.value !== null && existing.value.value.state === 'up') {
      const rec = existing.value.value;
      if (liveness({ pid: rec.pid, startTicks: rec.pidStartTicks, bootId: rec.bootId }) === 'alive')
        return closeOnFail(fail('conflict', `host ${opts.name} already runs as pid ${rec.pid}`));
    }
    const secret = Buffer.from(opts.secretOverrideHex ?? cluster.value.secretHex, 'hex');
    let udp: PeerUdp;
    try {
      udp = await PeerUdp.bind(opts.address ?? '127.0.0.1', 0);
    } catch (e) {
      return closeOnFail(
        fail(
          'io',
          `cannot bind the heartbeat port on ${opts.address ?? '127.0.0.1'}: ${(e as Error).message}`,
        ),
      );
    }
    const host = new HostDaemon(opts, coord, cluster.value, secret, udp);
    const started = await host.begin();
    if (!started.ok) {
      await host.shutdown();
      return { ok: false, error: started.error };
    }
    return { ok: true, host };
  }

  private async begin(): Promise<{ ok: true } | { ok: false; error: HostStartError }> {
    this.udp.onDatagram((buf, rinfo) => this.onDatagram(buf, `${rinfo.address}:${rinfo.port}`));
    try {
      const api = await startApiServer(this, this.opts.api, { logger: this.log.child({ part: 'api' }) });
      this.apiAddress = `${api.address.host}:${api.address.port}`;
      this.apiClose = api.close;
    } catch (e) {
      return fail(
        'io',
        `cannot serve the API on ${this.opts.api.host}:${this.opts.api.port}: ${(e as Error).message}`,
      );
    }
    const ftHost = this.opts.address ?? '127.0.0.1';
    try {
      this.ftServer = await FtLinkServer.listen(
        { host: ftHost, port: 0 },
        {
          key: this.secret,
          clusterId: this.cluster.clusterId,
          self: this.opts.name,
          selfIncarnation: this.incarnation,
          log: this.log.child({ part: 'ft' }),
        },
      );
    } catch (e) {
      return fail('io', `cannot listen for FT channels on ${ftHost}: ${(e as Error).message}`);
    }
    this.ftServices = {
      server: this.ftServer,
      key: this.secret,
      clusterId: this.cluster.clusterId,
      self: this.opts.name,
      incarnation: this.incarnation,
      log: this.log.child({ part: 'ft' }),
      lagBoundMs: this.opts.ftLagBoundMs ?? 500,
      apiToken: this.cluster.tokenHex,
      linkDelayMs: this.opts.ftLinkDelayMs ?? 0,
      changed: () => {
        this.noteLostPartners();
        // Protection changes go out at once: a backup may go live only once it is reported caught up.
        for (const [name, l] of this.localVms) {
          if (l.roleName === 'primary' && l.state === 'running' && l.ftStatus() !== null)
            void this.writeStatus(name, l.generation, 'running', null, null);
        }
        this.reconcileSoon();
      },
    };
    const registered = await this.register('up');
    if (!registered.ok)
      return fail('coordinator', `cannot register in the coordinator: ${registered.message}`);
    await this.refreshRegistry();
    const t = this.opts.timings;
    this.every(Math.max(5, tickIntervalMs(t.membership)), () => this.tick());
    this.every(t.registryRefreshMs, () => void this.refreshRegistry());
    this.every(t.reconcileIntervalMs, () => this.reconcileSoon());
    this.every(t.claimRenewMs, () => void this.renewClaims());
    this.every(METRICS_SAMPLE_MS, () => this.metricsHub.sample());
    this.every(EVENTS_PULL_MS, () => void this.pullPeerEvents());
    this.every(MODULE_PRUNE_MS, () => void this.pruneModules());
    this.tick();
    this.reconcileSoon();
    return { ok: true };
  }

  /** Deletes stored modules no VM names any more (after MODULE_UNUSED_KEEP_MS; see modules.ts). */
  private async pruneModules(): Promise<void> {
    if (this.modulesInUse === null) return;
    const n = await this.modules.prune(this.modulesInUse, this.wallMs());
    if (n > 0) this.log.info({ removed: n }, `removed ${n} module(s) no VM uses from the store`);
  }

  private every(ms: number, f: () => void): void {
    this.timers.push(setInterval(f, ms));
  }

  info(): HostInfo {
    return {
      name: this.opts.name,
      pid: process.pid,
      api: this.apiAddress,
      clusterId: this.cluster.clusterId,
    };
  }

  token(): string {
    return this.cluster.tokenHex;
  }

  isPrimaryFor(vm: string): boolean {
    const l = this.localVms.get(vm);
    return l !== undefined && l.roleName === 'primary' && l.state === 'running' && !this.outputsHeld.has(vm);
  }

  /** Frames rejected so far, by reason (for tests and people). */
  rejectedFrames(): Record<string, number> {
    return Object.fromEntries([...this.rejected].map(([k, v]) => [k, v.count]));
  }

  // ---- registration and membership ----

  private async register(state: 'up' | 'left'): Promise<{ ok: true } | { ok: false; message: string }> {
    const me = selfIdentity();
    const udpAddr = this.udp.address();
    const rec: HostRecord = {
      v: 1,
      name: this.opts.name,
      incarnation: this.incarnation,
      pid: me.pid,
      pidStartTicks: me.startTicks,
      bootId: me.bootId,
      api: this.apiAddress,
      peer: `${udpAddr.host}:${udpAddr.port}`,
      address: this.opts.address,
      nodeVersion: process.version,
      arch: process.arch,
      state,
      startedAtMs: Date.now(),
      fence: this.opts.fence ?? { agent: 'local' },
      ...(this.opts.vipInterface != null
        ? { vip: { iface: this.opts.vipInterface, netns: netnsName() } }
        : {}),
      ...(this.ftServer !== null
        ? { ft: `${this.ftServer.address().host}:${this.ftServer.address().port}` }
        : {}),
    };
    const r = await this.coord.put(hostKey(this.opts.name), rec, 'any');
    return r.ok ? { ok: true } : { ok: false, message: r.error.message };
  }

  private async refreshRegistry(): Promise<void> {
    const r = await this.coord.list<HostRecord>(HOSTS_PREFIX);
    if (!r.ok) return;
    const next = new Map<string, HostRecord>();
    for (const { value } of r.value) if (value?.v === 1) next.set(value.name, value);
    this.hostRecords = next;
    const peers = [...next.values()].filter((h) => h.name !== this.opts.name);
    this.guard.syncRegistry(peers, this.opts.name);
    this.apply(
      this.membership.step({
        type: 'registry',
        nowMs: this.nowMs(),
        hosts: peers.map((h) => ({ name: h.name, incarnation: h.incarnation, peer: h.peer, state: h.state })),
      }),
    );
  }

  private lastEarlyRefreshMs = -Infinity;

  /** Re-reads the registry now, at most once per REFRESH_EARLY_MIN_MS. */
  private refreshRegistrySoon(): void {
    const now = this.nowMs();
    if (now - this.lastEarlyRefreshMs < REFRESH_EARLY_MIN_MS) return;
    this.lastEarlyRefreshMs = now;
    void this.refreshRegistry();
  }

  private tick(): void {
    if (this.stopping) return;
    this.apply(this.membership.step({ type: 'tick', nowMs: this.nowMs() }));
    this.checkClaimHolds();
    this.noteProtectionChanges();
  }

  /** Logs `input.message` at `level` (with `fields`) and keeps it as an event of the timeline. */
  private tell(level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, input: EventInput): void {
    const e = this.timeline.record(input);
    this.log[level](
      {
        event: e.kind,
        ...(e.vm !== null ? { vm: e.vm } : {}),
        ...(e.generation !== null ? { generation: e.generation } : {}),
        ...(e.peer !== null ? { peer: e.peer } : {}),
        ...(e.durationMs !== null ? { durationMs: e.durationMs } : {}),
        ...fields,
      },
      e.message,
    );
  }

  /** Every change of a local primary's live protection becomes an event (read on each tick). */
  private noteProtectionChanges(): void {
    for (const [name, l] of this.localVms) {
      const ft = l.roleName === 'primary' && l.state === 'running' ? l.ftStatus() : null;
      if (ft === null) {
        this.protectionSeen.delete(name);
        continue;
      }
      const key = `${l.generation}/${ft.protection}`;
      const prev = this.protectionSeen.get(name);
      if (prev === key) continue;
      this.protectionSeen.set(name, key);
      // The first sight of a copy at a generation that is merely unprotected says nothing new.
      if (prev === undefined && ft.protection === 'unprotected') continue;
      const what =
        ft.protection === 'protected'
          ? `protected (backup ${ft.backup ?? '?'} has replayed everything)`
          : ft.protection === 'syncing'
            ? `catching up (backup ${ft.backup ?? '?'} attached)`
            : ft.protection === 'reprotecting'
              ? `re-protecting: ${ft.reason ?? 'a backup is being made'}`
              : `unprotected: ${ft.reason ?? 'no backup'}`;
      this.tell(
        ft.protection === 'unprotected' ? 'warn' : 'info',
        {},
        {
          kind: 'protection',
          vm: name,
          generation: l.generation,
          peer: ft.backup,
          message: `${name} is ${what}`,
        },
      );
    }
  }

  /** A local copy stopped or failed: the timeline says so, naming a backup's role. */
  private tellEnded(name: string, l: LocalVm, state: 'stopped' | 'failed', why: string | null): void {
    const which = l.roleName === 'backup' ? `${name} (backup)` : name;
    this.tell(
      'info',
      { state },
      {
        kind: state === 'failed' ? 'vm-failed' : 'vm-stopped',
        vm: name,
        generation: l.generation,
        message: `${which} ${state} on ${this.opts.name}${why ? `: ${why}` : ''}`,
      },
    );
  }

  /** FT copies whose partner loss has been told, by "VM/generation/role". */
  private readonly lossesTold = new Set<string>();

  /**
   * An FT copy that lost its partner (the channel closed, or the backup never
   * attached) is the first sign of a failure, before any heartbeat is missed:
   * it goes on the timeline once per copy and generation.
   */
  private noteLostPartners(): void {
    for (const [name, l] of this.localVms) {
      const lost = l.roleName === 'backup' ? l.primaryLost : l.backupLost;
      const key = `${name}/${l.generation}/${l.roleName}`;
      if (!lost) continue;
      if (this.lossesTold.has(key)) continue;
      this.lossesTold.add(key);
      if (this.lossesTold.size > 4096) this.lossesTold.delete(this.lossesTold.values().next().value!);
      const peer = l.roleName === 'backup' ? l.primaryHost : l.lostBackup;
      this.tell(
        'warn',
        {},
        {
          kind: 'ft-link-lost',
          vm: name,
          generation: l.generation,
          peer,
          message:
            l.roleName === 'backup'
              ? `${name}: the backup on ${this.opts.name} lost its primary ${peer ?? '?'} (the FT channel closed)`
              : `${name}: the primary on ${this.opts.name} lost its backup ${peer ?? '?'} (${l.ftStatus()?.reason ?? 'the FT channel closed'})`,
        },
      );
    }
  }

  /** What /metrics reports of the local VM copies. */
  private vmFigures(): VmCopyFigures[] {
    const out: VmCopyFigures[] = [];
    for (const [name, l] of this.localVms) {
      const ft = l.roleName === 'primary' ? l.ftStatus() : null;
      out.push({
        name,
        role: l.roleName,
        state: l.state,
        generation: l.generation,
        protection:
          l.roleName === 'backup'
            ? null
            : this.ftWanted.get(name) === false
              ? 'off'
              : (ft?.protection ?? null),
        lagMs: ft?.lagMs ?? null,
        lagBytes: ft?.lagBytes ?? null,
        lagEvents: ft?.lagEvents ?? null,
        heldOutputs: ft?.heldOutputs ?? null,
        logBytes: ft?.logBytes ?? null,
        logEvents: ft?.logEvents ?? null,
      });
    }
    return out;
  }

  /**
   * Pulls each live peer's own new events into the merged feed, so this host
   * can answer for the whole cluster. One pull at a time; a peer that does
   * not answer is skipped until the next round.
   */
  private async pullPeerEvents(): Promise<void> {
    if (this.eventPullRunning || this.stopping) return;
    this.eventPullRunning = true;
    try {
      const peers = [...this.hostRecords.values()].filter(
        (h) => h.name !== this.opts.name && h.state === 'up',
      );
      await Promise.all(
        peers.map(async (h) => {
          const client = new ApiClient({ endpoints: [h.api], token: this.cluster.tokenHex, timeoutMs: 1000 });
          const after = this.peerEventCursors.next(h.name);
          const r = await client.events({ scope: 'local', after });
          if (!r.ok) return;
          this.timeline.merge(r.value.events);
          const last = r.value.events.at(-1)?.cursor ?? after;
          // A restarted peer numbers its events from 1 again: ask it from the start next time.
          this.peerEventCursors.update(h.name, r.value.incarnation, last);
        }),
      );
    } finally {
      this.eventPullRunning = false;
    }
  }

  events(scope: EventScope, after: number, limit: number): EventsPage {
    const ring = scope === 'local' ? this.timeline.local : this.timeline.cluster;
    return {
      host: this.opts.name,
      incarnation: this.incarnation,
      cursor: ring.cursor,
      events: ring.after(after, limit),
    };
  }

  subscribeEvents(fn: (e: ClusterEvent) => void): () => void {
    return this.timeline.cluster.subscribe(fn);
  }

  metrics(): Promise<{ contentType: string; body: string }> {
    return this.metricsHub.text();
  }

  async uploadModule(bytes: Buffer): Promise<ApiResult<ModuleInfo>> {
    // Refused here rather than at start: a VM created from a broken upload would only fail later, elsewhere.
    if (!WebAssembly.validate(bytes)) return invalid('the upload is not a valid WebAssembly module');
    let stored: { sha256: string; path: string };
    try {
      stored = await this.modules.put(bytes);
    } catch (e) {
      return {
        ok: false,
        error: { code: 'internal', message: `cannot store the module: ${(e as Error).message}` },
      };
    }
    const { sha256, path: file } = stored;
    this.log.info(
      { path: file, bytes: bytes.byteLength },
      `stored an uploaded module (${bytes.byteLength} bytes)`,
    );
    return { ok: true, value: { path: file, sha256, bytes: bytes.byteLength } };
  }

  async moduleFile(sha256: string): Promise<ApiResult<{ path: string; bytes: number }>> {
    const bytes = await this.modules.has(sha256);
    if (bytes === null)
      return {
        ok: false,
        error: { code: 'not-found', message: `no module ${sha256.slice(0, 12)}… on ${this.opts.name}` },
      };
    return { ok: true, value: { path: this.modules.fileOf(sha256), bytes } };
  }

  async killHost(name: string): Promise<ApiResult<KillHostAnswer>> {
    const rec = this.hostRecords.get(name);
    if (rec === undefined)
      return { ok: false, error: { code: 'not-found', message: `no host named ${name} in this cluster` } };
    if (rec.bootId !== this.bootId)
      return conflict(
        `host ${name} runs on another machine; "simulate host failure" only kills hosts of a local cluster (stop it there, or cut its power)`,
      );
    if (liveness({ pid: rec.pid, startTicks: rec.pidStartTicks, bootId: rec.bootId }) !== 'alive')
      return conflict(`host ${name} (pid ${rec.pid}) is not running`);
    this.tell(
      'warn',
      { pid: rec.pid },
      {
        kind: 'host-killed',
        peer: name,
        message: `simulated failure of host ${name}: its process ${rec.pid} is killed with SIGKILL`,
      },
    );
    const kill = (): void => {
      try {
        process.kill(rec.pid, 'SIGKILL');
      } catch {
        // Gone meanwhile: the failure it simulates happened anyway.
      }
    };
    // Killing this very host: answer first, so the caller learns it was done.
    if (name === this.opts.name) setTimeout(kill, SELF_KILL_DELAY_MS).unref();
    else kill();
    return { ok: true, value: { host: name, pid: rec.pid } };
  }

  private apply(actions: MembershipAction[]): void {
    for (const a of actions) {
      if (a.type === 'send') this.sendHeartbeat(a.to, a.peer, a.msg);
      else if (a.type === 'peer-removed') {
        this.tell(
          'info',
          { reason: a.reason },
          {
            kind: 'host-removed',
            peer: a.name,
            message: `peer ${a.name} removed (${a.reason})`,
          },
        );
        this.peerEventCursors.forget(a.name);
        this.reconcileSoon();
      } else if (a.type === 'peer-state') {
        const silent = a.state === 'up' ? '' : ` after ${Math.round(a.silentMs)} ms without a heartbeat`;
        this.tell(
          'info',
          { state: a.state, previous: a.previous, silentMs: a.silentMs },
          {
            kind: a.state === 'up' ? 'host-up' : a.state === 'suspect' ? 'host-suspect' : 'host-down',
            peer: a.name,
            durationMs: a.state === 'up' ? null : a.silentMs,
            message: `peer ${a.name} is ${a.state}${silent}`,
          },
        );
        this.reconcileSoon();
      }
    }
  }

  private sendHeartbeat(to: string, peer: string, msg: HeartbeatMsg): void {
    const addr = parseHostPort(peer);
    if (addr === null) return; // a malformed registry entry: nothing to send to
    const frame = encodeFrame(
      {
        kind: FrameKind.HEARTBEAT,
        clusterId: this.cluster.clusterId,
        from: this.opts.name,
        fromIncarnation: this.incarnation,
        to,
        channel: HEARTBEAT_CHANNEL,
        seq: ++this.heartbeatSeq,
        payload: encodeHeartbeat(msg),
      },
      this.secret,
    );
    this.udp.send(frame, addr.host, addr.port);
  }

  private onDatagram(buf: Buffer, source: string): void {
    if (this.stopping) return;
    const d = decodeFrame(buf, this.secret, { clusterId: this.cluster.clusterId, self: this.opts.name });
    if (!d.ok) return this.reject(d.reason, source);
    const f = d.frame;
    const verdict = this.guard.accept(f.from, f.fromIncarnation, f.channel, f.seq);
    if (verdict !== 'ok') {
      // An authentic frame from an incarnation we do not know yet is usually a host that has just
      // (re)started: read the registry again soon. It stays rejected until the registry says so.
      if (verdict === 'stale-incarnation') this.refreshRegistrySoon();
      return this.reject(verdict, `${source} (${f.from})`);
    }
    const hb = f.kind === FrameKind.HEARTBEAT ? decodeHeartbeat(f.payload) : null;
    if (hb === null) return this.reject('unexpected-kind', source);
    this.apply(
      this.membership.step({
        type: 'heartbeat',
        nowMs: this.nowMs(),
        from: f.from,
        incarnation: f.fromIncarnation,
        sentMs: hb.sentMs,
        echoMs: hb.echoMs,
      }),
    );
  }

  private reject(reason: string, source: string): void {
    const now = this.nowMs();
    const r = this.rejected.get(reason) ?? { count: 0, loggedAtMs: -Infinity };
    r.count++;
    this.rejected.set(reason, r);
    // Logged per reason and source, at most every REJECT_LOG_INTERVAL_MS: a flood from one place
    // costs one line per interval, and a new source is always heard of.
    const key = `${reason} ${source}`;
    const last = this.rejectLoggedAtMs.get(key) ?? -Infinity;
    if (now - last < REJECT_LOG_INTERVAL_MS) return;
    if (this.rejectLoggedAtMs.size >= REJECT_LOG_SOURCES_MAX) this.rejectLoggedAtMs.clear();
    this.rejectLoggedAtMs.set(key, now);
    this.log.warn({ reason, source, count: r.count }, `rejected a frame from ${source}: ${reason}`);
  }

  /** This host's view of every registered host, itself included. */
  private hostView(): Map<string, PeerView> {
    const view = new Map<string, PeerView>();
    for (const [name, rec] of this.hostRecords) {
      if (name === this.opts.name) view.set(name, 'up');
      else if (rec.state === 'left') view.set(name, 'left');
      else view.set(name, this.membership.stateOf(name) ?? 'unknown');
    }
    view.set(this.opts.name, 'up');
    return view;
  }

  // ---- reconciliation ----

  reconcileSoon(): void {
    if (this.stopping) return;
    if (this.reconcileRunning) {
      this.reconcileAgain = true;
      return;
    }
    this.reconcileRunning = true;
    void this.reconcile()
      .catch((e: unknown) => this.log.error({ err: e }, 'reconcile failed'))
      .finally(() => {
        this.reconcileRunning = false;
        if (this.reconcileAgain) {
          this.reconcileAgain = false;
          this.reconcileSoon();
        }
      });
  }

  private async readVms(): Promise<Map<string, VmBundle> | null> {
    const r = await this.coord.list(VMS_PREFIX);
    if (!r.ok) return null;
    const vms = bundle(r.value);
    this.ftWanted = new Map([...vms].map(([name, b]) => [name, b.spec?.value.ft === true]));
    this.modulesInUse = new Set(
      [...vms.values()].flatMap((b) => (b.spec === null ? [] : [b.spec.value.wasmSha256])),
    );
    return vms;
  }

  private async reconcile(): Promise<void> {
    const vms = await this.readVms();
    if (vms === null) return; // the coordinator is unreachable: nothing that needs it proceeds
    const now = this.nowMs();
    this.observeClaims(vms, now);
    const hosts = this.hostView();
    const loads = new Map<string, number>();
    for (const b of vms.values()) {
      const p = b.placement?.value.primary;
      if (p != null && b.spec?.value.desired === 'running') loads.set(p, (loads.get(p) ?? 0) + 1);
    }
    const names = new Set([...vms.keys(), ...this.localVms.keys()]);
    for (const name of names) {
      if (this.stopping) return;
      const b = vms.get(name) ?? emptyBundle();
      const local = this.localVms.get(name) ?? null;
      const seen = this.claimSeen.get(name);
      const claim: ClaimObservation | null =
        seen === undefined
          ? null
          : {
              holder: seen.claim.holder,
              generation: seen.claim.generation,
              unchangedMs: now - seen.sinceMs,
              ttlMs: seen.claim.ttlMs,
            };
      const ftBackupLost = local !== null && this.backupLost(local, b.placement?.value ?? null, hosts);
      const actions = decide({
        self: this.opts.name,
        spec: b.spec?.value ?? null,
        placement: b.placement === null ? null : { value: b.placement.value, version: b.placement.version },
        claim,
        hosts,
        avoidAsBackup: this.backupsToAvoid(now),
        loads,
        local:
          local === null ? null : { generation: local.generation, state: local.state, role: local.roleName },
        claimExpiryMarginMs: this.opts.timings.claimExpiryMarginMs,
        placementUnchangedMs: now - (this.placementSeen.get(name)?.sinceMs ?? -Infinity),
        claimTtlMs: this.opts.timings.claimTtlMs,
        ftBackupLost,
        ftPrimaryLost: local?.primaryLost ?? false,
        ftProtected: local !== null && this.protectedAsReported(local, b),
        ftBackupIncarnation: local?.ftStatus()?.backupIncarnation ?? undefined,
        ftBackupCaughtUp: local !== null && this.caughtUp(local, b),
        ftBackupTakeoverOverdue:
          now - (this.backupTakeoverWaitSinceMs.get(name) ?? Infinity) > FT_BACKUP_TAKEOVER_GRACE_MS,
      });
      // The wait for a backup to take over from this restarted host is timed from its first pass.
      if (actions.some((a) => a.type === 'wait' && a.reason.startsWith('its backup ')))
        this.backupTakeoverWaitSinceMs.set(name, this.backupTakeoverWaitSinceMs.get(name) ?? now);
      else this.backupTakeoverWaitSinceMs.delete(name);
      for (const a of this.opts.plantSkipGenerationCompare === true
        ? await this.planted(name, actions, local, b, ftBackupLost)
        : actions)
        await this.act(name, a, b);
      // An FT primary at its placement's generation serves the backup the placement names (a
      // no-op once offered), or runs unprotected when no host could be named.
      const pl = b.placement?.value;
      const l = this.localVms.get(name);
      const currentPrimary =
        l !== undefined &&
        pl !== undefined &&
        l.roleName === 'primary' &&
        l.state === 'running' &&
        pl.primary === this.opts.name &&
        pl.generation === l.generation;
      if (currentPrimary && pl.backup != null) {
        const rec = this.hostRecords.get(pl.backup);
        if (rec !== undefined) l.offerBackup(pl.generation, pl.backup, rec.incarnation, this.nowMs());
      } else if (
        currentPrimary &&
        pl.backup == null &&
        b.spec?.value.ft === true &&
        actions.some((x) => x.type === 'wait')
      ) {
        l.runWithoutBackup('no other host is up to hold a backup');
      } else if (currentPrimary && pl.backup == null && b.spec?.value.ft === false) {
        // FT is off and the placement names no backup: nothing may wait for one.
        l.runWithoutBackup(FT_OFF_REASON);
      }
    }
  }

  /**
   * The planted bug "skip the generation compare" (testing only). A member
   * that loses its partner writes generation N+1 without comparing (a plain
   * put), and acts on it at once: the backup fences and goes live, the
   * primary releases what it held and runs alone. A copy is never stopped
   * or replaced for a newer generation, so a zombie primary that wakes
   * continues as primary. Returns the actions left to carry out.
   */
  private async planted(
    name: string,
    actions: ReconcileAction[],
    local: LocalVm | null,
    b: VmBundle,
    backupLost: boolean,
  ): Promise<ReconcileAction[]> {
    if (local === null || (local.state !== 'running' && local.state !== 'starting')) return actions;
    const out: ReconcileAction[] = [];
    let acted = false;
    for (const a of actions) {
      // The copy runs on whatever the coordinator says (a fresh start would replace it).
      if ((a.type === 'stop' && a.discardOutputs) || a.type === 'start') continue;
      if (
        a.type === 'place' &&
        a.placement.primary === this.opts.name &&
        a.placement.generation > local.generation
      ) {
        await this.plantedTakeOver(name, a.placement, a.fence, local, b);
        acted = true;
        continue;
      }
      out.push(a);
    }
    if (!acted && backupLost && local.roleName === 'primary' && b.spec?.value.ft === true) {
      const generation = Math.max(local.generation, b.placement?.value.generation ?? 0) + 1;
      await this.plantedTakeOver(
        name,
        { v: 1, generation, primary: this.opts.name, backup: null },
        null,
        local,
        b,
      );
    }
    return out;
  }

  private async plantedTakeOver(
    name: string,
    placement: VmPlacement,
    fence: string | null,
    local: LocalVm,
    b: VmBundle,
  ): Promise<void> {
    this.log.warn(
      { vm: name },
      `PLANTED BUG: ${name} takes generation ${placement.generation} without the test-and-set`,
    );
    const r = await this.coord.put(vmPlacementKey(name), placement, 'any');
    if (!r.ok) return;
    if (local.roleName === 'backup') {
      if (fence !== null) this.pendingFence.set(name, fence);
      await this.act(name, { type: 'promote', generation: placement.generation }, b);
    } else await this.act(name, { type: 'adopt', generation: placement.generation }, b);
  }

  /**
   * An FT primary's backup is lost when its session closed, it never attached,
   * or its host is down by the detector and no ack has come for as long as the
   * detector takes (the detector may still be judging an older incarnation of
   * a host that restarted and attached again).
   */
  private backupLost(l: LocalVm, p: VmPlacement | null, hosts: Map<string, PeerView>): boolean {
    // Only the loss of the backup the placement names counts (not one it replaced meanwhile).
    if (l.backupLost && (p === null || l.lostBackup === null || l.lostBackup === p.backup)) return true;
    if (p === null || p.backup == null || l.roleName !== 'primary') return false;
    const view = hosts.get(p.backup);
    if (view !== 'down' && view !== 'unknown') return false;
    return l.backupSilentMs(this.nowMs()) > this.opts.timings.membership.failAfterMs;
  }

  /**
   * This host's primary is protected now, and its status record says so at
   * its generation (the backup reads that record before it may go live).
   */
  private protectedAsReported(l: LocalVm, b: VmBundle): boolean {
    const ft = l.ftStatus();
    if (l.roleName !== 'primary' || ft?.protection !== 'protected') return false;
    // Protected by the backup the placement names now, not by one it replaced (a migration).
    const named = b.placement?.value.backup ?? null;
    if (named === null || ft.backup !== named || ft.backupIncarnation === null) return false;
    const st = b.status?.value;
    return (
      st !== undefined &&
      st.host === this.opts.name &&
      st.generation === l.generation &&
      st.ft?.protection === 'protected' &&
      st.ft.backupIncarnation === ft.backupIncarnation
    );
  }

  /**
   * An FT backup caught up once its primary has reported the pair protected
   * at the backup's generation; it stays so (a go-live moves the generation on).
   */
  private caughtUp(l: LocalVm, b: VmBundle): boolean {
    if (l.roleName !== 'backup') return false;
    // A handover (a migration or a test failover) names the backup it knows caught up.
    const p0 = b.placement?.value;
    if (
      !l.caughtUp &&
      p0 !== undefined &&
      p0.primary === this.opts.name &&
      p0.generation === l.generation + 1 &&
      p0.caughtUp === this.incarnation
    )
      l.caughtUp = true;
    if (!l.caughtUp) {
      const st = b.status?.value;
      const p = b.placement?.value;
      if (
        st !== undefined &&
        p !== undefined &&
        st.host === p.primary &&
        st.generation === l.generation &&
        p.generation === l.generation &&
        p.backup === this.opts.name &&
        st.ft?.protection === 'protected' &&
        // The record speaks of this copy's session, not of a backup this one replaced.
        (st.ft.backupIncarnation === undefined || st.ft.backupIncarnation === this.incarnation)
      )
        l.caughtUp = true;
    }
    return l.caughtUp;
  }

  private observeClaims(vms: Map<string, VmBundle>, now: number): void {
    for (const [name, b] of vms) {
      const version = b.placement?.version ?? '';
      if (this.placementSeen.get(name)?.version !== version)
        this.placementSeen.set(name, { version, sinceMs: now });
    }
    for (const name of this.placementSeen.keys()) if (!vms.has(name)) this.placementSeen.delete(name);
    for (const [name, b] of vms) {
      const c = b.claim;
      if (c === null) {
        this.claimSeen.delete(name);
        continue;
      }
      const prev = this.claimSeen.get(name);
      const key = `${c.value.holder}/${c.value.incarnation}/${c.value.generation}/${c.value.counter}`;
      if (prev === undefined || prev.key !== key)
        this.claimSeen.set(name, { key, sinceMs: now, claim: c.value });
    }
    for (const name of this.claimSeen.keys()) if (!vms.has(name)) this.claimSeen.delete(name);
  }

  private async act(name: string, a: ReconcileAction, b: VmBundle): Promise<void> {
    switch (a.type) {
      case 'wait':
        return;
      case 'place': {
        const placement: VmPlacement = a.placement;
        const r = await this.coord.put(
          vmPlacementKey(name),
          placement,
          a.expectVersion === null ? 'absent' : { version: a.expectVersion },
        );
        if (!r.ok) {
          if (r.error.code !== 'conflict') this.log.warn({ vm: name, err: r.error }, 'placement failed');
          else
            this.tell(
              'info',
              {},
              {
                kind: 'tas-lost',
                vm: name,
                generation: a.placement.generation,
                message: `lost the test-and-set for ${name} generation ${a.placement.generation}: another host changed it first`,
              },
            );
          return;
        }
        // A member dropped by a new generation is not named backup again until the detector has judged it.
        const before = b.placement?.value;
        const g = a.placement.generation;
        if (before !== undefined && g > before.generation)
          for (const h of [before.primary, before.backup])
            if (h != null && h !== a.placement.primary && h !== a.placement.backup)
              this.droppedMembersAtMs.set(h, this.nowMs());
        // The same generation with a backup added or replaced is a test-and-set too, of another kind.
        const namedBackup = before !== undefined && g === before.generation && a.placement.backup != null;
        const tookOverFrom =
          before?.primary != null && before.primary !== a.placement.primary ? before.primary : null;
        this.tell(
          'info',
          { fence: a.fence },
          {
            kind: 'tas-won',
            vm: name,
            generation: g,
            peer: a.fence ?? (namedBackup ? a.placement.backup : tookOverFrom),
            message: namedBackup
              ? `won ${name} generation ${g}: ${a.placement.backup} named as its backup`
              : a.fence !== null
                ? `won ${name} generation ${g}: taking it over from ${a.fence}`
                : tookOverFrom !== null && a.placement.primary === this.opts.name
                  ? `won ${name} generation ${g}: taking over from ${tookOverFrom}`
                  : `won ${name} generation ${g} (primary ${a.placement.primary ?? 'none'}${a.placement.backup != null ? `, backup ${a.placement.backup}` : ''})`,
          },
        );
        if (a.fence !== null) this.pendingFence.set(name, a.fence);
        this.reconcileSoon();
        return;
      }
      case 'start': {
        const spec = b.spec?.value;
        if (spec === undefined) return;
        const fence = this.pendingFence.get(name);
        if (fence !== undefined) {
          const fenced = await this.fence(fence, spec);
          if (!fenced.ok) {
            await this.writeStatus(
              name,
              a.generation,
              'starting',
              `waiting to fence ${fence}: ${fenced.message}`,
              null,
            );
            return;
          }
          this.pendingFence.delete(name);
        }
        let role: LocalRole = { kind: 'plain' };
        if (a.role === 'backup') {
          // A backup that could not attach is tried again, but not in a tight loop.
          const last = this.backupStartAtMs.get(name) ?? -Infinity;
          if (this.nowMs() - last < BACKUP_RETRY_MS) return;
          this.backupStartAtMs.set(name, this.nowMs());
          const pl = b.placement?.value;
          const prim = pl?.primary == null ? undefined : this.hostRecords.get(pl.primary);
          if (prim === undefined) return; // not registered yet: a later pass retries
          role = { kind: 'ft-backup', primary: prim };
        } else role = { kind: 'ft-primary' };
        return this.startLocal(spec, a.generation, role);
      }
      case 'promote':
      case 'adopt': {
        const l = this.localVms.get(name);
        if (l === undefined) return;
        const fence = this.pendingFence.get(name);
        if (a.type === 'promote' && fence !== undefined) {
          const fenced = await this.fence(fence, b.spec?.value);
          if (!fenced.ok) return; // retried at the next pass; nothing goes live unfenced
          this.pendingFence.delete(name);
        }
        // Claim the new generation first, as a start does.
        if (!(await this.claim(name, a.generation))) return;
        if (a.type === 'adopt') {
          const why = l.ftStatus()?.reason ?? 'the backup was lost';
          this.tell(
            'info',
            { reason: why },
            {
              kind: 'running-alone',
              vm: name,
              generation: a.generation,
              message: `${name}: running alone at generation ${a.generation} (${why})`,
            },
          );
          l.adopt(a.generation, `running alone: ${why}`);
          void this.writeStatus(name, a.generation, 'running', null, null);
          return;
        }
        const t0 = this.nowMs();
        try {
          await l.promote(a.generation, `took over from ${fence ?? 'the old primary'}`);
        } catch (e) {
          this.tell(
            'error',
            { err: (e as Error).message },
            {
              kind: 'go-live-failed',
              vm: name,
              generation: a.generation,
              message: `${name}: go-live failed: ${(e as Error).message}`,
            },
          );
          l.stop(true);
          return;
        }
        const goLiveMs = Math.round(this.nowMs() - t0);
        this.metricsHub.noteFailover(name);
        this.tell(
          'info',
          { goLiveMs },
          {
            kind: b.spec?.value.migrate?.to === this.opts.name ? 'migrated' : 'go-live',
            vm: name,
            generation: a.generation,
            peer: fence ?? null,
            durationMs: goLiveMs,
            message: `${name}: live at generation ${a.generation} on ${this.opts.name} (go-live took ${goLiveMs} ms)`,
          },
        );
        return;
      }
      case 'stop': {
        const l = this.localVms.get(name);
        if (l === undefined) return;
        this.tell(
          'info',
          { reason: a.reason, discard: a.discardOutputs },
          {
            kind: 'vm-stopped',
            vm: name,
            generation: l.generation,
            message: `stopping ${name} (${l.roleName}) on ${this.opts.name}: ${a.reason}`,
          },
        );
        l.stop(a.discardOutputs);
        return;
      }
      case 'remove-local': {
        const l = this.localVms.get(name);
        if (l !== undefined && (l.state === 'running' || l.state === 'starting')) {
          l.stop(true);
          return; // removed once it has stopped, at a later pass
        }
        this.localVms.delete(name);
        this.claimRenewedAtMs.delete(name);
        this.outputsHeld.delete(name);
        await rm(vmDataDir(this.opts.dataDir, name), { recursive: true, force: true });
        this.log.info({ vm: name }, `removed ${name}'s local data`);
        return;
      }
    }
  }

  /** Runs the old host's fence agent (local unless its registration names another) for VM `vm`. */
  private async fence(
    hostName: string,
    spec: VmSpec | undefined,
  ): Promise<{ ok: true } | { ok: false; message: string }> {
    const rec = this.hostRecords.get(hostName);
    if (rec === undefined) return { ok: true }; // never registered, or removed: nothing runs under it
    const listen = spec === undefined ? null : parseListen(spec.listen);
    const t0 = this.nowMs();
    const r = await fenceHost(rec, this.opts.timings.fenceWaitMs, {
      serviceIps: listen === null || typeof listen === 'string' ? [] : [listen.host],
    });
    const vm = spec?.name ?? null;
    if (!r.ok) {
      this.tell(
        'error',
        { host: hostName, reason: r.message },
        {
          kind: 'fence-failed',
          vm,
          peer: hostName,
          message: `cannot fence ${hostName}: ${r.message}`,
        },
      );
      return r;
    }
    this.tell(
      'info',
      { host: hostName, detail: r.detail },
      {
        kind: 'fence',
        vm,
        peer: hostName,
        durationMs: this.nowMs() - t0,
        message: `fenced ${hostName} (${r.detail})`,
      },
    );
    return { ok: true };
  }

  /** Writes this host's claim on `name` at `generation`; false when the coordinator refused. */
  private async claim(name: string, generation: number): Promise<boolean> {
    const counter = (this.claimCounter.get(name) ?? 0) + 1;
    this.claimCounter.set(name, counter);
    const renewStart = this.nowMs();
    const c = await this.coord.put(
      vmClaimKey(name),
      {
        v: 1,
        holder: this.opts.name,
        incarnation: this.incarnation,
        generation,
        counter,
        ttlMs: this.opts.timings.claimTtlMs,
      } satisfies VmClaim,
      'any',
    );
    if (c.ok) this.claimRenewedAtMs.set(name, renewStart);
    return c.ok;
  }

  private async startLocal(spec: VmSpec, generation: number, role: LocalRole): Promise<void> {
    const name = spec.name;
    if (role.kind === 'ft-backup') {
      // A backup claims nothing and reports nothing: the primary's status is the VM's.
      const l = new LocalVm(
        spec,
        generation,
        this.opts.dataDir,
        this.opts.cacheDir,
        (e) => {
          if (e.state === 'running' && l.roleName === 'primary')
            void this.writeStatus(name, l.generation, 'running', null, null);
          if (e.state === 'stopped' || e.state === 'failed') {
            this.tellEnded(name, l, e.state, e.message);
            if (l.roleName === 'primary')
              void this.writeStatus(name, l.generation, e.state, e.message, e.exitCode);
            this.reconcileSoon();
          } else if (e.state === 'running' && l.roleName === 'backup')
            this.tell(
              'info',
              {},
              {
                kind: 'clone',
                vm: name,
                generation,
                peer: role.primary.name,
                message: `${name}: backup on ${this.opts.name} restored its clone and attached to ${role.primary.name}`,
              },
            );
        },
        role,
        this.ftServices,
        this.addresses,
        this.modules,
      );
      this.localVms.set(name, l);
      void l.start();
      return;
    }
    // The claim comes first: an observer that sees it knows this host may be running the VM.
    const counter = (this.claimCounter.get(name) ?? 0) + 1;
    this.claimCounter.set(name, counter);
    const renewStart = this.nowMs();
    const claim: VmClaim = {
      v: 1,
      holder: this.opts.name,
      incarnation: this.incarnation,
      generation,
      counter,
      ttlMs: this.opts.timings.claimTtlMs,
    };
    const c = await this.coord.put(vmClaimKey(name), claim, 'any');
    if (!c.ok) return;
    // Then the placement is read again: a takeover between our decision and the claim wins.
    const p = await this.coord.get<VmPlacement>(vmPlacementKey(name));
    if (
      !p.ok ||
      p.value === null ||
      p.value.value.primary !== this.opts.name ||
      p.value.value.generation !== generation
    )
      return;
    this.claimRenewedAtMs.set(name, renewStart);
    const l = new LocalVm(
      spec,
      generation,
      this.opts.dataDir,
      this.opts.cacheDir,
      (e) => {
        void this.writeStatus(name, l.generation, e.state, e.message, e.exitCode);
        if (e.state === 'stopped' || e.state === 'failed') {
          this.tellEnded(name, l, e.state, e.message);
          this.reconcileSoon();
        } else if (e.state === 'running')
          this.tell(
            'info',
            {},
            {
              kind: 'vm-started',
              vm: name,
              generation,
              message: `${name} running on ${this.opts.name} at ${spec.listen} (generation ${generation})`,
            },
          );
      },
      role,
      this.ftServices,
      this.addresses,
      this.modules,
    );
    this.localVms.set(name, l);
    this.outputsHeld.delete(name);
    // Not awaited: loading a module can take seconds, and the other VMs' reconciliation must not wait.
    void l.start();
  }

  private async writeStatus(
    name: string,
    generation: number,
    state: VmStatusRecord['state'],
    message: string | null,
    exitCode: number | null,
  ): Promise<void> {
    const ft = this.localVms.get(name)?.ftStatus() ?? null;
    const rec: VmStatusRecord = {
      v: 1,
      host: this.opts.name,
      generation,
      state,
      message,
      exitCode,
      ...(ft !== null ? { ft: { ...ft, sampledAtMs: this.wallMs() } } : {}),
    };
    // Only the current primary's report counts; readers check host and generation.
    const r = await this.coord.put(vmStatusKey(name), rec, 'any');
    if (!r.ok) this.log.warn({ vm: name, err: r.error }, 'cannot write the VM status');
  }

  // ---- claims ----

  private async renewClaims(): Promise<void> {
    if (this.renewRunning || this.stopping) return;
    this.renewRunning = true;
    try {
      for (const [name, l] of this.localVms) {
        if (l.state !== 'running' && l.state !== 'starting') continue;
        if (l.roleName === 'backup') continue; // a backup holds no claim (decide() judges it)
        const start = this.nowMs();
        const p = await this.coord.get<VmPlacement>(vmPlacementKey(name));
        if (!p.ok) continue;
        const pl = p.value?.value ?? null;
        // A newer generation naming this host is an FT member's own win: reconciliation adopts or
        // promotes it (stopping here would throw away the very VM that won).
        if (pl !== null && pl.primary === this.opts.name && pl.generation > l.generation) continue;
        if (
          (pl === null || pl.primary !== this.opts.name || pl.generation !== l.generation) &&
          this.opts.plantSkipGenerationCompare !== true
        ) {
          this.tell(
            'warn',
            {},
            {
              kind: 'vm-stopped',
              vm: name,
              generation: l.generation,
              message: `${name} on ${this.opts.name} lost its place (generation ${l.generation}); stopping it, dropping what it held`,
            },
          );
          this.outputsHeld.add(name);
          l.stop(true);
          continue;
        }
        const counter = (this.claimCounter.get(name) ?? 0) + 1;
        this.claimCounter.set(name, counter);
        const r = await this.coord.put(
          vmClaimKey(name),
          {
            v: 1,
            holder: this.opts.name,
            incarnation: this.incarnation,
            generation: l.generation,
            counter,
            ttlMs: this.opts.timings.claimTtlMs,
          } satisfies VmClaim,
          'any',
        );
        if (!r.ok) continue;
        this.claimRenewedAtMs.set(name, start);
        // An FT primary's live protection and lag go out with each renewal.
        if (l.state === 'running' && l.ftStatus() !== null)
          void this.writeStatus(name, l.generation, 'running', null, null);
        if (this.outputsHeld.delete(name)) {
          l.holdOutputs(false);
          this.tell(
            'info',
            {},
            {
              kind: 'outputs-released',
              vm: name,
              generation: l.generation,
              message: `${name}'s claim is renewed: outputs released`,
            },
          );
        }
      }
    } finally {
      this.renewRunning = false;
    }
  }

  /** Holds the outputs of every VM whose claim is about to lapse (runs on every tick). */
  private checkClaimHolds(): void {
    const now = this.nowMs();
    const t = this.opts.timings;
    for (const [name, l] of this.localVms) {
      if (this.outputsHeld.has(name) || (l.state !== 'running' && l.state !== 'starting')) continue;
      if (l.roleName === 'backup') continue;
      const at = this.claimRenewedAtMs.get(name);
      if (at === undefined || now - at < t.claimTtlMs - t.claimHoldMarginMs) continue;
      this.outputsHeld.add(name);
      l.holdOutputs(true);
      this.tell(
        'warn',
        { sinceRenewalMs: Math.round(now - at) },
        {
          kind: 'outputs-held',
          vm: name,
          generation: l.generation,
          message: `${name}'s claim could not be renewed for ${Math.round(now - at)} ms: outputs held`,
        },
      );
    }
  }

  // ---- the API backend ----

  async listHosts(): Promise<ApiResult<HostStatus[]>> {
    const vms = await this.readVms();
    const view = this.hostView();
    const peers = new Map(this.membership.peers().map((p) => [p.name, p]));
    const out: HostStatus[] = [];
    for (const [name, rec] of [...this.hostRecords].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const primaryOf: string[] = [];
      for (const [vm, b] of vms ?? [])
        if (b.placement?.value.primary === name && b.spec !== null) primaryOf.push(vm);
      const rtt = peers.get(name)?.rttMsMedian ?? null;
      const fencedAt = this.timeline.cluster.findLast((e) => e.kind === 'fence' && e.peer === name)?.atMs;
      out.push({
        name,
        state: view.get(name) === 'unknown' ? 'down' : (view.get(name) as HostStatus['state']),
        api: rec.api,
        peer: rec.peer,
        address: rec.address,
        pid: rec.pid,
        vms: primaryOf,
        heartbeatRttMs: rtt,
        local: rec.bootId === this.bootId,
        // Fenced (by any host, as the merged timeline tells) since it last started.
        fenced: fencedAt !== undefined && fencedAt >= rec.startedAtMs && view.get(name) !== 'up',
      });
    }
    return { ok: true, value: out };
  }

  async listVms(): Promise<ApiResult<VmStatus[]>> {
    const vms = await this.readVms();
    if (vms === null) return unavailable();
    const view = this.hostView();
    const out: VmStatus[] = [];
    for (const b of [...vms.values()].sort((x, y) => (x.name < y.name ? -1 : 1))) {
      if (b.spec === null) continue;
      out.push(this.viewOf(b, view));
    }
    return { ok: true, value: out };
  }

  private viewOf(b: VmBundle, view: Map<string, PeerView>): VmStatus {
    const v = this.recordsView(b, view);
    // On the primary's own host, FT protection, lag and the held-outputs gauge are live.
    const l = this.localVms.get(v.name);
    const ft =
      l !== undefined && l.roleName === 'primary' && l.generation === v.generation ? l.ftStatus() : null;
    if (ft === null || v.state !== 'running') return v;
    const logs = {
      logBytes: ft.logBytes,
      logFileBytes: ft.logFileBytes,
      logEvents: ft.logEvents,
      sampledAtMs: this.wallMs(),
    };
    // With FT off, protection stays 'off' (a backup may still be there while a migration runs).
    if (!v.ft) return { ...v, ...logs, backup: v.backup, heldOutputs: ft.heldOutputs };
    const attached = ft.protection === 'syncing' || ft.protection === 'protected';
    return {
      ...v,
      ...logs,
      protection: ft.protection,
      reason: attached ? null : ftReason(ft.reason),
      lagMs: !attached || ft.lagMs === null ? null : Math.round(ft.lagMs),
      lagEvents: !attached ? null : ft.lagEvents,
      lagBytes: !attached ? null : ft.lagBytes,
      heldOutputs: ft.heldOutputs,
      clone: ft.protection === 'reprotecting' ? ft.clone : null,
    };
  }

  private recordsView(b: VmBundle, view: Map<string, PeerView>): VmStatus {
    return vmView(
      {
        spec: b.spec!.value,
        placement: b.placement?.value ?? null,
        status: b.status?.value ?? null,
        claim: b.claim?.value ?? null,
      },
      view,
    );
  }

  async getVm(name: string): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    return { ok: true, value: this.viewOf(b.value, this.hostView()) };
  }

  private async readVm(name: string): Promise<ApiResult<VmBundle>> {
    const r = await this.coord.list(`${VMS_PREFIX}/${name}`);
    if (!r.ok) return unavailable();
    const b = bundle(r.value).get(name);
    if (b === undefined || b.spec === null) return notFound(name);
    return { ok: true, value: b };
  }

  async createVm(req: CreateVmRequest): Promise<ApiResult<VmStatus>> {
    const checked = await this.checkCreate(req);
    if (!checked.ok) return checked;
    const spec = checked.value;
    const all = await this.readVms();
    if (all === null) return unavailable();
    for (const b of all.values()) {
      if (b.spec !== null && b.spec.value.listen === spec.listen && b.spec.value.name !== spec.name)
        return conflict(`${spec.listen} is already the address of VM ${b.spec.value.name}`);
    }
    const view = this.hostView();
    let target: string | null;
    if (req.host != null) {
      if (view.get(req.host) !== 'up') return invalid(`host ${req.host} is not up`);
      target = req.host;
    } else {
      const loads = new Map<string, number>();
      for (const b of all.values()) {
        const p = b.placement?.value.primary;
        if (p != null && b.spec !== null) loads.set(p, (loads.get(p) ?? 0) + 1);
      }
      target = chooseHost(view, loads, null);
    }
    if (target === null)
      return { ok: false, error: { code: 'unavailable', message: 'no host is up to run it' } };
    if (all.get(spec.name)?.spec != null) return conflict(`VM ${spec.name} already exists`);
    // The placement is written before the spec: a host reconciling between the two writes would
    // otherwise see a VM with no placement and place it itself, and the host asked for (--host)
    // would be lost. A placement with no spec is inert (it is what a removed VM leaves behind).
    // A placement left by an earlier VM of the same name is replaced by a newer generation; the
    // test-and-set on its version also settles two requests creating the same name at once.
    const old = all.get(spec.name)?.placement ?? null;
    const placement: VmPlacement = {
      v: 1,
      generation: (old?.value.generation ?? 0) + 1,
      primary: target,
      backup: null,
    };
    const pr = await this.coord.put(
      vmPlacementKey(spec.name),
      placement,
      old === null ? 'absent' : { version: old.version },
    );
    if (!pr.ok)
      return pr.error.code === 'conflict'
        ? conflict(`VM ${spec.name} is being created or removed by another request; try again`)
        : unavailable();
    const put = await this.coord.put(vmSpecKey(spec.name), spec, 'absent');
    if (!put.ok)
      return put.error.code === 'conflict' ? conflict(`VM ${spec.name} already exists`) : unavailable();
    this.tell(
      'info',
      { wasm: spec.wasmPath, ft: spec.ft },
      {
        kind: 'vm-created',
        vm: spec.name,
        generation: placement.generation,
        message: `${spec.name} created from ${path.basename(spec.wasmPath)} at ${spec.listen}, placed on ${target}${spec.ft ? ', fault tolerant' : ''}`,
      },
    );
    this.reconcileSoon();
    return this.getVm(spec.name);
  }

  private async checkCreate(req: CreateVmRequest): Promise<ApiResult<VmSpec>> {
    if (!NAME_RE.test(req.name)) return invalid(`bad VM name ${JSON.stringify(req.name)}`);
    const listen = parseListen(req.listen);
    if (typeof listen === 'string') return invalid(`listen: ${listen}`);
    if (listen.port === 0) return invalid('listen: a VM needs a fixed port (its service address)');
    if (!path.isAbsolute(req.wasm)) return invalid('wasm: the path must be absolute (hosts read it)');
    let wasmBytes: Buffer;
    try {
      wasmBytes = await readFile(req.wasm);
    } catch (e) {
      return invalid(`wasm: cannot read ${req.wasm}: ${(e as Error).message}`);
    }
    const disk = req.disk ?? null;
    if (disk !== null) {
      if (!path.isAbsolute(disk)) return invalid('disk: the path must be absolute (hosts read it)');
      const st = await stat(disk).catch(() => null);
      if (st === null || !st.isDirectory()) return invalid(`disk: not a folder: ${disk}`);
    }
    for (const e of req.env ?? [])
      if (!/^[^=]+=/.test(e)) return invalid(`env: expected K=V, got ${JSON.stringify(e)}`);
    const memoryMaxMib = req.memoryMaxMib ?? MEMORY_MAX_MIB_DEFAULT;
    if (!(Number.isInteger(memoryMaxMib) && memoryMaxMib >= 1 && memoryMaxMib <= MEMORY_MAX_MIB_LIMIT))
      return invalid(`memoryMaxMib must be an integer from 1 to ${MEMORY_MAX_MIB_LIMIT}`);
    return {
      ok: true,
      value: {
        v: 1,
        name: req.name,
        wasmPath: req.wasm,
        wasmSha256: sha256Of(wasmBytes),
        listen: req.listen,
        disk,
        env: req.env ?? [],
        args: req.args ?? [],
        memoryMaxMib,
        ft: req.ft === true,
        desired: 'running',
      },
    };
  }

  async startVm(name: string): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    const spec = b.value.spec!;
    const r = await this.coord.put(
      vmSpecKey(name),
      { ...spec.value, desired: 'running' },
      { version: spec.version },
    );
    if (!r.ok)
      return r.error.code === 'conflict'
        ? conflict(`VM ${name} changed meanwhile; try again`)
        : unavailable();
    // A new generation restarts it: on the same host when that host is up, elsewhere otherwise.
    const pl = b.value.placement;
    const view = this.hostView();
    const cur = pl?.value.primary ?? null;
    const primary = cur !== null && view.get(cur) === 'up' ? cur : null;
    const next: VmPlacement = { v: 1, generation: (pl?.value.generation ?? 0) + 1, primary, backup: null };
    const pr = await this.coord.put(
      vmPlacementKey(name),
      next,
      pl === null ? 'absent' : { version: pl.version },
    );
    if (!pr.ok && pr.error.code !== 'conflict') return unavailable();
    this.reconcileSoon();
    return this.getVm(name);
  }

  async stopVm(name: string): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    const spec = b.value.spec!;
    const r = await this.coord.put(
      vmSpecKey(name),
      { ...spec.value, desired: 'stopped' },
      { version: spec.version },
    );
    if (!r.ok)
      return r.error.code === 'conflict'
        ? conflict(`VM ${name} changed meanwhile; try again`)
        : unavailable();
    this.reconcileSoon();
    return this.getVm(name);
  }

  async setFt(name: string, req: SetFtRequest): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    const spec = b.value.spec!;
    if (spec.value.ft !== req.enabled) {
      const r = await this.coord.put(
        vmSpecKey(name),
        { ...spec.value, ft: req.enabled },
        { version: spec.version },
      );
      if (!r.ok)
        return r.error.code === 'conflict'
          ? conflict(`VM ${name} changed meanwhile; try again`)
          : unavailable();
      this.tell(
        'info',
        {},
        {
          kind: req.enabled ? 'ft-on' : 'ft-off',
          vm: name,
          message: `${name}: fault tolerance switched ${req.enabled ? 'on' : 'off'}`,
        },
      );
      this.reconcileSoon();
    }
    return this.getVm(name);
  }

  async migrateVm(name: string, req: MigrateRequest): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    const spec = b.value.spec!;
    const pl = b.value.placement;
    const st = b.value.status?.value;
    if (spec.value.desired !== 'running' || pl === null || pl.value.primary === null)
      return conflict(`VM ${name} is not running; start it, or create it with --host ${req.to}`);
    if (pl.value.primary === req.to) return conflict(`VM ${name} runs on ${req.to} already`);
    const view = this.hostView();
    if (!this.hostRecords.has(req.to))
      return { ok: false, error: { code: 'not-found', message: `no host named ${req.to} in this cluster` } };
    if (view.get(req.to) !== 'up')
      return conflict(`host ${req.to} is ${view.get(req.to) ?? 'unknown'}, not up`);
    if (st === undefined || st.generation !== pl.value.generation || st.state !== 'running')
      return conflict(`VM ${name} is not running at its current generation; try again once it is`);
    const r = await this.coord.put(
      vmSpecKey(name),
      { ...spec.value, migrate: { to: req.to, generation: pl.value.generation } },
      { version: spec.version },
    );
    if (!r.ok)
      return r.error.code === 'conflict'
        ? conflict(`VM ${name} changed meanwhile; try again`)
        : unavailable();
    this.tell(
      'info',
      { from: pl.value.primary, to: req.to },
      {
        kind: 'migration-requested',
        vm: name,
        generation: pl.value.generation,
        peer: req.to,
        message: `${name}: migration from ${pl.value.primary} to ${req.to} asked`,
      },
    );
    this.reconcileSoon();
    return this.getVm(name);
  }

  async failoverVm(name: string): Promise<ApiResult<VmStatus>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    if (!b.value.spec!.value.ft) return invalid(`VM ${name} is not fault tolerant (create it with --ft)`);
    const pl = b.value.placement;
    if (pl === null || pl.value.primary === null || pl.value.backup == null)
      return conflict(`VM ${name} has no backup to take over`);
    const st = b.value.status?.value;
    const protection = st?.generation === pl.value.generation ? st.ft?.protection : undefined;
    if (protection !== 'protected')
      return conflict(
        `VM ${name}'s backup ${pl.value.backup} is ${protection === 'syncing' ? 'still catching up' : 'not attached'}; try again once it is protected`,
      );
    // The same path as a real failure: the backup owns generation N+1 and goes live; the old
    // primary sees it has lost its place and stops, dropping what it still held.
    const next: VmPlacement = {
      v: 1,
      generation: pl.value.generation + 1,
      primary: pl.value.backup,
      backup: null,
      ...(st?.ft?.backupIncarnation != null ? { caughtUp: st.ft.backupIncarnation } : {}),
    };
    const r = await this.coord.put(vmPlacementKey(name), next, { version: pl.version });
    if (!r.ok)
      return r.error.code === 'conflict'
        ? conflict(`VM ${name} changed meanwhile; try again`)
        : unavailable();
    this.tell(
      'info',
      { from: pl.value.primary, to: pl.value.backup },
      {
        kind: 'failover-requested',
        vm: name,
        generation: next.generation,
        peer: pl.value.backup,
        message: `${name}: test failover from ${pl.value.primary} to ${pl.value.backup} (generation ${next.generation})`,
      },
    );
    this.reconcileSoon();
    return this.getVm(name);
  }

  async removeVm(name: string): Promise<ApiResult<void>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    // The spec goes first: every host then stops and cleans its copy by itself.
    const r = await this.coord.delete(vmSpecKey(name), { version: b.value.spec!.version });
    if (!r.ok)
      return r.error.code === 'conflict'
        ? conflict(`VM ${name} changed meanwhile; try again`)
        : unavailable();
    for (const key of [vmClaimKey(name), vmStatusKey(name)]) await this.coord.delete(key, 'any');
    // The placement stays, with no primary and the next generation: a VM created later under the
    // same name starts above it, so no host mistakes its old copy for the new VM's generation.
    const pl = b.value.placement;
    if (pl !== null) {
      const next: VmPlacement = { v: 1, generation: pl.value.generation + 1, primary: null, backup: null };
      await this.coord.put(vmPlacementKey(name), next, { version: pl.version });
    }
    this.tell('info', {}, { kind: 'vm-removed', vm: name, message: `${name} removed` });
    this.reconcileSoon();
    return { ok: true, value: undefined };
  }

  async snapshotVm(name: string): Promise<ApiResult<{ body: Buffer[] }>> {
    const l = this.localVms.get(name);
    if (l === undefined || l.roleName !== 'primary' || l.state !== 'running')
      return {
        ok: false,
        error: { code: 'conflict', message: `this host does not run ${name} as its primary` },
      };
    const r = await l.snapshotFile();
    if (typeof r === 'string') return { ok: false, error: { code: 'conflict', message: r } };
    return { ok: true, value: { body: r } };
  }

  async cloneVm(name: string, req: CloneRequest): Promise<ApiResult<CloneAnswer>> {
    const l = this.localVms.get(name);
    if (l === undefined || l.roleName !== 'primary')
      return { ok: false, error: { code: 'conflict', message: `this host is not ${name}'s primary` } };
    // The backup may read the placement naming it before this host's pass offers it: wait a little.
    for (
      let i = 0;
      i < CLONE_OFFER_WAIT_MS / 50 && !l.isOfferedTo(req.backup, req.incarnation, req.generation);
      i++
    ) {
      this.reconcileSoon();
      await new Promise((r) => setTimeout(r, 50));
    }
    const r = await l.clone(req.backup, req.incarnation, req.generation);
    if (typeof r === 'string') return { ok: false, error: { code: 'conflict', message: r } };
    const cloneT0 = this.nowMs();
    this.tell(
      'info',
      { backup: req.backup, start: r.start, pauseMs: Math.round(r.pauseMs * 10) / 10 },
      {
        kind: 'clone',
        vm: name,
        generation: req.generation,
        peer: req.backup,
        durationMs: r.pauseMs,
        message: `${name}: clone for ${req.backup} at call ${r.start.events} (the guest held ${r.pauseMs.toFixed(1)} ms); streaming it`,
      },
    );
    void r.done.then((d) =>
      typeof d === 'number'
        ? this.tell(
            'info',
            { backup: req.backup, bytes: d },
            {
              kind: 'clone',
              vm: name,
              generation: req.generation,
              peer: req.backup,
              durationMs: this.nowMs() - cloneT0,
              message: `${name}: clone for ${req.backup} sent (${d} bytes)`,
            },
          )
        : this.tell(
            'warn',
            { backup: req.backup, reason: d },
            {
              kind: 'clone',
              vm: name,
              generation: req.generation,
              peer: req.backup,
              message: `${name}: clone for ${req.backup} failed: ${d}`,
            },
          ),
    );
    return { ok: true, value: { start: r.start, body: r.body } };
  }

  async vmLogs(name: string, bytesMax: number): Promise<ApiResult<string>> {
    const b = await this.readVm(name);
    if (!b.ok) return b;
    const primary = b.value.placement?.value.primary ?? null;
    if (primary !== null && primary !== this.opts.name) {
      const rec = this.hostRecords.get(primary);
      if (rec === undefined) return unavailable();
      const client = new ApiClient({ endpoints: [rec.api], token: this.cluster.tokenHex, timeoutMs: 1500 });
      return client.vmLogs(name, bytesMax);
    }
    const file = path.join(vmDataDir(this.opts.dataDir, name), 'console.log');
    try {
      const fh = await openFile(file, 'r');
      try {
        const size = (await fh.stat()).size;
        const n = Math.min(size, bytesMax);
        const buf = Buffer.alloc(n);
        await fh.read(buf, 0, n, size - n);
        return { ok: true, value: buf.toString('utf8') };
      } finally {
        await fh.close();
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { ok: true, value: '' };
      return { ok: false, error: { code: 'internal', message: (e as Error).message } };
    }
  }

  // ---- stopping ----

  /** A clean stop: VMs stop, the host is marked as left, handles close. Idempotent. */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    const stopped: Promise<void>[] = [];
    for (const l of this.localVms.values()) {
      if (l.state !== 'running' && l.state !== 'starting') continue;
      stopped.push(
        new Promise<void>((resolve) => {
          const poll = setInterval(() => {
            if (l.state === 'stopped' || l.state === 'failed') {
              clearInterval(poll);
              resolve();
            }
          }, 20);
        }),
      );
      l.stop(false);
    }
    // The VMs get SHUTDOWN_VM_WAIT_MS to stop; the timer is cleared so that a daemon embedded in a
    // longer-lived process (tests) does not keep it alive after shutdown.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(stopped),
      new Promise((r) => (grace = setTimeout(r, SHUTDOWN_VM_WAIT_MS))),
    ]);
    clearTimeout(grace);
    if (this.apiAddress !== '') await this.register('left');
    await this.apiClose?.();
    await this.ftServer?.close();
    this.udp.close();
    await this.coord.close();
  }
}

// ---- helpers ----

interface VmBundle {
  name: string;
  spec: Versioned<VmSpec> | null;
  placement: Versioned<VmPlacement> | null;
  claim: Versioned<VmClaim> | null;
  status: Versioned<VmStatusRecord> | null;
}

function emptyBundle(): VmBundle {
  return { name: '', spec: null, placement: null, claim: null, status: null };
}

/** Groups `vms/NAME/PART` records by VM name. */
function bundle(records: Versioned[]): Map<string, VmBundle> {
  const out = new Map<string, VmBundle>();
  for (const r of records) {
    const parts = r.key.split('/');
    if (parts.length !== 3 || parts[0] !== VMS_PREFIX) continue;
    const name = parts[1]!;
    const b = out.get(name) ?? { ...emptyBundle(), name };
    const v = r.value as { v?: number };
    if (v?.v !== 1) continue;
    if (parts[2] === 'spec') b.spec = r as Versioned<VmSpec>;
    else if (parts[2] === 'placement') b.placement = r as Versioned<VmPlacement>;
    else if (parts[2] === 'claim') b.claim = r as Versioned<VmClaim>;
    else if (parts[2] === 'status') b.status = r as Versioned<VmStatusRecord>;
    out.set(name, b);
  }
  return out;
}

async function ensureCluster(
  coord: Coordinator,
): Promise<{ ok: true; value: ClusterRecord } | { ok: false; message: string }> {
  for (let attempt = 0; attempt < 3; attempt++) {
    const got = await coord.get<ClusterRecord>(KEY_CLUSTER);
    if (!got.ok) return { ok: false, message: `coordinator ${coord.description}: ${got.error.message}` };
    if (got.value !== null) {
      if (got.value.value.v !== 1)
        return { ok: false, message: 'the cluster record has an unknown format version' };
      return { ok: true, value: got.value.value };
    }
    // The first host creates the cluster's secrets; a racing first host loses and reads them.
    const rec: ClusterRecord = {
      v: 1,
      clusterId: randomBytes(16).toString('hex'),
      secretHex: randomBytes(32).toString('hex'),
      tokenHex: randomBytes(32).toString('hex'),
    };
    const put = await coord.put(KEY_CLUSTER, rec, 'absent');
    if (put.ok) return { ok: true, value: rec };
    if (put.error.code !== 'conflict')
      return { ok: false, message: `coordinator ${coord.description}: ${put.error.message}` };
  }
  return { ok: false, message: 'could not read or create the cluster record' };
}

function fail(code: HostStartError['code'], message: string): { ok: false; error: HostStartError } {
  return { ok: false, error: { code, message } };
}
function unavailable(): { ok: false; error: { code: 'unavailable'; message: string } } {
  return { ok: false, error: { code: 'unavailable', message: 'the coordinator cannot be reached' } };
}
function notFound(name: string): { ok: false; error: { code: 'not-found'; message: string } } {
  return { ok: false, error: { code: 'not-found', message: `no VM named ${name}` } };
}
function conflict(message: string): { ok: false; error: { code: 'conflict'; message: string } } {
  return { ok: false, error: { code: 'conflict', message } };
}
function invalid(message: string): { ok: false; error: { code: 'invalid'; message: string } } {
  return { ok: false, error: { code: 'invalid', message } };
}
