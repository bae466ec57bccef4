// Tests of FileSystem's fd_* and path_* operations on real temporary folders:
// results, errnos and rights. Sandbox escapes are in sandbox.test.ts and
// cross-host determinism in determinism.test.ts.

import { test } from 'node:test';
import { strict as assert } from 'node:assert';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import {
  Advice,
  Errno,
  Fdflags,
  Filetype,
  Fstflags,
  Lookupflags,
  Oflags,
  RIGHTS_DIR,
  RIGHTS_FILE,
  Rights,
  Whence,
} from '../../wasi/abi.js';
import { FileSystem, handleFiletype, PREOPEN_RIGHTS_BASE, PREOPEN_RIGHTS_INHERITING } from './fs.js';
import { FILE_SIZE_MAX_BYTES, OPEN_HANDLES_MAX } from './limits.js';
import {
  bytes,
  decodeDirents,
  errno,
  get,
  listAll,
  mount,
  openDir,
  openFile,
  put,
  READ_RIGHTS,
  scratch,
  text,
  value,
} from './scratch.js';

test('the constructor refuses missing folders and files, naming them', (t) => {
  const s = scratch(t);
  const missing = join(s.top, 'nope');
  assert.throws(
    () => new FileSystem([{ guestPath: '/data', hostPath: missing }]),
    (err: Error) => err.message.includes(missing),
  );
  assert.throws(
    () => new FileSystem([{ guestPath: '/data', hostPath: s.secretPath }]),
    (err: Error) => err.message.includes(s.secretPath) && err.message.includes('not a directory'),
  );
  // A host folder whose own path is too long would make NAMETOOLONG depend on where the host keeps it.
  const deep = join(s.top, ...Array.from({ length: 5 }, () => 'x'.repeat(250)));
  mkdirSync(deep, { recursive: true });
  assert.throws(
    () => new FileSystem([{ guestPath: '/data', hostPath: deep }]),
    (err: Error) => err.message.includes('longer than'),
  );
  assert.throws(() => new FileSystem([{ guestPath: '', hostPath: s.disk }]), /non-empty guest path/);
});

test('preopens: count, root handles, guest paths and rights', (t) => {
  const s = scratch(t);
  mkdirSync(join(s.top, 'second'));
  const fs = new FileSystem([
    { guestPath: '/data', hostPath: s.disk },
    { guestPath: '/', hostPath: join(s.top, 'second') },
  ]);
  t.after(() => fs.closeAll());
  assert.equal(fs.preopenCount(), 2);
  const data = fs.openPreopen(0);
  const slash = fs.openPreopen(1);
  assert.equal(fs.preopenGuestPath(data), '/data');
  assert.equal(fs.preopenGuestPath(slash), '/');
  assert.equal(data.kind, 'dir');
  assert.equal(handleFiletype(data), Filetype.DIRECTORY);
  assert.equal(data.rightsBase, PREOPEN_RIGHTS_BASE);
  assert.equal(data.rightsInheriting, PREOPEN_RIGHTS_INHERITING);
  const sub = value(fs.pathOpen(data, 0, '.', Oflags.DIRECTORY, RIGHTS_DIR, RIGHTS_DIR | RIGHTS_FILE, 0));
  assert.equal(sub.kind, 'dir');
  assert.equal(fs.preopenGuestPath(sub as never), null);
  assert.throws(() => fs.openPreopen(2));
  // Each preopen is its own device.
  assert.equal(value(fs.fdFilestatGet(data)).dev, 1n);
  assert.equal(value(fs.fdFilestatGet(slash)).dev, 2n);
});

test('create, write, read back, and the offset moves with each call', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'a.txt', { create: true, write: true }));
  assert.equal(handleFiletype(f), Filetype.REGULAR_FILE);
  assert.equal(value(fs.writev(f, [bytes('hello '), new Uint8Array(0), bytes('world')])), 11);
  assert.equal(value(fs.tell(f)), 11n);
  assert.equal(readFileSync(join(s.disk, 'a.txt'), 'utf8'), 'hello world');
  value(fs.close(f));

  const r = value(openFile(fs, root, 'a.txt'));
  const first = new Uint8Array(3);
  const second = new Uint8Array(4);
  assert.equal(value(fs.readv(r, [first, second])), 7);
  assert.equal(text(first) + text(second), 'hello w');
  assert.equal(value(fs.tell(r)), 7n);
  // A read that reaches the end comes back short, and then empty.
  assert.equal(get(fs, r), 'orld');
  assert.equal(get(fs, r), '');
  // A read-only handle cannot write.
  assert.equal(errno(fs.writev(r, [bytes('x')])), Errno.NOTCAPABLE);
});

test('pread and pwrite use their own offset and leave the handle offset alone', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'p'), '0123456789');
  const f = value(openFile(fs, root, 'p', { write: true }));
  value(fs.seek(f, 2n, Whence.SET));
  const buf = new Uint8Array(3);
  assert.equal(value(fs.preadv(f, [buf], 5n)), 3);
  assert.equal(text(buf), '567');
  assert.equal(value(fs.tell(f)), 2n);
  assert.equal(value(fs.pwritev(f, [bytes('AB')], 8n)), 2);
  assert.equal(value(fs.tell(f)), 2n);
  assert.equal(readFileSync(join(s.disk, 'p'), 'utf8'), '01234567AB');
  // Writing past the end leaves a hole of zeros.
  assert.equal(value(fs.pwritev(f, [bytes('Z')], 12n)), 1);
  assert.deepEqual([...readFileSync(join(s.disk, 'p')).subarray(10)], [0, 0, 0x5a]);
  // Reading past the end gives nothing.
  assert.equal(value(fs.preadv(f, [buf], 100n)), 0);
  // Offsets that are negative as s64 are INVAL.
  assert.equal(errno(fs.preadv(f, [buf], 1n << 63n)), Errno.INVAL);
  assert.equal(errno(fs.pwritev(f, [buf], (1n << 64n) - 1n)), Errno.INVAL);
  // pread and pwrite need FD_SEEK too.
  value(fs.setRights(f, f.rightsBase & ~Rights.FD_SEEK, 0n));
  assert.equal(errno(fs.preadv(f, [buf], 0n)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pwritev(f, [buf], 0n)), Errno.NOTCAPABLE);
});

