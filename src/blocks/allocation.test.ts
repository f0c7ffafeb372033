import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { dataExtents, seekAddon, seekSupported } from '../source/extents.js';
import { blocksWithData } from './allocation.js';

describe('blocksWithData', () => {
  it('marks every block an extent touches, even by one byte', async () => {
    const has = await blocksWithData(
      [
        { offset: 0, length: 1 },
        { offset: 4095, length: 2 },
        { offset: 5 * 4096, length: 4096 },
      ],
      8 * 4096 - 10,
      4096,
    );
    assert.deepEqual([...has], [1, 1, 0, 0, 0, 1, 0, 0]);
  });

  it('ignores data past the size and refuses unordered extents', async () => {
    assert.deepEqual([...(await blocksWithData([{ offset: 3000, length: 9000 }], 4096, 4096))], [1]);
    await assert.rejects(
      blocksWithData(
        [
          { offset: 8192, length: 1 },
          { offset: 0, length: 1 },
        ],
        16384,
        4096,
      ),
    );
  });
});

describe('dataExtents (SEEK_DATA/SEEK_HOLE on a real sparse file)', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('the backy-seek addon is built (npm ci builds it with node-gyp)', () => {
    assert.ok(seekAddon(), 'native/seek was not built: run npm ci (needs python3, make, g++)');
  });

  it('finds the data and skips the holes', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'backy-seek-'));
    dirs.push(dir);
    const path = join(dir, 'sparse.img');
    const fd = openSync(path, 'w+');
    try {
      const MiB = 1 << 20;
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 3 * MiB);
      writeSync(fd, Buffer.alloc(MiB, 2), 0, MiB, 10 * MiB);
      ftruncateSync(fd, 64 * MiB);
      if (!seekSupported(fd)) return t.skip('this file system does not support SEEK_DATA');
      const ext = [...dataExtents(fd, 64 * MiB)];
      // File systems round extents to their allocation unit: check coverage, not exact bounds.
      const covers = (off: number) => ext.some((e) => e.offset <= off && off < e.offset + e.length);
      assert.ok(covers(3 * MiB) && covers(3 * MiB + 4095) && covers(10 * MiB) && covers(11 * MiB - 1));
      assert.ok(!covers(0) && !covers(20 * MiB) && !covers(64 * MiB - 1));
      const has = await blocksWithData(ext, 64 * MiB, 4 * MiB);
      assert.deepEqual(
        [...has].map((x, i) => (x ? i : -1)).filter((i) => i >= 0),
        [0, 2],
      );
    } finally {
      closeSync(fd);
    }
  });
});
