/**
 * The host's Prometheus metrics (`GET /metrics`), through prom-client.
 *
 * Role: turns what the daemon knows right now — its VM copies, their FT
 * figures, its peers' heartbeat round trips — into Prometheus text when
 * scraped. It reads through a MetricsSource and keeps only what a rate
 * needs (a short window of log samples) and what counts events over time
 * (go-lives). It decides nothing.
 *
 * Invariants:
 * - Each host reports the VM copies it runs (primary or backup, as the
 *   `role` label says) and its own view of its peers; a cluster's picture is
 *   the union of its hosts' scrapes, as Prometheus expects of targets.
 * - Lag and the log's figures come from the primary's live view (its
 *   backup's acknowledgements), never from the desired state.
 * - The registry is per daemon, never prom-client's global one, so several
 *   daemons in one process (tests) do not mix their series.
 * - Units are in the names, in Prometheus' base units (seconds, bytes).
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Protection } from '../api/backend.js';

/** The window over which `lockstep_vm_log_bytes_per_second` is measured. */
export const LOG_RATE_WINDOW_MS = 5000;

const PROTECTIONS: readonly Protection[] = ['off', 'unprotected', 'reprotecting', 'syncing', 'protected'];
const VM_STATES = ['starting', 'running', 'stopped', 'failed'] as const;

export interface VmCopyFigures {
  name: string;
  role: 'primary' | 'backup';
  state: (typeof VM_STATES)[number];
  generation: number;
  /** Null for a backup (only the primary knows), and 'off' for a primary without FT. */
  protection: Protection | null;
  lagMs: number | null;
  lagBytes: number | null;
  lagEvents: number | null;
  heldOutputs: number | null;
  logBytes: number | null;
  logEvents: number | null;
}

export interface PeerFigures {
  name: string;
  state: string;
  rttMsMedian: number | null;
}

export interface MetricsSource {
  vms(): VmCopyFigures[];
  peers(): PeerFigures[];
}

interface LogSample {
  atMs: number;
  generation: number;
  logBytes: number;
}

export class HostMetrics {
  readonly registry = new Registry();
  private readonly failovers: Counter<'vm'>;
  /** Per VM: recent log samples, oldest first, within LOG_RATE_WINDOW_MS. */
  private readonly logSamples = new Map<string, LogSample[]>();