test('APPEND writes at the end whatever the offset; pwrite ignores it; set_flags toggles it', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'log'), 'one\n');
  const f = value(openFile(fs, root, 'log', { write: true, append: true }));
  assert.equal(f.fdflags, Fdflags.APPEND);
  assert.equal(put(fs, f, 'two\n'), 4);
  assert.equal(value(fs.tell(f)), 8n);
  value(fs.seek(f, 0n, Whence.SET));
  put(fs, f, 'three\n');
  assert.equal(value(fs.tell(f)), 14n);
  assert.equal(readFileSync(join(s.disk, 'log'), 'utf8'), 'one\ntwo\nthree\n');
  // POSIX: pwrite writes where it is told, even in append mode.
  value(fs.pwritev(f, [bytes('ONE')], 0n));
  assert.equal(readFileSync(join(s.disk, 'log'), 'utf8'), 'ONE\ntwo\nthree\n');
  // Turning APPEND off makes writes go to the offset again.
  value(fs.setFdflags(f, 0));
  value(fs.seek(f, 4n, Whence.SET));
  put(fs, f, 'TWO');
  assert.equal(readFileSync(join(s.disk, 'log'), 'utf8'), 'ONE\nTWO\nthree\n');
  value(fs.setFdflags(f, Fdflags.APPEND | Fdflags.SYNC));
  put(fs, f, 'four\n');
  assert.equal(readFileSync(join(s.disk, 'log'), 'utf8'), 'ONE\nTWO\nthree\nfour\n');
  assert.equal(errno(fs.setFdflags(f, 1 << 7)), Errno.INVAL);
  value(fs.setRights(f, f.rightsBase & ~Rights.FD_FDSTAT_SET_FLAGS, 0n));
  assert.equal(errno(fs.setFdflags(f, 0)), Errno.NOTCAPABLE);
});

test('seek with SET, CUR and END, tell, and their errors', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 's'), 'abcdefghij');
  const f = value(openFile(fs, root, 's'));
  assert.equal(value(fs.seek(f, 3n, Whence.SET)), 3n);
  assert.equal(value(fs.seek(f, 2n, Whence.CUR)), 5n);
  // A negative delta may arrive as its u64 bit pattern.
  assert.equal(value(fs.seek(f, BigInt.asUintN(64, -1n), Whence.CUR)), 4n);
  assert.equal(value(fs.seek(f, -3n, Whence.END)), 7n);
  assert.equal(get(fs, f), 'hij');
  assert.equal(value(fs.seek(f, 5n, Whence.END)), 15n);
  assert.equal(get(fs, f), '');
  assert.equal(errno(fs.seek(f, -1n, Whence.SET)), Errno.INVAL);
  assert.equal(errno(fs.seek(f, -100n, Whence.END)), Errno.INVAL);
  assert.equal(errno(fs.seek(f, 0n, 3)), Errno.INVAL);
  assert.equal(errno(fs.seek(f, FILE_SIZE_MAX_BYTES + 1n, Whence.SET)), Errno.INVAL);
  assert.equal(value(fs.tell(f)), 15n);
  // lseek(fd, 0, SEEK_CUR) needs only FD_TELL; a real seek needs FD_SEEK.
  value(fs.setRights(f, f.rightsBase & ~Rights.FD_SEEK, 0n));
  assert.equal(value(fs.seek(f, 0n, Whence.CUR)), 15n);
  assert.equal(errno(fs.seek(f, 1n, Whence.SET)), Errno.NOTCAPABLE);
  value(fs.setRights(f, f.rightsBase & ~Rights.FD_TELL, 0n));
  assert.equal(errno(fs.tell(f)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.seek(f, 0n, Whence.CUR)), Errno.NOTCAPABLE);
});

test('set_size truncates and extends; allocate only grows', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'z'), '0123456789');
  const f = value(openFile(fs, root, 'z', { write: true }));
  value(fs.setSize(f, 4n));
  assert.equal(readFileSync(join(s.disk, 'z'), 'utf8'), '0123');
  value(fs.setSize(f, 6n));
  assert.deepEqual([...readFileSync(join(s.disk, 'z'))], [0x30, 0x31, 0x32, 0x33, 0, 0]);
  assert.equal(errno(fs.setSize(f, FILE_SIZE_MAX_BYTES + 1n)), Errno.FBIG);
  assert.equal(errno(fs.setSize(f, 1n << 63n)), Errno.INVAL);

  value(fs.allocate(f, 2n, 2n));
  assert.equal(statSync(join(s.disk, 'z')).size, 6);
  value(fs.allocate(f, 6n, 10n));
  assert.equal(statSync(join(s.disk, 'z')).size, 16);
  assert.equal(errno(fs.allocate(f, 0n, 0n)), Errno.INVAL);
  assert.equal(errno(fs.allocate(f, 1n << 63n, 1n)), Errno.INVAL);
  assert.equal(errno(fs.allocate(f, FILE_SIZE_MAX_BYTES, 1n)), Errno.FBIG);

  const r = value(openFile(fs, root, 'z'));
  assert.equal(errno(fs.setSize(r, 0n)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.allocate(r, 0n, 100n)), Errno.NOTCAPABLE);
  assert.equal(statSync(join(s.disk, 'z')).size, 16);
});

