/**
 * The OpenAPI document: the copy checked in at docs/openapi.json is the one
 * the server generates from its routes, and the document and the routes
 * name the same operations (no route undocumented, no documented route
 * missing).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import SwaggerParser from '@apidevtools/swagger-parser';
import { buildApiApp } from './server.js';
import type { HostBackend } from './backend.js';

const CHECKED_IN = fileURLToPath(new URL('../../../docs/openapi.json', import.meta.url));

async function generated(): Promise<{
  doc: { paths: Record<string, Record<string, unknown>> };
  routes: { method: string; url: string; hidden: boolean }[];
}> {
  const routes: { method: string; url: string; hidden: boolean }[] = [];
  // The document comes from the routes alone; no call reaches the backend.
  const app = await buildApiApp({} as HostBackend, { logger: false, onRoute: (r) => routes.push(r) });
  try {
    return { doc: app.swagger() as never, routes };
  } finally {
    await app.close();
  }
}

test('docs/openapi.json is the document the server generates (regenerate: npm run build && node scripts/openapi.mjs)', async () => {
  const { doc } = await generated();
  const onDisk = JSON.parse(readFileSync(CHECKED_IN, 'utf8')) as unknown;
  assert.deepEqual(onDisk, JSON.parse(JSON.stringify(doc)));
});

test('every route is in the document, and every documented operation is a route', async () => {
  const { doc, routes } = await generated();
  // HEAD routes are fastify's automatic twins of GET routes; hidden ones are the console's files.
  const served = new Set(
    routes
      .filter((r) => !r.hidden && r.method !== 'HEAD')
      .map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, '{$1}')}`),
  );
  const documented = new Set<string>();
  for (const [p, ops] of Object.entries(doc.paths))
    for (const method of Object.keys(ops)) documented.add(`${method.toUpperCase()} ${p}`);
  assert.deepEqual([...served].sort(), [...documented].sort());
  // The routes the issue names are all there.
  for (const op of [
    'GET /v1/vms',
    'POST /v1/vms/{name}/ft',
    'POST /v1/vms/{name}/migrate',
    'POST /v1/vms/{name}/failover',
    'GET /v1/events',
    'GET /v1/events/stream',
    'GET /metrics',
    'POST /v1/modules',
    'POST /v1/hosts/{name}/kill',
    'GET /openapi.json',
  ])
    assert.ok(documented.has(op), `${op} is not documented`);
});

test('every documented operation says what it answers and, unless open, needs the bearer token', async () => {
  const { doc } = await generated();
  const open = new Set(['GET /health', 'GET /health/vms/{name}/primary', 'GET /openapi.json']);
  for (const [p, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops) as [
      string,
      { responses?: object; security?: unknown[]; summary?: string },
    ][]) {
      const key = `${method.toUpperCase()} ${p}`;
      assert.ok(op.summary !== undefined && op.summary.length > 0, `${key} has no summary`);
      assert.ok(
        op.responses !== undefined && 'default' in op.responses,
        `${key} does not document its errors`,
      );
      assert.equal(open.has(key), Array.isArray(op.security) && op.security.length === 0, `${key}: security`);
    }
});

test('the document is valid OpenAPI 3 (schema and references checked by swagger-parser)', async () => {
  const { doc } = await generated();
  // validate() dereferences in place; it gets a copy.
  await SwaggerParser.validate(JSON.parse(JSON.stringify(doc)));
});
