/**
 * Block lists as trees of shared pages (issue 22): a version costs what changed, not its size.
 *
 * Shape (fixed, three levels): a version's root (versions.root, a JSON array) lists interior
 * pages; an interior page lists up to FANOUT leaf pages; a leaf page lists up to LEAF block
 * entries. Entries are integers: in a leaf an object id (objects.id, > 0), SPARSE (an all-zero
 * block, no object) or ABSENT (no entry: a gap, which makes a version unverifiable); in an
 * interior or a root a page id, SPARSE (a child whose entries are all sparse: no page at all)
 * or ABSENT (a child with no entries). The last child of each level is shorter when the image
 * ends inside it. 100 GiB of 4 MiB blocks: 800 leaves, 7 interiors, a root of 7 numbers; a
 * 6 TiB image: a root of 384.
 *
 * Pages are immutable and named by a hash of their level and entries (pages.hash, unique), so
 * equal pages are stored once and shared by every version that has them; a forward incremental
 * copies its base's root and writes new pages only on the paths to changed blocks (page-seal.ts).
 *
 * Reference counts make garbage collection incremental: pages.refs counts the interiors (for a
 * leaf) or version roots (for an interior) that name the page, each once however often it names
 * it; objects.refs counts the leaves that name the object, each once. A count is raised when a
 * new page or root naming the child is recorded and lowered when that page or root goes, in the
 * same transaction. A page or object at zero is garbage once nothing else holds it: an
 * incomplete version's pending entries (block_puts, leaf_puts) and, through last_seen, a
 * running writer (meta-gc.ts; the argument is in core/cleanup.ts).
 *
 * While a version is incomplete its changes wait beside its root: block_puts (one row per
 * entry put) and leaf_puts (whole leaves put at once, by writers that go in order: a full
 * backup or an import). Readers merge them (readEntries); completion seals them into pages.
 */
import { createHash } from 'node:crypto';
import type { Db } from './meta-types.js';

/** Block entries per leaf page: 128 MiB of image at 4 MiB blocks. */
export const LEAF = 32;
/** Leaves per interior page: 16 GiB of image at 4 MiB blocks. */
export const FANOUT = 128;
/** Blocks under one interior page. */
export const SPAN = LEAF * FANOUT;
export const SPARSE = 0;
export const ABSENT = -1;

/** Rows per IN list. */
const BATCH = 1000;

export type Dialect = 'sqlite' | 'postgres';

export interface PageRow {
  id: number;
  level: number;
  entries: number[];
  refs: number;
  data: number;
  sparse: number;
}

/** The version fields the tree needs. */
export interface TreeHead {
  uid: string;
  sizeBytes: number;
  blockSize: number;
  /** Interior page ids; empty when nothing is listed. */
  root: number[];
  /** Entries the root covers (idx < listed); those at or past it are absent unless put. */
  listed: number;
}

export function pageHash(level: number, entries: readonly number[]): string {
  return createHash('sha256')
    .update(`${level}:${entries.join(',')}`)
    .digest('hex');
}

export function parseEntries(text: string | null | undefined): number[] {
  if (!text) return [];
  const v = JSON.parse(text) as unknown;
  if (!Array.isArray(v) || v.some((x) => !Number.isSafeInteger(x))) {
    throw new Error('damaged block list page in the metadata database');
  }
  return v as number[];
}

export function chunks<T>(list: readonly T[], n = BATCH): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += n) out.push(list.slice(i, i + n));
  return out;
}

/**
 * Pages read before, for a reader that visits many trees sharing pages (du over every
 * version): pages are immutable, so a cached one is never stale (its refs may be).
 */
export type PageCache = Map<number, PageRow>;

/** Pages by id (missing ids are absent from the map). */
export async function loadPages(
  tx: Db,
  ids: Iterable<number>,
  cache?: PageCache,
): Promise<Map<number, PageRow>> {
  const out = new Map<number, PageRow>();
  let want = [...new Set(ids)].filter((id) => id > 0);
  if (cache) {
    want = want.filter((id) => {
      const hit = cache.get(id);
      if (hit) out.set(id, hit);
      return !hit;
    });
  }
  for (const part of chunks(want)) {
    const rows = await tx
      .selectFrom('pages')
      .select(['id', 'level', 'entries', 'refs', 'data_blocks', 'sparse_blocks'])
      .where('id', 'in', part)
      .execute();
    for (const r of rows) {
      out.set(Number(r.id), {
        id: Number(r.id),
        level: Number(r.level),
        entries: parseEntries(r.entries),
        refs: Number(r.refs),
        data: Number(r.data_blocks),
        sparse: Number(r.sparse_blocks),
      });
      cache?.set(Number(r.id), out.get(Number(r.id)) as PageRow);
    }
  }
  return out;
}