test('writes beyond the maximum file size are FBIG, and stop at it', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'big', { create: true, write: true }));
  assert.equal(errno(fs.pwritev(f, [bytes('x')], FILE_SIZE_MAX_BYTES)), Errno.FBIG);
  value(fs.seek(f, FILE_SIZE_MAX_BYTES, Whence.SET));
  assert.equal(errno(fs.writev(f, [bytes('x')])), Errno.FBIG);
  assert.equal(statSync(join(s.disk, 'big')).size, 0);
});

test('fd_filestat_get and path_filestat_get give virtual metadata', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), 'four');
  mkdirSync(join(s.disk, 'd'));
  symlinkSync('f', join(s.disk, 'ln'));
  const f = value(openFile(fs, root, 'f'));
  const byFd = value(fs.fdFilestatGet(f));
  const byPath = value(fs.pathFilestatGet(root, 0, 'f'));
  assert.deepEqual(byFd, byPath);
  assert.equal(byFd.filetype, Filetype.REGULAR_FILE);
  assert.equal(byFd.size, 4n);
  assert.equal(byFd.nlink, 1n);
  assert.equal(byFd.dev, 1n);
  assert.equal(byFd.atimNs + byFd.mtimNs + byFd.ctimNs, 0n);
  assert.notEqual(byFd.ino, 0n);

  const link = value(fs.pathFilestatGet(root, 0, 'ln'));
  assert.equal(link.filetype, Filetype.SYMBOLIC_LINK);
  assert.equal(link.size, 1n);
  assert.notEqual(link.ino, byFd.ino);
  // Following the link gives the file itself, same virtual ino.
  assert.deepEqual(value(fs.pathFilestatGet(root, Lookupflags.SYMLINK_FOLLOW, 'ln')), byFd);

  const dir = value(fs.pathFilestatGet(root, 0, 'd'));
  assert.deepEqual(
    { ...dir, ino: 0n },
    {
      dev: 1n,
      ino: 0n,
      filetype: Filetype.DIRECTORY,
      nlink: 1n,
      size: 0n,
      atimNs: 0n,
      mtimNs: 0n,
      ctimNs: 0n,
    },
  );
  const d = value(openDir(fs, root, 'd'));
  assert.deepEqual(value(fs.fdFilestatGet(d)), dir);
  assert.deepEqual(value(fs.pathFilestatGet(root, 0, 'd/.')), dir);
  assert.deepEqual(value(fs.pathFilestatGet(root, 0, 'd/../d/')), dir);

  assert.equal(errno(fs.pathFilestatGet(root, 0, 'missing')), Errno.NOENT);
  assert.equal(errno(fs.pathFilestatGet(root, 0, 'f/x')), Errno.NOTDIR);
  assert.equal(errno(fs.pathFilestatGet(root, 0, 'f/')), Errno.NOTDIR);
  assert.equal(errno(fs.pathFilestatGet(root, 0, '')), Errno.NOENT);

  value(fs.setRights(f, f.rightsBase & ~Rights.FD_FILESTAT_GET, 0n));
  assert.equal(errno(fs.fdFilestatGet(f)), Errno.NOTCAPABLE);
  value(fs.setRights(d, d.rightsBase & ~Rights.PATH_FILESTAT_GET, d.rightsInheriting));
  assert.equal(errno(fs.pathFilestatGet(d, 0, '.')), Errno.NOTCAPABLE);
});

test('sync, datasync and advise', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'f', { create: true, write: true }));
  put(fs, f, 'data');
  value(fs.sync(f));
  value(fs.datasync(f));
  value(fs.sync(root));
  // Directories carry no FD_DATASYNC right.
  assert.equal(errno(fs.datasync(root)), Errno.NOTCAPABLE);
  value(fs.advise(f, 0n, 4n, Advice.SEQUENTIAL));
  value(fs.advise(f, 0n, 0n, Advice.NOREUSE));
  assert.equal(errno(fs.advise(f, 0n, 4n, 6)), Errno.INVAL);
  assert.equal(errno(fs.advise(f, 1n << 63n, 4n, Advice.NORMAL)), Errno.INVAL);
  const r = value(openFile(fs, root, 'f'));
  assert.equal(errno(fs.datasync(r)), Errno.NOTCAPABLE);
  value(fs.setRights(f, f.rightsBase & ~(Rights.FD_SYNC | Rights.FD_ADVISE), 0n));
  assert.equal(errno(fs.sync(f)), Errno.NOTCAPABLE);
  assert.equal(errno(fs.advise(f, 0n, 1n, Advice.NORMAL)), Errno.NOTCAPABLE);
});

test('set_rights may only drop rights', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'f', { create: true, write: true }));
  assert.equal(f.rightsBase, RIGHTS_FILE);
  value(fs.setRights(f, Rights.FD_READ | Rights.FD_WRITE, 0n));
  assert.equal(f.rightsBase, Rights.FD_READ | Rights.FD_WRITE);
  assert.equal(errno(fs.setRights(f, Rights.FD_READ | Rights.FD_SEEK, 0n)), Errno.NOTCAPABLE);
  assert.equal(f.rightsBase, Rights.FD_READ | Rights.FD_WRITE);
  const sub = value(openDir(fs, root, '.'));
  value(fs.setRights(sub, sub.rightsBase, RIGHTS_FILE));
  assert.equal(errno(fs.setRights(sub, sub.rightsBase, RIGHTS_DIR | RIGHTS_FILE)), Errno.NOTCAPABLE);
  assert.equal(sub.rightsInheriting, RIGHTS_FILE);
  value(fs.setRights(root, RIGHTS_DIR & ~Rights.PATH_OPEN, RIGHTS_FILE));
  assert.equal(errno(openFile(fs, root, 'f')), Errno.NOTCAPABLE);
});

