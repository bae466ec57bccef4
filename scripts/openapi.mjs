#!/usr/bin/env node
// Writes docs/openapi.json: the OpenAPI document the host API serves at
// /openapi.json, generated from the routes' schemas (src/api/server.ts).
// src/api/openapi.test.ts fails when the checked-in copy differs, and says to
// run this (after `npm run build`):  node scripts/openapi.mjs
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { buildApiApp } = await import(path.join(root, 'dist', 'src', 'api', 'server.js'));
// The document comes from the routes alone; no call reaches the backend.
const app = await buildApiApp({}, { logger: false });
const out = path.join(root, 'docs', 'openapi.json');
writeFileSync(out, `${JSON.stringify(app.swagger(), null, 2)}\n`);
await app.close();
process.stderr.write(`wrote ${path.relative(root, out)}\n`);