/** Raises (delta > 0) or lowers the reference counts of pages or objects, each id once. */
export async function addRefs(
  tx: Db,
  table: 'pages' | 'objects',
  ids: Iterable<number>,
  delta: number,
): Promise<void> {
  const want = [...new Set(ids)].filter((id) => id > 0).sort((a, b) => a - b);
  for (const part of chunks(want)) {
    await tx
      .updateTable(table)
      .set((eb) => ({ refs: eb('refs', '+', delta) }))
      .where('id', 'in', part)
      .execute();
  }
}

export interface NewPage {
  level: number;
  entries: number[];
  /** Blocks with an object and sparse blocks under the page (for du without walking). */
  data: number;
  sparse: number;
}

/**
 * Records pages (deduplicated by hash) and returns their ids in order. A page recorded anew
 * raises its children's counts; one found already has them. Every page's last_seen is set to
 * `now`, so a concurrent cleanup leaves it until the root naming it is recorded. PostgreSQL:
 * found rows are locked first, so a cleanup deleting one either went before (it is not found
 * and is recorded anew) or waits for this transaction.
 */
export async function upsertPages(
  tx: Db,
  dialect: Dialect,
  pages: readonly NewPage[],
  now: number,
): Promise<number[]> {
  const hashes = pages.map((p) => pageHash(p.level, p.entries));
  const ids = new Map<string, number>();
  for (const part of chunks([...new Set(hashes)])) {
    let q = tx.selectFrom('pages').select(['id', 'hash']).where('hash', 'in', part);
    if (dialect === 'postgres') q = q.forUpdate();
    for (const r of await q.execute()) ids.set(r.hash, Number(r.id));
  }
  if (ids.size > 0) {
    for (const part of chunks([...ids.values()])) {
      await tx.updateTable('pages').set({ last_seen: now }).where('id', 'in', part).execute();
    }
  }
  for (let i = 0; i < pages.length; i++) {
    const h = hashes[i];
    if (ids.has(h)) continue;
    const p = pages[i];
    const row = await tx
      .insertInto('pages')
      .values({
        hash: h,
        level: p.level,
        entries: JSON.stringify(p.entries),
        refs: 0,
        last_seen: now,
        data_blocks: p.data,
        sparse_blocks: p.sparse,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    ids.set(h, Number(row.id));
    await addRefs(tx, p.level === 0 ? 'objects' : 'pages', p.entries, 1);
  }
  return hashes.map((h) => ids.get(h) as number);
}

/** The tree fields of version `uid`, or undefined when it is gone. */
export async function treeHead(tx: Db, uid: string): Promise<TreeHead | undefined> {
  const r = await tx
    .selectFrom('versions')
    .select(['uid', 'size_bytes', 'block_size', 'root', 'listed'])
    .where('uid', '=', uid)
    .executeTakeFirst();
  if (!r) return undefined;
  return {
    uid: r.uid,
    sizeBytes: Number(r.size_bytes),
    blockSize: Number(r.block_size),
    root: parseEntries(r.root),
    listed: Number(r.listed),
  };
}

/**
 * The entries of leaves `ks` of version `head` (object ids, SPARSE or ABSENT; each leaf LEAF
 * long, entries past the image absent): the root's leaves, masked past `listed`, under the
 * pending changes of an incomplete version (leaf_puts, then block_puts).
 */
export async function leavesAt(
  tx: Db,
  head: TreeHead,
  ks: readonly number[],
  cache?: PageCache,
): Promise<Map<number, number[]>> {
  const out = new Map<number, number[]>();
  if (ks.length === 0) return out;
  const interiors = await loadPages(
    tx,
    ks.map((k) => head.root[Math.floor(k / FANOUT)] ?? ABSENT),
    cache,
  );
  const childOf = (k: number): number => {
    const i = Math.floor(k / FANOUT);
    if (i >= head.root.length) return ABSENT;
    const id = head.root[i];
    if (id <= 0) return id;
    const page = interiors.get(id);
    if (!page) throw new Error(`block list page ${id} of version ${head.uid} is missing`);
    return page.entries[k % FANOUT] ?? ABSENT;
  };
  const children = new Map<number, number>();
  for (const k of ks) children.set(k, childOf(k));
  const leaves = await loadPages(tx, children.values(), cache);
  const n = Math.ceil(head.sizeBytes / head.blockSize);
  for (const [k, c] of children) {
    let entries: number[];
    if (c === SPARSE || c === ABSENT) entries = new Array<number>(LEAF).fill(c);
    else {
      const page = leaves.get(c);
      if (!page) throw new Error(`block list page ${c} of version ${head.uid} is missing`);
      entries = page.entries.slice();
    }
    for (let j = 0; j < LEAF; j++) {
      const idx = k * LEAF + j;
      if (idx >= head.listed || idx >= n || entries[j] === undefined) entries[j] = ABSENT;
    }
    out.set(k, entries);
  }
  const lo = Math.min(...ks);
  const hi = Math.max(...ks) + 1;
  const leafPuts = await tx
    .selectFrom('leaf_puts')
    .select(['leaf', 'page_id'])
    .where('version_uid', '=', head.uid)
    .where('leaf', '>=', lo)
    .where('leaf', '<', hi)
    .execute();
  const wanted = leafPuts.filter((r) => out.has(Number(r.leaf)));
  if (wanted.length > 0) {
    const pages = await loadPages(
      tx,
      wanted.map((r) => Number(r.page_id)),
    );
    for (const r of wanted) {
      const k = Number(r.leaf);
      const id = Number(r.page_id);
      const entries = id === SPARSE ? new Array<number>(LEAF).fill(SPARSE) : (pages.get(id)?.entries ?? []);
      const target = out.get(k) as number[];
      for (let j = 0; j < LEAF; j++) if (k * LEAF + j < n) target[j] = entries[j] ?? ABSENT;
    }
  }
  const puts = await tx
    .selectFrom('block_puts')
    .select(['idx', 'object_id'])
    .where('version_uid', '=', head.uid)
    .where('idx', '>=', lo * LEAF)
    .where('idx', '<', hi * LEAF)
    .execute();
  for (const r of puts) {
    const idx = Number(r.idx);
    const target = out.get(Math.floor(idx / LEAF));
    if (target && idx < n) target[idx % LEAF] = Number(r.object_id);
  }
  return out;
}

/** The entries of version `head` for blocks [from, to) (see leavesAt). */
export async function readEntries(tx: Db, head: TreeHead, from: number, to: number): Promise<number[]> {
  if (to <= from) return [];
  const ks: number[] = [];
  for (let k = Math.floor(from / LEAF); k * LEAF < to; k++) ks.push(k);
  const leaves = await leavesAt(tx, head, ks);
  const out = new Array<number>(to - from);
  for (let idx = from; idx < to; idx++)
    out[idx - from] = (leaves.get(Math.floor(idx / LEAF)) as number[])[idx % LEAF];
  return out;
}

/** Checksum and validity of objects by id. */
export async function objectsById(
  tx: Db,
  ids: Iterable<number>,
): Promise<Map<number, { checksum: string; valid: boolean; storedSize: number }>> {
  const want = [...new Set(ids)].filter((id) => id > 0);
  const out = new Map<number, { checksum: string; valid: boolean; storedSize: number }>();
  for (const part of chunks(want)) {
    const rows = await tx
      .selectFrom('objects')
      .select(['id', 'checksum', 'valid', 'stored_size'])
      .where('id', 'in', part)
      .execute();
    for (const r of rows) {
      out.set(Number(r.id), {
        checksum: r.checksum,
        valid: Number(r.valid) === 1,
        storedSize: Number(r.stored_size),
      });
    }
  }
  return out;
}

/** Object ids by checksum; checksums with no objects row are absent from the map. */
export async function objectIds(tx: Db, checksums: Iterable<string>): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const part of chunks([...new Set(checksums)])) {
    const rows = await tx
      .selectFrom('objects')
      .select(['id', 'checksum'])
      .where('checksum', 'in', part)
      .execute();
    for (const r of rows) out.set(r.checksum, Number(r.id));
  }
  return out;
}

/** The distinct page ids among entries (children that are pages). */
export function pageChildren(entries: readonly number[]): number[] {
  return [...new Set(entries.filter((e) => e > 0))];
}