test('path_open: the oflags, and the rights it grants', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), 'content');
  mkdirSync(join(s.disk, 'd'));
  assert.equal(errno(openFile(fs, root, 'none')), Errno.NOENT);
  assert.equal(errno(openFile(fs, root, 'f', { create: true, exclusive: true, write: true })), Errno.EXIST);
  assert.equal(errno(openFile(fs, root, 'none/x', { create: true, write: true })), Errno.NOENT);
  assert.equal(errno(openFile(fs, root, 'f/x', { create: true, write: true })), Errno.NOTDIR);
  assert.equal(errno(openFile(fs, root, 'new/', { create: true, write: true })), Errno.ISDIR);
  assert.equal(existsSync(join(s.disk, 'new')), false);
  // Truncation.
  const t1 = value(openFile(fs, root, 'f', { truncate: true, write: true }));
  assert.equal(readFileSync(join(s.disk, 'f'), 'utf8'), '');
  value(fs.close(t1));
  // Directories: opened as directory handles, never for writing.
  const d = value(fs.pathOpen(root, 0, 'd', 0, READ_RIGHTS | Rights.FD_READDIR, RIGHTS_FILE, 0));
  assert.equal(d.kind, 'dir');
  assert.equal(d.rightsBase, Rights.FD_READDIR | (READ_RIGHTS & RIGHTS_DIR));
  assert.equal(d.rightsInheriting, RIGHTS_FILE);
  assert.equal(errno(openFile(fs, root, 'd', { write: true })), Errno.ISDIR);
  assert.equal(errno(fs.pathOpen(root, 0, 'd', Oflags.TRUNC, READ_RIGHTS, 0n, 0)), Errno.ISDIR);
  assert.equal(errno(fs.pathOpen(root, 0, 'f', Oflags.DIRECTORY, READ_RIGHTS, 0n, 0)), Errno.NOTDIR);
  assert.equal(
    errno(fs.pathOpen(root, 0, 'n', Oflags.DIRECTORY | Oflags.CREAT, READ_RIGHTS, 0n, 0)),
    Errno.INVAL,
  );
  assert.equal(errno(fs.pathOpen(root, 0, 'f', 1 << 4, READ_RIGHTS, 0n, 0)), Errno.INVAL);
  assert.equal(errno(fs.pathOpen(root, 0, 'f', 0, READ_RIGHTS, 0n, 1 << 5)), Errno.INVAL);
  // Rights: what was asked, within the directory's inheriting rights and the file type.
  const all = (1n << 64n) - 1n;
  const f = value(fs.pathOpen(root, 0, 'f', 0, all, all, 0));
  assert.equal(f.rightsBase, RIGHTS_FILE);
  assert.equal(f.rightsInheriting, PREOPEN_RIGHTS_INHERITING);
  const limited = value(openDir(fs, root, 'd'));
  value(fs.setRights(limited, limited.rightsBase, Rights.FD_READ));
  writeFileSync(join(s.disk, 'd', 'g'), 'g');
  const g = value(fs.pathOpen(limited, 0, 'g', 0, all, all, 0));
  assert.equal(g.rightsBase, Rights.FD_READ);
  assert.equal(g.rightsInheriting, Rights.FD_READ);
  // Creating and truncating need rights on the directory.
  value(
    fs.setRights(
      limited,
      limited.rightsBase & ~(Rights.PATH_CREATE_FILE | Rights.PATH_FILESTAT_SET_SIZE),
      0n,
    ),
  );
  assert.equal(errno(openFile(fs, limited, 'h', { create: true })), Errno.NOTCAPABLE);
  assert.equal(errno(openFile(fs, limited, 'g', { truncate: true })), Errno.NOTCAPABLE);
  assert.equal(readFileSync(join(s.disk, 'd', 'g'), 'utf8'), 'g');
});

test('path_open follows symlinks only when asked, and O_EXCL never follows', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), 'target');
  symlinkSync('f', join(s.disk, 'ln'));
  symlinkSync('absent', join(s.disk, 'dangling'));
  assert.equal(get(fs, value(openFile(fs, root, 'ln'))), 'target');
  assert.equal(errno(openFile(fs, root, 'ln', { follow: false })), Errno.LOOP);
  assert.equal(errno(fs.pathOpen(root, 0, 'ln', Oflags.DIRECTORY, READ_RIGHTS, 0n, 0)), Errno.NOTDIR);
  // O_CREAT through a dangling link creates its target, as POSIX says...
  value(openFile(fs, root, 'dangling', { create: true, write: true }));
  assert.equal(existsSync(join(s.disk, 'absent')), true);
  // ...but O_CREAT|O_EXCL on any existing name, a symlink included, is EXIST.
  symlinkSync('absent2', join(s.disk, 'dangling2'));
  assert.equal(
    errno(openFile(fs, root, 'dangling2', { create: true, exclusive: true, write: true })),
    Errno.EXIST,
  );
  assert.equal(existsSync(join(s.disk, 'absent2')), false);
});

