/**
 * The interface the host daemon implements for the host API (and, re-exported
 * from wire.ts, the plain types the API serves).
 *
 * Role: the contract between src/api (HTTP, auth, validation) and src/host
 * (the daemon that knows the truth). The API server never decides anything;
 * it validates, authenticates and calls a HostBackend.
 *
 * Invariants:
 * - Backend methods return expected failures as values; the server maps
 *   their codes to HTTP statuses (ApiErrorCode → status in server.ts).
 */
import type {
  ApiResult,
  VmStatus,
  HostInfo,
  HostStatus,
  CreateVmRequest,
  SetFtRequest,
  MigrateRequest,
  CloneRequest,
  ClusterEvent,
  EventScope,
  EventsPage,
  ModuleInfo,
  KillHostAnswer,
} from './wire.js';

export * from './wire.js';

/** What the daemon offers the API server. Every method is safe to call concurrently. */
export interface HostBackend {
  info(): HostInfo;
  /** Whether this host runs the VM as its live primary right now (for load balancers). */
  isPrimaryFor(vm: string): boolean;
  /** The token every call except health needs. */
  token(): string;
  listHosts(): Promise<ApiResult<HostStatus[]>>;
  listVms(): Promise<ApiResult<VmStatus[]>>;
  getVm(name: string): Promise<ApiResult<VmStatus>>;
  createVm(req: CreateVmRequest): Promise<ApiResult<VmStatus>>;
  startVm(name: string): Promise<ApiResult<VmStatus>>;
  stopVm(name: string): Promise<ApiResult<VmStatus>>;
  /** Test failover of an FT VM: the backup takes over through the same path as a real failure. */
  failoverVm(name: string): Promise<ApiResult<VmStatus>>;
  /** Switches fault tolerance on or off on a VM, running or not, without a restart. */
  setFt(name: string, req: SetFtRequest): Promise<ApiResult<VmStatus>>;
  /**
   * Asks for the running VM to move to another host (live migration): the
   * answer comes at once; the move shows in the VM's primary and generation.
   */
  migrateVm(name: string, req: MigrateRequest): Promise<ApiResult<VmStatus>>;
  removeVm(name: string): Promise<ApiResult<void>>;
  /** The tail of the VM's console log (stdout and stderr), at most `bytesMax` bytes. */
  vmLogs(name: string, bytesMax: number): Promise<ApiResult<string>>;
  /**
   * Host to host: a snapshot of this host's FT primary for the backup the
   * placement names (the live clone), and where in the log that backup's
   * stream starts. Only the primary's host answers.
   */
  cloneVm(name: string, req: CloneRequest): Promise<ApiResult<CloneAnswer>>;
  /**
   * A snapshot file of the running VM (docs/SNAPSHOT-FORMAT.md), with its
   * disk as at the cut. Only the primary's host answers.
   */
  snapshotVm(name: string): Promise<ApiResult<{ body: Buffer[] }>>;
  /** The events after `after` in this host's own feed or in the merged cluster feed. */
  events(scope: EventScope, after: number, limit: number): EventsPage;
  /** Calls `fn` with each event the cluster feed receives from now on; returns the unsubscribe function. */
  subscribeEvents(fn: (e: ClusterEvent) => void): () => void;
  /** Prometheus text exposition of this host's metrics. */
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Stores an uploaded module on this host, named by its SHA-256. */
  uploadModule(bytes: Buffer): Promise<ApiResult<ModuleInfo>>;
  /** The file of the module with this SHA-256 when this host's store holds it (peers fetch it so). */
  moduleFile(sha256: string): Promise<ApiResult<{ path: string; bytes: number }>>;
  /** "Simulate host failure": SIGKILL of a host process on this same machine. */
  killHost(name: string): Promise<ApiResult<KillHostAnswer>>;
}

export interface CloneAnswer {
  /** The log position the snapshot matches: the backup asks the channel for the stream from here. */
  start: { offset: number; events: number };
  /**
   * The snapshot stream (docs/SNAPSHOT-FORMAT.md), written while it is sent:
   * the backup reads memory while the primary still writes the rest.
   */
  body: AsyncIterable<Buffer> | Buffer[];
}
