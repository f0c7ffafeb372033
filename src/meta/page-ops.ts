/**
 * The block-list tree's operations inside a caller's transaction (the shape and reference
 * counting are explained in page-tree.ts): put entries, copy a root, seal pending changes into
 * pages, drop a version's tree, check what a version reaches, and find who reaches what.
 */
import { blockCount, blockLength } from '../blocks/blocks.js';
import { VersionRemovedError } from '../errors.js';
import { nowMicros } from './meta-types.js';
import type { BlockRow, Db } from './meta-types.js';
import {
  ABSENT,
  FANOUT,
  LEAF,
  SPAN,
  SPARSE,
  addRefs,
  chunks,
  leavesAt,
  loadPages,
  objectIds,
  objectsById,
  pageChildren,
  parseEntries,
  treeHead,
  upsertPages,
} from './page-tree.js';
import type { Dialect, NewPage, PageCache, TreeHead } from './page-tree.js';

/** Leaves read per step when a whole tree is walked. */
const WALK = 256;

function leafLength(k: number, n: number): number {
  return Math.max(0, Math.min(LEAF, n - k * LEAF));
}

function headOrThrow(head: TreeHead | undefined, uid: string): TreeHead {
  if (!head) throw new VersionRemovedError(`version ${uid} was removed`);
  return head;
}

/**
 * Puts block entries of an incomplete version: whole leaves become pages at once (leaf_puts),
 * the rest waits in block_puts. A checksum with no objects row gets one, recorded invalid
 * (nothing stored under it: an import naming an object the store lacks), so that validity
 * follows objects: storing it later makes the version valid.
 */
export async function putRowsIn(
  tx: Db,
  dialect: Dialect,
  uid: string,
  rows: readonly BlockRow[],
  now: number,
): Promise<void> {
  if (rows.length === 0) return;
  const head = headOrThrow(await treeHead(tx, uid), uid);
  const n = blockCount(head.sizeBytes, head.blockSize);
  const checksums = rows.flatMap((r) => (r.checksum === null ? [] : [r.checksum]));
  let ids = await objectIds(tx, checksums);
  const unknown = [...new Set(checksums.filter((c) => !ids.has(c)))];
  if (unknown.length > 0) {
    for (const part of chunks(unknown)) {
      await tx
        .insertInto('objects')
        .values(part.map((checksum) => ({ checksum, stored_size: 0, valid: 0, last_seen: now })))
        .onConflict((oc) => oc.column('checksum').doNothing())
        .execute();
    }
    ids = await objectIds(tx, checksums);
  }
  // Plaintext sizes for du, once per object (a block list names most objects at full size).
  const bySize = new Map<number, Set<number>>();
  for (const r of rows) {
    if (r.checksum === null) continue;
    const id = ids.get(r.checksum) as number;
    let set = bySize.get(r.size);
    if (!set) bySize.set(r.size, (set = new Set()));
    set.add(id);
  }
  for (const [size, set] of bySize) {
    for (const part of chunks([...set])) {
      await tx
        .updateTable('objects')
        .set({ size })
        .where('id', 'in', part)
        .where('size', 'is', null)
        .execute();
    }
  }
  const byLeaf = new Map<number, Map<number, number>>();
  for (const r of rows) {
    const k = Math.floor(r.idx / LEAF);
    let m = byLeaf.get(k);
    if (!m) byLeaf.set(k, (m = new Map()));
    m.set(r.idx % LEAF, r.checksum === null ? SPARSE : (ids.get(r.checksum) as number));
  }
  const whole: { k: number; entries: number[] }[] = [];
  const single: { version_uid: string; idx: number; object_id: number }[] = [];
  for (const [k, m] of byLeaf) {
    const len = leafLength(k, n);
    if (len > 0 && m.size === len && [...m.keys()].every((j) => j < len)) {
      const entries = Array.from({ length: len }, (_, j) => m.get(j) as number);
      whole.push({ k, entries });
    } else {
      for (const [j, id] of m) single.push({ version_uid: uid, idx: k * LEAF + j, object_id: id });
    }
  }
  if (whole.length > 0) {
    const paged = whole.filter((w) => w.entries.some((e) => e !== SPARSE));
    const pageIds = await upsertPages(
      tx,
      dialect,
      paged.map((w) => leafPage(w.entries)),
      now,
    );
    const idOf = new Map(paged.map((w, i) => [w.k, pageIds[i]]));
    const leafRows = whole.map((w) => ({ version_uid: uid, leaf: w.k, page_id: idOf.get(w.k) ?? SPARSE }));
    for (const part of chunks(leafRows)) {
      await tx
        .insertInto('leaf_puts')
        .values(part)
        .onConflict((oc) =>
          oc.columns(['version_uid', 'leaf']).doUpdateSet((eb) => ({ page_id: eb.ref('excluded.page_id') })),
        )
        .execute();
    }
    // Older single puts inside these leaves are superseded.
    for (const w of whole) {
      await tx
        .deleteFrom('block_puts')
        .where('version_uid', '=', uid)
        .where('idx', '>=', w.k * LEAF)
        .where('idx', '<', (w.k + 1) * LEAF)
        .execute();
    }
  }
  // PostgreSQL refuses to upsert one row twice in a statement: the last put wins (Map above).
  for (const part of chunks(single)) {
    await tx
      .insertInto('block_puts')
      .values(part)
      .onConflict((oc) =>
        oc.columns(['version_uid', 'idx']).doUpdateSet((eb) => ({ object_id: eb.ref('excluded.object_id') })),
      )
      .execute();
  }
}

