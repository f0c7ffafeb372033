/**
 * Imported versions recorded in one transaction: their rows, their objects adopted, their block
 * lists, labels and final status. Nothing of them is visible before the commit, so they need no
 * lease of their own (cleanup removes lease-less incomplete versions as crashed), and a group
 * of them costs one commit and a few statements instead of a dozen statements each: what makes
 * recovering 1,000 small versions fast, on PostgreSQL above all (a round trip a statement). For
 * block lists that fit one transaction; larger ones go in batches (core/metadata-io.ts).
 */
import { sql } from 'kysely';
import { InputError } from '../errors.js';
import { putRowsIn, sealIn } from './page-ops.js';
import { adoptIn } from './meta-objects.js';
import type { MetaHandle } from './meta-db.js';
import { nowMicros, versionRow } from './meta-types.js';
import type { BlockRow, Version } from './meta-types.js';

export interface ImportedVersion {
  /** The row as the file records it; its status is what the file says (valid or invalid). */
  version: Version;
  /** Exactly one row per block, idx 0..n-1, as ExportParser validated them. */
  rows: readonly BlockRow[];
  /** Stored size of each object the rows name, undefined when the data store lacks it. */
  sizes: ReadonlyMap<string, number | undefined>;
  labels: Record<string, string>;
}

export interface RecordedImport {
  /** undefined: the database had this uid already (with `existing: 'skip'`), nothing recorded. */
  status?: 'valid' | 'invalid';
  /** Blocks whose object is absent from the data store or recorded invalid. */
  missing: number;
  /** The file said valid, but the version is recorded invalid. */
  downgraded: boolean;
}

export async function recordImportedVersions(
  meta: MetaHandle,
  items: readonly ImportedVersion[],
  opts: {
    /** false: the caller makes the commit durable later (MetaStore.durableHeartbeat). */
    durable: boolean;
    /** A uid the database has already: an InputError, or skipped (recover: someone else added it). */
    existing: 'throw' | 'skip';
  },
): Promise<RecordedImport[]> {
  // Like completeVersion: a version printed as recovered or imported survives a power loss.
  const full = meta.dialect === 'sqlite' && opts.durable;
  if (full) await sql`PRAGMA synchronous = FULL`.execute(meta.db);
  try {
    return await meta.write(async (tx) => {
      const uids = items.map((i) => i.version.uid);
      const present = new Set<string>();
      for (let i = 0; i < uids.length; i += 500) {
        const rows = await tx
          .selectFrom('versions')
          .select('uid')
          .where('uid', 'in', uids.slice(i, i + 500))
          .execute();
        for (const r of rows) present.add(r.uid);
      }
      if (present.size > 0 && opts.existing === 'throw') {
        throw new InputError(`version ${[...present][0]} exists already; remove it first ('backy rm')`);
      }
      const todo = items.filter((i) => !present.has(i.version.uid));
      const sizes = new Map<string, number | undefined>();
      for (const item of todo) for (const [c, s] of item.sizes) sizes.set(c, s);
      const ok = await adoptIn(tx, meta.dialect, sizes, nowMicros());
      const out = new Map<string, RecordedImport>();
      const lists: { uid: string; rows: BlockRow[] }[] = [];
      const versionRows = todo.map((item) => {
        const { version } = item;
        // The rows are exactly the file's, one per block (the parser checked that), so the check
        // a backup's completion makes (completeVersion) comes down to: every non-sparse block
        // valid, and its object recorded, valid and present, as adopted in this transaction.
        let missing = 0;
        let bad = 0;
        const rows = item.rows.map((r) => {
          if (r.checksum === null) return r;
          if (!ok.has(r.checksum)) {
            missing++;
            bad++;
            return { ...r, valid: false };
          }
          if (!r.valid) bad++;
          return r;
        });
        const status = version.status === 'valid' && bad === 0 ? ('valid' as const) : ('invalid' as const);
        out.set(version.uid, {
          status,
          missing,
          downgraded: version.status === 'valid' && status === 'invalid',
        });
        lists.push({ uid: version.uid, rows });
        return { ...versionRow(version), status, held: status === 'invalid' && bad === 0 ? 1 : 0 };
      });
      for (let i = 0; i < versionRows.length; i += 500) {
        await tx
          .insertInto('versions')
          .values(versionRows.slice(i, i + 500))
          .execute();
      }
      // Validity follows objects: an entry the copy says is damaged names a damaged object.
      const damaged = [
        ...new Set(
          lists.flatMap((l) =>
            l.rows
              .filter((r) => !r.valid && r.checksum !== null && ok.has(r.checksum))
              .map((r) => r.checksum as string),
          ),
        ),
      ];
      for (let i = 0; i < damaged.length; i += 500) {
        await tx
          .updateTable('objects')
          .set({ valid: 0 })
          .where('checksum', 'in', damaged.slice(i, i + 500))
          .execute();
      }
      for (const l of lists) {
        await putRowsIn(tx, meta.dialect, l.uid, l.rows, nowMicros());
        await sealIn(tx, meta.dialect, l.uid, nowMicros());
      }
      const labels = todo.flatMap((i) =>
        Object.entries(i.labels).map(([key, value]) => ({ version_uid: i.version.uid, key, value })),
      );
      for (let i = 0; i < labels.length; i += 500) {
        await tx
          .insertInto('labels')
          .values(labels.slice(i, i + 500))
          .execute();
      }
      return items.map((i) => out.get(i.version.uid) ?? { missing: 0, downgraded: false });
    });
  } finally {
    if (full) await sql`PRAGMA synchronous = NORMAL`.execute(meta.db);
  }
}
