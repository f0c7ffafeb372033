/**
 * The repositories of src/meta composed by hand over one MetaDb, without the MetaStore facade
 * (as a new part, such as issue 22's block pages, will use them), on both SQL dialects: SQLite
 * (a temp file) and PostgreSQL (a database of its own on a real server, see test/lib/pg.ts).
 * The facade's behaviour is the contract of meta-store.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { testDialects } from '../../test/lib/dialects.js';
import { CopyMarks, copyPendingToken } from './copy-pending.js';
import { BlockLists } from './meta-blocks.js';
import { MetaDb } from './meta-db.js';
import { Garbage } from './meta-gc.js';
import { Leases } from './meta-leases.js';
import { Objects } from './meta-objects.js';
import { MetaStore } from './meta-store.js';
import { Versions } from './meta-versions.js';

const dialects = testDialects('repos');

const sum = (c: string) => c.repeat(64);

for (const dialect of dialects) {
  describe(`repositories over one MetaDb on ${dialect.name}`, { skip: dialect.skip }, () => {
    let m: MetaDb;
    let leases: Leases;
    before(async () => {
      m = await MetaDb.open(await dialect.fresh(), undefined);
      leases = new Leases(m);
    });
    after(async () => {
      await leases?.close();
      await m?.close();
    });

    it('a version created with its lease is no orphan; Versions and Objects mark copies in one CopyMarks', async () => {
      const marks = new CopyMarks();
      const versions = new Versions(m, leases, marks);
      const blocks = new BlockLists(m);
      const objects = new Objects(m, marks);
      const gc = new Garbage(m);

      const { version, lease } = await versions.createVersionWithLease(
        { name: 'r', sizeBytes: 8192, blockSize: 4096 },
        'backup',
      );
      assert.deepEqual(await gc.orphanedIncompleteVersions(), [], 'its lease names it');
      await objects.recordObjects([{ checksum: sum('a'), storedSize: 100 }], 1);
      await blocks.putBlocks(version.uid, [
        { idx: 0, checksum: sum('a'), size: 4096, valid: true },
        { idx: 1, checksum: null, size: 4096, valid: true },
      ]);
      assert.equal(await versions.completeVersion(version.uid), undefined);
      await leases.releaseLease(lease.id);
      assert.deepEqual(await gc.orphanedIncompleteVersions(), [], 'complete: not an orphan');

      // Versions and Objects share one CopyMarks: both changes show up in one take.
      assert.deepEqual(marks.take(), [version.uid]);
      assert.deepEqual(await objects.markObjectInvalid(sum('a')), [version.uid]);
      assert.deepEqual(marks.take(), [version.uid]);
      assert.notEqual(await copyPendingToken(m, version.uid), undefined, 'a MetaDb is a MetaHandle');
      assert.equal((await versions.getVersion(version.uid)).status, 'invalid');
    });

    it('the facade exposes its repositories over the same database', async () => {
      const meta = await MetaStore.open(m.url);
      try {
        const v = await meta.versions.createVersion({ name: 'f', sizeBytes: 4096, blockSize: 4096 });
        assert.equal((await meta.getVersion(v.uid)).name, 'f');
        const lease = await meta.leasing.acquireLease('restore', v.uid);
        assert.deepEqual(
          (await meta.leases()).map((l) => l.id),
          [lease.id],
        );
        await meta.releaseLease(lease.id);
        assert.equal((await meta.gc.orphanedIncompleteVersions()).length, 1, 'incomplete, no lease');
      } finally {
        await meta.close();
      }
    });
  });
}