function leafPage(entries: number[]): NewPage {
  let data = 0;
  let sparse = 0;
  for (const e of entries) {
    if (e > 0) data++;
    else if (e === SPARSE) sparse++;
  }
  return { level: 0, entries, data, sparse };
}

/**
 * Version `toUid` starts as `fromUid`'s first `count` entries: its root is copied (the pages
 * are shared, their counts raised). A copy of a version that is not valid is marked suspect:
 * its completion checks every object it reaches.
 */
export async function copyTreeIn(
  tx: Db,
  dialect: Dialect,
  fromUid: string,
  toUid: string,
  count: number,
): Promise<void> {
  let from = headOrThrow(await treeHead(tx, fromUid), fromUid);
  const pending = await tx
    .selectFrom('block_puts')
    .select('idx')
    .where('version_uid', '=', fromUid)
    .union(tx.selectFrom('leaf_puts').select('leaf as idx').where('version_uid', '=', fromUid))
    .limit(1)
    .execute();
  // A source still being written (an nbd -w version copied again): its changes so far.
  if (pending.length > 0) {
    await sealIn(tx, dialect, fromUid, nowMicros());
    from = headOrThrow(await treeHead(tx, fromUid), fromUid);
  }
  const to = headOrThrow(await treeHead(tx, toUid), toUid);
  const listed = Math.max(0, Math.min(count, from.listed));
  const root = from.root.slice(0, Math.ceil(listed / SPAN));
  await addRefs(tx, 'pages', pageChildren(root), 1);
  await addRefs(tx, 'pages', pageChildren(to.root), -1);
  const status = await tx
    .selectFrom('versions')
    .select('status')
    .where('uid', '=', fromUid)
    .executeTakeFirstOrThrow();
  await tx
    .updateTable('versions')
    .set({ root: JSON.stringify(root), listed, ...(status.status !== 'valid' ? { suspect: 1 } : {}) })
    .where('uid', '=', toUid)
    .execute();
}

/** Removes version `uid`'s tree: its root's counts lowered, its pending puts deleted. */
export async function dropTreeIn(tx: Db, uid: string): Promise<void> {
  const head = await treeHead(tx, uid);
  if (head) await addRefs(tx, 'pages', pageChildren(head.root), -1);
  await tx.deleteFrom('block_puts').where('version_uid', '=', uid).execute();
  await tx.deleteFrom('leaf_puts').where('version_uid', '=', uid).execute();
}

/** What a sealed version's tree lacks or reaches that is damaged. */
export interface TreeCheck {
  /** Blocks of its size with no entry. */
  absent: number;
  /** Entries naming an object that is missing or recorded invalid (counted per object). */
  bad: number;
  /** Blocks of its size. */
  blocks: number;
}

/**
 * Seals an incomplete version's pending changes into pages (path copying from its root) and
 * returns what it lacks or reaches damaged. Only the new leaves' objects are checked, unless
 * the version is suspect (then all): the rest was copied from a valid version, and an object
 * marked damaged since marked this version suspect.
 */