test('only regular files and directories can be opened', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  // A unix socket stands in for every special file: it can be made without privileges.
  const server = createServer();
  const sockPath = join(s.disk, 'sock');
  return new Promise<void>((resolve) => {
    server.listen(sockPath, () => {
      assert.equal(errno(openFile(fs, root, 'sock')), Errno.NOTSUP);
      assert.equal(value(fs.pathFilestatGet(root, 0, 'sock')).filetype, Filetype.SOCKET_STREAM);
      server.close(() => resolve());
    });
  });
});

test('close: later use is BADF, and closing twice is BADF', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'f', { create: true, write: true }));
  const d = value(openDir(fs, root, '.'));
  assert.equal(fs.openHandleCount(), 2);
  value(fs.close(f));
  value(fs.close(d));
  assert.equal(fs.openHandleCount(), 0);
  assert.equal(errno(fs.close(f)), Errno.BADF);
  assert.equal(errno(fs.readv(f, [new Uint8Array(1)])), Errno.BADF);
  assert.equal(errno(fs.readdir(d, 0n, 100)), Errno.BADF);
  assert.equal(errno(fs.pathFilestatGet(d, 0, '.')), Errno.BADF);
  // A preopen root can be closed too (the guest may close fd 3).
  value(fs.close(root));
  assert.equal(errno(fs.fdFilestatGet(root)), Errno.BADF);
});

test('closeAll closes every handle, preopen roots included', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const f = value(openFile(fs, root, 'f', { create: true, write: true }));
  const d = value(openDir(fs, root, '.'));
  fs.closeAll();
  assert.equal(errno(fs.writev(f, [bytes('x')])), Errno.BADF);
  assert.equal(errno(fs.readdir(d, 0n, 100)), Errno.BADF);
  assert.equal(errno(fs.readdir(root, 0n, 100)), Errno.BADF);
  assert.equal(fs.openHandleCount(), 0);
});

test('handles of another FileSystem are a bug, not an errno', (t) => {
  const s = scratch(t);
  const { root } = mount(t, s);
  const other = new FileSystem([{ guestPath: '/data', hostPath: s.disk }]);
  assert.throws(() => other.readdir(root, 0n, 100));
  assert.throws(() =>
    other.readdir({ kind: 'dir', fdflags: 0, rightsBase: 0n, rightsInheriting: 0n }, 0n, 100),
  );
});

test('at most OPEN_HANDLES_MAX handles are open at once; the next is MFILE', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), '');
  const handles = [];
  for (let i = 0; i < OPEN_HANDLES_MAX; i++) handles.push(value(openFile(fs, root, 'f')));
  assert.equal(errno(openFile(fs, root, 'f')), Errno.MFILE);
  assert.equal(errno(openDir(fs, root, '.')), Errno.MFILE);
  value(fs.close(handles[0]!));
  value(openDir(fs, root, '.'));
});

test('path_create_directory', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  value(fs.pathCreateDirectory(root, 'a'));
  value(fs.pathCreateDirectory(root, 'a/b/'));
  assert.equal(statSync(join(s.disk, 'a', 'b')).isDirectory(), true);
  assert.equal(errno(fs.pathCreateDirectory(root, 'a')), Errno.EXIST);
  assert.equal(errno(fs.pathCreateDirectory(root, '.')), Errno.EXIST);
  assert.equal(errno(fs.pathCreateDirectory(root, 'a/..')), Errno.EXIST);
  assert.equal(errno(fs.pathCreateDirectory(root, 'x/y')), Errno.NOENT);
  const a = value(openDir(fs, root, 'a'));
  value(fs.pathCreateDirectory(a, 'c'));
  assert.equal(statSync(join(s.disk, 'a', 'c')).isDirectory(), true);
  value(fs.setRights(a, a.rightsBase & ~Rights.PATH_CREATE_DIRECTORY, 0n));
  assert.equal(errno(fs.pathCreateDirectory(a, 'd')), Errno.NOTCAPABLE);
  assert.equal(existsSync(join(s.disk, 'a', 'd')), false);
});

test('path_remove_directory: empty only, not ".", "..", files or the root', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  mkdirSync(join(s.disk, 'empty'));
  mkdirSync(join(s.disk, 'full'));
  writeFileSync(join(s.disk, 'full', 'x'), 'x');
  writeFileSync(join(s.disk, 'file'), '');
  symlinkSync('empty', join(s.disk, 'ln'));
  assert.equal(errno(fs.pathRemoveDirectory(root, 'full')), Errno.NOTEMPTY);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'file')), Errno.NOTDIR);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'ln')), Errno.NOTDIR);
  assert.equal(errno(fs.pathRemoveDirectory(root, '.')), Errno.INVAL);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'empty/..')), Errno.NOTEMPTY);
  assert.equal(errno(fs.pathRemoveDirectory(root, 'gone')), Errno.NOENT);
  value(fs.pathRemoveDirectory(root, 'empty/'));
  assert.equal(existsSync(join(s.disk, 'empty')), false);
  assert.equal(existsSync(s.disk), true);
  mkdirSync(join(s.disk, 'e2'));
  value(fs.setRights(root, root.rightsBase & ~Rights.PATH_REMOVE_DIRECTORY, root.rightsInheriting));
  assert.equal(errno(fs.pathRemoveDirectory(root, 'e2')), Errno.NOTCAPABLE);
  assert.equal(existsSync(join(s.disk, 'e2')), true);
});

