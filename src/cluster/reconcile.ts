/**
 * Reconciliation: what one host should do about one VM, given the desired
 * state in the coordinator and what this host sees.
 *
 * Role: the control plane's decision logic, as a pure function. The host
 * daemon (src/host/daemon.ts) gathers the inputs (records read from the
 * coordinator, its failure detector's view, its own VMs), calls decide(), and
 * carries out the actions. Nothing here reads a clock or does I/O.
 *
 * Invariants (each is a rule the daemon relies on for safety):
 * - Placement changes only by a test-and-set on the placement record's
 *   version, so two hosts that decide at once cannot both win a generation.
 * - A host takes a VM over from another host only when (a) its own failure
 *   detector says that host is down or gone, (b) it has watched that host's
 *   claim stand still for longer than the claim's TTL plus a margin, and
 *   (c) it will fence the old host before starting the VM (the action says
 *   so). A lease alone is not enough: a paused process can wake and emit.
 * - A host runs a VM only at the generation that names it primary; a local
 *   copy at any other generation is stopped with its held outputs dropped.
 * - Choosing a host is deterministic from the same view, so hosts that agree
 *   on membership propose the same host and do not duel.
 *
 * FT VMs (spec.ft, decideFt) add a backup to the placement. Either member
 * that loses the other continues only after winning generation N+1 by
 * test-and-set (DESIGN.md §3.3): the backup then goes live ('promote'), the
 * primary releases what it held and runs alone ('adopt'). A backup takes
 * over without waiting for the primary's claim: the Output Rule already
 * keeps a zombie primary silent (nothing it emits was acknowledged by a
 * backup that went live), and fencing keeps it off the service address.
 * Adding a backup keeps the generation: it changes no one's right to run.
 *
 * Every VM runs with its log recorded, so FT can be switched on and off
 * while it runs: on, the primary names a backup (a live clone of it);
 * off, the primary removes the backup from the placement by test-and-set
 * (so it can no longer take over) before its outputs stop waiting for it.
 *
 * A live migration to host T (spec.migrate, at the placement's generation)
 * rides on the same pair: the primary names T as its backup (replacing any
 * other), and once T is protected the primary hands over by writing
 * generation N+1 with T as primary, exactly as a test failover does. T goes
 * live, the old copy sees it lost its place and stops.
 */
import type { VmPlacement, VmSpec, VmRunState } from '../coord/records.js';

export type PeerView = 'up' | 'suspect' | 'down' | 'left' | 'unknown';

export interface ClaimObservation {
  holder: string;
  generation: number;
  /** How long this host has seen the claim's counter stand still, in ms of its own clock. */
  unchangedMs: number;
  ttlMs: number;
}

export interface LocalVm {
  generation: number;
  state: VmRunState;
  /** What the local copy is: the VM itself (the default), or an FT backup replaying it. */
  role?: 'primary' | 'backup';
}

export interface ReconcileInput {
  self: string;
  spec: VmSpec | null;
  placement: { value: VmPlacement; version: string } | null;
  claim: ClaimObservation | null;
  /** This host's view of every registered host (itself included, as 'up'). */
  hosts: ReadonlyMap<string, PeerView>;
  /** How many VMs each host is primary for, to spread new placements. */
  loads: ReadonlyMap<string, number>;
  /** This host's own copy of the VM, if it has one. */
  local: LocalVm | null;
  /** Extra time beyond a claim's TTL before it counts as expired (clock-rate slack). */
  claimExpiryMarginMs: number;
  /**
   * How long this host has seen the placement record unchanged (ms of its
   * own clock); absent: long ago. A primary that won its generation claims
   * it only after fencing and starting, so until its claim appears, the
   * placement's age stands in for the claim's.
   */
  placementUnchangedMs?: number;
  /** This host's claim TTL, for a primary whose claim has not appeared yet. */
  claimTtlMs?: number;
  /** FT primary here: its backup's session closed, or the backup never attached in time. */
  ftBackupLost?: boolean;
  /**
   * Hosts not to name as a new backup: the member this host just took over
   * from or dropped. Its failure detector may not have judged it down yet
   * (a crash breaks the FT channel at once, heartbeats take seconds), and
   * a backup named on a dead host only delays protection by a generation.
   */
  avoidAsBackup?: ReadonlySet<string>;
  /** FT backup here: its session with the primary closed. */
  ftPrimaryLost?: boolean;
  /**
   * FT primary here: its backup is protected, live and as reported in the
   * coordinator's status record (so the backup will see it caught up). A
   * migration hands over only then.
   */
  ftProtected?: boolean;
  /** FT primary here: the incarnation of its attached backup (a handover names it as caught up). */
  ftBackupIncarnation?: string;
  /**
   * FT backup here: the primary has reported this pair protected at this
   * generation (the backup caught up with everything the primary had released
   * before it attached). A backup still syncing cannot take over: outputs of
   * calls it has not received may have left while the primary ran alone.
   */
  ftBackupCaughtUp?: boolean;
  /**
   * FT primary host that lost its copy (it restarted): it has waited long
   * enough for its backup to take over, and the backup has not (it holds no
   * live replica, e.g. its host restarted too). The VM then starts from this
   * host's disk rather than wait forever.
   */
  ftBackupTakeoverOverdue?: boolean;
}

