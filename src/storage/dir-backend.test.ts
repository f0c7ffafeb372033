import assert from 'node:assert/strict';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
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
