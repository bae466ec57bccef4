// A VM's properties page (#/vm/NAME): its summary, the Fault Tolerance switch with live progress, the
// actions, live charts and the VM's own events.
//
// The page polls GET /v1/vms/NAME every VM_POLL_MS while visible (and at once when an event about the
// VM arrives), and keeps the last SAMPLES_MAX samples for the charts. Rates come from the deltas of
// the cumulative counters logBytes and logEvents between two samples of the same generation, over the
// primary's own sampling times (sampledAtMs) when it sends them: a new generation restarts the
// counters, so its first sample has no rate, and a counter that went backwards gives no rate rather
// than a negative one. Chart x values are the browser's receipt times, which are always in order,
// whereas sampledAtMs comes from whichever host is primary and can step back after a failover.
import type { ComponentChildren } from 'preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api, type HostStatus, type Result, type VmStatus } from './api';
import { ProtectionBadge, VmStateBadge } from './badges';
import { Chart, type ChartSeries } from './charts';
import { askConfirm } from './dialogs';
import { feedStore, onLiveEvent } from './events';
import { bytes, bytesPerSecond, count, durationMs, rate } from './format';
import { notify } from './notify';
import { clusterStore, dropVm, putVm, refreshCluster, useStore } from './store';
import { Timeline } from './timeline';

const VM_POLL_MS = 1000;
const SAMPLES_MAX = 120;
const LOG_TAIL_BYTES = 65536;

interface Sample {
  /** Browser receipt time, epoch seconds (uPlot's x unit). */
  xSec: number;
  lagMs: number | null;
  lagBytes: number | null;
  logBytesPerSecond: number | null;
  eventsPerSecond: number | null;
}

interface Baseline {
  generation: number;
  atMs: number;
  sampledAtMs: number | null;
  logBytes: number | null;
  logEvents: number | null;
}

/** The rate of a cumulative counter, or null when there is no honest one (see the module comment). */
function counterRate(now: number | null, before: number | null, seconds: number): number | null {
  if (now === null || before === null || seconds <= 0 || now < before) return null;
  return (now - before) / seconds;
}

/** Polls the VM and turns its answers into chart samples. */
function useVmPolling(name: string) {
  const [vm, setVm] = useState<VmStatus | null>(null);
  const [error, setError] = useState<{ code: string; message: string } | null>(null);
  const [samples, setSamples] = useState<Sample[]>([]);
  const baseline = useRef<Baseline | null>(null);
  const pollNow = useRef<() => void>(() => {});

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | null = null;
    let inFlight = false;
    const abort = new AbortController();
    baseline.current = null;
    setVm(null);
    setError(null);
    setSamples([]);

    const take = (v: VmStatus) => {
      const nowMs = Date.now();
      const prev = baseline.current;
      // A host that is not the primary repeats the figures of the last claim renewal; a repeated
      // measurement is not a new sample.
      if (
        prev &&
        v.sampledAtMs !== null &&
        v.sampledAtMs === prev.sampledAtMs &&
        v.generation === prev.generation
      ) {
        return;
      }
      let logBytesPerSecond: number | null = null;
      let eventsPerSecond: number | null = null;
      if (prev && prev.generation === v.generation) {
        const seconds =
          v.sampledAtMs !== null && prev.sampledAtMs !== null
            ? (v.sampledAtMs - prev.sampledAtMs) / 1000
            : (nowMs - prev.atMs) / 1000;
        logBytesPerSecond = counterRate(v.logBytes, prev.logBytes, seconds);
        eventsPerSecond = counterRate(v.logEvents, prev.logEvents, seconds);
      }
      baseline.current = {
        generation: v.generation,
        atMs: nowMs,
        sampledAtMs: v.sampledAtMs,
        logBytes: v.logBytes,
        logEvents: v.logEvents,
      };
      const sample: Sample = {
        xSec: nowMs / 1000,
        lagMs: v.lagMs,
        lagBytes: v.lagBytes,
        logBytesPerSecond,
        eventsPerSecond,
      };
      setSamples((s) => [...s.slice(-(SAMPLES_MAX - 1)), sample]);
    };

    const poll = async () => {
      if (stopped || inFlight) return;
      inFlight = true;
      const r = await api.vm(name, abort.signal);
      inFlight = false;
      if (stopped) return;
      if (r.ok) {
        setVm(r.value);
        setError(null);
        putVm(r.value);
        take(r.value);
      } else if (r.error.code !== 'aborted') {
        setError(r.error);
      }
    };
    const loop = async () => {
      if (document.visibilityState === 'visible') await poll();
      if (!stopped) timer = setTimeout(loop, VM_POLL_MS);
    };
    pollNow.current = () => void poll();
    void loop();
    const offEvents = onLiveEvent((e) => {
      if (e.vm === name) void poll();
    });
    return () => {
      stopped = true;
      abort.abort();
      offEvents();
      if (timer !== null) clearTimeout(timer);
    };
  }, [name]);

  return { vm, setVm, error, samples, pollNow: () => pollNow.current() };
}

