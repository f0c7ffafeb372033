import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MetaStore, nowMicros } from '../meta/meta-store.js';
import { pgDatabase, pgSkipReason } from '../../test/lib/pg.js';

/** Both SQL dialects: a SQLite file, and a database of its own on a real PostgreSQL server. */
const dialects: { name: string; skip?: string; open(dir: string): Promise<MetaStore> }[] = [
  { name: 'SQLite', open: (dir) => MetaStore.open(`sqlite:///${join(dir, 'db.sqlite')}`) },
  {
    name: 'PostgreSQL',
    skip: pgSkipReason(),
    open: async () => MetaStore.open(await pgDatabase('backy_gc_unit')),
  },
];

for (const dialect of dialects) {
  /** The re-check inside cleanup's delete transaction, on a real database. */
  describe(`MetaStore.deleteGarbage on ${dialect.name}`, { skip: dialect.skip }, () => {
    let dir: string;
    let meta: MetaStore;
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'backy-gc-'));
      meta = await dialect.open(dir);
    });
    after(async () => {
      await meta?.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('keeps what a leased backup touched even when the cutoff is later (clock skew)', async () => {
      const x = 'aa'.repeat(32);
      const y = 'bb'.repeat(32);
      await meta.recordObjects(
        [
          { checksum: x, storedSize: 10 },
          { checksum: y, storedSize: 20 },
        ],
        1000,
      );
      const lease = await meta.acquireLease('backup', null);
      assert.ok(await meta.touchObject(x, nowMicros()));
      const unlinked: string[] = [];
      // A cutoff far in the future: a cleanup whose clock runs ahead of the backup's host.
      const gone = await meta.deleteGarbage([x, y], Number.MAX_SAFE_INTEGER, async (c) => {
        unlinked.push(...c);
      });
      assert.deepEqual(gone, [{ checksum: y, storedSize: 20 }]);
      assert.deepEqual(unlinked, [y]);
      assert.equal(await meta.touchObject(y, nowMicros()), false, 'y is gone');

      await meta.releaseLease(lease.id);
      const later = await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, async () => {});
      assert.deepEqual(later, [{ checksum: x, storedSize: 10 }], 'without the lease x is garbage');
    });

    it("a reader's lease on a complete version does not hold the cutoff; a writer's does", async () => {
      const v = await meta.createVersion({ name: 'served', sizeBytes: 4096, blockSize: 4096 });
      await meta.setVersionStatus(v.uid, 'valid');
      const reader = await meta.acquireLease('nbd', v.uid);
      const x = 'ee'.repeat(32);
      await meta.recordObjects([{ checksum: x, storedSize: 10 }], nowMicros()); // garbage made later
      const gone = await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, async () => {});
      assert.deepEqual(gone, [{ checksum: x, storedSize: 10 }], 'the reader holds nothing back');

      // An nbd -w connection's lease names its new, incomplete version: a writer.
      const w = await meta.createVersion({ name: 'served+nbd', sizeBytes: 4096, blockSize: 4096 });
      const writer = await meta.acquireLease('nbd', w.uid);
      const y = 'ff'.repeat(32);
      await meta.recordObjects([{ checksum: y, storedSize: 10 }], nowMicros());
      assert.deepEqual(await meta.deleteGarbage([y], Number.MAX_SAFE_INTEGER, async () => {}), []);
      await meta.releaseLease(writer.id);
      await meta.releaseLease(reader.id);
      await meta.removeVersion(w.uid);
      await meta.removeVersion(v.uid);
      assert.equal((await meta.deleteGarbage([y], Number.MAX_SAFE_INTEGER, async () => {})).length, 1);
    });

    it('keeps a row when unlinking fails (the transaction rolls back)', async () => {
      const z = 'cc'.repeat(32);
      await meta.recordObjects([{ checksum: z, storedSize: 5 }], 1000);
      await assert.rejects(
        meta.deleteGarbage([z], Number.MAX_SAFE_INTEGER, async () => {
          throw new Error('EIO');
        }),
        /EIO/,
      );
      assert.deepEqual(await meta.garbageCandidates(Number.MAX_SAFE_INTEGER, ''), [
        { checksum: z, storedSize: 5 },
      ]);
    });
  });

  describe(`MetaStore.touchObject and cleanup on ${dialect.name}`, { skip: dialect.skip }, () => {
    let dir: string;
    let meta: MetaStore;
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'backy-gc-'));
      meta = await dialect.open(dir);
    });
    after(async () => {
      await meta?.close();
      await rm(dir, { recursive: true, force: true });
    });

    it('an invalid object is no dedup target, but touching it keeps cleanup off the copy about to be stored', async () => {
      const x = 'dd'.repeat(32);
      await meta.recordObjects([{ checksum: x, storedSize: 10 }], 1000);
      await meta.markObjectInvalid(x);
      const lease = await meta.acquireLease('backup', null);
      assert.equal(await meta.touchObject(x, nowMicros()), false, 'invalid: store it again');
      // The backup now writes a fresh file under x's name; a cleanup runs before it records x.
      const gone = await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, async () => {});
      assert.deepEqual(gone, [], "the backup's fresh copy must survive");
      await meta.releaseLease(lease.id);
    });
  });
}
