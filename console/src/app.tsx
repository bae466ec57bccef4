// The console's shell: sign-in, header (cluster, answering host, live indicator, navigation), the
// global banners and toasts, and the hash routes (#/, #/vm/NAME, #/events).
//
// Routing is by location.hash so that the hosts serve one index.html for every screen and a reload
// keeps the screen; there is no router library.
import { useEffect, useState } from 'preact/hooks';
import {
  authNeeded,
  connectionLost,
  onAuthChange,
  onConnectionChange,
  signIn,
  signOut,
  tokenRefused,
} from './api';
import { ClusterView } from './cluster';
import { CreateVmHost, openCreateVm } from './create-vm';
import { ConfirmHost } from './dialogs';
import { feedStore, type FeedStatus } from './events';
import { dismiss, toastStore } from './notify';
import { clusterStore, useStore } from './store';
import { Timeline } from './timeline';
import { VmPage } from './vm-page';

type Route = { page: 'cluster' } | { page: 'events' } | { page: 'vm'; name: string };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, '').split('?')[0] ?? '';
  const vm = /^\/vm\/([^/]+)\/?$/.exec(path);
  if (vm?.[1]) {
    try {
      return { page: 'vm', name: decodeURIComponent(vm[1]) };
    } catch {
      return { page: 'cluster' };
    }
  }
  if (path === '/events') return { page: 'events' };
  return { page: 'cluster' };
}

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const onHash = () => {
      setRoute(parseRoute(window.location.hash));
      window.scrollTo(0, 0);
    };
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  return route;
}

/** Re-renders on changes of the auth and connection flags, which live in api.ts. */
function useApiFlags(): { authNeeded: boolean; connectionLost: boolean } {
  const [, setVersion] = useState(0);
  useEffect(() => {
    const bump = () => setVersion((v) => v + 1);
    const offAuth = onAuthChange(bump);
    const offConnection = onConnectionChange(bump);
    return () => {
      offAuth();
      offConnection();
    };
  }, []);
  return { authNeeded, connectionLost };
}

const FEED_WORDS: Record<FeedStatus, string> = {
  connecting: 'connecting',
  live: 'live',
  reconnecting: 'reconnecting',
  unavailable: 'no event feed',
};

function LiveIndicator() {
  const { status, detail } = useStore(feedStore);
  return (
    <span
      class={`live live-${status}`}
      title={detail ?? 'Events stream in as they happen'}
      data-testid="live"
    >
      <span class="live-dot" aria-hidden="true" />
      {FEED_WORDS[status]}
    </span>
  );
}

function Header({ route }: { route: Route }) {
  const { info } = useStore(clusterStore);
  return (
    <header class="topbar">
      <div class="topbar-inner">
        <a href="#/" class="brand">
          <span class="brand-mark" aria-hidden="true">
            <span />
            <span />
          </span>
          Lockstep
        </a>
        <div class="cluster-meta">
          {info ? (
            <>
              <span title={`cluster ${info.clusterId}`}>
                cluster <span class="mono">{info.clusterId.slice(0, 8)}</span>
              </span>
              <span title={`${info.api}, pid ${info.pid}`}>via {info.name}</span>
            </>
          ) : (
            <span class="muted">…</span>
          )}
          <LiveIndicator />
        </div>
        <nav class="nav">
          <a href="#/" class={route.page === 'cluster' ? 'active' : ''}>
            Cluster
          </a>
          <a href="#/events" class={route.page === 'events' ? 'active' : ''}>
            Events
          </a>
          <button type="button" class="button primary" onClick={openCreateVm}>
            Create VM
          </button>
          <button
            type="button"
            class="link-button"
            onClick={signOut}
            title="Forget the token in this browser"
          >
            Sign out
          </button>
        </nav>
      </div>
    </header>
  );
}

function SignIn() {
  const [token, setToken] = useState('');
  return (
    <div class="signin">
      <form
        class="card signin-card"
        onSubmit={(e) => {
          e.preventDefault();
          const t = token.trim();
          if (t !== '') signIn(t);
        }}
      >
        <div class="brand big">
          <span class="brand-mark" aria-hidden="true">
            <span />
            <span />
          </span>
          Lockstep
        </div>
        <p>
          Paste the cluster's API token (<code>lockstep cluster token</code> prints it).
        </p>
        {tokenRefused && (
          <div class="banner error" role="alert">
            The host refused the token: it is not this cluster's token.
          </div>
        )}
        <label class="field">
          <span>API token</span>
          <input
            type="password"
            value={token}
            onInput={(e) => setToken(e.currentTarget.value)}
            autoComplete="off"
            spellcheck={false}
          />
        </label>
        <button type="submit" class="button primary">
          Sign in
        </button>
        <p class="muted small">
          The token is kept in this browser's local storage and sent only in the Authorization header. You can
          also open the console as <code>http://HOST/#token=TOKEN</code>.
        </p>
      </form>
    </div>
  );
}

function Banners() {
  const { error, info } = useStore(clusterStore);
  const flags = useApiFlags();
  if (flags.connectionLost) {
    return (
      <div class="banner error global" role="alert">
        Cannot reach host {info ? `${info.name} at ` : ''}
        {window.location.host}; retrying…
      </div>
    );
  }
  if (error && error.code !== 'unauthorized') {
    return (
      <div class="banner error global" role="alert">
        {error.message}
      </div>
    );
  }
  return null;
}

function Toasts() {
  const { toasts } = useStore(toastStore);
  return (
    <div class="toasts" aria-live="polite">
      {toasts.map((t) => (
        <div key={t.id} class={`toast toast-${t.tone}`} role={t.tone === 'error' ? 'alert' : 'status'}>
          <span>{t.text}</span>
          <button type="button" class="icon-button" aria-label="Dismiss" onClick={() => dismiss(t.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

function EventsPage() {
  const feed = useStore(feedStore);
  return (
    <section class="panel">
      <div class="panel-head">
        <h2>Events</h2>
        <span class="muted">
          {feed.events.length} {feed.events.length === 1 ? 'event' : 'events'} · grouped by VM, steps within
          10 s
        </span>
      </div>
      <Timeline
        events={feed.events}
        loaded={feed.loaded}
        emptyText={
          feed.status === 'unavailable'
            ? `This host does not serve the event feed (${feed.detail}).`
            : undefined
        }
      />
    </section>
  );
}

export function App() {
  const route = useRoute();
  const flags = useApiFlags();
  if (flags.authNeeded) return <SignIn />;
  return (
    <>
      <Header route={route} />
      <main class={flags.connectionLost ? 'main stale' : 'main'}>
        <Banners />
        {route.page === 'cluster' && <ClusterView />}
        {route.page === 'events' && <EventsPage />}
        {route.page === 'vm' && <VmPage key={route.name} name={route.name} />}
      </main>
      <Toasts />
      <ConfirmHost />
      <CreateVmHost />
    </>
  );
}
