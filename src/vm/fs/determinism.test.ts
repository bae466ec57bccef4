// Determinism: two copies of the same folder, built in different orders at
// different host paths (so inode numbers, directory order and timestamps
// differ), must give byte-identical results for the same sequence of calls.
// This is what a backup replaying the primary's calls on its own copy relies on.

import { test, type TestContext } from 'node:test';
import { strict as assert } from 'node:assert';
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Lookupflags, Oflags, RIGHTS_DIR, RIGHTS_FILE, Whence } from '../../wasi/abi.js';
import { FileSystem, type DirHandle, type FileHandle, type FsResult } from './fs.js';
import { bytes } from './scratch.js';

interface Node {
  path: string;
  kind: 'file' | 'dir' | 'link';
  content: string;
}

const TREE: Node[] = [
  { path: 'docs', kind: 'dir', content: '' },
  { path: 'docs/readme.md', kind: 'file', content: '# readme\n' },
  { path: 'docs/zeta', kind: 'file', content: 'z' },
  { path: 'docs/Alpha', kind: 'file', content: 'A' },
  { path: 'docs/ñandú', kind: 'file', content: 'bird' },
  { path: 'src', kind: 'dir', content: '' },
  { path: 'src/deep', kind: 'dir', content: '' },
  { path: 'src/deep/main.c', kind: 'file', content: 'int main(void) { return 0; }\n' },
  { path: 'src/deep/up', kind: 'link', content: '../../docs' },
  { path: 'top.txt', kind: 'file', content: 'top\n' },
  { path: 'link-to-top', kind: 'link', content: 'top.txt' },
  { path: 'empty', kind: 'dir', content: '' },
];

/** Builds TREE under a new folder whose path has `padding` extra bytes; `reverse` changes the creation order. */
function build(t: TestContext, padding: string, reverse: boolean): string {
  const top = mkdtempSync(join(tmpdir(), `lockstep-fs-det-${padding}`));
  t.after(() => rmSync(top, { recursive: true, force: true }));
  const disk = join(top, 'disk');
  mkdirSync(disk);
  const dirs = TREE.filter((n) => n.kind === 'dir');
  const others = TREE.filter((n) => n.kind !== 'dir');
  if (reverse) others.reverse();
  for (const n of dirs) mkdirSync(join(disk, n.path));
  for (let i = 0; i < others.length; i++) {
    const n = others[i]!;
    // Interleaved scratch files shift the inode numbers the host hands out.
    if (reverse) writeFileSync(join(disk, `tmp${i}`), 'x');
    if (n.kind === 'file') writeFileSync(join(disk, n.path), n.content);
    else symlinkSync(n.content, join(disk, n.path));
    if (reverse) unlinkSync(join(disk, `tmp${i}`));
  }
  if (reverse) {
    for (const n of TREE) if (n.kind !== 'link') utimesSync(join(disk, n.path), 1_000_000, 2_000_000);
  }
  return disk;
}

function show<T>(r: FsResult<T>): string {
  return JSON.stringify(r, (_key, v: unknown) => {
    if (typeof v === 'bigint') return `${v}n`;
    if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
    return v;
  });
}

/** Runs a fixed sequence of calls and returns the transcript of their results. */
function transcript(disk: string): string[] {
  const fs = new FileSystem([{ guestPath: '/data', hostPath: disk }]);
  const out: string[] = [];
  try {
    const root = fs.openPreopen(0);
    const follow = Lookupflags.SYMLINK_FOLLOW;
    for (const n of TREE) {
      out.push(`stat ${n.path} ${show(fs.pathFilestatGet(root, 0, n.path))}`);
      out.push(`stat-follow ${n.path} ${show(fs.pathFilestatGet(root, follow, n.path))}`);
    }
    out.push(`stat . ${show(fs.fdFilestatGet(root))}`);
    for (const dir of ['.', 'docs', 'src', 'src/deep', 'src/deep/up', 'empty']) {
      const h = fs.pathOpen(root, follow, dir, Oflags.DIRECTORY, RIGHTS_DIR, RIGHTS_DIR | RIGHTS_FILE, 0);
      out.push(`open ${dir} ${h.ok ? h.value.kind : show(h)}`);
      if (!h.ok) continue;
      const handle = h.value as DirHandle;
      out.push(`fstat ${dir} ${show(fs.fdFilestatGet(handle))}`);
      for (const [cookie, size] of [
        [0n, 4096],
        [0n, 50],
        [2n, 70],
        [3n, 24],
      ] as const) {
        out.push(`readdir ${dir} ${cookie} ${size} ${show(fs.readdir(handle, cookie, size))}`);
      }
      fs.close(handle);
    }
    out.push(`readlink ${show(fs.pathReadlink(root, 'src/deep/up'))}`);
    const f = fs.pathOpen(root, follow, 'link-to-top', 0, RIGHTS_FILE, 0n, 0);
    out.push(`open link-to-top ${f.ok}`);
    if (f.ok) {
      const file = f.value as FileHandle;
      out.push(`seek ${show(fs.seek(file, 0n, Whence.END))}`);
      out.push(`write ${show(fs.writev(file, [bytes('more\n')]))}`);
      out.push(`fstat ${show(fs.fdFilestatGet(file))}`);
      const buf = new Uint8Array(64);
      out.push(`pread ${show(fs.preadv(file, [buf], 0n))} ${Buffer.from(buf).toString('hex')}`);
    }
    out.push(`mkdir ${show(fs.pathCreateDirectory(root, 'made'))}`);
    out.push(`rename ${show(fs.pathRename(root, 'docs/zeta', root, 'made/zeta'))}`);
    out.push(`link ${show(fs.pathLink(root, 0, 'top.txt', root, 'made/hard'))}`);
    out.push(`stat made/hard ${show(fs.pathFilestatGet(root, 0, 'made/hard'))}`);
    out.push(`readdir made ${show(fs.readdir(root, 0n, 1024))}`);
    out.push(`escape ${show(fs.pathFilestatGet(root, follow, 'src/deep/up/../..'))}`);
    out.push(`missing ${show(fs.pathFilestatGet(root, 0, 'no/such'))}`);
    out.push(`rmdir-full ${show(fs.pathRemoveDirectory(root, 'docs'))}`);
  } finally {
    fs.closeAll();
  }
  return out;
}

test('two copies of a folder give byte-identical stat, readdir and I/O results', (t) => {
  const a = build(t, '', false);
  const b = build(t, 'a-much-longer-host-path-prefix-', true);
  // The copies really differ on the host: inode numbers, timestamps.
  const hostInos = (disk: string) => TREE.map((n) => lstatSync(join(disk, n.path)).ino);
  assert.notDeepEqual(hostInos(a), hostInos(b));
  assert.notEqual(lstatSync(join(a, 'top.txt')).mtimeMs, lstatSync(join(b, 'top.txt')).mtimeMs);

  const ta = transcript(a);
  const tb = transcript(b);
  assert.deepEqual(ta, tb);
  // The transcript must not be trivially empty or all errors.
  assert.ok(ta.length > 50);
  assert.ok(ta.some((line) => line.startsWith('readdir docs 0 4096 {"ok":true')));
  // And it holds nothing of either host path.
  for (const line of ta) assert.equal(line.includes(a) || line.includes(tmpdir()), false, line);
});

test('the same script twice on one folder is repeatable (no hidden state between FileSystems)', (t) => {
  const a = build(t, '', false);
  const b = build(t, '', false);
  assert.deepEqual(transcript(a), transcript(b));
});
