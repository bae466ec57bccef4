/**
 * The host API's wire format as plain types: what the API accepts and
 * answers, shared by the server, the CLI's client and the web console.
 *
 * Role: types only (and the list of event kinds), with no Node.js
 * dependency, so the browser console imports them as they are.
 *
 * Invariants:
 * - VmStatus has exactly the fields and states of DESIGN.md §5 (`vm show
 *   --json`), plus the extra fields below; none is renamed.
 * - src/api/schema.ts describes exactly these types (checked at compile time).
 */
import type { VmRunState } from '../coord/records.js';

export type { VmRunState };

export type Protection = 'off' | 'syncing' | 'protected' | 'reprotecting' | 'unprotected';

export interface VmStatus {
  name: string;
  state: VmRunState;
  ft: boolean;
  protection: Protection;
  /** Why protection is 'unprotected', or why the VM failed; null otherwise. */
  reason: string | null;
  primary: string | null;
  backup: string | null;
  /** "IP:PORT". */
  address: string;
  lagMs: number | null;
  /** FT: the lag in events and in log bytes (written, not yet acknowledged by the backup), or null. */
  lagEvents: number | null;
  lagBytes: number | null;
  /** Extra fields. */
  desired: 'running' | 'stopped';
  generation: number;
  wasm: string;
  disk: string | null;
  exitCode: number | null;
  /** FT primary: outputs written and not yet released by the backup (a gauge), or null. */
  heldOutputs: number | null;
  /**
   * Live on the primary's host, null elsewhere: bytes of event log the VM has
   * produced at this generation, and the size of its log file now (the part
   * a backup may still be sent; bounded, see docs/FT.md).
   */
  logBytes: number | null;
  logFileBytes: number | null;
  /** Live like logBytes: host calls logged at this generation (the VM's throughput, as a counter). */
  logEvents: number | null;
  /** While a backup is being cloned: how far the snapshot stream is, in bytes of the estimate. */
  clone: CloneProgress | null;
  /** Epoch ms at which the primary measured the live figures above, or null when there are none. */
  sampledAtMs: number | null;
}

export interface CloneProgress {
  doneBytes: number;
  /** An estimate made at the cut: memory plus the disk's file bytes. */
  totalBytes: number;
}

export type HostState = 'up' | 'suspect' | 'down' | 'left';

export interface HostStatus {
  name: string;
  /** As this API's host sees it (its own failure detector). */
  state: HostState;
  api: string;
  peer: string;
  address: string | null;
  pid: number;
  /** Names of the VMs whose primary it is. */
  vms: string[];
  /** Median heartbeat round trip in ms, or null when unknown (or for the answering host itself). */
  heartbeatRttMs: number | null;
  /** On the same machine as the answering host (same boot id), so "simulate host failure" can kill it. */
  local: boolean;
  /** Fenced by a host that took over from it, since it last registered. */
  fenced: boolean;
}

export interface CreateVmRequest {
  name: string;
  /** Absolute path of the module on the host taking the request (the others fetch it by its hash). */
  wasm: string;
  listen: string;
  disk?: string | null;
  env?: string[];
  args?: string[];
  memoryMaxMib?: number;
  ft?: boolean;
  /** Place it on this host instead of letting the cluster choose. */
  host?: string | null;
}

export type ApiErrorCode =
  | 'invalid' // 400
  | 'unauthorized' // 401
  | 'not-found' // 404
  | 'conflict' // 409
  | 'unavailable' // 503: the coordinator or the host that runs the VM cannot be reached
  | 'internal'; // 500

export interface ApiError {
  code: ApiErrorCode;
  message: string;
}

export type ApiResult<T> = { ok: true; value: T } | { ok: false; error: ApiError };

export interface HostInfo {
  name: string;
  pid: number;
  api: string;
  clusterId: string;
}

/** One entry of the cluster's event timeline (src/host/events.ts keeps them). */
export interface ClusterEvent {
  /** Unique in the cluster: "HOST/INCARNATION/SEQ". */
  id: string;
  /** Position in the answering host's feed; resume with `?after=cursor`. */
  cursor: number;
  /** Epoch ms, by the clock of the host that saw it. */
  atMs: number;
  /** The host that saw it. */
  host: string;
  kind: EventKind;
  vm: string | null;
  generation: number | null;
  /** The other host involved: the one suspected, fenced, taken over from, cloned to… */
  peer: string | null;
  /** How long the step took, when the event ends one (go-live, fence, clone…). */
  durationMs: number | null;
  /** One sentence for people. */
  message: string;
}

export const EVENT_KINDS = [
  'host-up',
  'host-suspect',
  'host-down',
  'host-removed',
  'host-killed',
  'ft-link-lost',
  'tas-won',
  'tas-lost',
  'fence',
  'fence-failed',
  'go-live',
  'go-live-failed',
  'running-alone',
  'vm-created',
  'vm-started',
  'vm-stopped',
  'vm-failed',
  'vm-removed',
  'protection',
  'clone',
  'ft-on',
  'ft-off',
  'failover-requested',
  'migration-requested',
  'migrated',
  'outputs-held',
  'outputs-released',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

export type EventScope = 'local' | 'cluster';

export interface EventsPage {
  /** The answering host, and its incarnation (a restarted host starts its cursors again). */
  host: string;
  incarnation: string;
  /** The newest cursor of the feed: ask `?after=` this next time. */
  cursor: number;
  events: ClusterEvent[];
}

/** The largest module a host takes as an upload or serves to a peer (64 MiB). */
export const MODULE_BYTES_MAX = 64 * 1024 * 1024;

export interface ModuleInfo {
  /** Where the answering host stored it: pass it as `wasm` to create a VM. */
  path: string;
  sha256: string;
  bytes: number;
}

export interface KillHostAnswer {
  host: string;
  pid: number;
}

export interface SetFtRequest {
  enabled: boolean;
}

export interface MigrateRequest {
  /** The host to move the VM to. */
  to: string;
}

export interface CloneRequest {
  backup: string;
  incarnation: string;
  generation: number;
}