function Fact({ label, children, mono }: { label: string; children: ComponentChildren; mono?: boolean }) {
  return (
    <div>
      <dt>{label}</dt>
      <dd class={mono ? 'mono' : undefined}>{children}</dd>
    </div>
  );
}

const none = <span class="muted">none</span>;

/** The text of the FT progress indicator: exactly one of off, cloning N%, catching up, protected, unprotected: REASON. */
export function ftProgressText(vm: VmStatus): string {
  // With FT switched off, whatever the primary still reports (the backup being dropped, "unprotected:
  // fault tolerance is off") is the tail of the switch, and "off" is what the user asked and gets.
  if (!vm.ft) return 'off';
  switch (vm.protection) {
    case 'reprotecting': {
      const c = vm.clone;
      if (c && c.totalBytes > 0) {
        return `cloning ${Math.min(100, Math.floor((c.doneBytes / c.totalBytes) * 100))}%`;
      }
      return 'cloning';
    }
    case 'syncing':
      return 'catching up';
    case 'protected':
      return 'protected';
    case 'unprotected':
      return `unprotected: ${vm.reason ?? 'no backup is attached'}`;
    default:
      return 'off';
  }
}

const STEPS = [
  { key: 'reprotecting', label: 'Clone' },
  { key: 'syncing', label: 'Catch up' },
  { key: 'protected', label: 'Protected' },
] as const;

function FtProgress({ vm }: { vm: VmStatus }) {
  const text = ftProgressText(vm);
  const protection = vm.ft ? vm.protection : 'off';
  const active = STEPS.findIndex((s) => s.key === protection);
  const c = vm.clone;
  const clonePct = c && c.totalBytes > 0 ? Math.min(100, (c.doneBytes / c.totalBytes) * 100) : null;
  const tone =
    protection === 'protected'
      ? 'good'
      : protection === 'unprotected'
        ? 'bad'
        : protection === 'off'
          ? 'neutral'
          : 'info';
  return (
    <div class="ft-progress-box">
      <div class={`ft-status ft-${tone}`} data-testid="ft-progress" role="status" aria-live="polite">
        {text}
      </div>
      {protection !== 'off' && protection !== 'unprotected' && (
        <ol class="steps" aria-hidden="true">
          {STEPS.map((s, i) => (
            <li key={s.key} class={i < active ? 'done' : i === active ? 'current' : ''}>
              {s.label}
            </li>
          ))}
        </ol>
      )}
      {protection === 'reprotecting' && (
        <div class="bar" aria-hidden="true">
          <div
            class={clonePct === null ? 'bar-fill indeterminate' : 'bar-fill'}
            style={{ width: `${clonePct ?? 30}%` }}
          />
        </div>
      )}
      {protection === 'reprotecting' && c && (
        <p class="muted small">
          {bytes(c.doneBytes)} of about {bytes(c.totalBytes)} sent to {vm.backup ?? 'the backup'}
        </p>
      )}
      {protection === 'syncing' && (
        <p class="muted small">
          The backup {vm.backup ?? ''} replays the log written since the clone
          {vm.lagEvents !== null ? `: ${count(vm.lagEvents)} events behind` : ''}.
        </p>
      )}
      {protection === 'protected' && (
        <p class="muted small">
          Backup on {vm.backup} in lockstep{vm.lagMs !== null ? `, ${durationMs(vm.lagMs)} behind` : ''}.
        </p>
      )}
    </div>
  );
}

