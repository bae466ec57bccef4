// Sandbox tests: every way out of a preopened folder must fail, and the host
// file outside (scratch's outside/secret.txt) must stay untouched and unread.

import { test, type TestContext } from 'node:test';
import { strict as assert } from 'node:assert';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { Errno, Lookupflags, Oflags, RIGHTS_FILE } from '../../wasi/abi.js';
import { FileSystem } from './fs.js';
import { NAME_BYTES_MAX, PATH_BYTES_MAX, SYMLINK_FOLLOWS_MAX } from './limits.js';
import {
  errno,
  get,
  mount,
  openDir,
  openFile,
  scratch,
  SECRET_BYTES,
  value,
  type Scratch,
} from './scratch.js';

const FOLLOW = Lookupflags.SYMLINK_FOLLOW;

/** Asserts that nothing outside the disk changed: the secret, and the list of names beside it. */
function assertOutsideUntouched(s: Scratch): void {
  assert.equal(readFileSync(s.secretPath, 'utf8'), SECRET_BYTES);
  assert.equal(statSync(s.secretPath).nlink, 1);
  assert.deepEqual(readdirSync(s.outside), ['secret.txt']);
  assert.deepEqual(readdirSync(s.top).sort(), ['disk', 'outside']);
}

function setup(t: TestContext) {
  const s = scratch(t);
  const m = mount(t, s);
  s.atEnd.push(() => assertOutsideUntouched(s));
  return { s, ...m };
}

test('".." above the preopen root is NOTCAPABLE, for every path_* function', (t) => {
  const { fs, root } = setup(t);
  value(fs.pathCreateDirectory(root, 'a'));
  const escapes = ['..', '../outside/secret.txt', 'a/../../outside/secret.txt', './..', '../disk/../outside'];
  for (const p of escapes) {
    assert.equal(errno(openFile(fs, root, p)), Errno.NOTCAPABLE, p);
    assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, p)), Errno.NOTCAPABLE, p);
  }
  assert.equal(
    errno(openFile(fs, root, '../outside/secret.txt', { write: true, truncate: true })),
    Errno.NOTCAPABLE,
  );
  assert.equal(errno(openFile(fs, root, '../outside/new', { create: true, write: true })), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathCreateDirectory(root, '../newdir')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathUnlinkFile(root, '../outside/secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRemoveDirectory(root, '../outside')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'a/../..')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathReadlink(root, '../outside/secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathSymlink('x', root, '../outside/ln')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathLink(root, 0, '../outside/secret.txt', root, 'stolen')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRename(root, '../outside/secret.txt', root, 'stolen')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRename(root, 'a', root, '../a')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathFilestatSetTimes(root, 0, '..', 0n, 0n, 0)), Errno.NOTCAPABLE);
  // A subdirectory handle may climb back to the root, and no further.
  const a = value(openDir(fs, root, 'a'));
  value(fs.pathFilestatGet(a, 0, '..'));
  assert.equal(errno(fs.pathFilestatGet(a, 0, '../..')), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, a, '../../outside/secret.txt')), Errno.NOTCAPABLE);
});

test('absolute guest paths are NOTCAPABLE', (t) => {
  const { s, fs, root } = setup(t);
  for (const p of ['/', '/etc/passwd', s.secretPath, '//x', s.disk]) {
    assert.equal(errno(openFile(fs, root, p)), Errno.NOTCAPABLE, p);
    assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, p)), Errno.NOTCAPABLE, p);
    assert.equal(errno(fs.pathUnlinkFile(root, p)), Errno.NOTCAPABLE, p);
  }
});

test('a host-planted absolute symlink is never followed', (t) => {
  const { s, fs, root } = setup(t);
  symlinkSync(s.secretPath, join(s.disk, 'abs-file'));
  symlinkSync(s.outside, join(s.disk, 'abs-dir'));
  assert.equal(errno(openFile(fs, root, 'abs-file')), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, root, 'abs-file', { write: true, truncate: true })), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, root, 'abs-dir/secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, root, 'abs-dir/new', { create: true, write: true })), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, 'abs-file')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathFilestatGet(root, 0, 'abs-dir/secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathCreateDirectory(root, 'abs-dir/x')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathUnlinkFile(root, 'abs-dir/secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRename(root, 'abs-dir/secret.txt', root, 'mine')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'abs-dir/')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathLink(root, FOLLOW, 'abs-file', root, 'hard')), Errno.NOTCAPABLE);
  // Not following is fine: the guest sees the link itself, and unlinking it removes only the link.
  value(fs.pathFilestatGet(root, 0, 'abs-file'));
  value(fs.pathUnlinkFile(root, 'abs-file'));
});

test('the guest cannot create absolute symlinks', (t) => {
  const { s, fs, root } = setup(t);
  assert.equal(errno(fs.pathSymlink(s.secretPath, root, 'ln')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathSymlink('/', root, 'ln')), Errno.NOTCAPABLE);
  assert.equal(existsSync(join(s.disk, 'ln')), false);
});