export type ReconcileAction =
  /** Test-and-set the placement to `placement` (expecting `expectVersion`, null: absent), then act on it. */
  | {
      type: 'place';
      expectVersion: string | null;
      placement: VmPlacement;
      /** A host to fence before the VM may start here, or null. */
      fence: string | null;
    }
  /** Start the VM here at this generation (claim first, then start); an FT backup when role says so. */
  | { type: 'start'; generation: number; role?: 'primary' | 'backup' }
  /** FT: this host's backup won `generation`: fence (if pending), then go live. */
  | { type: 'promote'; generation: number }
  /** FT: this host's primary won `generation` without its backup: release what it held, run alone. */
  | { type: 'adopt'; generation: number }
  /** Stop the local copy; `discardOutputs` when it lost its generation (never release what it held). */
  | { type: 'stop'; discardOutputs: boolean; reason: string }
  /** The VM's spec is gone: stop the local copy and delete its local data. */
  | { type: 'remove-local' }
  /** The VM cannot be taken over yet; the reason is shown to people. */
  | { type: 'wait'; reason: string };

/** Picks the host for a VM: the up host with the fewest VMs, then by name. Null when none is up. */
export function chooseHost(
  hosts: ReadonlyMap<string, PeerView>,
  loads: ReadonlyMap<string, number>,
  exclude: string | null,
): string | null {
  let best: string | null = null;
  let bestLoad = Infinity;
  for (const [name, view] of [...hosts].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (view !== 'up' || name === exclude) continue;
    const load = loads.get(name) ?? 0;
    if (load < bestLoad) {
      best = name;
      bestLoad = load;
    }
  }
  return best;
}

/** Whether a host can no longer run anything, as far as this host can tell. */
function gone(view: PeerView | undefined): boolean {
  return view === undefined || view === 'down' || view === 'left' || view === 'unknown';
}

/**
 * Whether a takeover from `holder` (primary at `generation`) must still wait
 * for its claim: its claim on that generation has stood still for less than
 * the TTL and margin, or, if it has not claimed that generation yet (it won
 * the placement and is fencing or starting), the placement has stood still
 * for less than that. A host that left cleanly runs nothing: no wait.
 */
function waitForClaim(input: ReconcileInput, holder: string, generation: number): ReconcileAction | null {
  if (input.hosts.get(holder) === 'left') return null;
  const claim = input.claim;
  const margin = input.claimExpiryMarginMs;
  if (claim !== null && claim.holder === holder && claim.generation === generation) {
    if (claim.unchangedMs <= claim.ttlMs + margin)
      return { type: 'wait', reason: `waiting for ${holder}'s claim to expire` };
    return null;
  }
  const ttlMs = input.claimTtlMs ?? claim?.ttlMs ?? 0;
  if ((input.placementUnchangedMs ?? Infinity) <= ttlMs + margin)
    return {
      type: 'wait',
      reason: `waiting for ${holder} to claim generation ${generation}, or for that to lapse`,
    };
  return null;
}

/** The host a migration asks the VM to move to, while it applies (see VmSpec.migrate). */
export function migrationTarget(spec: VmSpec, placement: VmPlacement | null): string | null {
  const m = spec.migrate;
  if (m == null || placement === null || placement.primary === null) return null;
  if (m.generation !== placement.generation || m.to === placement.primary) return null;
  return m.to;
}

