/**
 * The frozen copy of a VM's folders (FileSystem.freeze): the disk of a
 * snapshot stays exactly as it was at the freeze while the guest goes on
 * writing, appending, truncating and renaming, and costs one file copy per
 * file changed, not a copy of the disk.
 */
import { test } from 'node:test';
import { strict as assert } from 'node:assert';
import {
  linkSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  existsSync,
  writeFileSync,
  symlinkSync,
  readlinkSync,
} from 'node:fs';
import { join } from 'node:path';
import { bytes, mount, openFile, scratch, value } from './scratch.js';

test('a frozen tree keeps the content of the freeze while the guest writes on', (t) => {
  const s = scratch(t);
  writeFileSync(join(s.disk, 'log.txt'), 'one\n');
  writeFileSync(join(s.disk, 'big.bin'), Buffer.alloc(100_000, 7));
  writeFileSync(join(s.disk, 'same.txt'), 'unchanged');
  mkdirSync(join(s.disk, 'sub'));
  writeFileSync(join(s.disk, 'sub', 'inner.txt'), 'inner');
  linkSync(join(s.disk, 'log.txt'), join(s.disk, 'log-link.txt'));
  symlinkSync('same.txt', join(s.disk, 'ln'));
  const { fs, root } = mount(t, s);
  // A handle opened before the freeze, as a guest's log file would be.
  const log = value(openFile(fs, root, 'log.txt', { write: true }));
  value(fs.seek(log, 0n, 2));

  const frozen = join(s.disk, '..', 'frozen');
  const r = fs.freeze(frozen);
  assert.ok(typeof r !== 'string', String(r));
  assert.equal(r.files, 5);
  const f0 = join(frozen, '0');

  value(fs.writev(log, [bytes('two\n')])); // append through an old handle
  const big = value(openFile(fs, root, 'big.bin', { write: true }));
  value(fs.setSize(big, 10n)); // truncate
  value(openFile(fs, root, 'sub/inner.txt', { write: true, truncate: true })); // O_TRUNC
  value(fs.pathRename(root, 'same.txt', root, 'renamed.txt'));
  const fresh = value(openFile(fs, root, 'new.txt', { create: true, write: true }));
  value(fs.writev(fresh, [bytes('new')]));

  // The live tree moved on...
  assert.equal(readFileSync(join(s.disk, 'log.txt'), 'utf8'), 'one\ntwo\n');
  assert.equal(readFileSync(join(s.disk, 'big.bin')).byteLength, 10);
  // ...the frozen one did not: every file as at the freeze, and nothing created since.
  assert.equal(readFileSync(join(f0, 'log.txt'), 'utf8'), 'one\n');
  assert.equal(
    readFileSync(join(f0, 'log-link.txt'), 'utf8'),
    'one\n',
    'a hard link keeps the old content too',
  );
  assert.equal(readFileSync(join(f0, 'big.bin')).byteLength, 100_000);
  assert.equal(readFileSync(join(f0, 'sub', 'inner.txt'), 'utf8'), 'inner');
  assert.equal(readFileSync(join(f0, 'same.txt'), 'utf8'), 'unchanged');
  assert.equal(readlinkSync(join(f0, 'ln')), 'same.txt');
  assert.ok(!existsSync(join(f0, 'new.txt')));
  assert.ok(!readdirSync(f0).some((n) => n.includes('lockstep-cow')));
  // Only the three files whose content changed were copied; the rename copied nothing.
  assert.equal(fs.unsharedFiles, 3);
  // A second write to a file already copied copies nothing more.
  value(fs.writev(log, [bytes('three\n')]));
  assert.equal(fs.unsharedFiles, 3);

  fs.thaw();
  assert.ok(!existsSync(frozen));
  value(fs.writev(log, [bytes('four\n')]));
  assert.equal(fs.unsharedFiles, 3, 'after the thaw writes copy nothing');
  assert.match(String(fs.freeze(frozen)), /\[object Object\]/, 'it can freeze again');
  assert.equal(fs.freeze(frozen), 'the folders are already frozen');
  fs.thaw();
});
