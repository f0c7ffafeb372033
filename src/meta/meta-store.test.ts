/**
 * The MetaStore contract, run against every SQL dialect: SQLite (a temp file) and PostgreSQL
 * (a database of its own on a real server, see test/lib/pg.ts). One loop per dialect, like
 * kysely's tests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigError, NotFoundError } from '../errors.js';
import { clearCopyPending, copyPendingToken, pendingCopies } from './copy-pending.js';
import { MetaStore } from './meta-store.js';
import type { BlockRow } from './meta-store.js';
import { testDialects } from '../../test/lib/dialects.js';

const dialects = testDialects('meta');

const sum = (n: number) => 'c'.repeat(60) + String(n).padStart(4, '0');
const rows = (n: number, from = 0, checksum: (i: number) => string | null = () => null): BlockRow[] =>
  Array.from({ length: n }, (_, k) => ({
    idx: from + k,
    checksum: checksum(from + k),
    size: 4096,
    valid: true,
  }));

for (const dialect of dialects) {
  describe(`MetaStore on ${dialect.name}`, { skip: dialect.skip }, () => {
    let engine: string;
    let meta: MetaStore;

    before(async () => {
      engine = await dialect.fresh();
      meta = await MetaStore.open(engine);
    });
    after(async () => {
      await meta?.close();
    });

    it('records what change tracking is relative to (0003_change_tracking), or none', async () => {
      const thin = { kind: 'thin' as const, device_id: 7, base_device_id: 3 };
      const bitmap = { kind: 'dirty-bitmap' as const, bitmap: 'b1' };
      const a = await meta.createVersion({ name: 't', sizeBytes: 0, blockSize: 4096, tracking: thin });
      const b = await meta.createVersion({ name: 't', sizeBytes: 0, blockSize: 4096, tracking: bitmap });
      const c = await meta.createVersion({ name: 't', sizeBytes: 0, blockSize: 4096 });
      assert.deepEqual((await meta.getVersion(a.uid)).tracking, thin);
      assert.deepEqual((await meta.getVersion(b.uid)).tracking, bitmap);
      assert.equal((await meta.getVersion(c.uid)).tracking, null);
      const listed = await meta.listVersions({ name: 't' });
      assert.deepEqual(
        listed.map((v) => v.tracking),
        [thin, bitmap, null],
      );
    });

    it('creates, finds, lists and updates versions, with numbers as numbers', async () => {
      const a = await meta.createVersion({ name: 'vm-a', sizeBytes: 3 * 2 ** 40, blockSize: 4 << 20 });
      const b = await meta.createVersion({ name: 'vm-b', sizeBytes: 8192, blockSize: 4096, baseUid: a.uid });
      const got = await meta.getVersion(a.uid);
      assert.deepEqual(got, a);
      assert.equal(typeof got.date, 'number');
      assert.equal(got.sizeBytes, 3 * 2 ** 40);
      assert.equal(got.status, 'incomplete');
      assert.equal((await meta.getVersion(b.uid)).baseUid, a.uid);
      await assert.rejects(meta.getVersion('00000000-0000-4000-8000-000000000000'), NotFoundError);
      assert.equal(await meta.findVersion('00000000-0000-4000-8000-000000000000'), undefined);

      const all = await meta.listVersions();
      assert.deepEqual(
        all.filter((v) => v.uid === a.uid || v.uid === b.uid).map((v) => v.uid),
        [a.uid, b.uid],
      );
      assert.deepEqual(
        (await meta.listVersions({ name: 'vm-b' })).map((v) => v.uid),
        [b.uid],
      );
      await meta.setVersionStatus(b.uid, 'invalid');
      await meta.setVersionSize(b.uid, 12288);
      const b2 = await meta.getVersion(b.uid);
      assert.equal(b2.status, 'invalid');
      assert.equal(b2.sizeBytes, 12288);
    });

    it('upserts block rows and pages them in index order', async () => {
      const v = await meta.createVersion({ name: 'paging', sizeBytes: 2500 * 4096, blockSize: 4096 });
      // Inserted out of order and in two calls; the second overwrites a stretch.
      await meta.putBlocks(v.uid, rows(1500, 1000));
      await meta.putBlocks(
        v.uid,
        rows(1200, 0, (i) => sum(i)),
      );
      const page = await meta.blockPage(v.uid, 0, 10);
      assert.deepEqual(
        page.map((r) => r.idx),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
      );
      assert.equal(page[3].checksum, sum(3));
      assert.equal(typeof page[3].size, 'number');
      const later = await meta.blockPage(v.uid, 1195, 10);
      assert.deepEqual(
        later.map((r) => [r.idx, r.checksum]),
        [
          [1195, sum(1195)],
          [1196, sum(1196)],
          [1197, sum(1197)],
          [1198, sum(1198)],
          [1199, sum(1199)],
          [1200, null],
          [1201, null],
          [1202, null],
          [1203, null],
          [1204, null],
        ],
      );
      const all: number[] = [];
      for await (const r of meta.blocks(v.uid)) all.push(r.idx);
      assert.equal(all.length, 2500);
      assert.ok(all.every((idx, k) => idx === k));
      const some = await meta.blocksAt(v.uid, [2499, 7, 3000]);
      assert.deepEqual(
        [...some.keys()].sort((x, y) => x - y),
        [7, 2499],
      );
      assert.equal(some.get(7)?.checksum, sum(7));
    });

    it('copies a block list up to a count', async () => {
      const from = await meta.createVersion({ name: 'copy-src', sizeBytes: 10 * 4096, blockSize: 4096 });
      await meta.putBlocks(
        from.uid,
        rows(10, 0, (i) => (i % 2 ? sum(i) : null)),
      );
      const to = await meta.createVersion({ name: 'copy-dst', sizeBytes: 6 * 4096, blockSize: 4096 });
      await meta.copyBlocks(from.uid, to.uid, 6);
      const copied = await meta.blockPage(to.uid, 0);
      assert.deepEqual(
        copied.map((r) => [r.idx, r.checksum]),
        [0, 1, 2, 3, 4, 5].map((i) => [i, i % 2 ? sum(i) : null]),
      );
    });

    it('completes a version only when every block is present and backed by a valid object', async () => {
      const v = await meta.createVersion({ name: 'complete', sizeBytes: 3 * 4096 + 100, blockSize: 4096 });
      await meta.putBlocks(
        v.uid,
        rows(3, 0, (i) => (i === 1 ? sum(9001) : null)),
      );
      assert.match((await meta.completeVersion(v.uid)) ?? '', /3 block entries, expected 4/);
      await meta.putBlocks(v.uid, [{ idx: 3, checksum: null, size: 100, valid: true }]);
      assert.match((await meta.completeVersion(v.uid)) ?? '', /1 blocks reference objects/);
      // Its only problem is an object: invalid, and valid once the object is stored (validity follows objects).
      assert.equal((await meta.getVersion(v.uid)).status, 'invalid');
      await meta.recordObjects([{ checksum: sum(9001), storedSize: 4112 }], Date.now() * 1000);
      assert.equal((await meta.getVersion(v.uid)).status, 'valid');
      assert.equal(await meta.completeVersion(v.uid), undefined);
      assert.equal((await meta.getVersion(v.uid)).status, 'valid');
    });

    it('marks a damaged object, its block entries and their versions invalid; re-storing heals the entries and the versions', async () => {
      const bad = sum(7777);
      await meta.recordObjects(
        [
          { checksum: bad, storedSize: 10 },
          { checksum: sum(7778), storedSize: 10 },
        ],
        1,
      );
      const v1 = await meta.createVersion({ name: 'dmg1', sizeBytes: 2 * 4096, blockSize: 4096 });
      const v2 = await meta.createVersion({ name: 'dmg2', sizeBytes: 4096, blockSize: 4096 });
      await meta.putBlocks(
        v1.uid,
        rows(2, 0, (i) => (i === 0 ? bad : sum(7778))),
      );
      await meta.putBlocks(
        v2.uid,
        rows(1, 0, () => sum(7778)),
      );
      assert.equal(await meta.completeVersion(v1.uid), undefined);
      assert.equal(await meta.completeVersion(v2.uid), undefined);

      const affected = await meta.markObjectInvalid(bad);
      assert.deepEqual(affected, [v1.uid]);
      assert.equal((await meta.getVersion(v1.uid)).status, 'invalid');
      assert.equal((await meta.getVersion(v2.uid)).status, 'valid');
      assert.equal((await meta.blockPage(v1.uid, 0))[0].valid, false);
      assert.equal((await meta.blockPage(v1.uid, 0))[1].valid, true);
      assert.equal(await meta.touchObject(bad, 2), false, 'an invalid object is no dedup target');

      await meta.recordObjects([{ checksum: bad, storedSize: 11 }], 3);
      assert.equal((await meta.blockPage(v1.uid, 0))[0].valid, true);
      assert.equal(await meta.touchObject(bad, 4), true);
      // Its only problem was that object: valid again without a scrub (validity follows objects).
      assert.equal((await meta.getVersion(v1.uid)).status, 'valid');
    });

    it('migration 0004 marks every existing copy out of date (the next cleanup rewrites it with a checksum)', async () => {
      const url = await dialect.fresh();
      let m = await MetaStore.open(url);
      const done = await m.createVersion({ name: 'old', sizeBytes: 4096, blockSize: 4096 });
      await m.putBlocks(done.uid, rows(1));
      assert.equal(await m.completeVersion(done.uid), undefined);
      const running = await m.createVersion({ name: 'running', sizeBytes: 4096, blockSize: 4096 });
      await clearCopyPending(m, done.uid);
      assert.deepEqual(await pendingCopies(m), []);
      // As a database made before 0004: the migration not applied yet.
      await m.db
        .deleteFrom('kysely_migration' as never)
        .where('name' as never, '=', '0004_copy_checksums' as never)
        .execute();
      await m.close();
      m = await MetaStore.open(url);
      try {
        assert.deepEqual(await pendingCopies(m), [done.uid], `not ${running.uid}: incomplete, no copy`);
      } finally {
        await m.close();
      }
    });

    it('an object confirmed sound makes valid every version whose only problem it was; copies are marked', async () => {
      const shared = sum(6001);
      const other = sum(6002);
      await meta.recordObjects(
        [
          { checksum: shared, storedSize: 10 },
          { checksum: other, storedSize: 10 },
        ],
        1,
      );
      const a = await meta.createVersion({ name: 'share-a', sizeBytes: 2 * 4096, blockSize: 4096 });
      const b = await meta.createVersion({ name: 'share-b', sizeBytes: 4096, blockSize: 4096 });
      const c = await meta.createVersion({ name: 'share-c', sizeBytes: 2 * 4096, blockSize: 4096 });
      await meta.putBlocks(
        a.uid,
        rows(2, 0, (i) => (i === 0 ? shared : null)),
      );
      await meta.putBlocks(
        b.uid,
        rows(1, 0, () => shared),
      );
      await meta.putBlocks(
        c.uid,
        rows(2, 0, (i) => (i === 0 ? shared : other)),
      );
      for (const v of [a, b, c]) assert.equal(await meta.completeVersion(v.uid), undefined);
      meta.takeMarkedCopies();
      for (const v of [a, b, c]) assert.notEqual(await copyPendingToken(meta, v.uid), undefined);

      assert.deepEqual((await meta.markObjectInvalid(shared)).sort(), [a.uid, b.uid, c.uid].sort());
      assert.deepEqual(meta.takeMarkedCopies().sort(), [a.uid, b.uid, c.uid].sort());
      const token = await copyPendingToken(meta, a.uid);
      // Marking it again changes nothing: no copy to rewrite.
      await meta.markObjectInvalid(shared);
      assert.deepEqual(meta.takeMarkedCopies(), []);
      await meta.markObjectInvalid(other);
      meta.takeMarkedCopies();
      // c has a second damaged object: it stays invalid; a and b are valid again.
      assert.deepEqual((await meta.objectsSound([shared, sum(6999)])).sort(), [a.uid, b.uid].sort());
      assert.equal((await meta.getVersion(a.uid)).status, 'valid');
      assert.equal((await meta.getVersion(b.uid)).status, 'valid');
      assert.equal((await meta.getVersion(c.uid)).status, 'invalid');
      assert.equal((await meta.blockPage(c.uid, 0))[0].valid, true);
      assert.equal((await meta.blockPage(c.uid, 0))[1].valid, false);
      assert.deepEqual(meta.takeMarkedCopies().sort(), [a.uid, b.uid, c.uid].sort());
      assert.notEqual(await copyPendingToken(meta, a.uid), token, 'the mark was renewed');
      assert.equal(await meta.touchObject(shared, 5), true, 'a dedup target again');
      // A sound object does not make valid a version with a gap in its block list.
      const gap = await meta.createVersion({ name: 'gap', sizeBytes: 2 * 4096, blockSize: 4096 });
      await meta.putBlocks(gap.uid, [{ idx: 0, checksum: other, size: 4096, valid: false }]);
      await meta.setVersionStatus(gap.uid, 'invalid');
      assert.deepEqual(await meta.objectsSound([other]), [c.uid]);
      assert.equal((await meta.getVersion(gap.uid)).status, 'invalid');
    });

    it('touches and records objects (duplicates in one batch, upserts)', async () => {
      const before = await meta.objectStats();
      assert.equal(await meta.touchObject(sum(5000), 1), false);
      await meta.recordObjects(
        [
          { checksum: sum(5001), storedSize: 100 },
          { checksum: sum(5000), storedSize: 200 },
          { checksum: sum(5001), storedSize: 100 },
        ],
        5,
      );
      assert.equal(await meta.touchObject(sum(5000), 6), true);
      await meta.recordObjects([{ checksum: sum(5000), storedSize: 250 }], 7);
      const stats = await meta.objectStats();
      assert.equal(stats.count, before.count + 2);
      assert.equal(stats.bytes, before.bytes + 350);
      assert.equal(typeof stats.bytes, 'number');
    });

    it('removes a version and its block list, keeping objects', async () => {
      const v = await meta.createVersion({ name: 'gone', sizeBytes: 4096, blockSize: 4096 });
      await meta.putBlocks(
        v.uid,
        rows(1, 0, () => sum(5000)),
      );
      const objects = await meta.objectStats();
      await meta.removeVersion(v.uid);
      assert.equal(await meta.findVersion(v.uid), undefined);
      assert.deepEqual(await meta.blockPage(v.uid, 0), []);
      assert.deepEqual(await meta.objectStats(), objects);
    });

    it('holds leases while their holder lives and sees them die with it', async () => {
      const lease = await meta.acquireLease('backup', null);
      assert.ok((await meta.leases()).some((l) => l.id === lease.id));
      assert.equal(await meta.isLeaseAlive(lease), true);
      await meta.heartbeat(lease.id);

      // Another holder (another process, or another host sharing the database) ...
      const other = await MetaStore.open(engine);
      const theirs = await other.acquireLease('backup', null);
      const seen = (await meta.leases()).find((l) => l.id === theirs.id);
      assert.ok(seen);
      if (dialect.name === 'sqlite') {
        // One host: liveness is the recorded pid. A pid that cannot exist stands for a crashed process.
        assert.equal(await meta.isLeaseAlive(seen), true);
        assert.equal(await meta.isLeaseAlive({ ...seen, pid: 2 ** 22 + 12345 }), false);
        await other.close();
      } else {
        assert.equal(await meta.isLeaseAlive(seen), true, 'its advisory lock is held');
        // ... that goes away without releasing: its session ends, so does the lock.
        await other.close();
        assert.ok(
          (await meta.leases()).some((l) => l.id === theirs.id),
          'the row is still there',
        );
        assert.equal(await meta.isLeaseAlive(seen), false);
        assert.equal(await meta.isLeaseAlive(seen), false, 'the liveness check released the lock it took');
      }
      await meta.releaseLease(lease.id);
      assert.ok(!(await meta.leases()).some((l) => l.id === lease.id));
    });

    it('removeVersionUnlessHeld keeps a version a live lease names, removes it when none is live', async () => {
      const v = await meta.createVersion({ name: 'held', sizeBytes: 4096, blockSize: 4096 });
      await meta.putBlocks(
        v.uid,
        rows(1, 0, () => sum(6000)),
      );
      const lease = await meta.acquireLease('restore', v.uid);
      const holders = await meta.removeVersionUnlessHeld(v.uid, (l) => meta.isLeaseAlive(l));
      assert.deepEqual(
        holders.map((l) => [l.id, l.kind, l.versionUid, l.pid]),
        [[lease.id, 'restore', v.uid, process.pid]],
      );
      assert.ok(await meta.findVersion(v.uid), 'kept');
      assert.equal((await meta.blockPage(v.uid, 0)).length, 1);
      // A holder judged dead (crashed reader) does not keep it.
      assert.deepEqual(await meta.removeVersionUnlessHeld(v.uid, async () => false), []);
      assert.equal(await meta.findVersion(v.uid), undefined);
      assert.deepEqual(await meta.blockPage(v.uid, 0), []);
      await meta.releaseLease(lease.id);
    });

    it("deleteGarbage deletes nothing while an import's lease, or a lease naming a removed version, exists", async () => {
      const x = sum(7000);
      const none = async () => {};
      await meta.recordObjects([{ checksum: x, storedSize: 10 }], 1000);
      const imp = await meta.acquireLease('import', null);
      assert.deepEqual(await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, none), [], 'import');
      await meta.releaseLease(imp.id);

      const v = await meta.createVersion({ name: 'read', sizeBytes: 4096, blockSize: 4096 });
      const reader = await meta.acquireLease('restore', v.uid);
      await meta.removeVersion(v.uid); // rm --force under the reader
      assert.deepEqual(await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, none), [], 'reader');
      await meta.releaseLease(reader.id);

      // A lease of another kind naming no version keeps only what it touched (cutoff rule).
      const backup = await meta.acquireLease('backup', null);
      const unlinked: string[] = [];
      const gone = await meta.deleteGarbage([x], Number.MAX_SAFE_INTEGER, async (c) => {
        unlinked.push(...c);
      });
      assert.deepEqual(gone, [{ checksum: x, storedSize: 10 }]);
      assert.deepEqual(unlinked, [x]);
      await meta.releaseLease(backup.id);
    });

    it('opens a fresh database from several connections at once, and keeps its hash function', async () => {
      const url = await dialect.fresh();
      const stores = await Promise.all(
        [1, 2, 3, 4].map(() => MetaStore.open(url, { hashFunction: 'sha256' })),
      );
      for (const s of stores) {
        assert.equal(s.hashFunction, 'sha256');
        await s.close();
      }
      await assert.rejects(MetaStore.open(url, { hashFunction: 'blake3' }), ConfigError);
    });
  });
}
