/**
 * Versions: create (alone or with a lease), find, list, status and size, completion,
 * revalidation after a scrub, removal.
 */
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import { InputError, NotFoundError } from '../errors.js';
import type { CopyMarks } from './copy-pending.js';
import type { MetaDb } from './meta-db.js';
import type { Leases } from './meta-leases.js';
import { nowMicros, toLease, toVersion, versionRow } from './meta-types.js';
import { checkTreeIn, dropTreeIn, reachedObjects, sealIn } from './page-ops.js';
import { chunks, objectsById, treeHead } from './page-tree.js';
import type { Db, Lease, Version } from './meta-types.js';
import type { Database, VersionStatus } from './schema.js';
import type { Tracking } from './tracking.js';

/**
 * The versions repository. It creates a version together with its lease through `leases`, and
 * records every change of a version's validity in `marks` (its copy is then out of date).
 */
export class Versions {
  readonly #m: MetaDb;
  readonly #leases: Leases;
  readonly #marks: CopyMarks;

  constructor(m: MetaDb, leases: Leases, marks: CopyMarks) {
    this.#m = m;
    this.#leases = leases;
    this.#marks = marks;
  }

  async createVersion(v: NewVersion): Promise<Version> {
    const version = newVersion(v);
    await this.#m.db.insertInto('versions').values(versionRow(version)).execute();
    return version;
  }

  /**
   * Creates a new incomplete version and a lease on it in one transaction, so no cleanup ever
   * sees the version without its lease (it removes lease-less incomplete versions as crashed).
   */
  async createVersionWithLease(v: NewVersion, kind: string): Promise<{ version: Version; lease: Lease }> {
    const version = newVersion(v);
    const lease = await this.insertVersionWithLease(version, kind);
    return { version, lease };
  }

  /**
   * Inserts a version row exactly as given (import) together with a lease on it, in one
   * transaction. Throws InputError when the uid exists already.
   */
  async insertVersionWithLease(version: Version, kind: string): Promise<Lease> {
    return this.#leases.newLease(kind, version.uid, (row) =>
      this.#m.write(async (tx) => {
        await insertVersionRow(tx, version);
        await tx.insertInto('leases').values(row).execute();
      }),
    );
  }

  async findVersion(uid: string): Promise<Version | undefined> {
    const row = await this.#m.db.selectFrom('versions').selectAll().where('uid', '=', uid).executeTakeFirst();
    return row ? toVersion(row) : undefined;
  }

  async getVersion(uid: string): Promise<Version> {
    const v = await this.findVersion(uid);
    if (!v) throw new NotFoundError(`version ${uid} not found (see 'backy ls')`);
    return v;
  }

  /** Versions by date, oldest first; optionally only those named `name`. */
  async listVersions(filter: { name?: string } = {}): Promise<Version[]> {
    let q = this.#m.db.selectFrom('versions').selectAll();
    if (filter.name !== undefined) q = q.where('name', '=', filter.name);
    const rows = await q.orderBy('date').orderBy('uid').execute();
    return rows.map(toVersion);
  }

  async setVersionStatus(uid: string, status: VersionStatus): Promise<void> {
    await this.#m.write(async (tx) => {
      // Set by hand (not by an object's damage): no sound object makes it valid again.
      const r = await tx
        .updateTable('versions')
        .set({ status, held: status === 'invalid' ? 1 : 0 })
        .where('uid', '=', uid)
        .where('status', '<>', status)
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) > 0) await this.#marks.mark(tx, [uid]);
    });
  }

  async setVersionSize(uid: string, sizeBytes: number): Promise<void> {
    await this.#m.db.updateTable('versions').set({ size_bytes: sizeBytes }).where('uid', '=', uid).execute();
  }

  /**
   * Marks a version valid if, and only if, it has exactly one block row per block of its size
   * and every non-sparse block references a valid stored object. One transaction.
   * Returns the problem when it cannot.
   */
  async completeVersion(uid: string, opts: { durable?: boolean } = {}): Promise<string | undefined> {
    // The commit that makes a version valid is made durable at once (FULL), even in SQLite's
    // NORMAL mode: once backy printed the uid, a power loss must not take the version back.
    // durable: false for a caller that makes many at once durable later (durableHeartbeat).
    const full = this.#m.dialect === 'sqlite' && opts.durable !== false;
    if (full) await sql`PRAGMA synchronous = FULL`.execute(this.#m.db);
    try {
      return await this.#completeVersion(uid);
    } finally {
      if (full) await sql`PRAGMA synchronous = NORMAL`.execute(this.#m.db);
    }
  }

  async #completeVersion(uid: string): Promise<string | undefined> {
    return this.#m.write(async (tx) => {
      const { absent, bad, blocks } = await sealIn(tx, this.#m.dialect, uid, nowMicros());
      if (absent > 0) return gapProblem(absent, blocks);
      if (bad > 0) {
        // Damaged objects only: invalid now, and valid again once they are sound (not held).
        await tx.updateTable('versions').set({ status: 'invalid' }).where('uid', '=', uid).execute();
        await this.#marks.mark(tx, [uid]);
        return badProblem(bad);
      }
      await tx.updateTable('versions').set({ status: 'valid', held: 0 }).where('uid', '=', uid).execute();
      await this.#marks.mark(tx, [uid]);
      return undefined;
    });
  }

  /**
   * After a full scrub found every block of `uid` sound: marks its block entries and their
   * objects valid and an invalid version valid again, in one transaction, provided the block
   * list is complete and every object is recorded. Returns the problem when it cannot.
   */
  async revalidateVersion(uid: string): Promise<string | undefined> {
    return this.#m.write(async (tx) => {
      const v = await tx.selectFrom('versions').selectAll().where('uid', '=', uid).executeTakeFirst();
      if (!v) return 'the version was removed meanwhile';
      if (v.status !== 'invalid') return `the version is ${v.status}`;
      const head = await treeHead(tx, uid);
      if (!head) return 'the version was removed meanwhile';
      const { absent, blocks } = await checkTreeIn(tx, head);
      if (absent > 0) return gapProblem(absent, blocks);
      const reached = await reachedObjects(tx, head);
      const found = await objectsById(tx, reached);
      const unrecorded = [...reached].filter(
        (id) => !found.has(id) || found.get(id)?.storedSize === 0,
      ).length;
      if (unrecorded > 0) return `${unrecorded} blocks reference objects the database does not record`;
      for (const part of chunks([...reached])) {
        await tx
          .updateTable('objects')
          .set({ valid: 1 })
          .where('valid', '=', 0)
          .where('id', 'in', part)
          .execute();
      }
      await tx.updateTable('versions').set({ status: 'valid', held: 0 }).where('uid', '=', uid).execute();
      await this.#marks.mark(tx, [uid]);
      return undefined;
    });
  }

  /**
   * Removes a version unless a lease naming it is live (`isLive` decides), inside one
   * transaction that keeps new leases out (SQLite: BEGIN IMMEDIATE; PostgreSQL: the leases table
   * locked): a reader that takes its lease after this looks for the version and finds it gone.
   * Returns the live holders, and removes nothing, when there are any.
   */
  async removeVersionUnlessHeld(uid: string, isLive: (l: Lease) => Promise<boolean>): Promise<Lease[]> {
    return this.#m.cleanupTx({ leases: true }, async (tx) => {
      const rows = await tx.selectFrom('leases').selectAll().where('version_uid', '=', uid).execute();
      const live: Lease[] = [];
      for (const l of rows.map(toLease)) if (await isLive(l)) live.push(l);
      if (live.length > 0) return live;
      const v = await tx.selectFrom('versions').select('protected').where('uid', '=', uid).executeTakeFirst();
      if (v && Number(v.protected) === 1) {
        throw new InputError(`version ${uid} is protected; run 'backy unprotect ${uid}' first to remove it`);
      }
      await removeVersionIn(tx, uid);
      return [];
    });
  }

  /**
   * Removes a version, its block list and labels. Objects stay; cleanup removes unreferenced
   * ones. A protected version is refused, checked in the same transaction (so a concurrent
   * `protect` wins), unless `protectedToo` (a command undoing the version it just created).
   */
  async removeVersion(uid: string, opts: { protectedToo?: boolean } = {}): Promise<void> {
    await this.#m.write(async (tx) => {
      const v = await tx.selectFrom('versions').select('protected').where('uid', '=', uid).executeTakeFirst();
      if (v && Number(v.protected) === 1 && !opts.protectedToo) {
        throw new InputError(`version ${uid} is protected; run 'backy unprotect ${uid}' first to remove it`);
      }
      await removeVersionIn(tx, uid);
    });
  }
}

