/** Block lists: copy from a base, put, page through, look up by index. */
import { sql } from 'kysely';
import { MetaVersions } from './meta-versions.js';
import { INSERT_BATCH } from './meta-types.js';
import type { BlockRow } from './meta-types.js';

/** Block rows per PostgreSQL INSERT ... SELECT FROM unnest(arrays). */
const PG_UNNEST_BATCH = 10_000;

export class MetaBlocks extends MetaVersions {
  /** Copies the base's block list (entries below `blockCount`) to a new version in one statement. */
  async copyBlocks(fromUid: string, toUid: string, blockCount: number): Promise<void> {
    await this.write(async (tx) => {
      await tx
        .insertInto('blocks')
        .columns(['version_uid', 'idx', 'checksum', 'size', 'valid'])
        .expression((eb) =>
          eb
            .selectFrom('blocks')
            .select([
              sql<string>`cast(${toUid} as text)`.as('version_uid'),
              'idx',
              'checksum',
              'size',
              'valid',
            ])
            .where('version_uid', '=', fromUid)
            .where('idx', '<', blockCount),
        )
        .execute();
    });
  }

  /** Inserts or replaces block entries (batched, one transaction). */
  async putBlocks(uid: string, rows: readonly BlockRow[]): Promise<void> {
    if (rows.length === 0) return;
    if (this.dialect === 'postgres') {
      // PostgreSQL refuses to upsert one row twice in a statement; SQLite lets the last win. Same here.
      const last = new Map<number, BlockRow>();
      for (const r of rows) last.set(r.idx, r);
      const unique = [...last.values()];
      // Columns as arrays through unnest: 4 parameters per statement instead of 5 per row, which
      // makes a 262,144-row block list several times faster to write than multi-row VALUES.
      await this.write(async (tx) => {
        for (let i = 0; i < unique.length; i += PG_UNNEST_BATCH) {
          const batch = unique.slice(i, i + PG_UNNEST_BATCH);
          await sql`
            INSERT INTO blocks (version_uid, idx, checksum, size, valid)
            SELECT ${uid}, * FROM unnest(
              ${batch.map((r) => r.idx)}::bigint[], ${batch.map((r) => r.checksum)}::text[],
              ${batch.map((r) => r.size)}::integer[], ${batch.map((r) => (r.valid ? 1 : 0))}::integer[])
            ON CONFLICT (version_uid, idx) DO UPDATE
              SET checksum = excluded.checksum, size = excluded.size, valid = excluded.valid`.execute(tx);
        }
      });
      return;
    }
    await this.write(async (tx) => {
      for (let i = 0; i < rows.length; i += INSERT_BATCH) {
        await tx
          .insertInto('blocks')
          .values(
            rows.slice(i, i + INSERT_BATCH).map((r) => ({
              version_uid: uid,
              idx: r.idx,
              checksum: r.checksum,
              size: r.size,
              valid: r.valid ? 1 : 0,
            })),
          )
          .onConflict((oc) =>
            oc.columns(['version_uid', 'idx']).doUpdateSet((eb) => ({
              checksum: eb.ref('excluded.checksum'),
              size: eb.ref('excluded.size'),
              valid: eb.ref('excluded.valid'),
            })),
          )
          .execute();
      }
    });
  }

  /** One page of a version's block list in index order: entries with idx >= fromIdx. */
  async blockPage(uid: string, fromIdx: number, limit = INSERT_BATCH): Promise<BlockRow[]> {
    const rows = await this.db
      .selectFrom('blocks')
      .select(['idx', 'checksum', 'size', 'valid'])
      .where('version_uid', '=', uid)
      .where('idx', '>=', fromIdx)
      .orderBy('idx')
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      idx: Number(r.idx),
      checksum: r.checksum,
      size: Number(r.size),
      valid: Number(r.valid) === 1,
    }));
  }

  /** A version's whole block list, streamed page by page (memory: one page). */
  async *blocks(uid: string): AsyncIterable<BlockRow> {
    let from = 0;
    while (true) {
      const page = await this.blockPage(uid, from);
      yield* page;
      if (page.length < INSERT_BATCH) return;
      from = page[page.length - 1].idx + 1;
    }
  }

  async blocksAt(uid: string, indices: readonly number[]): Promise<Map<number, BlockRow>> {
    const out = new Map<number, BlockRow>();
    for (let i = 0; i < indices.length; i += INSERT_BATCH) {
      const rows = await this.db
        .selectFrom('blocks')
        .select(['idx', 'checksum', 'size', 'valid'])
        .where('version_uid', '=', uid)
        .where('idx', 'in', indices.slice(i, i + INSERT_BATCH))
        .execute();
      for (const r of rows) {
        out.set(Number(r.idx), {
          idx: Number(r.idx),
          checksum: r.checksum,
          size: Number(r.size),
          valid: Number(r.valid) === 1,
        });
      }
    }
    return out;
  }
}
