/**
 * Stored objects: record, touch, mark damaged, look up, count, and adopt an import's objects.
 */
import { sql } from 'kysely';
import type { SqlBool } from 'kysely';
import type { CopyMarks } from './copy-pending.js';
import type { MetaDb } from './meta-db.js';
import { revalidateSoundIn } from './meta-versions.js';
import { INSERT_BATCH, nowMicros } from './meta-types.js';
import { versionsReaching } from './page-ops.js';
import type { Db } from './meta-types.js';

/** Checksums looked up per statement by adoptIn. */
const LOOKUP_BATCH = 10_000;

/**
 * The objects repository. Validity follows objects: marking one damaged or sound changes the
 * block entries and versions that name it, and records those versions in `marks`.
 */
export class Objects {
  readonly #m: MetaDb;
  readonly #marks: CopyMarks;

  constructor(m: MetaDb, marks: CopyMarks) {
    this.#m = m;
    this.#marks = marks;
  }

  /**
   * Marks an object damaged: the object, every block entry referencing it, and every version
   * holding such an entry become invalid. Returns the uids of the versions affected.
   */
  async markObjectInvalid(checksum: string): Promise<string[]> {
    return this.#m.write(async (tx) => {
      const o = await tx
        .selectFrom('objects')
        .select(['id', 'valid'])
        .where('checksum', '=', checksum)
        .executeTakeFirst();
      if (!o) return [];
      await tx.updateTable('objects').set({ valid: 0 }).where('id', '=', o.id).execute();
      const uids = await versionsReaching(tx, [Number(o.id)]);
      if (uids.length > 0) {
        const changing = await tx
          .selectFrom('versions')
          .select('uid')
          .where('uid', 'in', uids)
          .where('status', '=', 'valid')
          .execute();
        await this.#marks.mark(tx, Number(o.valid) === 1 ? uids : changing.map((r) => r.uid));
        await tx
          .updateTable('versions')
          .set({ status: 'invalid' })
          .where('uid', 'in', uids)
          .where('status', '=', 'valid')
          .execute();
        // A backup or writer using it now checks every object when it completes.
        await tx
          .updateTable('versions')
          .set({ suspect: 1 })
          .where('uid', 'in', uids)
          .where('status', '=', 'incomplete')
          .execute();
      }
      return uids;
    });
  }

  /**
   * Refreshes the last_seen of a recorded object (so a concurrent cleanup keeps it) and
   * returns true if it is valid. Invalid objects are never dedup targets, but their last_seen
   * is refreshed too: the caller is about to store the object again under the same name, and
   * a cleanup must not unlink that new file because the row looked stale.
   */
  async touchObject(checksum: string, now: number): Promise<boolean> {
    const row = await this.#m.db
      .updateTable('objects')
      .set({ last_seen: now })
      .where('checksum', '=', checksum)
      .returning('valid')
      .executeTakeFirst();
    return row !== undefined && Number(row.valid) === 1;
  }

  /** Records objects just written durably (valid, last_seen = now), replacing damaged entries. */
  async recordObjects(
    objects: readonly { checksum: string; storedSize: number }[],
    now: number,
  ): Promise<void> {
    if (objects.length === 0) return;
    // One order for every writer: concurrent backups recording the same objects lock their rows
    // in the same sequence instead of deadlocking. Duplicates would make one upsert hit a row twice.
    const unique = [...new Map(objects.map((o) => [o.checksum, o])).values()].sort((a, b) =>
      a.checksum < b.checksum ? -1 : a.checksum > b.checksum ? 1 : 0,
    );
    await this.#m.write(async (tx) => {
      for (let i = 0; i < unique.length; i += INSERT_BATCH) {
        const batch = unique.slice(i, i + INSERT_BATCH);
        const damaged = await tx
          .selectFrom('objects')
          .select('id')
          .where(
            'checksum',
            'in',
            batch.map((o) => o.checksum),
          )
          .where('valid', '=', 0)
          .execute();
        await tx
          .insertInto('objects')
          .values(
            batch.map((o) => ({ checksum: o.checksum, stored_size: o.storedSize, valid: 1, last_seen: now })),
          )
          .onConflict((oc) =>
            oc.column('checksum').doUpdateSet((eb) => ({
              stored_size: eb.ref('excluded.stored_size'),
              valid: 1,
              last_seen: eb.ref('excluded.last_seen'),
            })),
          )
          .execute();
        // A re-stored object is sound again: so are the block entries that reference it, and
        // the versions whose only problem it was (DESIGN: validity follows objects).
        await this.#soundAgainIn(
          tx,
          damaged.map((r) => Number(r.id)),
        );
      }
    });
  }

  /**
   * Objects confirmed sound (a scrub of any version read and verified them): recorded ones
   * that were marked damaged become valid again, with the block entries that name them and
   * every version whose only problem they were. One transaction; returns the versions made
   * valid. Unrecorded checksums are left alone (cleanup or an import records them).
   */
  async objectsSound(checksums: readonly string[]): Promise<string[]> {
    if (checksums.length === 0) return [];
    return this.#m.write(async (tx) => {
      const out: string[] = [];
      for (let i = 0; i < checksums.length; i += INSERT_BATCH) {
        const batch = checksums.slice(i, i + INSERT_BATCH);
        // Recorded as damaged, and stored (a row for an object the store never had stays).
        const recorded = await tx
          .selectFrom('objects')
          .select('id')
          .where('checksum', 'in', batch)
          .where('valid', '=', 0)
          .where('stored_size', '>', 0)
          .execute();
        if (recorded.length === 0) continue;
        const sound = recorded.map((r) => Number(r.id));
        await tx.updateTable('objects').set({ valid: 1 }).where('id', 'in', sound).execute();
        out.push(...(await this.#soundAgainIn(tx, sound)));
      }
      return out;
    });
  }

  /**
   * Inside `tx`: the versions reaching these objects (damaged until now, sound again) that then
   * have no problem left made valid again; their copies marked. Returns those made valid. Costs
   * nothing when no object was damaged (every backup's batch).
   */
  async #soundAgainIn(tx: Db, ids: readonly number[]): Promise<string[]> {
    if (ids.length === 0) return [];
    const uids = await versionsReaching(tx, ids);
    if (uids.length === 0) return [];
    const valid = await revalidateSoundIn(tx, uids);
    // Their copies name the object's entries as damaged: all out of date.
    await this.#marks.mark(tx, uids);
    return valid;
  }

  async objectStats(): Promise<{ count: number; bytes: number }> {
    const r = await this.#m.db
      .selectFrom('objects')
      .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.sum<number>('stored_size').as('bytes')])
      .executeTakeFirstOrThrow();
    return { count: Number(r.n), bytes: Number(r.bytes ?? 0) };
  }

  /** Which of `checksums` have an objects row. */
  async recordedObjects(checksums: readonly string[]): Promise<Map<string, { valid: boolean }>> {
    const out = new Map<string, { valid: boolean }>();
    for (let i = 0; i < checksums.length; i += INSERT_BATCH) {
      const rows = await this.#m.db
        .selectFrom('objects')
        .select(['checksum', 'valid'])
        .where('checksum', 'in', checksums.slice(i, i + INSERT_BATCH))
        .execute();
      for (const r of rows) out.set(r.checksum, { valid: Number(r.valid) === 1 });
    }
    return out;
  }

  /**
   * Makes the objects an imported version names usable under the caller's lease, given each
   * one's stored size in the data store (undefined: no file), in one transaction: refreshes
   * last_seen of recorded objects; a file without a row gets one; a recorded object whose file
   * is gone is marked invalid, so that no backup dedups against it. Returns the checksums that
   * are recorded, valid and present. The caller's lease (ANY_OBJECT_LEASE_KINDS) kept cleanup
   * from deleting any object since before the sizes were looked up.
   */
  async adoptObjects(sizes: ReadonlyMap<string, number | undefined>): Promise<Set<string>> {
    if (sizes.size === 0) return new Set();
    return this.#m.write((tx) => adoptIn(tx, this.#m.dialect, sizes, nowMicros()));
  }
}