test('path_unlink_file: files and symlinks, never directories', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), '');
  mkdirSync(join(s.disk, 'd'));
  symlinkSync('d', join(s.disk, 'ln'));
  value(fs.pathUnlinkFile(root, 'ln'));
  assert.equal(existsSync(join(s.disk, 'd')), true);
  assert.equal(existsSync(join(s.disk, 'ln')), false);
  assert.equal(errno(fs.pathUnlinkFile(root, 'd')), Errno.ISDIR);
  assert.equal(errno(fs.pathUnlinkFile(root, '.')), Errno.ISDIR);
  assert.equal(errno(fs.pathUnlinkFile(root, 'f/')), Errno.NOTDIR);
  assert.equal(errno(fs.pathUnlinkFile(root, 'nope')), Errno.NOENT);
  value(fs.pathUnlinkFile(root, 'f'));
  assert.equal(existsSync(join(s.disk, 'f')), false);
  writeFileSync(join(s.disk, 'g'), '');
  value(fs.setRights(root, root.rightsBase & ~Rights.PATH_UNLINK_FILE, root.rightsInheriting));
  assert.equal(errno(fs.pathUnlinkFile(root, 'g')), Errno.NOTCAPABLE);
});

test('path_rename: move, replace, and the refusals', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'a'), 'A');
  writeFileSync(join(s.disk, 'b'), 'B');
  mkdirSync(join(s.disk, 'd'));
  mkdirSync(join(s.disk, 'full'));
  writeFileSync(join(s.disk, 'full', 'x'), '');
  value(fs.pathRename(root, 'a', root, 'b'));
  assert.equal(readFileSync(join(s.disk, 'b'), 'utf8'), 'A');
  assert.equal(existsSync(join(s.disk, 'a')), false);
  const d = value(openDir(fs, root, 'd'));
  value(fs.pathRename(root, 'b', d, 'moved'));
  assert.equal(readFileSync(join(s.disk, 'd', 'moved'), 'utf8'), 'A');
  // An open file keeps working after its name moves.
  const f = value(openFile(fs, d, 'moved'));
  value(fs.pathRename(d, 'moved', root, 'back'));
  assert.equal(get(fs, f), 'A');
  assert.equal(errno(fs.pathRename(root, 'nope', root, 'x')), Errno.NOENT);
  assert.equal(errno(fs.pathRename(root, 'd', root, 'd/inside')), Errno.INVAL);
  assert.equal(errno(fs.pathRename(root, 'd', root, 'full')), Errno.NOTEMPTY);
  assert.equal(errno(fs.pathRename(root, 'back', root, 'd')), Errno.ISDIR);
  assert.equal(errno(fs.pathRename(root, 'd', root, 'back')), Errno.NOTDIR);
  assert.equal(errno(fs.pathRename(root, '.', root, 'x')), Errno.BUSY);
  assert.equal(errno(fs.pathRename(root, 'back', root, 'd/..')), Errno.BUSY);
  // A directory may replace an empty directory.
  mkdirSync(join(s.disk, 'empty'));
  value(fs.pathRename(root, 'd', root, 'empty'));
  assert.equal(existsSync(join(s.disk, 'd')), false);
  // Rights on both ends.
  value(fs.setRights(d, d.rightsBase & ~Rights.PATH_RENAME_TARGET, 0n));
  value(fs.setRights(root, root.rightsBase & ~Rights.PATH_RENAME_SOURCE, root.rightsInheriting));
  assert.equal(errno(fs.pathRename(root, 'back', root, 'x')), Errno.NOTCAPABLE);
  assert.equal(existsSync(join(s.disk, 'back')), true);
});

test('the rename of a directory detaches handles opened on it', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  mkdirSync(join(s.disk, 'd'));
  const d = value(openDir(fs, root, 'd'));
  value(fs.pathRename(root, 'd', root, 'e'));
  assert.equal(errno(fs.fdFilestatGet(d)), Errno.NOENT);
  assert.equal(errno(fs.readdir(d, 0n, 100)), Errno.NOENT);
});

test('path_symlink and path_readlink', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  value(fs.pathSymlink('some/where', root, 'ln'));
  assert.equal(readlinkSync(join(s.disk, 'ln')), 'some/where');
  assert.equal(text(value(fs.pathReadlink(root, 'ln'))), 'some/where');
  value(fs.pathSymlink('é/ü', root, 'uni'));
  // The whole target, as bytes; the caller cuts it to the guest's buffer.
  assert.deepEqual(value(fs.pathReadlink(root, 'uni')), bytes('é/ü'));
  assert.equal(errno(fs.pathSymlink('x', root, 'ln')), Errno.EXIST);
  assert.equal(errno(fs.pathSymlink('x', root, '.')), Errno.EXIST);
  assert.equal(errno(fs.pathSymlink('', root, 'empty')), Errno.NOENT);
  assert.equal(errno(fs.pathSymlink('a\0b', root, 'nul')), Errno.INVAL);
  assert.equal(errno(fs.pathSymlink('x'.repeat(5000), root, 'long')), Errno.NAMETOOLONG);
  writeFileSync(join(s.disk, 'file'), '');
  assert.equal(errno(fs.pathReadlink(root, 'file')), Errno.INVAL);
  assert.equal(errno(fs.pathReadlink(root, '.')), Errno.INVAL);
  assert.equal(errno(fs.pathReadlink(root, 'nope')), Errno.NOENT);
  value(
    fs.setRights(
      root,
      root.rightsBase & ~(Rights.PATH_SYMLINK | Rights.PATH_READLINK),
      root.rightsInheriting,
    ),
  );
  assert.equal(errno(fs.pathSymlink('x', root, 'other')), Errno.NOTCAPABLE);
  assert.equal(errno(fs.pathReadlink(root, 'ln')), Errno.NOTCAPABLE);
});

