// Shared client state: a tiny observable store, the hook that renders from it, and the cluster store
// (answering host, hosts, VMs) that every screen reads.
//
// The cluster store polls GET /v1/hosts and /v1/vms every CLUSTER_POLL_MS while the page is visible,
// and refreshes at once (debounced) when an event arrives on the live feed or after an action, so the
// screens follow a failover within a few hundred milliseconds without polling hard. One poll at a time:
// a refresh asked for during a poll runs right after it, never alongside it.
import { useEffect, useState } from 'preact/hooks';
import {
  api,
  authNeeded,
  onAuthChange,
  type ApiFailure,
  type HostInfo,
  type HostStatus,
  type VmStatus,
} from './api';

export class Store<S extends object> {
  private listeners = new Set<() => void>();
  constructor(private state: S) {}

  get(): S {
    return this.state;
  }

  set(patch: Partial<S>): void {
    this.state = { ...this.state, ...patch };
    for (const fn of this.listeners) fn();
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

/** Renders the component again whenever the store changes. */
export function useStore<S extends object>(store: Store<S>): S {
  const [, setVersion] = useState(0);
  useEffect(() => store.subscribe(() => setVersion((v) => v + 1)), [store]);
  return store.get();
}

export interface ClusterState {
  info: HostInfo | null;
  /** null until the first answer. */
  hosts: HostStatus[] | null;
  vms: VmStatus[] | null;
  /** The last poll's failure, shown as a banner; cleared by the next success. */
  error: ApiFailure | null;
  updatedAtMs: number | null;
}

export const CLUSTER_POLL_MS = 2000;
/** Events often come in bursts (a failover is five or six); one refresh covers a burst. */
const REFRESH_DEBOUNCE_MS = 150;

export const clusterStore = new Store<ClusterState>({
  info: null,
  hosts: null,
  vms: null,
  error: null,
  updatedAtMs: null,
});

let polling = false;
let refreshAgain = false;
let pollTimer: ReturnType<typeof setTimeout> | null = null;
let debounceTimer: ReturnType<typeof setTimeout> | null = null;

async function pollOnce(): Promise<void> {
  if (polling) {
    refreshAgain = true;
    return;
  }
  polling = true;
  try {
    do {
      refreshAgain = false;
      if (authNeeded) return;
      const needInfo = clusterStore.get().info === null;
      const [info, hosts, vms] = await Promise.all([
        needInfo ? api.info() : Promise.resolve(null),
        api.hosts(),
        api.vms(),
      ]);
      const patch: Partial<ClusterState> = {};
      if (info?.ok) patch.info = info.value;
      if (hosts.ok) patch.hosts = hosts.value;
      if (vms.ok) patch.vms = vms.value;
      const failure = !hosts.ok ? hosts.error : !vms.ok ? vms.error : info && !info.ok ? info.error : null;
      patch.error = failure;
      if (!failure) patch.updatedAtMs = Date.now();
      clusterStore.set(patch);
    } while (refreshAgain);
  } finally {
    polling = false;
  }
}

function schedule(): void {
  if (pollTimer !== null) clearTimeout(pollTimer);
  pollTimer = setTimeout(tick, CLUSTER_POLL_MS);
}

async function tick(): Promise<void> {
  pollTimer = null;
  // A hidden tab does not poll: nobody looks, and a console left open all day should cost nothing.
  if (document.visibilityState === 'visible') await pollOnce();
  schedule();
}

/** Refreshes hosts and VMs soon; called after actions and when events arrive. */
export function refreshCluster(): void {
  if (debounceTimer !== null) return;
  debounceTimer = setTimeout(() => {
    debounceTimer = null;
    void pollOnce();
  }, REFRESH_DEBOUNCE_MS);
}

/** Stores a VM status that an action answered with, so the screens show it before the next poll. */
export function putVm(vm: VmStatus): void {
  const vms = clusterStore.get().vms;
  if (!vms) return;
  const i = vms.findIndex((v) => v.name === vm.name);
  clusterStore.set({ vms: i < 0 ? [...vms, vm] : vms.map((v, j) => (j === i ? vm : v)) });
}

export function dropVm(name: string): void {
  const vms = clusterStore.get().vms;
  if (vms) clusterStore.set({ vms: vms.filter((v) => v.name !== name) });
}

let started = false;

export function startClusterPolling(): void {
  if (started) return;
  started = true;
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') void pollOnce();
  });
  onAuthChange(() => {
    if (!authNeeded) {
      clusterStore.set({ info: null });
      void pollOnce();
    }
  });
  void pollOnce().then(schedule);
}
