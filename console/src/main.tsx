// Entry point of the web console: takes a token handed over in the URL fragment, starts the shared
// polling and the live event feed, and renders the app.
import { render } from 'preact';
import { adoptTokenFromHash } from './api';
import { App } from './app';
import { startEventFeed } from './events';
import { startClusterPolling } from './store';
import './style.css';

// Before anything reads the token or the route: the fragment may carry `token=…`, which is stored and
// then removed from the address bar.
adoptTokenFromHash();
window.addEventListener('hashchange', () => {
  adoptTokenFromHash();
});

startClusterPolling();
startEventFeed();

const root = document.getElementById('app');
if (root) render(<App />, root);
