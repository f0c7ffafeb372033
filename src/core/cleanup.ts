/**
 * Cleanup: deletes stored objects that no version references, safely while backups, imports
 * and readers (restore, scrub, export) run in other processes or on other hosts sharing the
 * metadata database.
 *
 * Holders: everything that uses a version holds a lease (core/lease.ts): a backup on its new
 * version (created in the same transaction) and on its -f base, a restore, scrub, export or
 * NBD connection on the version it reads (an `nbd -w` connection also on its new version),
 * an import or recover from before it reads its input (a lease naming no version) until its
 * versions are recorded. rm refuses a version a live lease names (re-checked in the
 * transaction that removes it, which keeps new leases out); rm --force removes it anyway.
 *
 * What goes:
 * 1. Lease rows whose process is gone (MetaStore.isLeaseAlive; PostgreSQL: the lease's
 *    advisory lock is free, i.e. its session ended; SQLite: same host: pid not alive; other
 *    host: no heartbeat for LEASE_TIMEOUT_US) are released, and incomplete versions that no
 *    lease names any more are removed (crashed backups or imports, reported by uid): their
 *    block entries would keep everything they wrote alive forever, and an incomplete version
 *    is never a base.
 * 2. Objects with no block entry and last_seen before the cutoff: the start of the oldest live
 *    writer's lease (a backup, import, recover, `nbd -w` connection: every lease but a
 *    reader's on a complete version, READER_LEASE_KINDS), or cleanup's own start when none
 *    runs. Readers do not hold the cutoff: see the reader case below. None at all while a
 *    lease exists that may reference objects no block entry names: an import's or recover's
 *    (ANY_OBJECT_LEASE_KINDS), or one naming a version that no longer exists (a reader, or a
 *    backup's base, removed with --force).
 * 3. Object files without an objects row (a backup crashed between renaming the file into
 *    place and recording it) and `.tmp-*` files, older than cleanup's start, only while no
 *    writer's lease exists (readers write no file).
 *
 * Why this never deletes an object that a valid version, or a running holder, references or
 * is about to reference:
 * - A valid version's block entries name its objects; step 2 deletes only objects that no
 *   block entry names, re-checked inside the transaction that deletes them.
 * - A running backup holds a lease from before its first object access until after its
 *   version is complete (created with the version in one transaction). Every object it
 *   looks up gets last_seen = now (touchObject; also when the row is invalid and the backup
 *   is about to store a fresh copy under the same name) and every object it stores is
 *   recorded with last_seen = now, both later than its lease's start on the backup's own
 *   clock. Each delete transaction re-reads the lease table and keeps anything last seen at
 *   or after the start of any lease present, so neither our cutoff being stale nor clock skew
 *   between hosts matters for backups that hold a lease.
 * - The delete transaction excludes every other writer of those objects (SQLite: BEGIN
 *   IMMEDIATE excludes all writers; PostgreSQL: the object rows are locked FOR UPDATE), and
 *   touchObject is a write. So a backup's dedup lookup either ran before it (last_seen is
 *   recent, or the backup's lease is visible: the object stays) or runs after its commit,
 *   finds no row, and stores the object anew. A backup adds a block entry for an object only
 *   after touching or recording it under its lease (or by copying a base's entries, which
 *   already reference it), so "unreferenced" cannot change behind the re-check either. The
 *   file is unlinked inside the transaction, before the commit: unlinking after the commit
 *   could remove the copy a backup stored in between.
 * - Files without a row may belong to a backup that renamed them into place and has not yet
 *   recorded them, or be what an import is about to adopt (a database rebuilt from exports
 *   over the old data directory); they are removed only inside a transaction that sees no
 *   writer's lease and keeps new leases out until it ends (SQLite: BEGIN IMMEDIATE;
 *   PostgreSQL: the leases table locked against writes), so no backup or import can be
 *   between those two steps (each takes its lease before it writes or reads anything). A
 *   reader's lease does not stop the sweep: a reader writes no file, and the files of its
 *   version have rows (a lease naming a version that is gone counts as a writer's here).
 * - Before any of this, the caller has checked the store's catalogue (store-authority.ts):
 *   a database behind its store (copies of versions it does not know) deletes nothing.
 * - A reader (restore, scrub, export, a backup's base, a read-only NBD connection) reads only
 *   objects its version's block entries name, and stores or reuses none; while the version
 *   exists those entries keep them, whatever the cutoff. So its lease's start does not lower
 *   the cutoff (an NBD client connected for days must not keep every object that became
 *   garbage meanwhile). rm without --force cannot
 *   remove it while the reader's lease lives. After rm --force the entries are gone, but the
 *   lease still names the removed version, and every delete transaction re-reads the leases
 *   and deletes nothing while such a lease exists; the reader itself stops within a page of
 *   the first gap in the block list ("version ... was removed while being restored") instead
 *   of taking the gaps for damage (core/lease.ts removalCheck).
 * - An import adopts objects only as it reads its file: files without a row get a row with
 *   last_seen = now, recorded rows are touched, both before any block entry names them. A row
 *   that is unreferenced and old when the import starts would still qualify as garbage under
 *   the cutoff rule, so the delete transaction deletes nothing at all while an import's lease
 *   exists. One that committed its decision before the import's lease became visible acts as
 *   a cleanup that ran before the import: the import then finds the object gone and imports
 *   its blocks invalid, never a reference to a deleted file as valid.
 */
