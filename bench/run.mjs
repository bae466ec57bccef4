#!/usr/bin/env node
// `npm run bench`: the KV benchmark (bench/kv.mjs), with any arguments passed through, e.g.
// `npm run bench -- --quick`. The profile (bench/kv-profile.mjs) and the instrumentation cost
// (bench/instrument/cost.mjs) are run separately; docs/BENCHMARKS.md describes all three.
import { spawnSync } from 'node:child_process';

const r = spawnSync(
  process.execPath,
  [new URL('./kv.mjs', import.meta.url).pathname, ...process.argv.slice(2)],
  { stdio: 'inherit' },
);
process.exit(r.status ?? 1);
