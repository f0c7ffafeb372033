/**
 * Reading and damaging block lists from tests, on either SQL dialect. Block lists are trees
 * of shared pages (src/meta/page-tree.ts): there is no row per block to select or delete, so
 * tests that inject a gap or a hostile entry go through here. setEntry is a fault injection
 * (a damaged database cannot be produced through backy itself): it gives the version a new
 * leaf and interior of its own, leaving the pages other versions share untouched.
 */
import { randomUUID } from 'node:crypto';
import { MetaStore } from '../../src/meta/meta-store.js';
import { FANOUT, LEAF, parseEntries } from '../../src/meta/page-tree.js';

/** The engine URL of a sandbox's SQLite file, or a PostgreSQL URL as given. */
export function engineOf(dbPathOrUrl: string): string {
  return dbPathOrUrl.includes('://') ? dbPathOrUrl : `sqlite:///${dbPathOrUrl}`;
}

async function withMeta<T>(dbPathOrUrl: string, fn: (m: MetaStore) => Promise<T>): Promise<T> {
  const m = await MetaStore.open(engineOf(dbPathOrUrl));
  try {
    return await fn(m);
  } finally {
    await m.close();
  }
}

/** The checksum of block `idx` of version `uid` (null: sparse; undefined: no entry). */
export async function entryAt(
  dbPathOrUrl: string,
  uid: string,
  idx: number,
): Promise<string | null | undefined> {
  return withMeta(dbPathOrUrl, async (m) => (await m.blocksAt(uid, [idx])).get(idx)?.checksum);
}

/** The checksums of blocks `indices` of version `uid`, in that order (one database open). */
export async function entriesAt(
  dbPathOrUrl: string,
  uid: string,
  indices: number[],
): Promise<(string | null | undefined)[]> {
  return withMeta(dbPathOrUrl, async (m) => {
    const rows = await m.blocksAt(uid, indices);
    return indices.map((i) => rows.get(i)?.checksum);
  });
}

/** Every checksum some block list names (its pages or a running writer's pending entries), sorted. */
export async function referencedChecksums(dbPathOrUrl: string): Promise<string[]> {
  return withMeta(dbPathOrUrl, async (m) => {
    const rows = await m.db
      .selectFrom('objects')
      .select('checksum')
      .where((eb) =>
        eb.or([eb('refs', '>', 0), eb('id', 'in', eb.selectFrom('block_puts').select('object_id'))]),
      )
      .orderBy('checksum')
      .execute();
    return rows.map((r) => r.checksum);
  });
}

/** Checksums of objects recorded invalid, sorted. */
export async function invalidObjects(dbPathOrUrl: string): Promise<string[]> {
  return withMeta(dbPathOrUrl, async (m) => {
    const rows = await m.db
      .selectFrom('objects')
      .select('checksum')
      .where('valid', '=', 0)
      .orderBy('checksum')
      .execute();
    return rows.map((r) => r.checksum);
  });
}

/**
 * Rewrites entry `idx` of sealed version `uid`: a checksum (recorded as an object if it is not;
 * any string, for hostile-input tests), null (sparse) or undefined (no entry: a gap).
 */
export async function setEntry(
  dbPathOrUrl: string,
  uid: string,
  idx: number,
  value: string | null | undefined,
): Promise<void> {
  await withMeta(dbPathOrUrl, async (m) => {
    await m.write(async (tx) => {
      const v = await tx
        .selectFrom('versions')
        .select('root')
        .where('uid', '=', uid)
        .executeTakeFirstOrThrow();
      const root = parseEntries(v.root);
      const k = Math.floor(idx / LEAF);
      const i = Math.floor(k / FANOUT);
      const page = async (id: number, level: number, len: number) => {
        if (id <= 0) return new Array<number>(len).fill(id);
        const r = await tx
          .selectFrom('pages')
          .select('entries')
          .where('id', '=', id)
          .executeTakeFirstOrThrow();
        void level;
        return parseEntries(r.entries);
      };
      const interior = await page(root[i], 1, FANOUT);
      const leaf = await page(interior[k % FANOUT], 0, LEAF);
      let entry: number;
      if (value === undefined) entry = -1;
      else if (value === null) entry = 0;
      else {
        await tx
          .insertInto('objects')
          .values({ checksum: value, stored_size: 0, valid: 1, last_seen: 1 })
          .onConflict((oc) => oc.column('checksum').doNothing())
          .execute();
        const o = await tx
          .selectFrom('objects')
          .select('id')
          .where('checksum', '=', value)
          .executeTakeFirstOrThrow();
        entry = Number(o.id);
      }
      leaf[idx % LEAF] = entry;
      const insert = async (level: number, entries: number[]) =>
        Number(
          (
            await tx
              .insertInto('pages')
              .values({
                hash: `test-${randomUUID()}`,
                level,
                entries: JSON.stringify(entries),
                refs: 1,
                last_seen: 1,
                data_blocks: entries.filter((e) => e > 0).length,
                sparse_blocks: entries.filter((e) => e === 0).length,
              })
              .returning('id')
              .executeTakeFirstOrThrow()
          ).id,
        );
      interior[k % FANOUT] = await insert(0, leaf);
      root[i] = await insert(1, interior);
      await tx
        .updateTable('versions')
        .set({ root: JSON.stringify(root) })
        .where('uid', '=', uid)
        .execute();
    });
  });
}

/** The distinct checksums of version `uid`'s blocks, in block order. */
export async function versionChecksums(dbPathOrUrl: string, uid: string): Promise<string[]> {
  return withMeta(dbPathOrUrl, async (m) => {
    const out = new Set<string>();
    for await (const b of m.blocks(uid)) if (b.checksum !== null) out.add(b.checksum);
    return [...out];
  });
}
