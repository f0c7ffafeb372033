/**
 * An imported version recorded in one transaction: its row, its objects adopted, its block
 * list, its labels and its final status. Nothing of it is visible before the commit, so it
 * needs no lease of its own (cleanup removes lease-less incomplete versions as crashed) and
 * costs one commit instead of five: what makes recovering 1,000 small versions fast. For
 * block lists that fit one transaction; larger ones go in batches (core/metadata-io.ts).
 */
import { sql } from 'kysely';
import { insertBlockRows } from './meta-blocks.js';
import { adoptIn } from './meta-objects.js';
import type { MetaStore } from './meta-store.js';
import { nowMicros } from './meta-types.js';
import type { BlockRow, Version } from './meta-types.js';
import { completionProblem, insertVersionRow } from './meta-versions.js';

export async function recordImportedVersion(
  meta: MetaStore,
  opts: {
    /** The row as the file records it; its status is what the file says (valid or invalid). */
    version: Version;
    rows: readonly BlockRow[];
    /** Stored size of each object the rows name, undefined when the data store lacks it. */
    sizes: ReadonlyMap<string, number | undefined>;
    labels: Record<string, string>;
    /** false: the caller makes the commit durable later (MetaStore.durableHeartbeat). */
    durable: boolean;
  },
): Promise<{ missing: number; downgraded: boolean }> {
  const { version } = opts;
  // Like completeVersion: a version printed as recovered or imported survives a power loss.
  const full = meta.dialect === 'sqlite' && opts.durable;
  if (full) await sql`PRAGMA synchronous = FULL`.execute(meta.db);
  try {
    return await meta.write(async (tx) => {
      await insertVersionRow(tx, { ...version, status: 'incomplete' });
      const ok = await adoptIn(tx, opts.sizes, nowMicros());
      let missing = 0;
      const rows = opts.rows.map((r) => {
        if (r.checksum === null || ok.has(r.checksum)) return r;
        missing++;
        return { ...r, valid: false };
      });
      await insertBlockRows(tx, meta.dialect, version.uid, rows);
      for (const [key, value] of Object.entries(opts.labels)) {
        await tx.insertInto('labels').values({ version_uid: version.uid, key, value }).execute();
      }
      // The check a backup's completion makes, in this same transaction.
      const problem = version.status === 'valid' ? await completionProblem(tx, version.uid) : 'invalid';
      await tx
        .updateTable('versions')
        .set({ status: problem ? 'invalid' : 'valid' })
        .where('uid', '=', version.uid)
        .execute();
      return { missing, downgraded: version.status === 'valid' && problem !== undefined };
    });
  } finally {
    if (full) await sql`PRAGMA synchronous = NORMAL`.execute(meta.db);
  }
}