function FaultTolerance({
  vm,
  hosts,
  onVm,
}: {
  vm: VmStatus;
  hosts: HostStatus[] | null;
  onVm: (vm: VmStatus) => void;
}) {
  const [busy, setBusy] = useState(false);
  const [pending, setPending] = useState<boolean | null>(null);
  const [error, setError] = useState<string | null>(null);
  const healthy = (hosts ?? []).filter((h) => h.state === 'up' && !h.fenced);
  const canProtect = hosts === null || healthy.length >= 2;
  const why =
    healthy.length === 1
      ? `Needs a second healthy host: only ${healthy[0]?.name} is up.`
      : 'Needs two healthy hosts: no host is up.';

  const apply = async (enabled: boolean): Promise<Result<VmStatus>> => {
    setBusy(true);
    setError(null);
    const r = await api.setFt(vm.name, enabled);
    setBusy(false);
    if (r.ok) {
      onVm(r.value);
      refreshCluster();
    } else {
      setError(r.error.message);
    }
    return r;
  };

  const onChange = (e: Event) => {
    const wanted = (e.currentTarget as HTMLInputElement).checked;
    // The box follows the click at once (a browser test's check() expects that), shows the request
    // while it is pending, and falls back to the VM's own setting when the request fails or the
    // confirmation is cancelled.
    setPending(wanted);
    if (wanted) {
      void apply(true).then(() => setPending(null));
      return;
    }
    askConfirm({
      title: `Turn off fault tolerance for ${vm.name}?`,
      confirmLabel: 'Turn off',
      danger: true,
      body: (
        <p>
          The VM keeps running but a host failure will restart it from disk
          {vm.backup ? `; its backup on ${vm.backup} is removed` : ''}.
        </p>
      ),
      run: () => apply(false),
      onDone: () => setPending(null),
      onCancel: () => setPending(null),
    });
  };

  return (
    <section class="card ft-card">
      <div class="ft-head">
        <label class={`ft-toggle${!canProtect && !vm.ft ? ' disabled' : ''}`}>
          <input
            type="checkbox"
            checked={pending ?? vm.ft}
            disabled={busy || (!canProtect && !vm.ft)}
            onChange={onChange}
            aria-describedby="ft-why"
          />
          <span class="ft-label">Fault Tolerance</span>
        </label>
        <span id="ft-why" class="ft-why">
          {!canProtect && !vm.ft
            ? why
            : vm.ft
              ? 'A backup on another host runs in lockstep and takes over if the primary\u2019s host fails.'
              : 'Off: a host failure restarts the VM from its disk on another host.'}
        </span>
      </div>
      <FtProgress vm={vm} />
      {vm.ft && !canProtect && (
        <div class="banner warn" role="alert">
          <strong>Not protected.</strong> {why.replace('Needs', 'Protection needs')} Until then a failure of{' '}
          {vm.primary ?? 'its host'} restarts {vm.name} from disk.
          {vm.reason ? ` (${vm.reason})` : ''}
        </div>
      )}
      {error && (
        <div class="banner error" role="alert">
          {error}
        </div>
      )}
    </section>
  );
}

