/**
 * Garbage collection: orphaned incomplete versions, unreferenced objects, unrecorded files.
 * Every removal re-checks inside a cleanup transaction (MetaDb.cleanupTx) what it found. Why
 * that keeps every object a version or a running holder needs: core/cleanup.ts.
 */
import { ANY_OBJECT_LEASE_KINDS, INSERT_BATCH, READER_LEASE_KINDS, toVersion } from './meta-types.js';
import type { ExpressionBuilder } from 'kysely';
import type { Database } from './schema.js';
import type { Version } from './meta-types.js';
import type { MetaDb } from './meta-db.js';
import type { Db } from './meta-types.js';
import { removeVersionIn } from './meta-versions.js';
import { exclusiveObjects } from './page-ops.js';
import { addRefs, pageChildren, parseEntries } from './page-tree.js';

/** The garbage repository: what cleanup (core/cleanup.ts) finds and removes. */
export class Garbage {
  readonly #m: MetaDb;

  constructor(m: MetaDb) {
    this.#m = m;
  }

  /** Incomplete versions that no lease row names: crashed backups or imports. */
  async orphanedIncompleteVersions(): Promise<Version[]> {
    const rows = await this.#m.db
      .selectFrom('versions as v')
      .selectAll('v')
      .where('v.status', '=', 'incomplete')
      .where((eb) =>
        eb.not(
          eb.exists(eb.selectFrom('leases as l').select('l.id').whereRef('l.version_uid', '=', 'v.uid')),
        ),
      )
      .orderBy('v.date')
      .execute();
    return rows.map(toVersion);
  }

  /** Removes an incomplete version if still no lease names it (re-checked in the transaction). */
  async removeOrphanedIncompleteVersion(uid: string): Promise<boolean> {
    return this.#m.cleanupTx({ leases: true }, async (tx) => {
      const v = await tx.selectFrom('versions').select('status').where('uid', '=', uid).executeTakeFirst();
      if (!v || v.status !== 'incomplete') return false;
      const lease = await tx
        .selectFrom('leases')
        .select('id')
        .where('version_uid', '=', uid)
        .executeTakeFirst();
      if (lease) return false;
      await removeVersionIn(tx, uid);
      return true;
    });
  }

  /**
   * One page of unreferenced objects (no page names them, no pending put) last seen before
   * `cutoff`, by checksum after `after`. With `ignoreVersions` (a dry run that would remove
   * them) also the objects only those versions reach.
   */
  async garbageCandidates(
    cutoff: number,
    after: string,
    limit = INSERT_BATCH,
    ignoreVersions: readonly string[] = [],
    dryRun = false,
  ): Promise<{ checksum: string; storedSize: number }[]> {
    // A dry run: what deleting these versions and the pages nobody names would free.
    const freed =
      ignoreVersions.length > 0 || dryRun
        ? [...(await exclusiveObjects(this.#m.db, ignoreVersions, { withGarbagePages: true }))]
        : [];
    const rows = await this.#m.db
      .selectFrom('objects as o')
      .select(['o.checksum', 'o.stored_size'])
      .where('o.checksum', '>', after)
      .where('o.last_seen', '<', cutoff)
      .where((eb) => {
        const unreferenced = eb('o.refs', '<=', 0);
        return eb.and([
          freed.length > 0 && freed.length <= 30_000
            ? eb.or([unreferenced, eb('o.id', 'in', freed)])
            : unreferenced,
          eb.not(
            eb.exists(eb.selectFrom('block_puts as b').select('b.idx').whereRef('b.object_id', '=', 'o.id')),
          ),
        ]);
      })
      .orderBy('o.checksum')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ checksum: r.checksum, storedSize: Number(r.stored_size) }));
  }

  /**
   * Deletes unreferenced pages (no root or page names them, no pending put) last seen before
   * both `cutoff` and every writer's lease, lowering the counts of what they name, until none
   * is left (a freed interior frees its leaves, a freed leaf its objects). One cleanup
   * transaction per round. Nothing while a holder may reference anything (as deleteGarbage).
   * Returns the number of pages deleted.
   */
  async collectPages(cutoff: number): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.#m.cleanupTx({ leases: false }, async (tx) => {
        const limit = await writersLimit(tx, cutoff);
        if (limit === undefined) return 0;
        const rows = await tx
          .selectFrom('pages as p')
          .select(['p.id', 'p.level', 'p.entries'])
          .where('p.refs', '<=', 0)
          .where('p.last_seen', '<', limit)
          .where((eb) =>
            eb.not(
              eb.exists(eb.selectFrom('leaf_puts as l').select('l.leaf').whereRef('l.page_id', '=', 'p.id')),
            ),
          )
          .orderBy('p.id')
          .limit(INSERT_BATCH)
          .$if(this.#m.dialect === 'postgres', (q) => q.forUpdate())
          .execute();
        if (rows.length === 0) return 0;
        await tx
          .deleteFrom('pages')
          .where(
            'id',
            'in',
            rows.map((r) => r.id),
          )
          .execute();
        for (const level of [0, 1]) {
          // Each page counted each child once: lower once per (page, child).
          const perPage = rows
            .filter((r) => Number(r.level) === level)
            .map((r) => pageChildren(parseEntries(r.entries)));
          const times = new Map<number, number>();
          for (const list of perPage) for (const c of list) times.set(c, (times.get(c) ?? 0) + 1);
          const byTimes = new Map<number, number[]>();
          for (const [c, t] of times) {
            let l = byTimes.get(t);
            if (!l) byTimes.set(t, (l = []));
            l.push(c);
          }
          for (const [t, ids] of byTimes) await addRefs(tx, level === 0 ? 'objects' : 'pages', ids, -t);
        }
        return rows.length;
      });
      total += n;
      if (n === 0) return total;
    }
  }

  /**
   * Deletes the given objects that are, re-checked inside one write transaction that no
   * other writer of these objects can interleave with (SQLite: BEGIN IMMEDIATE; PostgreSQL:
   * their rows locked FOR UPDATE), still unreferenced and last seen before both `cutoff` and the
   * start of every writer's lease now in the table (READER_LEASE_KINDS). `unlink` removes their files inside the transaction, before the rows go.
   * Returns what was deleted.
   */
  async deleteGarbage(
    checksums: readonly string[],
    cutoff: number,
    unlink: (checksums: string[]) => Promise<void>,
  ): Promise<{ checksum: string; storedSize: number }[]> {
    if (checksums.length === 0) return [];
    return this.#m.cleanupTx({ leases: false }, async (tx) => {
      if (this.#m.dialect === 'postgres') {
        // Row locks: a concurrent touchObject or recordObjects of these objects waits for our
        // commit and then finds the row gone (touch fails, so the backup stores it anew).
        await tx
          .selectFrom('objects')
          .select('checksum')
          .where('checksum', 'in', checksums)
          .forUpdate()
          .execute();
      }
      const limit = await writersLimit(tx, cutoff);
      if (limit === undefined) return [];
      const rows = await tx
        .selectFrom('objects as o')
        .select(['o.checksum', 'o.stored_size'])
        .where('o.checksum', 'in', checksums)
        .where('o.last_seen', '<', limit)
        .where('o.refs', '<=', 0)
        .where((eb) =>
          eb.not(
            eb.exists(eb.selectFrom('block_puts as b').select('b.idx').whereRef('b.object_id', '=', 'o.id')),
          ),
        )
        .execute();
      if (rows.length === 0) return [];
      const doomed = rows.map((r) => r.checksum);
      await unlink(doomed);
      for (let i = 0; i < doomed.length; i += INSERT_BATCH) {
        await tx
          .deleteFrom('objects')
          .where('checksum', 'in', doomed.slice(i, i + INSERT_BATCH))
          .execute();
      }
      return rows.map((r) => ({ checksum: r.checksum, storedSize: Number(r.stored_size) }));
    });
  }

  /**
   * Runs `fn` on the keys among `keys` that have no objects row, inside one write transaction
   * that keeps new leases out (SQLite: BEGIN IMMEDIATE; PostgreSQL: leases locked), but only
   * when no writer's lease exists: a running backup may have renamed an object into place and
   * not yet recorded it, and its lease keeps such files (a reader writes no file). Returns
   * false (without calling fn) when a writer's lease exists.
   */
  async sweepUnrecorded(
    keys: readonly string[],
    fn: (unrecorded: string[]) => Promise<void>,
  ): Promise<boolean> {
    return this.#m.cleanupTx({ leases: true }, async (tx) => {
      const lease = await tx.selectFrom('leases as l').select('l.id').where(writersOnly).executeTakeFirst();
      if (lease) return false;
      const recorded = new Set<string>();
      for (let i = 0; i < keys.length; i += INSERT_BATCH) {
        const rows = await tx
          .selectFrom('objects')
          .select('checksum')
          .where('checksum', 'in', keys.slice(i, i + INSERT_BATCH))
          .execute();
        for (const r of rows) recorded.add(r.checksum);
      }
      await fn(keys.filter((k) => !recorded.has(k)));
      return true;
    });
  }
}

