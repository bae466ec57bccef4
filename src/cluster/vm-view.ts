/**
 * The VM's status as people and scripts see it (`vm show --json`), derived
 * from the coordinator's records and a host's view of its peers.
 *
 * Role: one pure function used by the host API and by the CLI when no host
 * answers (it then reads the coordinator directly), so both say the same.
 *
 * Invariants:
 * - The state comes from the report of the host the placement names, at the
 *   placement's generation; a report from another host or generation is
 *   stale and never shown as current.
 * - Nothing here claims protection: `protection` is 'off' unless FT is
 *   wished, and then 'unprotected' with a reason until a live backup's
 *   acknowledgements say otherwise (issue 5 fills that in from the backup).
 */
import type { VmStatus } from '../api/backend.js';
import type { VmClaim, VmPlacement, VmSpec, VmStatusRecord } from '../coord/records.js';
import type { PeerView } from './reconcile.js';

export interface VmRecords {
  spec: VmSpec;
  placement: VmPlacement | null;
  status: VmStatusRecord | null;
  claim: VmClaim | null;
}

/** Why a primary runs without a backup, when FT was switched off (the daemon says so). */
export const FT_OFF_REASON = 'fault tolerance is off';

/**
 * The reason to show for an FT VM without an attached backup. Just after FT
 * is switched on, the primary still reports why it ran alone (FT was off)
 * until it names a backup; that reason is no longer true.
 */
export function ftReason(reported: string | null): string {
  if (reported === null) return 'no backup host is attached';
  return reported === FT_OFF_REASON ? 'naming a backup host' : reported;
}

export function vmView(r: VmRecords, hosts: ReadonlyMap<string, PeerView> | null): VmStatus {
  const { spec, placement, status } = r;
  const primary = placement?.primary ?? null;
  const current =
    status !== null &&
    placement !== null &&
    status.host === primary &&
    status.generation === placement.generation
      ? status
      : null;
  let state: VmStatus['state'];
  let reason: string | null = null;
  if (current !== null) {
    state = current.state;
    // A failure or stop says why; a start that waits (for a fence, say) says what for.
    if (state === 'failed' || state === 'stopped' || state === 'starting') reason = current.message;
  } else if (spec.desired === 'running') {
    state = 'starting';
    reason = primary === null ? 'waiting for a host' : null;
  } else {
    state = 'stopped';
  }
  if (spec.desired === 'stopped' && state === 'running') state = 'running'; // still stopping
  if (primary !== null && hosts !== null && (state === 'running' || state === 'starting')) {
    const view = hosts.get(primary) ?? 'unknown';
    if (view === 'down' || view === 'unknown' || view === 'left')
      reason = `host ${primary} is ${view === 'unknown' ? 'not registered' : view}`;
    else if (view === 'suspect') reason = `host ${primary} is not answering heartbeats`;
  }
  // Protection and lag are the primary's live view (from its backup's acknowledgements), never the wish.
  const live = spec.ft && state === 'running' ? (current?.ft ?? null) : null;
  // Lag exists only while a backup is attached.
  const attached = live !== null && (live.protection === 'syncing' || live.protection === 'protected');
  return {
    name: spec.name,
    state,
    ft: spec.ft,
    protection: !spec.ft ? 'off' : (live?.protection ?? 'unprotected'),
    reason:
      reason ??
      (spec.ft && live?.protection !== 'protected' && live?.protection !== 'syncing'
        ? ftReason(live?.reason ?? null)
        : null),
    primary,
    backup: placement?.backup ?? null,
    address: spec.listen,
    lagMs: !attached || live.lagMs === null ? null : Math.round(live.lagMs),
    lagEvents: !attached ? null : (live.lagEvents ?? null),
    lagBytes: !attached ? null : (live.lagBytes ?? null),
    heldOutputs: live?.heldOutputs ?? null,
    // The log's figures exist for every running VM (all record), FT or not.
    logBytes: state === 'running' ? (current?.ft?.logBytes ?? null) : null,
    logFileBytes: state === 'running' ? (current?.ft?.logFileBytes ?? null) : null,
    logEvents: state === 'running' ? (current?.ft?.logEvents ?? null) : null,
    clone: live !== null && live.protection === 'reprotecting' ? (live.clone ?? null) : null,
    sampledAtMs: state === 'running' ? (current?.ft?.sampledAtMs ?? null) : null,
    desired: spec.desired,
    generation: placement?.generation ?? 0,
    wasm: spec.wasmPath,
    disk: spec.disk,
    exitCode: current?.exitCode ?? null,
  };
}
