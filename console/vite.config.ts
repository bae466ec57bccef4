// Build configuration of the web console: a Preact single-page app that every host serves at `/`
// (index.html) and `/assets/*`. Run from the repository root with
// `npx vite build --config console/vite.config.ts`; the output lands in console/dist.
//
// For development, `LOCKSTEP_API=127.0.0.1:PORT npx vite --config console/vite.config.ts` serves the
// app with hot reload and forwards /v1 and /health to that host's API, so the page keeps talking to
// its own origin as it does when a host serves it.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

const root = fileURLToPath(new URL('.', import.meta.url));
const api = process.env.LOCKSTEP_API;
const proxy = api
  ? {
      '/v1': { target: `http://${api}`, changeOrigin: true },
      '/health': { target: `http://${api}`, changeOrigin: true },
    }
  : undefined;

export default defineConfig({
  root,
  base: '/',
  plugins: [preact()],
  build: {
    outDir: fileURLToPath(new URL('./dist', import.meta.url)),
    emptyOutDir: true,
    // The console is served from loopback or a trusted network; source maps help whoever debugs it.
    sourcemap: true,
  },
  server: { proxy },
});