  constructor(
    host: string,
    private readonly src: MetricsSource,
    private readonly nowMs: () => number,
  ) {
    this.registry.setDefaultLabels({ host });
    collectDefaultMetrics({ register: this.registry, prefix: 'lockstep_process_' });
    const r = [this.registry];
    // Every gauge below is filled from the source at scrape time, so a VM that went away goes too.
    const source = this.src;
    const primaries = (): VmCopyFigures[] => this.primaries();
    const logRate = (vm: string): number | null => this.logRate(vm);
    new Gauge({
      name: 'lockstep_vm_state',
      help: 'The VM copy on this host: 1 for its current state, 0 for the others',
      labelNames: ['vm', 'role', 'state'],
      registers: r,
      collect() {
        this.reset();
        for (const v of source.vms())
          for (const s of VM_STATES) this.set({ vm: v.name, role: v.role, state: s }, v.state === s ? 1 : 0);
      },
    });
    new Gauge({
      name: 'lockstep_vm_generation',
      help: 'The generation the VM copy on this host runs at',
      labelNames: ['vm', 'role'],
      registers: r,
      collect() {
        this.reset();
        for (const v of source.vms()) this.set({ vm: v.name, role: v.role }, v.generation);
      },
    });
    new Gauge({
      name: 'lockstep_vm_ft_state',
      help: 'FT protection of a VM this host runs as primary: 1 for the current state, 0 for the others',
      labelNames: ['vm', 'protection'],
      registers: r,
      collect() {
        this.reset();
        for (const v of primaries())
          for (const p of PROTECTIONS) this.set({ vm: v.name, protection: p }, v.protection === p ? 1 : 0);
      },
    });
    /**
     * A series per primary VM, read at scrape time. Counters are set from the VM's own count
     * (reset, then incremented by it): a new generation starts it again, which Prometheus reads
     * as a counter reset.
     */
    const perPrimary = (
      type: 'gauge' | 'counter',
      name: string,
      help: string,
      pick: (v: VmCopyFigures) => number | null,
    ): void => {
      const collect = function (this: Gauge<'vm'> | Counter<'vm'>): void {
        this.reset();
        for (const v of primaries()) {
          const x = pick(v);
          if (x === null) continue;
          if (this instanceof Gauge) this.set({ vm: v.name }, x);
          else this.inc({ vm: v.name }, x);
        }
      };
      const config = { name, help, labelNames: ['vm'] as const, registers: r, collect };
      if (type === 'gauge') new Gauge(config);
      else new Counter(config);
    };
    const primaryGauge = (name: string, help: string, pick: (v: VmCopyFigures) => number | null): void =>
      perPrimary('gauge', name, help, pick);
    const primaryCounter = (name: string, help: string, pick: (v: VmCopyFigures) => number | null): void =>
      perPrimary('counter', name, help, pick);
    primaryGauge(
      'lockstep_vm_lag_seconds',
      'How far the backup is behind: age of the oldest unacknowledged log frame (only while one is attached)',
      (v) => (v.lagMs === null ? null : v.lagMs / 1000),
    );
    primaryGauge(
      'lockstep_vm_lag_bytes',
      'Log bytes written and not yet acknowledged by the backup (only while one is attached)',
      (v) => v.lagBytes,
    );
    primaryGauge(
      'lockstep_vm_lag_events',
      'Host calls logged and not yet acknowledged by the backup (only while one is attached)',
      (v) => v.lagEvents,
    );
    primaryGauge(
      'lockstep_vm_held_outputs',
      'Outputs written by the guest and held until the backup has their inputs',
      (v) => v.heldOutputs,
    );
    primaryGauge(
      'lockstep_vm_log_bytes_per_second',
      `Event-log bandwidth over the last ${LOG_RATE_WINDOW_MS / 1000} s`,
      (v) => logRate(v.name),
    );
    primaryCounter(
      'lockstep_vm_log_bytes_total',
      'Event-log bytes the VM produced at its current generation',
      (v) => v.logBytes,
    );
    primaryCounter(
      'lockstep_vm_log_events_total',
      'Host calls the VM logged at its current generation (its throughput)',
      (v) => v.logEvents,
    );
    this.failovers = new Counter({
      name: 'lockstep_vm_failovers_total',
      help: 'Go-lives on this host: a backup that took over (sum over hosts for the cluster)',
      labelNames: ['vm'],
      registers: r,
    });
    new Gauge({
      name: 'lockstep_host_heartbeat_rtt_seconds',
      help: 'Median heartbeat round trip to each peer, as this host measures it',
      labelNames: ['peer'],
      registers: r,
      collect() {
        this.reset();
        for (const p of source.peers())
          if (p.rttMsMedian !== null) this.set({ peer: p.name }, p.rttMsMedian / 1000);
      },
    });
    new Gauge({
      name: 'lockstep_host_peer_up',
      help: "1 when this host's failure detector sees the peer up, 0 otherwise",
      labelNames: ['peer', 'state'],
      registers: r,
      collect() {
        this.reset();
        for (const p of source.peers()) this.set({ peer: p.name, state: p.state }, p.state === 'up' ? 1 : 0);
      },
    });
  }

  /** A backup on this host went live for `vm`. */
  noteFailover(vm: string): void {
    this.failovers.inc({ vm });
  }

  /** Takes a sample of every primary's log (called about once a second), for the bandwidth gauge. */
  sample(): void {
    const now = this.nowMs();
    const seen = new Set<string>();
    for (const v of this.primaries()) {
      if (v.logBytes === null) continue;
      seen.add(v.name);
      let samples = this.logSamples.get(v.name);
      // A new generation restarts the count: the old samples would make a negative rate.
      if (samples === undefined || samples.at(-1)?.generation !== v.generation) {
        samples = [];
        this.logSamples.set(v.name, samples);
      }
      samples.push({ atMs: now, generation: v.generation, logBytes: v.logBytes });
      while (samples.length > 2 && now - samples[0]!.atMs > LOG_RATE_WINDOW_MS) samples.shift();
    }
    for (const name of this.logSamples.keys()) if (!seen.has(name)) this.logSamples.delete(name);
  }

  /** Bytes per second over the window, or null with fewer than two samples. */
  logRate(vm: string): number | null {
    const s = this.logSamples.get(vm);
    if (s === undefined || s.length < 2) return null;
    const first = s[0]!;
    const last = s[s.length - 1]!;
    const dtMs = last.atMs - first.atMs;
    if (dtMs <= 0) return null;
    return Math.max(0, ((last.logBytes - first.logBytes) * 1000) / dtMs);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  private primaries(): VmCopyFigures[] {
    return this.src.vms().filter((v) => v.role === 'primary' && v.state === 'running');
  }
}
