/**
 * The catalog queries (protect, labels, du) on both SQL dialects: SQLite (a temp file) and
 * PostgreSQL (a database of its own on a real server, see test/lib/pg.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { InputError, NotFoundError } from '../errors.js';
import { testDialects } from '../../test/lib/dialects.js';
import { changeLabels, findVersions, labelsOf, setProtected, storeSpace, versionSpace } from './catalog.js';
import { MetaStore } from './meta-store.js';
import type { BlockRow } from './meta-store.js';

const dialects = testDialects('catalog');

const sum = (c: string) => c.repeat(64);

for (const dialect of dialects) {
  describe(`catalog on ${dialect.name}`, { skip: dialect.skip }, () => {
    let meta: MetaStore;
    before(async () => {
      meta = await MetaStore.open(await dialect.fresh());
    });
    after(() => meta?.close());

    async function version(name: string, blocks: (string | null)[], size = 1000) {
      const v = await meta.createVersion({ name, sizeBytes: blocks.length * size, blockSize: size });
      const rows: BlockRow[] = blocks.map((checksum, idx) => ({ idx, checksum, size, valid: true }));
      await meta.recordObjects(
        [...new Set(blocks.filter((c): c is string => c !== null))].map((checksum) => ({
          checksum,
          storedSize: 500,
        })),
        1,
      );
      await meta.putBlocks(v.uid, rows);
      // A block list is final once completed (its pending entries sealed into pages).
      assert.equal(await meta.completeVersion(v.uid), undefined);
      return { ...v, status: 'valid' as const };
    }

    it('protect: removeVersion refuses in the same transaction; unknown uid changes nothing', async () => {
      const v = await version('p', [sum('a')]);
      await setProtected(meta, [v.uid], true);
      assert.equal((await meta.getVersion(v.uid)).protected, true);
      await assert.rejects(meta.removeVersion(v.uid), InputError);
      await meta.removeVersion(v.uid, { protectedToo: true });
      const w = await version('p', [sum('a')]);
      await assert.rejects(
        setProtected(meta, [w.uid, '00000000-0000-4000-8000-000000000000'], true),
        NotFoundError,
      );
      assert.equal((await meta.getVersion(w.uid)).protected, false);
    });

    it('labels: set, overwrite, remove, filter with AND, gone with the version', async () => {
      const a = await version('l', [null]);
      const b = await version('l', [null]);
      await changeLabels(meta, a.uid, { set: { env: 'prod', team: 'db' }, remove: [] });
      await changeLabels(meta, b.uid, { set: { env: 'prod' }, remove: [] });
      await changeLabels(meta, b.uid, { set: { env: 'test', x: '' }, remove: ['nothing'] });
      const all = await labelsOf(meta, [a.uid, b.uid]);
      assert.deepEqual(all.get(a.uid), { env: 'prod', team: 'db' });
      assert.deepEqual(all.get(b.uid), { env: 'test', x: '' });
      assert.deepEqual(
        (await findVersions(meta, { labels: { env: 'prod' } })).map((v) => v.uid),
        [a.uid],
      );
      assert.deepEqual(
        (await findVersions(meta, { name: 'l', labels: { env: 'test', x: '' } })).map((v) => v.uid),
        [b.uid],
      );
      assert.deepEqual(await findVersions(meta, { labels: { env: 'prod', team: 'web' } }), []);
      await changeLabels(meta, a.uid, { set: {}, remove: ['team'] });
      assert.deepEqual((await labelsOf(meta, [a.uid])).get(a.uid), { env: 'prod' });
      await meta.removeVersion(a.uid);
      assert.equal((await labelsOf(meta)).get(a.uid), undefined);
      await assert.rejects(changeLabels(meta, a.uid, { set: { k: 'v' }, remove: [] }), NotFoundError);
    });

    it('du: sparse, referenced, exclusive and store totals', async () => {
      const x = await version('du-x', [sum('1'), sum('2'), null, sum('2')]);
      const y = await version('du-y', [sum('2'), sum('3')]);
      const sx = await versionSpace(meta, x);
      assert.deepEqual(
        { sparse: sx.sparseBytes, ref: sx.referencedBytes, excl: sx.exclusiveBytes },
        { sparse: 1000, ref: 1000, excl: 500 },
      );
      const sy = await versionSpace(meta, y);
      assert.deepEqual({ ref: sy.referencedBytes, excl: sy.exclusiveBytes }, { ref: 1000, excl: 500 });
      const st = await storeSpace(meta);
      assert.ok(st.dataBytes >= 5000 && st.uniqueBytes >= 3000);
      assert.ok(st.dedupRatio >= 1);
    });
  });
}