test('path_link: hard links inside one preopen', (t) => {
  const s = scratch(t);
  mkdirSync(join(s.top, 'two'));
  const fs = new FileSystem([
    { guestPath: '/data', hostPath: s.disk },
    { guestPath: '/two', hostPath: join(s.top, 'two') },
  ]);
  t.after(() => fs.closeAll());
  const root = fs.openPreopen(0);
  const two = fs.openPreopen(1);
  writeFileSync(join(s.disk, 'f'), 'F');
  symlinkSync('f', join(s.disk, 'ln'));
  mkdirSync(join(s.disk, 'd'));
  value(fs.pathLink(root, 0, 'f', root, 'g'));
  assert.equal(lstatSync(join(s.disk, 'g')).ino, lstatSync(join(s.disk, 'f')).ino);
  assert.equal(value(fs.pathFilestatGet(root, 0, 'f')).nlink, 2n);
  // Without SYMLINK_FOLLOW the link itself is linked; with it, its target.
  value(fs.pathLink(root, 0, 'ln', root, 'ln2'));
  assert.equal(lstatSync(join(s.disk, 'ln2')).isSymbolicLink(), true);
  value(fs.pathLink(root, Lookupflags.SYMLINK_FOLLOW, 'ln', root, 'h'));
  assert.equal(lstatSync(join(s.disk, 'h')).ino, lstatSync(join(s.disk, 'f')).ino);
  assert.equal(errno(fs.pathLink(root, 0, 'f', root, 'g')), Errno.EXIST);
  assert.equal(errno(fs.pathLink(root, 0, 'd', root, 'd2')), Errno.PERM);
  assert.equal(errno(fs.pathLink(root, 0, '.', root, 'd3')), Errno.PERM);
  assert.equal(errno(fs.pathLink(root, 0, 'nope', root, 'x')), Errno.NOENT);
  // Preopens are separate devices, even on one host filesystem.
  assert.equal(errno(fs.pathLink(root, 0, 'f', two, 'f')), Errno.XDEV);
  assert.equal(errno(fs.pathRename(root, 'f', two, 'f')), Errno.XDEV);
  assert.equal(existsSync(join(s.top, 'two', 'f')), false);
  value(fs.setRights(root, root.rightsBase & ~Rights.PATH_LINK_SOURCE, root.rightsInheriting));
  assert.equal(errno(fs.pathLink(root, 0, 'f', root, 'k')), Errno.NOTCAPABLE);
});

test('set_times is NOTSUP on purpose, after rights, flags and path checks', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  writeFileSync(join(s.disk, 'f'), '');
  const f = value(openFile(fs, root, 'f', { write: true }));
  assert.equal(errno(fs.fdFilestatSetTimes(f, 1n, 2n, Fstflags.ATIM | Fstflags.MTIM)), Errno.NOTSUP);
  assert.equal(errno(fs.fdFilestatSetTimes(f, 0n, 0n, Fstflags.MTIM_NOW)), Errno.NOTSUP);
  value(fs.fdFilestatSetTimes(f, 0n, 0n, 0));
  assert.equal(errno(fs.fdFilestatSetTimes(f, 0n, 0n, Fstflags.ATIM | Fstflags.ATIM_NOW)), Errno.INVAL);
  assert.equal(errno(fs.fdFilestatSetTimes(f, 0n, 0n, Fstflags.MTIM | Fstflags.MTIM_NOW)), Errno.INVAL);
  assert.equal(errno(fs.fdFilestatSetTimes(f, 0n, 0n, 1 << 4)), Errno.INVAL);
  assert.equal(errno(fs.pathFilestatSetTimes(root, 0, 'f', 1n, 1n, Fstflags.ATIM)), Errno.NOTSUP);
  value(fs.pathFilestatSetTimes(root, 0, 'f', 0n, 0n, 0));
  assert.equal(errno(fs.pathFilestatSetTimes(root, 0, 'nope', 1n, 1n, Fstflags.ATIM)), Errno.NOENT);
  assert.equal(errno(fs.pathFilestatSetTimes(root, 0, '../x', 1n, 1n, Fstflags.ATIM)), Errno.NOTCAPABLE);
  value(fs.setRights(f, f.rightsBase & ~Rights.FD_FILESTAT_SET_TIMES, 0n));
  assert.equal(errno(fs.fdFilestatSetTimes(f, 0n, 0n, 0)), Errno.NOTCAPABLE);
  value(fs.setRights(root, root.rightsBase & ~Rights.PATH_FILESTAT_SET_TIMES, root.rightsInheriting));
  assert.equal(errno(fs.pathFilestatSetTimes(root, 0, 'f', 0n, 0n, 0)), Errno.NOTCAPABLE);
  // Nothing changed on disk: timestamps stay the host's, and the guest sees 0.
  assert.equal(value(fs.pathFilestatGet(fs.openPreopen(0), 0, 'f')).mtimNs, 0n);
});