export async function sealIn(tx: Db, dialect: Dialect, uid: string, now: number): Promise<TreeCheck> {
  const head = headOrThrow(await treeHead(tx, uid), uid);
  const n = blockCount(head.sizeBytes, head.blockSize);
  const nLeaves = Math.ceil(n / LEAF);
  const nInter = Math.ceil(nLeaves / FANOUT);
  const touched = new Set<number>();
  const putLeaves = await tx.selectFrom('block_puts').select('idx').where('version_uid', '=', uid).execute();
  for (const r of putLeaves) touched.add(Math.floor(Number(r.idx) / LEAF));
  const leafPuts = await tx.selectFrom('leaf_puts').select('leaf').where('version_uid', '=', uid).execute();
  for (const r of leafPuts) touched.add(Number(r.leaf));
  for (let k = Math.floor(head.listed / LEAF); k < nLeaves; k++) touched.add(k);
  if (n % LEAF !== 0 && nLeaves > 0) touched.add(nLeaves - 1);
  const leafList = [...touched].filter((k) => k < nLeaves).sort((a, b) => a - b);
  const newLeaf = new Map<number, number>();
  const checkObjects = new Set<number>();
  for (const part of chunks(leafList, WALK)) {
    const leaves = await leavesAt(tx, head, part);
    const paged: { k: number; page: NewPage }[] = [];
    for (const k of part) {
      const entries = (leaves.get(k) as number[]).slice(0, leafLength(k, n));
      if (entries.every((e) => e === SPARSE)) newLeaf.set(k, SPARSE);
      else if (entries.every((e) => e === ABSENT)) newLeaf.set(k, ABSENT);
      else {
        paged.push({ k, page: leafPage(entries) });
        for (const e of entries) if (e > 0) checkObjects.add(e);
      }
    }
    const ids = await upsertPages(
      tx,
      dialect,
      paged.map((p) => p.page),
      now,
    );
    paged.forEach((p, i) => newLeaf.set(p.k, ids[i]));
  }
  const interiorsTouched = new Set(leafList.map((k) => Math.floor(k / FANOUT)));
  if (nLeaves % FANOUT !== 0 && nInter > 0) interiorsTouched.add(nInter - 1);
  const interList = [...interiorsTouched].filter((i) => i < nInter).sort((a, b) => a - b);
  const newInterior = new Map<number, number>();
  for (const part of chunks(interList, WALK)) {
    const old = await loadPages(
      tx,
      part.map((i) => head.root[i] ?? ABSENT),
    );
    const built: { i: number; children: number[] }[] = [];
    for (const i of part) {
      const len = Math.min(FANOUT, nLeaves - i * FANOUT);
      const oldId = head.root[i] ?? ABSENT;
      const oldChildren = oldId > 0 ? (old.get(oldId)?.entries ?? []) : new Array<number>(FANOUT).fill(oldId);
      const children = Array.from({ length: len }, (_, j) => {
        const k = i * FANOUT + j;
        return newLeaf.has(k) ? (newLeaf.get(k) as number) : (oldChildren[j] ?? ABSENT);
      });
      built.push({ i, children });
    }
    const stats = await loadPages(
      tx,
      built.flatMap((b) => b.children),
    );
    const paged: { i: number; page: NewPage }[] = [];
    for (const b of built) {
      if (b.children.every((c) => c === SPARSE)) newInterior.set(b.i, SPARSE);
      else if (b.children.every((c) => c === ABSENT)) newInterior.set(b.i, ABSENT);
      else {
        let data = 0;
        let sparse = 0;
        b.children.forEach((c, j) => {
          if (c === SPARSE) sparse += leafLength(b.i * FANOUT + j, n);
          else if (c > 0) {
            const p = stats.get(c);
            data += p?.data ?? 0;
            sparse += p?.sparse ?? 0;
          }
        });
        paged.push({ i: b.i, page: { level: 1, entries: b.children, data, sparse } });
      }
    }
    const ids = await upsertPages(
      tx,
      dialect,
      paged.map((p) => p.page),
      now,
    );
    paged.forEach((p, idx) => newInterior.set(p.i, ids[idx]));
  }
  const root = Array.from({ length: nInter }, (_, i) =>
    newInterior.has(i) ? (newInterior.get(i) as number) : (head.root[i] ?? ABSENT),
  );
  const oldSet = new Set(pageChildren(head.root));
  const newSet = new Set(pageChildren(root));
  await addRefs(
    tx,
    'pages',
    [...newSet].filter((id) => !oldSet.has(id)),
    1,
  );
  await addRefs(
    tx,
    'pages',
    [...oldSet].filter((id) => !newSet.has(id)),
    -1,
  );
  await tx.deleteFrom('block_puts').where('version_uid', '=', uid).execute();
  await tx.deleteFrom('leaf_puts').where('version_uid', '=', uid).execute();
  const sealed: TreeHead = { ...head, root, listed: n };
  const counts = await rootCounts(tx, sealed);
  const last =
    n > 0 ? (await leavesAt(tx, sealed, [nLeaves - 1])).get(nLeaves - 1)?.[(n - 1) % LEAF] : undefined;
  const short = n > 0 ? head.blockSize - blockLength(n - 1, head.sizeBytes, head.blockSize) : 0;
  const dataBytes = counts.data * head.blockSize - (last !== undefined && last > 0 ? short : 0);
  const sparseBytes = counts.sparse * head.blockSize - (last === SPARSE ? short : 0);
  const suspect = await tx
    .selectFrom('versions')
    .select('suspect')
    .where('uid', '=', uid)
    .executeTakeFirstOrThrow();
  await tx
    .updateTable('versions')
    .set({
      root: JSON.stringify(root),
      listed: n,
      data_bytes: dataBytes,
      sparse_bytes: sparseBytes,
      suspect: 0,
    })
    .where('uid', '=', uid)
    .execute();
  const bad =
    Number(suspect.suspect) === 1 ? (await checkTreeIn(tx, sealed)).bad : await badObjects(tx, checkObjects);
  return { absent: n - counts.data - counts.sparse, bad, blocks: n };
}

