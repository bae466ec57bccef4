// Unit tests of the virtual metadata helpers and of the errno table.

import { test } from 'node:test';
import { strict as assert } from 'node:assert';
import { Errno, Filetype, Layout } from '../../wasi/abi.js';
import { attempt, errnoFromError, NODE_CODE_TO_ERRNO } from './errors.js';
import {
  encodeDirents,
  relativePathBytes,
  virtualChildIno,
  virtualIno,
  type ListingEntry,
} from './metadata.js';
import { decodeDirents } from './scratch.js';

test('virtual inos depend only on the preopen index and the relative path', () => {
  const enc = (s: string) => new TextEncoder().encode(s);
  assert.equal(virtualIno(0, enc('a/b')), virtualIno(0, enc('a/b')));
  assert.notEqual(virtualIno(0, enc('a/b')), virtualIno(1, enc('a/b')));
  assert.notEqual(virtualIno(0, enc('a/b')), virtualIno(0, enc('a/c')));
  assert.equal(virtualChildIno(0, enc('a'), enc('b')), virtualIno(0, enc('a/b')));
  assert.equal(virtualChildIno(3, enc(''), enc('b')), virtualIno(3, enc('b')));
  assert.deepEqual(relativePathBytes([]), new Uint8Array(0));
  assert.deepEqual(relativePathBytes(['x', 'é']), enc('x/é'));
  // Pinned values: a change here changes every ino a guest has seen, so it must be deliberate.
  assert.equal(virtualIno(0, enc('')), 0xdb2fa90498613fdfn);
  assert.equal(virtualIno(0, enc('docs/readme.md')), 0x1c9fedc63e9de4a0n);
});

test('dirents are packed per the spec and cut at bufLen', () => {
  const entries: ListingEntry[] = [
    { name: new Uint8Array([0x2e]), ino: 7n, filetype: Filetype.DIRECTORY },
    { name: new TextEncoder().encode('abc'), ino: 9n, filetype: Filetype.REGULAR_FILE },
  ];
  const all = encodeDirents(entries, 0n, 1000);
  assert.equal(all.byteLength, 2 * Layout.dirent.size + 1 + 3);
  const view = new DataView(all.buffer, all.byteOffset);
  assert.equal(view.getBigUint64(Layout.dirent.next, true), 1n);
  assert.equal(view.getBigUint64(Layout.dirent.ino, true), 7n);
  assert.equal(view.getUint32(Layout.dirent.namlen, true), 1);
  assert.equal(view.getUint8(Layout.dirent.type), Filetype.DIRECTORY);
  // Padding bytes after d_type are zero.
  assert.deepEqual([...all.subarray(21, 24)], [0, 0, 0]);
  assert.deepEqual(
    decodeDirents(all).map((e) => [e.next, e.ino, e.type, e.name]),
    [
      [1n, 7n, Filetype.DIRECTORY, '.'],
      [2n, 9n, Filetype.REGULAR_FILE, 'abc'],
    ],
  );
  assert.deepEqual(encodeDirents(entries, 0n, 30), all.subarray(0, 30));
  assert.deepEqual(encodeDirents(entries, 1n, 1000), all.subarray(25));
  assert.equal(encodeDirents(entries, 2n, 1000).byteLength, 0);
  assert.equal(encodeDirents(entries, 1n << 60n, 1000).byteLength, 0);
  assert.equal(encodeDirents(entries, 0n, 0).byteLength, 0);
});

test('Node error codes map through one table; unknown codes are IO; code-less errors are rethrown', () => {
  const sys = (code: string) => Object.assign(new Error(`${code}: with /host/path`), { code });
  assert.equal(errnoFromError(sys('ENOENT')), Errno.NOENT);
  assert.equal(errnoFromError(sys('EEXIST')), Errno.EXIST);
  assert.equal(errnoFromError(sys('ENOTDIR')), Errno.NOTDIR);
  assert.equal(errnoFromError(sys('EISDIR')), Errno.ISDIR);
  assert.equal(errnoFromError(sys('ENOTEMPTY')), Errno.NOTEMPTY);
  assert.equal(errnoFromError(sys('EACCES')), Errno.ACCES);
  assert.equal(errnoFromError(sys('EPERM')), Errno.PERM);
  assert.equal(errnoFromError(sys('ELOOP')), Errno.LOOP);
  assert.equal(errnoFromError(sys('ENAMETOOLONG')), Errno.NAMETOOLONG);
  assert.equal(errnoFromError(sys('EINVAL')), Errno.INVAL);
  assert.equal(errnoFromError(sys('ENOSPC')), Errno.NOSPC);
  assert.equal(errnoFromError(sys('EIO')), Errno.IO);
  assert.equal(errnoFromError(sys('EXDEV')), Errno.XDEV);
  assert.equal(errnoFromError(sys('EMFILE')), Errno.MFILE);
  assert.equal(errnoFromError(sys('EBADF')), Errno.BADF);
  assert.equal(errnoFromError(sys('EOPNOTSUPP')), Errno.NOTSUP);
  assert.equal(errnoFromError(sys('EWOULDBLOCK')), Errno.AGAIN);
  assert.equal(errnoFromError(sys('ESOMETHINGNEW')), Errno.IO);
  assert.equal(errnoFromError(sys('ERR_SOMETHING')), Errno.IO);
  assert.throws(() => errnoFromError(new TypeError('a bug')), TypeError);
  assert.deepEqual(
    attempt(() => {
      throw sys('ENOENT');
    }),
    { ok: false, errno: Errno.NOENT },
  );
  assert.deepEqual(
    attempt(() => 5),
    { ok: true, value: 5 },
  );
  // Every errno-named code maps to the errno of the same name.
  for (const [name, value] of Object.entries(Errno)) {
    if (name === 'SUCCESS' || name === 'NOTCAPABLE') continue;
    const code = name === 'TOOBIG' ? 'E2BIG' : `E${name}`;
    assert.equal(NODE_CODE_TO_ERRNO.get(code), value, code);
  }
});
