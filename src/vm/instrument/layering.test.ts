// Imports flow one way: the instrumentation pipeline depends on nothing in io, cli or the WASI
// host, only on its own folder, node builtins and binaryen.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './testkit.js';

describe('layering', () => {
  it('imports only from its own folder, node: builtins and binaryen', () => {
    const folder = join(REPO_ROOT, 'src', 'vm', 'instrument');
    const sources = readdirSync(folder).filter((f) => f.endsWith('.ts'));
    assert.ok(sources.includes('index.ts'));
    for (const file of sources) {
      const text = readFileSync(join(folder, file), 'utf8');
      const specifiers = [
        ...text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+'([^']+)'|import\('([^']+)'\)/g),
      ].map((m) => m[1] ?? m[2] ?? '');
      for (const spec of specifiers) {
        const allowed = spec.startsWith('node:') || spec === 'binaryen' || /^\.\/[\w-]+\.js$/.test(spec);
        assert.ok(allowed, `${file} imports ${spec}`);
      }
    }
  });
});
