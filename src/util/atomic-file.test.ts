import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { tryMountTmpfs, umount } from '../../test/lib/tmpfs.js';
import { writeFileAtomic } from './atomic-file.js';

const code = (c: string) => (err: unknown) => (err as NodeJS.ErrnoException).code === c;

describe('writeFileAtomic', () => {
  let top: string;
  const mounts: string[] = [];
  before(async () => (top = await mkdtemp(join(tmpdir(), 'backy-atomic-'))));
  after(async () => {
    for (const m of mounts) umount(m);
    await rm(top, { recursive: true, force: true });
  });

  const fresh = async (name: string) => {
    const dir = join(top, name);
    await mkdir(dir);
    return dir;
  };

  it('writes a string, a Buffer or a list of Buffers whole, with the mode asked whatever the umask', async () => {
    const dir = await fresh('content');
    const old = process.umask(0o277);
    try {
      await writeFileAtomic(join(dir, 's'), 'line\n');
      await writeFileAtomic(join(dir, 'b'), Buffer.from('buffer'), { mode: 0o640 });
      await writeFileAtomic(join(dir, 'l'), [Buffer.from('ab'), Buffer.alloc(0), Buffer.alloc(100_000, 7)]);
    } finally {
      process.umask(old);
    }
    assert.equal(await readFile(join(dir, 's'), 'utf8'), 'line\n');
    assert.equal(await readFile(join(dir, 'b'), 'utf8'), 'buffer');
    assert.deepEqual(
      await readFile(join(dir, 'l')),
      Buffer.concat([Buffer.from('ab'), Buffer.alloc(100_000, 7)]),
    );
    assert.equal((await stat(join(dir, 's'))).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'b'))).mode & 0o777, 0o640);
    assert.equal((await stat(join(dir, 'l'))).mode & 0o777, 0o600);
    assert.deepEqual((await readdir(dir)).sort(), ['b', 'l', 's'], 'no temp file left');
  });

  it('replaces an existing file; exclusive refuses one (EEXIST) and leaves it as it was', async () => {
    const dir = await fresh('replace');
    const path = join(dir, 'f');
    await writeFile(path, 'old');
    await writeFileAtomic(path, 'new');
    assert.equal(await readFile(path, 'utf8'), 'new');
    await assert.rejects(writeFileAtomic(path, 'newer', { exclusive: true }), code('EEXIST'));
    assert.equal(await readFile(path, 'utf8'), 'new');
    await writeFileAtomic(join(dir, 'g'), 'made', { exclusive: true });
    assert.equal(await readFile(join(dir, 'g'), 'utf8'), 'made');
    assert.deepEqual((await readdir(dir)).sort(), ['f', 'g'], 'no temp file left');
  });

  it('a missing parent directory is ENOENT and creates nothing', async () => {
    const dir = await fresh('no-parent');
    await assert.rejects(writeFileAtomic(join(dir, 'missing', 'f'), 'x'), code('ENOENT'));
    assert.deepEqual(await readdir(dir), []);
  });

  it('a rename that fails (the name is a directory) removes the temp file', async () => {
    const dir = await fresh('rename-fails');
    await mkdir(join(dir, 'f'));
    await writeFile(join(dir, 'f', 'inside'), 'kept');
    await assert.rejects(writeFileAtomic(join(dir, 'f'), 'x'), code('EISDIR'));
    assert.deepEqual(await readdir(dir), ['f']);
    assert.equal(await readFile(join(dir, 'f', 'inside'), 'utf8'), 'kept');
  });

  it('a full disk mid-write (ENOSPC, a real tmpfs) leaves the old file and no temp file', async (t) => {
    const dir = await fresh('full');
    const skip = tryMountTmpfs(dir, '64k');
    if (skip) return t.skip(skip);
    mounts.push(dir);
    await writeFile(join(dir, 'f'), 'old');
    await assert.rejects(writeFileAtomic(join(dir, 'f'), Buffer.alloc(1 << 20, 1)), code('ENOSPC'));
    await assert.rejects(
      writeFileAtomic(join(dir, 'g'), [Buffer.alloc(1 << 20, 1)], { exclusive: true }),
      code('ENOSPC'),
    );
    assert.deepEqual(await readdir(dir), ['f']);
    assert.equal(await readFile(join(dir, 'f'), 'utf8'), 'old');
  });

  it('a read-only file system (EROFS, a real tmpfs) is refused and changes nothing', async (t) => {
    const dir = await fresh('read-only');
    const skip = tryMountTmpfs(dir, '64k', { readOnly: true });
    if (skip) return t.skip(skip);
    mounts.push(dir);
    await assert.rejects(writeFileAtomic(join(dir, 'f'), 'x'), code('EROFS'));
    assert.deepEqual(await readdir(dir), []);
  });
});
