// Tests of folder content manifests (manifest.ts), which replay uses to accept
// only the folders a recording started from: the hash input computed by hand
// for a tiny folder; timestamps, permissions and `cp -r` copies do not matter;
// any change of bytes, names, types, empty folders or symlink targets does.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { folderManifestSha256 } from './manifest.js';

let tmp: string;
let seq = 0;

before(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'lockstep-manifest-'));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

function hex(root: string): string {
  return Buffer.from(folderManifestSha256(root)).toString('hex');
}

/** A folder with files, a nested folder, an empty folder, an empty file and a symlink. */
function sample(): string {
  const root = path.join(tmp, `sample-${seq++}`);
  mkdirSync(path.join(root, 'sub', 'deeper'), { recursive: true });
  mkdirSync(path.join(root, 'empty'));
  writeFileSync(path.join(root, 'a.txt'), 'hello');
  writeFileSync(path.join(root, 'sub', 'b.bin'), Buffer.from([0, 1, 2, 255]));
  writeFileSync(path.join(root, 'sub', 'deeper', 'c'), 'x'.repeat(3 << 20));
  writeFileSync(path.join(root, 'zero'), '');
  symlinkSync('sub/b.bin', path.join(root, 'link'));
  return root;
}

function copy(root: string): string {
  const dst = path.join(tmp, `copy-${seq++}`);
  execFileSync('cp', ['-r', root, dst]);
  return dst;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

test('the hash input, by hand: entries depth-first, names sorted bytewise, typed and length-prefixed', () => {
  const root = path.join(tmp, `tiny-${seq++}`);
  mkdirSync(path.join(root, 'd'), { recursive: true });
  writeFileSync(path.join(root, 'd', 'f'), 'xy');
  writeFileSync(path.join(root, 'B'), '');
  symlinkSync('d/f', path.join(root, 'a'));
  // Bytewise order: "B" (0x42) < "a" (0x61) < "d".
  const h = createHash('sha256');
  h.update(Buffer.concat([Buffer.from('f'), u32(1), Buffer.from('B'), u64(0)]));
  h.update(Buffer.concat([Buffer.from('l'), u32(1), Buffer.from('a'), u32(3), Buffer.from('d/f')]));
  h.update(Buffer.concat([Buffer.from('d'), u32(1), Buffer.from('d')]));
  h.update(Buffer.concat([Buffer.from('f'), u32(3), Buffer.from('d/f'), u64(2), Buffer.from('xy')]));
  assert.equal(hex(root), h.digest('hex'));
  // An empty folder hashes to the SHA-256 of nothing.
  const empty = path.join(tmp, `empty-${seq++}`);
  mkdirSync(empty);
  assert.equal(hex(empty), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});

test('timestamps and permissions do not count', () => {
  const a = sample();
  const before = hex(a);
  utimesSync(path.join(a, 'a.txt'), 1, 1);
  utimesSync(path.join(a, 'sub'), new Date('2001-01-01'), new Date('2001-01-01'));
  utimesSync(a, 12345, 67890);
  chmodSync(path.join(a, 'a.txt'), 0o600);
  chmodSync(path.join(a, 'sub', 'b.bin'), 0o755);
  chmodSync(path.join(a, 'empty'), 0o700);
  assert.equal(hex(a), before);
});

test('a cp -r copy has the same hash, touched or not; so has the folder reached by another path', () => {
  const a = sample();
  const b = copy(a);
  assert.equal(hex(b), hex(a));
  execFileSync('touch', [path.join(b, 'a.txt'), path.join(b, 'sub', 'deeper', 'c'), b]);
  assert.equal(hex(b), hex(a));
  assert.equal(hex(a + '/'), hex(a));
  assert.equal(hex(path.relative(process.cwd(), a)), hex(a));
  const viaLink = path.join(tmp, `via-${seq++}`);
  symlinkSync(a, viaLink);
  assert.equal(hex(viaLink), hex(a));
});

test('every change of content, name, type or shape changes the hash', () => {
  const base = hex(sample());
  const changes: [string, (root: string) => void][] = [
    ['one byte of a file', (r) => writeFileSync(path.join(r, 'a.txt'), 'hellO')],
    [
      'one byte deep in a large file',
      (r) => {
        const p = path.join(r, 'sub', 'deeper', 'c');
        writeFileSync(p, 'x'.repeat((3 << 20) - 1) + 'y');
      },
    ],
    ['a file grows', (r) => writeFileSync(path.join(r, 'zero'), '\0')],
    ['a file renamed', (r) => renameSync(path.join(r, 'a.txt'), path.join(r, 'a.txu'))],
    [
      'a file moved to another folder',
      (r) => renameSync(path.join(r, 'a.txt'), path.join(r, 'sub', 'a.txt')),
    ],
    ['an empty folder added', (r) => mkdirSync(path.join(r, 'new'))],
    ['an empty folder removed', (r) => rmSync(path.join(r, 'empty'), { recursive: true })],
    ['an empty file added', (r) => writeFileSync(path.join(r, 'empty', 'f'), '')],
    [
      'a symlink target changed',
      (r) => {
        unlinkSync(path.join(r, 'link'));
        symlinkSync('sub/b.bi', path.join(r, 'link'));
      },
    ],
    [
      'a symlink replaced by the file it points to',
      (r) => {
        unlinkSync(path.join(r, 'link'));
        writeFileSync(path.join(r, 'link'), Buffer.from([0, 1, 2, 255]));
      },
    ],
    [
      'an empty file replaced by an empty folder',
      (r) => {
        unlinkSync(path.join(r, 'zero'));
        mkdirSync(path.join(r, 'zero'));
      },
    ],
    ['a fifo added', (r) => execFileSync('mkfifo', [path.join(r, 'pipe')])],
  ];
  const seen = new Map<string, string>([[base, 'the sample']]);
  for (const [what, change] of changes) {
    const r = sample();
    change(r);
    const h = hex(r);
    assert.notEqual(h, base, what);
    // Different changes give different hashes too (the encoding is unambiguous).
    assert.ok(!seen.has(h), `${what} hashes like ${seen.get(h)}`);
    seen.set(h, what);
  }
});

test('file boundaries are part of the hash: content cannot slide from one file to the next', () => {
  const a = path.join(tmp, `slide-a-${seq++}`);
  const b = path.join(tmp, `slide-b-${seq++}`);
  mkdirSync(a);
  mkdirSync(b);
  writeFileSync(path.join(a, 'f1'), 'ab');
  writeFileSync(path.join(a, 'f2'), 'c');
  writeFileSync(path.join(b, 'f1'), 'a');
  writeFileSync(path.join(b, 'f2'), 'bc');
  assert.notEqual(hex(a), hex(b));
});

test('a missing folder is an error, not a hash', () => {
  assert.throws(() => folderManifestSha256(path.join(tmp, 'does-not-exist')), /ENOENT/);
});