function Actions({
  vm,
  hosts,
  onVm,
}: {
  vm: VmStatus;
  hosts: HostStatus[] | null;
  onVm: (vm: VmStatus) => void;
}) {
  const targets = (hosts ?? []).filter((h) => h.state === 'up' && !h.fenced && h.name !== vm.primary);
  const [target, setTarget] = useState('');
  const [log, setLog] = useState<{ text: string | null; error: string | null; loading: boolean } | null>(
    null,
  );
  const chosen = targets.some((h) => h.name === target) ? target : (targets[0]?.name ?? '');
  const logRef = useRef<HTMLPreElement>(null);

  const after = (label: string) => (r: Result<VmStatus>) => {
    if (r.ok) {
      onVm(r.value);
      refreshCluster();
      notify('success', label);
    }
    return r;
  };

  const start = async () => {
    const r = await api.start(vm.name);
    if (!r.ok) notify('error', `Start ${vm.name}: ${r.error.message}`);
    after(`Asked ${vm.name} to start.`)(r);
  };

  const loadLog = async () => {
    setLog({ text: log?.text ?? null, error: null, loading: true });
    const r = await api.logs(vm.name, LOG_TAIL_BYTES);
    setLog(
      r.ok
        ? { text: r.value, error: null, loading: false }
        : { text: null, error: r.error.message, loading: false },
    );
  };

  useEffect(() => {
    if (logRef.current) logRef.current.scrollTop = logRef.current.scrollHeight;
  }, [log?.text]);

  const running = vm.state === 'running' || vm.state === 'starting';
  const failoverWhy = !vm.ft
    ? 'Fault tolerance is off.'
    : vm.protection !== 'protected'
      ? 'Only a protected VM can fail over.'
      : null;
  const migrateWhy = !running
    ? 'Only a running VM can migrate.'
    : targets.length === 0
      ? 'No other healthy host to move to.'
      : null;

  return (
    <section class="card">
      <h3>Actions</h3>
      <div class="actions">
        <button
          type="button"
          class="button"
          disabled={vm.desired === 'running' && vm.state !== 'failed'}
          onClick={start}
        >
          Start
        </button>
        <button
          type="button"
          class="button"
          disabled={vm.desired === 'stopped'}
          onClick={() =>
            askConfirm({
              title: `Stop ${vm.name}?`,
              confirmLabel: `Stop ${vm.name}`,
              danger: true,
              body: (
                <p>
                  The guest is stopped on {vm.primary ?? 'its host'}; its disk is kept, and Start runs it
                  again.
                </p>
              ),
              run: async () => after(`Asked ${vm.name} to stop.`)(await api.stop(vm.name)),
            })
          }
        >
          Stop
        </button>
        <button
          type="button"
          class="button"
          disabled={failoverWhy !== null}
          title={failoverWhy ?? 'The backup takes over through the same path as a real failure'}
          onClick={() =>
            askConfirm({
              title: `Test failover of ${vm.name}?`,
              confirmLabel: 'Fail over',
              danger: true,
              body: (
                <p>
                  The backup on {vm.backup} takes over through the same path as a real failure (generation{' '}
                  {vm.generation + 1}); the primary on {vm.primary} stops and drops what it held. Then the
                  cluster clones a new backup.
                </p>
              ),
              run: async () => after(`Failover of ${vm.name} requested.`)(await api.failover(vm.name)),
            })
          }
        >
          Test failover
        </button>
        <span class="action-group">
          <select
            aria-label="Migrate to host"
            value={chosen}
            disabled={migrateWhy !== null}
            onChange={(e) => setTarget(e.currentTarget.value)}
          >
            {targets.length === 0 && <option value="">no target</option>}
            {targets.map((h) => (
              <option key={h.name} value={h.name}>
                to {h.name}
              </option>
            ))}
          </select>
          <button
            type="button"
            class="button"
            disabled={migrateWhy !== null || chosen === ''}
            title={migrateWhy ?? undefined}
            onClick={() =>
              askConfirm({
                title: `Migrate ${vm.name} to ${chosen}?`,
                confirmLabel: 'Migrate',
                body: (
                  <p>
                    {chosen} first becomes the backup (a live clone); once it has caught up, the primary on{' '}
                    {vm.primary} hands over. Connections open to {vm.address} at the switch are reset; clients
                    reconnect to the same address.
                  </p>
                ),
                run: async () =>
                  after(`Migration of ${vm.name} to ${chosen} requested.`)(
                    await api.migrate(vm.name, chosen),
                  ),
              })
            }
          >
            Migrate
          </button>
        </span>
        <button type="button" class="button" onClick={loadLog}>
          View console log
        </button>
        <button
          type="button"
          class="button danger subtle push-right"
          onClick={() =>
            askConfirm({
              title: `Remove ${vm.name}?`,
              confirmLabel: `Remove ${vm.name}`,
              danger: true,
              body: (
                <p>
                  This stops <strong>{vm.name}</strong> and removes it from the cluster, with its placement
                  and backup. It cannot be undone.
                </p>
              ),
              run: () => api.remove(vm.name),
              onDone: () => {
                dropVm(vm.name);
                refreshCluster();
                notify('success', `VM ${vm.name} removed.`);
                window.location.hash = '#/';
              },
            })
          }
        >
          Remove
        </button>
      </div>
      {migrateWhy && running && <p class="muted small">{migrateWhy}</p>}
      {log && (
        <div class="log-box">
          <div class="log-head">
            <span class="label">Console log (last {bytes(LOG_TAIL_BYTES)})</span>
            <span>
              <button type="button" class="button small" onClick={loadLog} disabled={log.loading}>
                {log.loading ? 'Loading…' : 'Refresh'}
              </button>{' '}
              <button type="button" class="button small" onClick={() => setLog(null)}>
                Close
              </button>
            </span>
          </div>
          {log.error && (
            <div class="banner error" role="alert">
              {log.error}
            </div>
          )}
          {log.text !== null && (
            <pre class="log" ref={logRef}>
              {log.text === '' ? '(empty)' : log.text}
            </pre>
          )}
          {log.text === null && log.loading && <p class="muted">Loading…</p>}
        </div>
      )}
    </section>
  );
}