export function decide(input: ReconcileInput): ReconcileAction[] {
  const { self, spec, placement, local } = input;
  if (spec === null) return local !== null ? [{ type: 'remove-local' }] : [];
  // A backup in play (FT on, a migration, or one still named or running after FT was switched off)
  // is decideFt's business.
  if (
    spec.ft ||
    migrationTarget(spec, placement?.value ?? null) !== null ||
    (placement?.value.backup ?? null) !== null ||
    local?.role === 'backup'
  )
    return decideFt(input, spec);

  const p = placement?.value ?? null;
  const actions: ReconcileAction[] = [];
  // A local copy that is not the current generation's primary lost its place: it stops first.
  if (local !== null && local.state !== 'stopped' && local.state !== 'failed') {
    if (p === null || p.primary !== self || p.generation !== local.generation) {
      return [{ type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' }];
    }
  }

  if (spec.desired === 'stopped') {
    if (local !== null && (local.state === 'running' || local.state === 'starting'))
      actions.push({ type: 'stop', discardOutputs: false, reason: 'stopped by request' });
    return actions;
  }

  // desired: running
  if (p === null || p.primary === null) {
    const chosen = chooseHost(input.hosts, input.loads, null);
    if (chosen === null) return [{ type: 'wait', reason: 'no host is up to run it' }];
    if (chosen !== self) return [];
    return [
      {
        type: 'place',
        expectVersion: placement?.version ?? null,
        placement: { v: 1, generation: (p?.generation ?? 0) + 1, primary: self, backup: null },
        fence: null,
      },
    ];
  }

  if (p.primary === self) {
    if (local === null || local.generation !== p.generation)
      return [{ type: 'start', generation: p.generation }];
    // A copy that stopped or failed at this generation stays so until someone asks to start it again.
    return [];
  }

  // Another host is primary. Take over only if it is gone and its claim has expired.
  const holder = p.primary;
  const view = input.hosts.get(holder);
  if (!gone(view)) return [];
  const claimWait = waitForClaim(input, holder, p.generation);
  if (claimWait !== null) return [claimWait];
  const chosen = chooseHost(input.hosts, input.loads, holder);
  if (chosen === null) return [{ type: 'wait', reason: 'no host is up to take it over' }];
  if (chosen !== self) return [];
  return [
    {
      type: 'place',
      expectVersion: placement!.version,
      placement: { v: 1, generation: p.generation + 1, primary: self, backup: null },
      fence: holder,
    },
  ];
}

/**
 * decide() for a VM with a backup in play: a primary and a backup, each
 * continuing alone only by winning N+1. A backup is wanted while FT is on or
 * a migration applies; otherwise one still named is dropped.
 */
function decideFt(input: ReconcileInput, spec: VmSpec): ReconcileAction[] {
  const { self, placement } = input;
  const target = migrationTarget(spec, placement?.value ?? null);
  const wantBackup = spec.ft || target !== null;
  const local = input.local === null ? null : { ...input.local, role: input.local.role ?? 'primary' };
  const p = placement?.value ?? null;
  const active = local !== null && (local.state === 'running' || local.state === 'starting');
  if (active) {
    const asPrimary =
      p !== null &&
      p.primary === self &&
      local.role === 'primary' &&
      (local.generation === p.generation || (local.generation < p.generation && p.backup === null));
    const asBackup =
      p !== null && p.backup === self && local.role === 'backup' && local.generation === p.generation;
    const promotable =
      p !== null && p.primary === self && local.role === 'backup' && local.generation < p.generation;
    if (!asPrimary && !asBackup && !promotable)
      return [{ type: 'stop', discardOutputs: true, reason: 'another host holds the VM now' }];
  }
  if (spec.desired === 'stopped') {
    return active ? [{ type: 'stop', discardOutputs: false, reason: 'stopped by request' }] : [];
  }
  const expectVersion = placement?.version ?? null;
  if (p === null || p.primary === null) {
    const chosen = chooseHost(input.hosts, input.loads, null);
    if (chosen === null) return [{ type: 'wait', reason: 'no host is up to run it' }];
    if (chosen !== self) return [];
    // The backup is named once the primary runs: it starts from the disk the primary's log starts from.
    return [
      {
        type: 'place',
        expectVersion,
        placement: { v: 1, generation: (p?.generation ?? 0) + 1, primary: self, backup: null },
        fence: null,
      },
    ];
  }
  if (p.primary === self) {
    if (active && local.role === 'backup') {
      // Only a backup that caught up may go live; one still syncing lacks outputs already seen.
      if (input.ftBackupCaughtUp !== true)
        return [
          { type: 'stop', discardOutputs: true, reason: 'a backup that had not caught up cannot go live' },
        ];
      return [{ type: 'promote', generation: p.generation }];
    }
    if (active && local.generation < p.generation) return [{ type: 'adopt', generation: p.generation }];
    if (!active || local.generation !== p.generation) {
      // A copy that stopped or failed at this generation stays so until someone asks to start it again.
      if (local !== null && local.generation === p.generation && local.role === 'primary') return [];
      // This host lost its copy (it restarted) while a backup holds the VM's state: starting
      // afresh here would throw that state away. The backup takes over (its session closed).
      if (p.backup !== null && !gone(input.hosts.get(p.backup)) && input.ftBackupTakeoverOverdue !== true)
        return [{ type: 'wait', reason: `its backup ${p.backup} holds the VM's state and takes over` }];
      return [{ type: 'start', generation: p.generation, role: 'primary' }];
    }
    if (!wantBackup) {
      // FT was switched off (or a migration ended) with a backup still named: the placement drops
      // it first, so it can no longer take over; then outputs stop waiting for it (the daemon).
      if (p.backup !== null)
        return [{ type: 'place', expectVersion, placement: { ...p, backup: null }, fence: null }];
      return [];
    }
    if (target !== null) {
      // A migration: the target becomes the backup (replacing another), then takes over.
      if (input.hosts.get(target) !== 'up')
        return [{ type: 'wait', reason: `migration target ${target} is not up` }];
      if (p.backup !== target)
        return [{ type: 'place', expectVersion, placement: { ...p, backup: target }, fence: null }];
      if (input.ftProtected === true && input.ftBackupLost !== true)
        return [
          {
            type: 'place',
            expectVersion,
            placement: {
              v: 1,
              generation: p.generation + 1,
              primary: target,
              backup: null,
              ...(input.ftBackupIncarnation !== undefined ? { caughtUp: input.ftBackupIncarnation } : {}),
            },
            fence: null,
          },
        ];
    }
    if (p.backup === null) {
      const avoid = input.avoidAsBackup;
      const candidates =
        avoid === undefined || avoid.size === 0
          ? input.hosts
          : new Map([...input.hosts].filter(([name]) => !avoid.has(name)));
      const b = chooseHost(candidates, input.loads, self);
      if (b === null) return [{ type: 'wait', reason: 'no other host is up to hold a backup' }];
      return [{ type: 'place', expectVersion, placement: { ...p, backup: b }, fence: null }];
    }
    // Lost means its session closed, it never attached, or its host went silent (the daemon
    // judges that with the acks: the detector alone may still be judging an older incarnation).
    if (input.hosts.get(p.backup) === 'left' || input.ftBackupLost === true) {
      return [
        {
          type: 'place',
          expectVersion,
          placement: { v: 1, generation: p.generation + 1, primary: self, backup: null },
          fence: null,
        },
      ];
    }
    return [];
  }
  if (p.backup === self) {
    const primaryView = input.hosts.get(p.primary);
    const primaryGone = gone(primaryView);
    // Only a live replica at this generation can take over: without one there is nothing to go live.
    const replica =
      active &&
      local.role === 'backup' &&
      local.generation === p.generation &&
      local.state === 'running' &&
      input.ftBackupCaughtUp === true;
    if (replica && (primaryGone || input.ftPrimaryLost === true)) {
      return [
        {
          type: 'place',
          expectVersion,
          placement: { v: 1, generation: p.generation + 1, primary: self, backup: null },
          // A primary that still answers heartbeats lost only its channel to us: it stops when it
          // sees the generation, and nothing it emits meanwhile was acknowledged. Fencing a whole
          // host for one VM's channel would be out of proportion. One that is silent is fenced.
          fence: primaryGone || primaryView === 'suspect' ? p.primary : null,
        },
      ];
    }
    if (!primaryGone || input.ftBackupCaughtUp === true) {
      if (!active || local.generation !== p.generation || local.role !== 'backup')
        return [{ type: 'start', generation: p.generation, role: 'backup' }];
      return [];
    }
    // The primary is gone and this backup had not caught up: as if both were lost (below).
  }
  // Another host is primary. While its backup lives, the backup takes over, not us.
  if (p.backup !== null && p.backup !== self && !gone(input.hosts.get(p.backup))) return [];
  if (!gone(input.hosts.get(p.primary))) return [];
  // Both members are gone: restart from this host's disk copy, as an unprotected VM would.
  const claimWait = waitForClaim(input, p.primary, p.generation);
  if (claimWait !== null) return [claimWait];
  const chosen = chooseHost(input.hosts, input.loads, p.primary);
  if (chosen === null) return [{ type: 'wait', reason: 'no host is up to take it over' }];
  if (chosen !== self) return [];
  return [
    {
      type: 'place',
      expectVersion,
      placement: { v: 1, generation: p.generation + 1, primary: self, backup: null },
      fence: p.primary,
    },
  ];
}