/** adoptObjects inside the caller's transaction `tx`. */
export async function adoptIn(
  tx: Db,
  dialect: 'sqlite' | 'postgres',
  sizes: ReadonlyMap<string, number | undefined>,
  now: number,
): Promise<Set<string>> {
  const checksums = [...sizes.keys()];
  const chunks = (list: readonly string[], n: number) =>
    Array.from({ length: Math.ceil(list.length / n) }, (_, i) => list.slice(i * n, (i + 1) * n));
  // The checksums as one parameter, a JSON array (SQLite) or a text array (PostgreSQL): IN lists
  // of 1,000 parameters cost more to build and prepare than to run.
  const among = (list: readonly string[]) =>
    dialect === 'postgres'
      ? sql<SqlBool>`checksum = ANY(${list}::text[])`
      : sql<SqlBool>`checksum IN (SELECT value FROM json_each(${JSON.stringify(list)}))`;
  const known = new Map<string, boolean>();
  for (const chunk of chunks(checksums, LOOKUP_BATCH)) {
    await tx
      .updateTable('objects')
      .set({ last_seen: now })
      .where(among(chunk))
      .where('valid', '=', 1)
      .execute();
    const rows = await tx
      .selectFrom('objects')
      .select(['checksum', 'valid', 'stored_size'])
      .where(among(chunk))
      .execute();
    for (const r of rows) {
      // A row with nothing stored (a block list named the object before any file: page-ops.ts)
      // is as good as none: a file found now is adopted.
      if (Number(r.valid) === 0 && Number(r.stored_size) === 0) continue;
      known.set(r.checksum, Number(r.valid) === 1);
    }
  }
  const found: { checksum: string; storedSize: number }[] = [];
  const gone: string[] = [];
  const ok = new Set<string>();
  for (const [c, size] of sizes) {
    const recorded = known.get(c);
    if (size === undefined) {
      if (recorded) gone.push(c);
    } else if (recorded === undefined) {
      found.push({ checksum: c, storedSize: size });
      ok.add(c);
    } else if (recorded) ok.add(c);
  }
  for (let i = 0; i < found.length; i += INSERT_BATCH) {
    await tx
      .insertInto('objects')
      .values(
        found.slice(i, i + INSERT_BATCH).map((o) => ({
          checksum: o.checksum,
          stored_size: o.storedSize,
          valid: 1,
          last_seen: now,
        })),
      )
      .onConflict((oc) =>
        oc.column('checksum').doUpdateSet((eb) => ({
          last_seen: now,
          valid: 1,
          stored_size: eb.ref('excluded.stored_size'),
        })),
      )
      .execute();
  }
  for (const chunk of chunks(gone, LOOKUP_BATCH)) {
    await tx.updateTable('objects').set({ valid: 0 }).where(among(chunk)).execute();
  }
  return ok;
}