const LAG_SERIES: ChartSeries[] = [
  { label: 'lag (ms)', color: '#2f6f8f', scale: 'ms', format: (v) => durationMs(v), floor: 1 },
  { label: 'lag (bytes)', color: '#c07a2c', scale: 'bytes', format: (v) => bytes(v), floor: 1024 },
];
const LOG_SERIES: ChartSeries[] = [
  { label: 'log written', color: '#5a7d3a', scale: 'bps', format: (v) => bytesPerSecond(v), floor: 1024 },
];
const THROUGHPUT_SERIES: ChartSeries[] = [
  { label: 'host calls', color: '#7a4f9a', scale: 'eps', format: (v) => rate(v, ''), floor: 10 },
];

function Charts({ samples, vm, answering }: { samples: Sample[]; vm: VmStatus; answering: string | null }) {
  const x = useMemo(() => samples.map((s) => s.xSec), [samples]);
  const lag = useMemo(
    () =>
      [x, samples.map((s) => s.lagMs), samples.map((s) => s.lagBytes)] as [number[], ...(number | null)[][]],
    [x, samples],
  );
  const log = useMemo(
    () => [x, samples.map((s) => s.logBytesPerSecond)] as [number[], (number | null)[]],
    [x, samples],
  );
  const throughput = useMemo(
    () => [x, samples.map((s) => s.eventsPerSecond)] as [number[], (number | null)[]],
    [x, samples],
  );
  const notPrimaryHost = vm.primary !== null && answering !== null && vm.primary !== answering;
  const liveNote =
    vm.state !== 'running'
      ? `No live figures: ${vm.name} is ${vm.state}.`
      : notPrimaryHost && vm.logBytes === null
        ? `Live figures come from the primary's host (${vm.primary}); this console talks to ${answering}.`
        : 'Waiting for samples…';
  return (
    <div class="charts">
      <Chart
        testId="chart-lag"
        title="Replication lag"
        series={LAG_SERIES}
        data={lag}
        emptyText={vm.ft ? liveNote : 'No backup: lag is measured only while fault tolerance is on.'}
      />
      <Chart
        testId="chart-log"
        title="Logging bandwidth"
        series={LOG_SERIES}
        data={log}
        emptyText={liveNote}
      />
      <Chart
        testId="chart-throughput"
        title="Throughput (host calls per second)"
        series={THROUGHPUT_SERIES}
        data={throughput}
        emptyText={liveNote}
      />
    </div>
  );
}

