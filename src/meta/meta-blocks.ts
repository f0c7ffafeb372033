/** Block lists: copy from a base, put, page through, look up by index. */
import { sql } from 'kysely';
import type { MetaDb } from './meta-db.js';
import { INSERT_BATCH } from './meta-types.js';
import type { BlockRow, Db } from './meta-types.js';

/** Rows per page when a whole block list is written out (export, copies): ~1.5 MB of rows, 27 queries for 1 TiB. */
const READ_PAGE = 10_000;

/** Block rows per PostgreSQL INSERT ... SELECT FROM unnest(arrays). */
const PG_UNNEST_BATCH = 10_000;
/** Block rows per SQLite INSERT ... SELECT FROM json_each(array). */
const SQLITE_JSON_BATCH = 10_000;

/** The block lists repository: one row per block of each version (issue 22 replaces them by pages). */
export class BlockLists {
  readonly #m: MetaDb;

  constructor(m: MetaDb) {
    this.#m = m;
  }

  /** Copies the base's block list (entries below `blockCount`) to a new version in one statement. */
  async copyBlocks(fromUid: string, toUid: string, blockCount: number): Promise<void> {
    await this.#m.write(async (tx) => {
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
    await this.#m.write((tx) => insertBlockRows(tx, this.#m.dialect, uid, rows));
  }

  /** One page of a version's block list in index order: entries with idx >= fromIdx. */
  async blockPage(uid: string, fromIdx: number, limit = INSERT_BATCH): Promise<BlockRow[]> {
    const rows = await this.#m.db
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
    // Pages of INSERT_BATCH: a reader notices a removal under it (an empty later page) early.
    for await (const page of this.blockPages(uid, INSERT_BATCH)) yield* page;
  }

  /**
   * The same, a page at a time: for readers of whole lists (export, the store's metadata
   * copy), where a step of the async iterator per row costs more than the query.
   */
  async *blockPages(uid: string, pageSize = READ_PAGE): AsyncIterable<BlockRow[]> {
    let from = 0;
    while (true) {
      const page = await this.blockPage(uid, from, pageSize);
      if (page.length > 0) yield page;
      if (page.length < pageSize) return;
      from = page[page.length - 1].idx + 1;
    }
  }

  async blocksAt(uid: string, indices: readonly number[]): Promise<Map<number, BlockRow>> {
    const out = new Map<number, BlockRow>();
    for (let i = 0; i < indices.length; i += INSERT_BATCH) {
      const rows = await this.#m.db
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

/** putBlocks inside the caller's transaction `tx`. */
export async function insertBlockRows(
  tx: Db,
  dialect: 'sqlite' | 'postgres',
  uid: string,
  rows: readonly BlockRow[],
): Promise<void> {
  if (dialect === 'postgres') {
    // PostgreSQL refuses to upsert one row twice in a statement; SQLite lets the last win. Same here.
    const last = new Map<number, BlockRow>();
    for (const r of rows) last.set(r.idx, r);
    const unique = [...last.values()];
    // Columns as arrays through unnest: 4 parameters per statement instead of 5 per row, which
    // makes a 262,144-row block list several times faster to write than multi-row VALUES.
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
    return;
  }
  // Rows as one JSON array parameter, taken apart by json_each: a short statement that is cheap
  // to prepare, instead of kysely building and SQLite preparing 5,000 parameters per 1,000 rows
  // (about a third of the time a 262,144-row block list took to write).
  for (let i = 0; i < rows.length; i += SQLITE_JSON_BATCH) {
    const batch = rows
      .slice(i, i + SQLITE_JSON_BATCH)
      .map((r) => [r.idx, r.checksum, r.size, r.valid ? 1 : 0]);
    await sql`
      INSERT INTO blocks (version_uid, idx, checksum, size, valid)
      SELECT ${uid}, value ->> 0, value ->> 1, value ->> 2, value ->> 3 FROM json_each(${JSON.stringify(batch)})
      WHERE true
      ON CONFLICT (version_uid, idx) DO UPDATE
        SET checksum = excluded.checksum, size = excluded.size, valid = excluded.valid`.execute(tx);
  }
}