/**
 * What may be deleted was last seen before this: `cutoff`, or the start of the oldest
 * writer's lease if earlier. Undefined when a holder may reference anything (an import, or a
 * reader whose version was removed under it: its block list, which named what it reads, is
 * gone): then nothing may be deleted.
 */
async function writersLimit(tx: Db, cutoff: number): Promise<number | undefined> {
  const holdsAll = await tx
    .selectFrom('leases as l')
    .select('l.id')
    .where((eb) =>
      eb.or([
        eb('l.kind', 'in', ANY_OBJECT_LEASE_KINDS),
        eb.and([
          eb('l.version_uid', 'is not', null),
          eb.not(
            eb.exists(eb.selectFrom('versions as v').select('v.uid').whereRef('v.uid', '=', 'l.version_uid')),
          ),
        ]),
      ]),
    )
    .executeTakeFirst();
  if (holdsAll) return undefined;
  // Writers' leases only: a reader's objects are named by its version's tree.
  const oldest = await tx
    .selectFrom('leases as l')
    .select((eb) => eb.fn.min('l.started').as('started'))
    .where(writersOnly)
    .executeTakeFirst();
  return oldest?.started == null ? cutoff : Math.min(cutoff, Number(oldest.started));
}

/** Leases but a reader's on a complete version (READER_LEASE_KINDS): those that hold cleanup back. */
function writersOnly(eb: ExpressionBuilder<Database & { l: Database['leases'] }, 'l'>) {
  return eb.not(
    eb.and([
      eb('l.kind', 'in', READER_LEASE_KINDS),
      eb.exists(
        eb
          .selectFrom('versions as v')
          .select('v.uid')
          .whereRef('v.uid', '=', 'l.version_uid')
          .where('v.status', '!=', 'incomplete'),
      ),
    ]),
  );
}