export type NewVersion = {
  name: string;
  snapshotName?: string;
  sizeBytes: number;
  blockSize: number;
  baseUid?: string;
  tracking?: Tracking | null;
};

/** A new incomplete version made here, on this host, now. */
function newVersion(v: NewVersion): Version {
  return {
    uid: randomUUID(),
    name: v.name,
    snapshotName: v.snapshotName ?? '',
    date: nowMicros(),
    sizeBytes: v.sizeBytes,
    blockSize: v.blockSize,
    status: 'incomplete',
    baseUid: v.baseUid ?? null,
    protected: false,
    hostname: hostname(),
    tracking: v.tracking ?? null,
  };
}

function gapProblem(absent: number, expected: number): string {
  return `version has ${expected - absent} block entries, expected ${expected}`;
}

function badProblem(bad: number): string {
  return `${bad} blocks reference objects that are missing or invalid`;
}

/** Removes a version inside `tx`: its tree (page-ops.ts), labels and row. */
export async function removeVersionIn(tx: Db, uid: string): Promise<void> {
  await dropTreeIn(tx, uid);
  await tx.deleteFrom('labels').where('version_uid', '=', uid).execute();
  await tx.deleteFrom('versions').where('uid', '=', uid).execute();
}

/** Inserts a version row exactly as given, inside `tx`; InputError when the uid exists already. */
async function insertVersionRow(tx: Kysely<Database>, version: Version): Promise<void> {
  const exists = await tx
    .selectFrom('versions')
    .select('uid')
    .where('uid', '=', version.uid)
    .executeTakeFirst();
  if (exists) throw new InputError(`version ${version.uid} exists already; remove it first ('backy rm')`);
  await tx.insertInto('versions').values(versionRow(version)).execute();
}

/**
 * Of `uids`, the invalid versions that nothing keeps invalid any more, made valid inside `tx`:
 * not held invalid by hand, no gap, every object reached recorded and valid (what completion
 * asks of a new version). For validity that follows objects: once a damaged object is
 * confirmed sound, the versions whose only problem it was are valid again without a scrub
 * each. Returns those made valid.
 */
export async function revalidateSoundIn(tx: Db, uids: readonly string[]): Promise<string[]> {
  const out: string[] = [];
  for (const uid of new Set(uids)) {
    const v = await tx
      .selectFrom('versions')
      .select('uid')
      .where('uid', '=', uid)
      .where('status', '=', 'invalid')
      .where('held', '=', 0)
      .executeTakeFirst();
    if (!v) continue;
    const head = await treeHead(tx, uid);
    if (!head) continue;
    const { absent, bad } = await checkTreeIn(tx, head);
    if (absent > 0 || bad > 0) continue;
    await tx.updateTable('versions').set({ status: 'valid' }).where('uid', '=', uid).execute();
    out.push(uid);
  }
  return out;
}
