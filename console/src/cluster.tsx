// The cluster view (#/): hosts with their VMs, the VM table, and the latest events.
//
// Hosts list the VMs they run as primary (from HostStatus.vms) and as backup (computed from each
// VmStatus.backup, which HostStatus does not carry). "Simulate host failure" kills a host's process,
// so it is offered only for hosts on the answering host's machine (`local`) that are up.
import { api, type HostInfo, type HostStatus, type VmStatus } from './api';
import { HostStateBadge, ProtectionBadge, VmStateBadge } from './badges';
import { askConfirm } from './dialogs';
import { feedStore } from './events';
import { durationMs } from './format';
import { notify } from './notify';
import { clusterStore, refreshCluster, useStore } from './store';
import { RecentEvents } from './timeline';
import { openCreateVm } from './create-vm';

const RECENT_EVENTS = 8;

function VmLinks({ names }: { names: string[] }) {
  if (names.length === 0) return <span class="muted">none</span>;
  return (
    <span class="vm-links">
      {names.map((n) => (
        <a key={n} href={`#/vm/${encodeURIComponent(n)}`} class="tag tag-vm">
          {n}
        </a>
      ))}
    </span>
  );
}

function confirmKill(host: HostStatus, info: HostInfo | null, hosts: HostStatus[]) {
  const self = info?.name === host.name;
  const other = hosts.find((h) => h.name !== host.name && h.state === 'up');
  askConfirm({
    title: `Simulate failure of ${host.name}`,
    danger: true,
    confirmLabel: `Kill ${host.name}`,
    body: (
      <>
        <p>
          This kills the process of host <strong>{host.name}</strong> (pid {host.pid}) with SIGKILL. VMs it
          runs as primary fail over to their backups; unprotected VMs restart elsewhere from disk.
        </p>
        {self && (
          <p class="banner warn">
            {host.name} is the host serving this console, so this page will lose its connection.
            {other && (
              <>
                {' '}
                To keep watching, open the console of {other.name} at{' '}
                <a href={`http://${other.api}/`} target="_blank" rel="noreferrer">
                  http://{other.api}/
                </a>
                .
              </>
            )}
          </p>
        )}
      </>
    ),
    run: () => api.killHost(host.name),
    onDone: () => {
      notify('info', `Killed ${host.name} (pid ${host.pid}). Watch the events below as the cluster reacts.`);
      refreshCluster();
    },
  });
}

function HostCard({
  host,
  vms,
  info,
  hosts,
}: {
  host: HostStatus;
  vms: VmStatus[];
  info: HostInfo | null;
  hosts: HostStatus[];
}) {
  const backups = vms.filter((v) => v.backup === host.name).map((v) => v.name);
  const self = info?.name === host.name;
  return (
    <li class={`host-card host-${host.fenced ? 'fenced' : host.state}`} data-testid={`host-${host.name}`}>
      <div class="host-head">
        <div class="host-name">
          <strong>{host.name}</strong>
          {self && (
            <span class="tag" title="The host whose API answers this console">
              this console
            </span>
          )}
        </div>
        <HostStateBadge host={host} />
      </div>
      <div class="host-meta">
        <span title="Median heartbeat round trip from the answering host">
          RTT{' '}
          <strong>
            {self
              ? 'self'
              : host.state === 'up' || host.state === 'suspect'
                ? durationMs(host.heartbeatRttMs)
                : '—'}
          </strong>
        </span>
        <span>
          pid <span class="mono">{host.pid}</span>
        </span>
        <span class="mono" title="API address">
          {host.api}
        </span>
      </div>
      <div class="host-vms">
        <div>
          <span class="label">Primary for</span> <VmLinks names={host.vms} />
        </div>
        <div>
          <span class="label">Backup for</span> <VmLinks names={backups} />
        </div>
      </div>
      {host.local && host.state === 'up' && (
        <div class="host-actions">
          <button type="button" class="button danger subtle" onClick={() => confirmKill(host, info, hosts)}>
            Simulate host failure
          </button>
        </div>
      )}
    </li>
  );
}

function VmTable({ vms }: { vms: VmStatus[] }) {
  return (
    <table class="vm-table stack">
      <thead>
        <tr>
          <th>Name</th>
          <th>State</th>
          <th>Protection</th>
          <th>Primary</th>
          <th>Backup</th>
          <th>Address</th>
          <th class="num">Lag</th>
        </tr>
      </thead>
      <tbody>
        {vms.map((vm) => (
          <tr key={vm.name} data-testid={`vm-row-${vm.name}`}>
            <td data-label="Name">
              <a class="vm-name" href={`#/vm/${encodeURIComponent(vm.name)}`}>
                {vm.name}
              </a>
            </td>
            <td data-label="State">
              <VmStateBadge vm={vm} />
            </td>
            <td data-label="Protection">
              <ProtectionBadge vm={vm} />
            </td>
            <td data-label="Primary">{vm.primary ?? <span class="muted">none</span>}</td>
            <td data-label="Backup">{vm.backup ?? <span class="muted">none</span>}</td>
            <td data-label="Address" class="mono">
              {vm.address}
            </td>
            <td data-label="Lag" class="num">
              {vm.lagMs === null ? <span class="muted">—</span> : durationMs(vm.lagMs)}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function EmptyCluster() {
  return (
    <div class="empty-panel">
      <h3>No VMs yet</h3>
      <p>
        Create one from a WebAssembly (WASI) module: upload the <code>.wasm</code> file or give a path every
        host can read, and a fixed service address for it to listen on.
      </p>
      <button type="button" class="button primary" onClick={openCreateVm}>
        Create VM
      </button>
      <p class="muted">Or from a shell:</p>
      <pre class="cli">lockstep vm create NAME --wasm PATH --listen IP:PORT [--ft]</pre>
    </div>
  );
}

export function ClusterView() {
  const { hosts, vms, info } = useStore(clusterStore);
  const feed = useStore(feedStore);
  const upCount = hosts?.filter((h) => h.state === 'up' && !h.fenced).length ?? 0;
  return (
    <div class="cluster-view">
      <section class="panel">
        <div class="panel-head">
          <h2>Hosts</h2>
          {hosts && (
            <span class="muted">
              {upCount} of {hosts.length} up
            </span>
          )}
        </div>
        {hosts === null ? (
          <p class="muted">Loading…</p>
        ) : hosts.length === 0 ? (
          <p class="empty-note">No hosts are registered.</p>
        ) : (
          <ul class="host-grid">
            {hosts.map((h) => (
              <HostCard key={h.name} host={h} vms={vms ?? []} info={info} hosts={hosts} />
            ))}
          </ul>
        )}
      </section>

      <section class="panel">
        <div class="panel-head">
          <h2>Virtual machines</h2>
          {vms && vms.length > 0 && (
            <button type="button" class="button" onClick={openCreateVm}>
              Create VM
            </button>
          )}
        </div>
        {vms === null ? (
          <p class="muted">Loading…</p>
        ) : vms.length === 0 ? (
          <EmptyCluster />
        ) : (
          <VmTable vms={vms} />
        )}
      </section>

      <section class="panel">
        <div class="panel-head">
          <h2>Recent events</h2>
          <a href="#/events">All events →</a>
        </div>
        {feed.status === 'unavailable' && feed.events.length === 0 ? (
          <p class="empty-note">This host does not serve the event feed ({feed.detail}).</p>
        ) : (
          <RecentEvents events={feed.events} loaded={feed.loaded} count={RECENT_EVENTS} />
        )}
      </section>
    </div>
  );
}