import { rm, stat } from 'node:fs/promises';
import type { MetaStore, Version } from '../meta/meta-store.js';
import { ANY_OBJECT_LEASE_KINDS, READER_LEASE_KINDS, nowMicros } from '../meta/meta-store.js';
import type { StorageBackend } from '../storage/backend.js';
import { mapOrdered } from '../util/concurrency.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

const PAGE = 500;
const UNLINKS_IN_FLIGHT = 16;

export interface CleanupResult {
  dryRun: boolean;
  leasesReleased: number;
  /** The kinds of the live leases (running holders) when cleanup started. */
  leasesLive: string[];
  versionsRemoved: Version[];
  objects: number;
  bytes: number;
  unrecordedFiles: number;
  unrecordedBytes: number;
  tempFiles: number;
  tempBytes: number;
  /** Files without rows were not swept because a backup was running. */
  sweepSkipped: boolean;
  /** No object was deleted: an import runs, or a reader whose version was removed under it. */
  objectsHeld: boolean;
}

/** A backend that can list leftovers of interrupted writes (the directory backend). */
interface TempLister {
  listTemp(): AsyncIterable<{ path: string; mtimeMs: number }>;
}

function hasTemp(b: StorageBackend): b is StorageBackend & TempLister {
  return typeof (b as Partial<TempLister>).listTemp === 'function';
}