/** Blocks with an object and sparse blocks of a sealed tree, from its interiors' counts. */
async function rootCounts(tx: Db, head: TreeHead): Promise<{ data: number; sparse: number }> {
  const n = blockCount(head.sizeBytes, head.blockSize);
  const pages = await loadPages(tx, head.root);
  let data = 0;
  let sparse = 0;
  head.root.forEach((id, i) => {
    if (id === SPARSE) sparse += Math.min(SPAN, n - i * SPAN);
    else if (id > 0) {
      data += pages.get(id)?.data ?? 0;
      sparse += pages.get(id)?.sparse ?? 0;
    }
  });
  return { data, sparse };
}

async function badObjects(tx: Db, ids: Set<number>): Promise<number> {
  const found = await objectsById(tx, ids);
  let bad = 0;
  for (const id of ids) if (!found.get(id)?.valid) bad++;
  return bad;
}

/** Every leaf of a tree, WALK leaves at a time (memory: one step). */
export async function* walkLeaves(
  tx: Db,
  head: TreeHead,
  cache?: PageCache,
): AsyncIterable<Map<number, number[]>> {
  const n = blockCount(head.sizeBytes, head.blockSize);
  const nLeaves = Math.ceil(n / LEAF);
  for (let k = 0; k < nLeaves; k += WALK) {
    const ks = Array.from({ length: Math.min(WALK, nLeaves - k) }, (_, j) => k + j);
    yield await leavesAt(tx, head, ks, cache);
  }
}

/** A whole tree checked: absent entries, and distinct objects missing or invalid. */
export async function checkTreeIn(tx: Db, head: TreeHead): Promise<TreeCheck> {
  const n = blockCount(head.sizeBytes, head.blockSize);
  let absent = 0;
  let bad = 0;
  const seen = new Set<number>();
  for await (const leaves of walkLeaves(tx, head)) {
    const ids = new Set<number>();
    for (const [k, entries] of leaves) {
      const len = leafLength(k, n);
      for (let j = 0; j < len; j++) {
        const e = entries[j];
        if (e === ABSENT) absent++;
        else if (e > 0 && !seen.has(e)) ids.add(e);
      }
    }
    for (const id of ids) seen.add(id);
    bad += await badObjects(tx, ids);
  }
  return { absent, bad, blocks: n };
}

/** The distinct objects a version's tree reaches. */
export async function reachedObjects(tx: Db, head: TreeHead, cache?: PageCache): Promise<Set<number>> {
  const out = new Set<number>();
  for await (const leaves of walkLeaves(tx, head, cache)) {
    for (const entries of leaves.values()) for (const e of entries) if (e > 0) out.add(e);
  }
  return out;
}