test('guest-planted relative symlinks cannot climb out, alone or in chains', (t) => {
  const { fs, root } = setup(t);
  value(fs.pathSymlink('../outside', root, 'up'));
  value(fs.pathSymlink('../outside/secret.txt', root, 'up-file'));
  value(fs.pathCreateDirectory(root, 'deep'));
  value(fs.pathSymlink('../../outside', root, 'deep/up2'));
  value(fs.pathSymlink('up-file', root, 'c3'));
  value(fs.pathSymlink('c3', root, 'c2'));
  value(fs.pathSymlink('deep/../c2', root, 'c1'));
  value(fs.pathSymlink('..', root, 'dotdot'));
  for (const p of ['up/secret.txt', 'up-file', 'deep/up2/secret.txt', 'c1', 'dotdot/outside/secret.txt']) {
    assert.equal(errno(openFile(fs, root, p)), Errno.NOTCAPABLE, p);
    assert.equal(errno(openFile(fs, root, p, { write: true, truncate: true })), Errno.NOTCAPABLE, p);
    assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, p)), Errno.NOTCAPABLE, p);
  }
  assert.equal(errno(openFile(fs, root, 'up/planted', { create: true, write: true })), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathCreateDirectory(root, 'up/planted')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathSymlink('x', root, 'up/planted')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathLink(root, FOLLOW, 'c1', root, 'hard')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathRename(root, 'up/secret.txt', root, 'mine')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathUnlinkFile(root, 'up/secret.txt')), Errno.NOTCAPABLE);
  const up = fs.pathOpen(root, FOLLOW, 'up', Oflags.DIRECTORY, RIGHTS_FILE, RIGHTS_FILE, 0);
  assert.equal(errno(up), Errno.NOTCAPABLE);
  // A trailing slash follows the final symlink, so it is checked too.
  assert.equal(errno(fs.pathRemoveDirectory(root, 'up/')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathFilestatGet(root, 0, 'dotdot/')), Errno.NOTCAPABLE);
  // Renaming a symlink that points out only moves the (still useless) link. One level down,
  // its target names root/outside, inside the sandbox, which does not exist.
  value(fs.pathRename(root, 'up', root, 'up-moved'));
  assert.equal(errno(openFile(fs, root, 'up-moved/secret.txt')), Errno.NOTCAPABLE);
  value(fs.pathRename(root, 'up-moved', root, 'deep/up'));
  assert.equal(errno(openFile(fs, root, 'deep/up/secret.txt')), Errno.NOENT);
});

test('chains inside the sandbox resolve, including through "..", within the limit', (t) => {
  const { s, fs, root } = setup(t);
  mkdirSync(join(s.disk, 'x', 'y'), { recursive: true });
  writeFileSync(join(s.disk, 'x', 'y', 'real'), 'real');
  value(fs.pathSymlink('x/y/real', root, 'l3'));
  value(fs.pathSymlink('../l3', root, 'x/l2'));
  value(fs.pathSymlink('x/y/../l2', root, 'l1'));
  value(fs.pathSymlink('x/y', root, 'ydir'));
  assert.equal(get(fs, value(openFile(fs, root, 'l1'))), 'real');
  assert.equal(get(fs, value(openFile(fs, root, 'ydir/real'))), 'real');
  assert.equal(get(fs, value(openFile(fs, root, 'ydir/../y/./real'))), 'real');
});

test('symlink loops are LOOP after a fixed number of follows', (t) => {
  const { s, fs, root } = setup(t);
  value(fs.pathSymlink('self', root, 'self'));
  value(fs.pathSymlink('ping', root, 'pong'));
  value(fs.pathSymlink('pong', root, 'ping'));
  value(fs.pathSymlink('loopdir/x', root, 'loopdir'));
  for (const p of ['self', 'ping', 'pong/x', 'loopdir']) {
    assert.equal(errno(openFile(fs, root, p)), Errno.LOOP, p);
    assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, p)), Errno.LOOP, p);
  }
  assert.equal(errno(openFile(fs, root, 'ping', { create: true, write: true })), Errno.LOOP);
  // Exactly SYMLINK_FOLLOWS_MAX links in a chain resolve; one more is LOOP.
  writeFileSync(join(s.disk, 'end'), 'end');
  value(fs.pathSymlink('end', root, 'n1'));
  for (let i = 2; i <= SYMLINK_FOLLOWS_MAX + 1; i++) value(fs.pathSymlink(`n${i - 1}`, root, `n${i}`));
  assert.equal(get(fs, value(openFile(fs, root, `n${SYMLINK_FOLLOWS_MAX}`))), 'end');
  assert.equal(errno(openFile(fs, root, `n${SYMLINK_FOLLOWS_MAX + 1}`)), Errno.LOOP);
});

