import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { BackyError, MissingBlockError } from '../errors.js';
import { DirBackend } from './dir-backend.js';

describe('DirBackend: a missing object is missing only while the data directory is there', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('root there, object absent: MissingBlockError; root gone (unmounted mid-run): an I/O error', async () => {
    const top = await mkdtemp(join(tmpdir(), 'backy-dir-'));
    dirs.push(top);
    const root = join(top, 'data');
    const backend = new DirBackend(root);
    await backend.createRoot();
    const key = 'ab'.repeat(32);
    await backend.put(key, [Buffer.from('object')]);
    const absent = 'cd'.repeat(32);
    await assert.rejects(backend.get(absent), MissingBlockError);
    await assert.rejects(backend.getInto(absent, Buffer.alloc(16)), MissingBlockError);
    await backend.checkRoot();

    await rename(root, join(top, 'away'));
    for (const read of [() => backend.get(key), () => backend.getInto(key, Buffer.alloc(16))]) {
      await assert.rejects(read(), (err: unknown) => {
        assert.ok(err instanceof BackyError && !(err instanceof MissingBlockError), String(err));
        assert.match(err.message, /data directory .*data does not exist .*nothing was marked invalid/);
        return true;
      });
    }
    await writeFile(root, 'not a directory');
    await assert.rejects(backend.checkRoot(), /data directory .*data is not a directory/);
  });
});

describe('DirBackend: deferred puts finish (fsync, rename) in the background', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  async function fresh(): Promise<DirBackend> {
    const top = await mkdtemp(join(tmpdir(), 'backy-dir-'));
    dirs.push(top);
    const backend = new DirBackend(join(top, 'data'));
    await backend.createRoot();
    return backend;
  }

  it('many more than run at once: each is whole under its name after sync, whatever the caller did with its buffer', async () => {
    const backend = await fresh();
    const buf = Buffer.alloc(256 << 10);
    const keys: string[] = [];
    for (let i = 0; i < 100; i++) {
      buf.fill(i);
      const key = i.toString(16).padStart(64, 'a');
      keys.push(key);
      await backend.put(key, [buf], { defer: true });
    }
    await backend.sync();
    for (let i = 0; i < 100; i++)
      assert.deepEqual(await backend.get(keys[i]), Buffer.alloc(256 << 10, i), keys[i]);
    const leftovers = (await readdir(backend.root, { recursive: true })).filter((n) => n.includes('.tmp-'));
    assert.deepEqual(leftovers, [], 'no temp file left');
    await backend.close();
  });

  it('a deferred put that fails after it resolved (its name is taken by a directory) fails sync with one line', async () => {
    const backend = await fresh();
    const key = 'ef'.repeat(32);
    // A real fault: rename() of the finished temp file onto a directory fails (EISDIR).
    await mkdir(backend.path(key), { recursive: true });
    await backend.put(key, [Buffer.from('object')], { defer: true });
    await assert.rejects(backend.sync(), (err: unknown) => {
      assert.ok(err instanceof BackyError, String(err));
      assert.match(err.message, new RegExp(`^cannot store block ${key} in .*data: `));
      return true;
    });
    const leftovers = (await readdir(backend.root, { recursive: true })).filter((n) => n.includes('.tmp-'));
    assert.deepEqual(leftovers, [], 'the temp file is removed');
    await backend.sync(); // reported once; nothing else pending
    await backend.close();
  });
});