test('readdir: ".", "..", then names in byte order, with d_next cookies and virtual inos', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  // Created out of order, with names whose byte order differs from UTF-16 and locale order.
  for (const name of ['b', 'a', 'B', 'é', 'z', '\u{1F600}', '\uFF5E', '-dash', '_u']) {
    writeFileSync(join(s.disk, name), '');
  }
  mkdirSync(join(s.disk, 'sub'));
  symlinkSync('a', join(s.disk, 'ln'));
  const page = value(fs.readdir(root, 0n, 1 << 16));
  const entries = decodeDirents(page);
  assert.deepEqual(
    entries.map((e) => e.name),
    ['.', '..', '-dash', 'B', '_u', 'a', 'b', 'ln', 'sub', 'z', 'é', '\uFF5E', '\u{1F600}'],
  );
  assert.deepEqual(
    entries.map((e) => e.next),
    entries.map((_, i) => BigInt(i + 1)),
  );
  const byName = new Map(entries.map((e) => [e.name, e]));
  assert.equal(byName.get('.')!.type, Filetype.DIRECTORY);
  assert.equal(byName.get('..')!.type, Filetype.DIRECTORY);
  // At the root, ".." is the root itself.
  assert.equal(byName.get('..')!.ino, byName.get('.')!.ino);
  assert.equal(byName.get('.')!.ino, value(fs.fdFilestatGet(root)).ino);
  assert.equal(byName.get('sub')!.type, Filetype.DIRECTORY);
  assert.equal(byName.get('ln')!.type, Filetype.SYMBOLIC_LINK);
  assert.equal(byName.get('a')!.type, Filetype.REGULAR_FILE);
  // d_ino is the same virtual ino that stat reports.
  for (const name of ['a', 'ln', 'sub', 'é']) {
    assert.equal(byName.get(name)!.ino, value(fs.pathFilestatGet(root, 0, name)).ino, name);
  }
  const sub = value(openDir(fs, root, 'sub'));
  const inSub = decodeDirents(value(fs.readdir(sub, 0n, 1000)));
  assert.deepEqual(
    inSub.map((e) => e.name),
    ['.', '..'],
  );
  assert.equal(inSub[0]!.ino, byName.get('sub')!.ino);
  assert.equal(inSub[1]!.ino, byName.get('.')!.ino);
  // Rights.
  value(fs.setRights(sub, sub.rightsBase & ~Rights.FD_READDIR, 0n));
  assert.equal(errno(fs.readdir(sub, 0n, 1000)), Errno.NOTCAPABLE);
});

test('readdir: small buffers truncate the last entry, and cookies resume', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const names = Array.from({ length: 20 }, (_, i) => `file-${String(i).padStart(2, '0')}`);
  for (const name of names) writeFileSync(join(s.disk, name), '');
  const expected = ['.', '..', ...names];
  // Every page size from one that fits a single entry upward gives the same listing.
  for (const pageBytes of [32, 33, 40, 57, 100, 256]) {
    assert.deepEqual(listAll(fs, root, pageBytes), expected, `page ${pageBytes}`);
  }
  // A buffer smaller than a header gives just those bytes of the first entry.
  const tiny = value(fs.readdir(root, 0n, 10));
  assert.equal(tiny.byteLength, 10);
  assert.equal(new DataView(tiny.buffer, tiny.byteOffset).getBigUint64(0, true), 1n);
  // A truncated entry is cut exactly at bufLen.
  const cut = value(fs.readdir(root, 2n, 24 + 3));
  assert.equal(cut.byteLength, 27);
  assert.equal(decodeDirents(cut)[0]!.name, 'fil');
  assert.equal(decodeDirents(cut)[0]!.whole, false);
  // Past the end, and a zero-sized buffer: nothing.
  assert.equal(value(fs.readdir(root, 22n, 100)).byteLength, 0);
  assert.equal(value(fs.readdir(root, 1000n, 100)).byteLength, 0);
  assert.equal(value(fs.readdir(root, 0n, 0)).byteLength, 0);
});

test('readdir: cookies stay stable while the guest pages, and cookie 0 takes a new listing', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  for (const name of ['a', 'c', 'e']) writeFileSync(join(s.disk, name), '');
  const first = decodeDirents(value(fs.readdir(root, 0n, 1000)));
  assert.deepEqual(
    first.map((e) => e.name),
    ['.', '..', 'a', 'c', 'e'],
  );
  // Entries added and removed mid-listing do not shift the cookies of this pass.
  writeFileSync(join(s.disk, 'b'), '');
  value(fs.pathUnlinkFile(root, 'a'));
  const resumed = decodeDirents(value(fs.readdir(root, 3n, 1000)));
  assert.deepEqual(
    resumed.map((e) => e.name),
    ['c', 'e'],
  );
  // rewinddir (cookie 0) sees the folder as it is now.
  assert.deepEqual(listAll(fs, root), ['.', '..', 'b', 'c', 'e']);
});

test('readdir of a directory handle opened by path', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  mkdirSync(join(s.disk, 'x', 'y'), { recursive: true });
  writeFileSync(join(s.disk, 'x', 'y', 'leaf'), '');
  const y = value(openDir(fs, root, 'x/y'));
  const entries = decodeDirents(value(fs.readdir(y, 0n, 1000)));
  assert.deepEqual(
    entries.map((e) => e.name),
    ['.', '..', 'leaf'],
  );
  assert.equal(entries[1]!.ino, value(fs.pathFilestatGet(root, 0, 'x')).ino);
  // Paths relative to a subdirectory handle work, ".." included, within the preopen.
  value(fs.pathFilestatGet(y, 0, '../../x/y/leaf'));
  assert.equal(value(fs.fdFilestatGet(y)).ino, value(fs.pathFilestatGet(root, 0, 'x/y')).ino);
  const leaf = value(openFile(fs, y, 'leaf', { write: true }));
  put(fs, leaf, 'in y');
  assert.equal(readFileSync(join(s.disk, 'x', 'y', 'leaf'), 'utf8'), 'in y');
});

test('host errors come back as errnos, with nothing of the host path', (t) => {
  const s = scratch(t);
  const { fs, root } = mount(t, s);
  const r = fs.pathFilestatGet(root, 0, 'missing/deeper');
  assert.deepEqual(r, { ok: false, errno: Errno.NOENT });
  assert.equal(JSON.stringify(r).includes(s.disk), false);
});