export async function cleanup(opts: {
  meta: MetaStore;
  backend: StorageBackend;
  dryRun: boolean;
  progress?: ProgressReporter;
  /**
   * Stops the cleanup (SIGINT) between its steps, each a transaction followed by its unlinks, so
   * it leaves no more than a crash would: at most files whose rows are gone (swept next time).
   */
  signal?: AbortSignal;
}): Promise<CleanupResult> {
  const { meta, backend, dryRun, signal } = opts;
  const progress = opts.progress ?? noProgress;
  const start = nowMicros();
  const startMs = start / 1000;
  const result: CleanupResult = {
    dryRun,
    leasesReleased: 0,
    leasesLive: [],
    versionsRemoved: [],
    objects: 0,
    bytes: 0,
    unrecordedFiles: 0,
    unrecordedBytes: 0,
    tempFiles: 0,
    tempBytes: 0,
    sweepSkipped: false,
    objectsHeld: false,
  };

  const leases = await meta.leases();
  const live: typeof leases = [];
  for (const l of leases) if (await meta.isLeaseAlive(l)) live.push(l);
  result.leasesLive = live.map((l) => l.kind);
  for (const l of leases) {
    if (live.includes(l)) continue;
    if (!dryRun) await meta.releaseLease(l.id);
    result.leasesReleased++;
  }
  const leased = new Set(live.map((l) => l.versionUid));
  const versions = await meta.listVersions();
  const complete = new Set(versions.filter((v) => v.status !== 'incomplete').map((v) => v.uid));
  const writers = live.filter(
    (l) => !(READER_LEASE_KINDS.includes(l.kind) && l.versionUid !== null && complete.has(l.versionUid)),
  );
  const cutoff = Math.min(start, ...writers.map((l) => l.started));

  for (const v of versions) {
    signal?.throwIfAborted();
    if (v.status !== 'incomplete' || leased.has(v.uid)) continue;
    if (dryRun || (await meta.removeOrphanedIncompleteVersion(v.uid))) result.versionsRemoved.push(v);
  }
  // deleteGarbage re-checks this inside its transaction; here it saves a pointless pass.
  const uids = new Set(versions.map((v) => v.uid));
  result.objectsHeld = live.some(
    (l) => ANY_OBJECT_LEASE_KINDS.includes(l.kind) || (l.versionUid !== null && !uids.has(l.versionUid)),
  );

  progress.start(dryRun ? 'cleanup (dry run)' : 'cleanup', undefined);
  try {
    // Pages no version's tree names any more go first: that lowers their objects' counts.
    if (!dryRun && !result.objectsHeld) await meta.gc.collectPages(cutoff);
    let after = '';
    while (!result.objectsHeld) {
      signal?.throwIfAborted();
      const page = await meta.garbageCandidates(
        cutoff,
        after,
        PAGE,
        dryRun ? result.versionsRemoved.map((v) => v.uid) : [],
        dryRun,
      );
      if (page.length === 0) break;
      after = page[page.length - 1].checksum;
      const gone = dryRun
        ? page
        : await meta.deleteGarbage(
            page.map((o) => o.checksum),
            cutoff,
            async (doomed) => {
              for await (const done of mapOrdered(doomed, UNLINKS_IN_FLIGHT, (c) => backend.delete(c)))
                void done;
            },
          );
      for (const o of gone) {
        result.objects++;
        result.bytes += o.storedSize;
        progress.advance(o.storedSize);
      }
    }

    if (writers.length > 0) {
      result.sweepSkipped = true;
      return result;
    }
    await sweepUnrecorded(meta, backend, startMs, result, signal);
    signal?.throwIfAborted();
    if (hasTemp(backend)) await sweepTemp(meta, backend, startMs, result);
  } finally {
    progress.stop();
  }
  return result;
}

async function sweepUnrecorded(
  meta: MetaStore,
  backend: StorageBackend,
  startMs: number,
  result: CleanupResult,
  signal: AbortSignal | undefined,
): Promise<void> {
  let batch: { key: string; size: number }[] = [];
  const flush = async () => {
    const sizes = new Map(batch.map((o) => [o.key, o.size]));
    batch = [];
    const keys = [...sizes.keys()];
    if (result.dryRun) {
      const recorded = await meta.recordedObjects(keys);
      for (const k of keys) {
        if (recorded.has(k)) continue;
        result.unrecordedFiles++;
        result.unrecordedBytes += sizes.get(k) ?? 0;
      }
      return;
    }
    const swept = await meta.sweepUnrecorded(keys, async (unrecorded) => {
      for (const k of unrecorded) {
        const st = await backend.stat(k);
        if (!st || st.mtimeMs >= startMs) continue; // rewritten since we listed it
        await backend.delete(k);
        result.unrecordedFiles++;
        result.unrecordedBytes += st.size;
      }
    });
    if (!swept) result.sweepSkipped = true;
  };
  for await (const o of backend.list()) {
    signal?.throwIfAborted();
    if (result.sweepSkipped) return;
    if (o.mtimeMs >= startMs) continue;
    batch.push(o);
    if (batch.length >= PAGE) await flush();
  }
  if (batch.length > 0 && !result.sweepSkipped) await flush();
}

async function sweepTemp(
  meta: MetaStore,
  backend: TempLister,
  startMs: number,
  result: CleanupResult,
): Promise<void> {
  const old: string[] = [];
  for await (const t of backend.listTemp()) if (t.mtimeMs < startMs) old.push(t.path);
  if (old.length === 0) return;
  const remove = async () => {
    for (const path of old) {
      const st = await stat(path).catch(() => undefined);
      if (!st || st.mtimeMs >= startMs) continue;
      if (!result.dryRun) await rm(path, { force: true });
      result.tempFiles++;
      result.tempBytes += st.size;
    }
  };
  if (result.dryRun) await remove();
  else if (!(await meta.sweepUnrecorded([], remove))) result.sweepSkipped = true;
}