export function VmPage({ name }: { name: string }) {
  const { vm, setVm, error, samples } = useVmPolling(name);
  const { hosts, info } = useStore(clusterStore);
  const feed = useStore(feedStore);
  const onVm = (v: VmStatus) => {
    setVm(v);
    putVm(v);
  };

  if (!vm) {
    return (
      <div class="vm-page">
        <a href="#/" class="back">
          ← Cluster
        </a>
        <h2 class="page-title">{name}</h2>
        {error ? (
          <div class="banner error" role="alert">
            {error.code === 'not-found' ? `There is no VM named ${name}. ` : ''}
            {error.message}
          </div>
        ) : (
          <p class="muted">Loading…</p>
        )}
      </div>
    );
  }

  const last = samples[samples.length - 1];
  return (
    <div class="vm-page">
      <a href="#/" class="back">
        ← Cluster
      </a>
      <div class="page-head">
        <h2 class="page-title">{vm.name}</h2>
        <VmStateBadge vm={vm} />
        <ProtectionBadge vm={vm} />
        {vm.desired !== (vm.state === 'stopped' ? 'stopped' : 'running') && (
          <span class="badge badge-info">desired: {vm.desired}</span>
        )}
      </div>
      {error && (
        <div class="banner error" role="alert">
          {error.code === 'not-found' ? `${name} no longer exists: ` : 'Could not refresh: '}
          {error.message}
        </div>
      )}
      {vm.state === 'failed' && vm.reason && (
        <div class="banner error" role="alert">
          {vm.name} failed: {vm.reason}
          {vm.exitCode !== null ? ` (exit code ${vm.exitCode})` : ''}
        </div>
      )}

      <div class="vm-grid">
        <section class="card">
          <h3>Summary</h3>
          <dl class="facts wide">
            <Fact label="State">
              {vm.state}
              {vm.exitCode !== null ? ` (exit ${vm.exitCode})` : ''}
            </Fact>
            <Fact label="Desired">{vm.desired}</Fact>
            <Fact label="Primary">{vm.primary ?? none}</Fact>
            <Fact label="Backup">{vm.backup ?? none}</Fact>
            <Fact label="Address" mono>
              {vm.address}
            </Fact>
            <Fact label="Generation">{vm.generation}</Fact>
            <Fact label="Lag">
              {vm.lagMs === null
                ? '—'
                : `${durationMs(vm.lagMs)} · ${count(vm.lagEvents)} events · ${bytes(vm.lagBytes)}`}
            </Fact>
            <Fact label="Held outputs">{count(vm.heldOutputs)}</Fact>
            <Fact label="Log (this generation)">
              {vm.logBytes === null ? '—' : `${bytes(vm.logBytes)} · ${count(vm.logEvents)} calls`}
            </Fact>
            <Fact label="Log file">{bytes(vm.logFileBytes)}</Fact>
            <Fact label="Bandwidth now">{bytesPerSecond(last?.logBytesPerSecond)}</Fact>
            <Fact label="Throughput now">{rate(last?.eventsPerSecond, ' calls')}</Fact>
            <Fact label="Disk" mono>
              {vm.disk ?? none}
            </Fact>
            <Fact label="Module" mono>
              {vm.wasm}
            </Fact>
          </dl>
        </section>
        <div class="vm-side">
          <FaultTolerance vm={vm} hosts={hosts} onVm={onVm} />
          <Actions vm={vm} hosts={hosts} onVm={onVm} />
        </div>
      </div>

      <Charts samples={samples} vm={vm} answering={info?.name ?? null} />

      <section class="panel">
        <div class="panel-head">
          <h2>Events of {vm.name}</h2>
        </div>
        <Timeline
          events={feed.events}
          vm={vm.name}
          loaded={feed.loaded}
          emptyText={
            feed.status === 'unavailable'
              ? `This host does not serve the event feed (${feed.detail}).`
              : `No events about ${vm.name} yet.`
          }
        />
      </section>
    </div>
  );
}