/** Pages of `level` whose entries include any of `ids`, scanned by id (damage is rare). */
async function pagesNaming(tx: Db, level: number, ids: ReadonlySet<number>): Promise<Set<number>> {
  const out = new Set<number>();
  if (ids.size === 0) return out;
  let after = 0;
  for (;;) {
    const rows = await tx
      .selectFrom('pages')
      .select(['id', 'entries'])
      .where('level', '=', level)
      .where('id', '>', after)
      .orderBy('id')
      .limit(2000)
      .execute();
    for (const r of rows) if (parseEntries(r.entries).some((e) => ids.has(e))) out.add(Number(r.id));
    if (rows.length < 2000) return out;
    after = Number(rows[rows.length - 1].id);
  }
}

/**
 * The versions whose block lists name any of `objects`: through their trees (leaves, their
 * interiors, the roots naming those) or their pending puts. A scan of the pages and roots:
 * cost grows with the compact metadata, and damage is rare.
 */
export async function versionsReaching(tx: Db, objects: readonly number[]): Promise<string[]> {
  const ids = new Set(objects.filter((o) => o > 0));
  const out = new Set<string>();
  if (ids.size === 0) return [];
  for (const part of chunks([...ids])) {
    const rows = await tx
      .selectFrom('block_puts')
      .select('version_uid')
      .distinct()
      .where('object_id', 'in', part)
      .execute();
    for (const r of rows) out.add(r.version_uid);
  }
  const leaves = await pagesNaming(tx, 0, ids);
  for (const part of chunks([...leaves])) {
    const rows = await tx
      .selectFrom('leaf_puts')
      .select('version_uid')
      .distinct()
      .where('page_id', 'in', part)
      .execute();
    for (const r of rows) out.add(r.version_uid);
  }
  const interiors = await pagesNaming(tx, 1, leaves);
  if (interiors.size > 0) {
    const rows = await tx.selectFrom('versions').select(['uid', 'root']).execute();
    for (const r of rows) if (parseEntries(r.root).some((e) => interiors.has(e))) out.add(r.uid);
  }
  return [...out].sort();
}

/**
 * The objects reached only through the trees of `uids` (what removing them would free), by
 * counting: a page or object is theirs alone when every reference it has (its count) comes
 * from a root or page that is theirs alone. Pending puts of running writers are not counted
 * here (cleanup re-checks them before deleting anything).
 */
export async function exclusiveObjects(
  tx: Db,
  uids: readonly string[],
  opts: { withGarbagePages?: boolean; cache?: PageCache } = {},
): Promise<Set<number>> {
  const heads: TreeHead[] = [];
  for (const uid of new Set(uids)) {
    const h = await treeHead(tx, uid);
    if (h) heads.push(h);
  }
  const interiorCount = new Map<number, number>();
  for (const h of heads)
    for (const id of pageChildren(h.root)) interiorCount.set(id, (interiorCount.get(id) ?? 0) + 1);
  // Pages no root or page names any more (until cleanup deletes them) are nobody's: theirs.
  const garbage = opts.withGarbagePages
    ? await tx.selectFrom('pages').select(['id', 'level']).where('refs', '<=', 0).execute()
    : [];
  for (const g of garbage) if (Number(g.level) === 1) interiorCount.set(Number(g.id), 0);
  const interiors = await loadPages(tx, interiorCount.keys(), opts.cache);
  const leafCount = new Map<number, number>();
  for (const g of garbage) if (Number(g.level) === 0) leafCount.set(Number(g.id), 0);
  for (const [id, c] of interiorCount) {
    const p = interiors.get(id);
    if (!p || c < p.refs) continue;
    for (const leaf of pageChildren(p.entries)) leafCount.set(leaf, (leafCount.get(leaf) ?? 0) + 1);
  }
  const objectCount = new Map<number, number>();
  for (const part of chunks([...leafCount.keys()])) {
    const leaves = await loadPages(tx, part, opts.cache);
    for (const id of part) {
      const p = leaves.get(id);
      if (!p || (leafCount.get(id) as number) < p.refs) continue;
      for (const o of pageChildren(p.entries)) objectCount.set(o, (objectCount.get(o) ?? 0) + 1);
    }
  }
  const out = new Set<number>();
  for (const part of chunks([...objectCount.keys()])) {
    const rows = await tx.selectFrom('objects').select(['id', 'refs']).where('id', 'in', part).execute();
    for (const r of rows)
      if ((objectCount.get(Number(r.id)) as number) >= Number(r.refs)) out.add(Number(r.id));
  }
  return out;
}
