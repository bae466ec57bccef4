#!/usr/bin/env node
// The lockstep command. This file is the program itself (DESIGN.md §5): it runs the
// compiled CLI in this process, so signals sent to its pid reach it.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write(
    'lockstep: not built yet; run `npm ci` (or `npm run build`) in the repository first\n',
  );
  process.exit(125);
}
const { cliMain } = await import(main.href);
await cliMain(process.argv.slice(2));