test('a directory handle whose directory was swapped for a symlink cannot be redirected out', (t) => {
  const { fs, root } = setup(t);
  value(fs.pathCreateDirectory(root, 'a'));
  const a = value(openDir(fs, root, 'a'));
  value(fs.pathRename(root, 'a', root, 'b'));
  value(fs.pathSymlink('../outside', root, 'a'));
  assert.equal(errno(openFile(fs, a, 'secret.txt')), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, a, 'new', { create: true, write: true })), Errno.NOTCAPABLE);
  assert.equal(errno(fs.readdir(a, 0n, 4096)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.fdFilestatGet(a)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathUnlinkFile(a, 'secret.txt')), Errno.NOTCAPABLE);
});

test('symlinks cannot cross from one preopen into another', (t) => {
  const s = scratch(t);
  mkdirSync(join(s.top, 'two'));
  writeFileSync(join(s.top, 'two', 'f'), 'two');
  const fs = new FileSystem([
    { guestPath: '/data', hostPath: s.disk },
    { guestPath: '/two', hostPath: join(s.top, 'two') },
  ]);
  t.after(() => fs.closeAll());
  const root = fs.openPreopen(0);
  value(fs.pathSymlink('../two/f', root, 'across'));
  assert.equal(errno(openFile(fs, root, 'across')), Errno.NOTCAPABLE);
});

test('the preopen root cannot be removed, renamed or replaced through "." or symlinks', (t) => {
  const { s, fs, root } = setup(t);
  value(fs.pathSymlink('.', root, 'self'));
  value(fs.pathCreateDirectory(root, 'd'));
  value(fs.pathSymlink('d/..', root, 'parent'));
  assert.equal(errno(fs.pathRemoveDirectory(root, 'self/')), Errno.INVAL);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'parent/')), Errno.NOTEMPTY);
  assert.equal(errno(fs.pathRename(root, 'self/', root, 'elsewhere')), Errno.BUSY);
  assert.equal(errno(fs.pathRename(root, 'd', root, 'self/')), Errno.BUSY);
  assert.equal(errno(fs.pathUnlinkFile(root, 'self/')), Errno.ISDIR);
  assert.equal(statSync(s.disk).isDirectory(), true);
});

test('hard links reach only files inside the sandbox', (t) => {
  const { s, fs, root } = setup(t);
  symlinkSync(s.secretPath, join(s.disk, 'abs'));
  value(fs.pathSymlink('../outside/secret.txt', root, 'rel'));
  assert.equal(errno(fs.pathLink(root, FOLLOW, 'abs', root, 'h1')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathLink(root, FOLLOW, 'rel', root, 'h2')), Errno.NOTCAPABLE);
  // Without following, the symlink itself is linked: still a symlink, still not followable.
  value(fs.pathLink(root, 0, 'rel', root, 'h3'));
  assert.equal(errno(openFile(fs, root, 'h3')), Errno.NOTCAPABLE);
  // The link target is resolved in the sandbox too.
  writeFileSync(join(s.disk, 'mine'), 'mine');
  assert.equal(errno(fs.pathLink(root, 0, 'mine', root, '../outside/mine')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathLink(root, 0, 'mine', root, 'rel2/../../outside/mine')), Errno.NOENT);
});

test('bad and oversized paths', (t) => {
  const { fs, root } = setup(t);
  assert.equal(errno(openFile(fs, root, 'a\0b')), Errno.INVAL);
  assert.equal(errno(openFile(fs, root, '')), Errno.NOENT);
  assert.equal(
    errno(openFile(fs, root, 'x'.repeat(NAME_BYTES_MAX + 1), { create: true, write: true })),
    Errno.NAMETOOLONG,
  );
  value(openFile(fs, root, 'x'.repeat(NAME_BYTES_MAX), { create: true, write: true }));
  // Multi-byte names count in bytes: 128 two-byte characters are 256 bytes.
  assert.equal(errno(openFile(fs, root, 'é'.repeat(128), { create: true, write: true })), Errno.NAMETOOLONG);
  assert.equal(errno(openFile(fs, root, 'a/'.repeat(PATH_BYTES_MAX / 2 + 1))), Errno.NAMETOOLONG);
  // Resolved paths are bounded too, even when symlinks make them grow.
  const long = 'd'.repeat(200);
  let path = '';
  for (let i = 0; i < 15; i++) {
    path = path === '' ? long : `${path}/${long}`;
    value(fs.pathCreateDirectory(root, path));
  }
  assert.equal(errno(fs.pathCreateDirectory(root, `${path}/${long}`)), Errno.NAMETOOLONG);
  value(fs.pathSymlink(path, root, 'far'));
  assert.equal(errno(fs.pathFilestatGet(root, FOLLOW, `far/${long}`)), Errno.NAMETOOLONG);
});
