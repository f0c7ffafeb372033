/** Block lists: copy from a base, put, page through, look up by index (trees: page-tree.ts). */
import { blockCount, blockLength } from '../blocks/blocks.js';
import type { MetaDb } from './meta-db.js';
import { INSERT_BATCH, nowMicros } from './meta-types.js';
import type { BlockRow, Db } from './meta-types.js';
import { copyTreeIn, putRowsIn } from './page-ops.js';
import { LEAF, leavesAt, objectsById, readEntries, treeHead } from './page-tree.js';
import type { TreeHead } from './page-tree.js';

/** Entries per page when a whole block list is read (export, copies): 320 leaves. */
const READ_PAGE = 10_240;

/** The block lists repository: each version's entries, kept as shared pages. */
export class BlockLists {
  readonly #m: MetaDb;

  constructor(m: MetaDb) {
    this.#m = m;
  }

  /** Version `toUid` starts as `fromUid`'s entries below `blockCount` (its root copied). */
  async copyBlocks(fromUid: string, toUid: string, blockCount: number): Promise<void> {
    await this.#m.write((tx) => copyTreeIn(tx, this.#m.dialect, fromUid, toUid, blockCount));
  }

  /** Inserts or replaces block entries of an incomplete version (one transaction). */
  async putBlocks(uid: string, rows: readonly BlockRow[]): Promise<void> {
    if (rows.length === 0) return;
    await this.#m.write((tx) => putRowsIn(tx, this.#m.dialect, uid, rows, nowMicros()));
  }

  /** One page of a version's block list in index order: up to `limit` entries with idx >= fromIdx. */
  async blockPage(uid: string, fromIdx: number, limit = INSERT_BATCH): Promise<BlockRow[]> {
    const out: BlockRow[] = [];
    const head = await treeHead(this.#m.db, uid);
    if (!head) return out;
    const n = blockCount(head.sizeBytes, head.blockSize);
    let from = fromIdx;
    // Absent entries are skipped: read on until `limit` rows or the end.
    while (out.length < limit && from < n) {
      const to = Math.min(n, from + Math.max(limit - out.length, LEAF));
      out.push(...(await rowsOf(this.#m.db, head, from, to)));
      from = to;
    }
    return out.slice(0, limit);
  }

  /** A version's whole block list, streamed (memory: one page). */
  async *blocks(uid: string): AsyncIterable<BlockRow> {
    // Small pages: a reader notices a removal under it (an empty later page) early.
    for await (const page of this.blockPages(uid, INSERT_BATCH)) yield* page;
  }

  /**
   * The same, a page at a time: for readers of whole lists (export, the store's metadata
   * copy). The version is looked up again for every page: one removed under the reader ends
   * the list early (its readers check for that).
   */
  async *blockPages(uid: string, pageSize = READ_PAGE): AsyncIterable<BlockRow[]> {
    let from = 0;
    for (;;) {
      const head = await treeHead(this.#m.db, uid);
      if (!head) return;
      const n = blockCount(head.sizeBytes, head.blockSize);
      if (from >= n) return;
      const to = Math.min(n, from + pageSize);
      const page = await rowsOf(this.#m.db, head, from, to);
      if (page.length > 0) yield page;
      from = to;
    }
  }

  async blocksAt(uid: string, indices: readonly number[]): Promise<Map<number, BlockRow>> {
    const out = new Map<number, BlockRow>();
    const head = await treeHead(this.#m.db, uid);
    if (!head || indices.length === 0) return out;
    const n = blockCount(head.sizeBytes, head.blockSize);
    const wanted = [...new Set(indices)].filter((i) => i >= 0 && i < n).sort((a, b) => a - b);
    for (let i = 0; i < wanted.length; i += INSERT_BATCH) {
      const part = wanted.slice(i, i + INSERT_BATCH);
      const leaves = await leavesAt(this.#m.db, head, [
        ...new Set(part.map((idx) => Math.floor(idx / LEAF))),
      ]);
      const entries = part.map((idx) => (leaves.get(Math.floor(idx / LEAF)) as number[])[idx % LEAF]);
      const objects = await objectsById(
        this.#m.db,
        entries.filter((e) => e > 0),
      );
      part.forEach((idx, j) => {
        const row = toRow(head, idx, entries[j], objects);
        if (row) out.set(idx, row);
      });
    }
    return out;
  }
}

type ObjectInfo = Map<number, { checksum: string; valid: boolean }>;

function toRow(head: TreeHead, idx: number, e: number, objects: ObjectInfo): BlockRow | undefined {
  const size = blockLength(idx, head.sizeBytes, head.blockSize);
  if (e === 0) return { idx, checksum: null, size, valid: true };
  if (e < 0) return undefined;
  const o = objects.get(e);
  // An object row that vanished under a reader: the entry names nothing it can read.
  if (!o) return undefined;
  return { idx, checksum: o.checksum, size, valid: o.valid };
}

/** The present entries of blocks [from, to) as rows; validity is the object's. */
async function rowsOf(db: Db, head: TreeHead, from: number, to: number): Promise<BlockRow[]> {
  const entries = await readEntries(db, head, from, to);
  const objects = await objectsById(
    db,
    entries.filter((e) => e > 0),
  );
  const out: BlockRow[] = [];
  entries.forEach((e, j) => {
    const row = toRow(head, from + j, e, objects);
    if (row) out.push(row);
  });
  return out;
}
