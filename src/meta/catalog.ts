/**
 * The catalog's day-to-day queries: protection, labels, and space accounting (`du`).
 * SQL only, on both dialects; every statement is bounded by an index or is one aggregate.
 */
import { InputError, NotFoundError } from '../errors.js';
import type { MetaHandle } from './meta-db.js';
import { exclusiveObjects, reachedObjects } from './page-ops.js';
import { chunks, treeHead } from './page-tree.js';
import type { PageCache } from './page-tree.js';
import type { MetaStore, Version } from './meta-store.js';

/** Keys: a letter, then letters, digits, '_', '-', '.', '/' (like Kubernetes label keys). */
const LABEL_KEY_RE = /^[A-Za-z][A-Za-z0-9_./-]{0,62}$/;
/** Values: printable, no whitespace or '=' , at most 255 characters; may be empty. */
const LABEL_VALUE_RE = /^[A-Za-z0-9_.:@+/-]{0,255}$/;

export interface LabelChange {
  set: Record<string, string>;
  remove: string[];
}

/** A label key from the command line; one-line InputError otherwise. */
export function checkLabelKey(key: string): string {
  if (!LABEL_KEY_RE.test(key)) {
    throw new InputError(
      `label key ${JSON.stringify(key.slice(0, 80))} is not valid: a letter, then up to 62 letters, digits, '_', '-', '.' or '/'`,
    );
  }
  return key;
}

/** `KEY=VALUE` from the command line. */
export function parseLabel(arg: string): [string, string] {
  const eq = arg.indexOf('=');
  if (eq < 0) throw new InputError(`label ${JSON.stringify(arg.slice(0, 80))} is not KEY=VALUE`);
  const key = checkLabelKey(arg.slice(0, eq));
  const value = arg.slice(eq + 1);
  if (!LABEL_VALUE_RE.test(value)) {
    throw new InputError(
      `label value for '${key}' is not valid: up to 255 letters, digits and '_', '-', '.', ':', '@', '+', '/' (no spaces)`,
    );
  }
  return [key, value];
}

/** `KEY=VALUE` sets, `KEY-` removes (as `backy label` takes them). */
export function parseLabelChanges(args: readonly string[]): LabelChange {
  const change: LabelChange = { set: {}, remove: [] };
  for (const a of args) {
    if (!a.includes('=') && a.endsWith('-')) change.remove.push(checkLabelKey(a.slice(0, -1)));
    else {
      const [k, v] = parseLabel(a);
      change.set[k] = v;
    }
  }
  return change;
}

/** Sets the protected flag of each version; all or none (unknown uids fail the whole call). */
export async function setProtected(meta: MetaHandle, uids: readonly string[], value: boolean): Promise<void> {
  await meta.write(async (tx) => {
    for (const uid of uids) {
      const r = await tx
        .updateTable('versions')
        .set({ protected: value ? 1 : 0 })
        .where('uid', '=', uid)
        .executeTakeFirst();
      if (Number(r.numUpdatedRows) !== 1)
        throw new NotFoundError(`version ${uid} not found (see 'backy ls')`);
    }
  });
}

export async function changeLabels(meta: MetaHandle, uid: string, change: LabelChange): Promise<void> {
  await meta.write(async (tx) => {
    const v = await tx.selectFrom('versions').select('uid').where('uid', '=', uid).executeTakeFirst();
    if (!v) throw new NotFoundError(`version ${uid} not found (see 'backy ls')`);
    for (const key of change.remove) {
      await tx.deleteFrom('labels').where('version_uid', '=', uid).where('key', '=', key).execute();
    }
    for (const [key, value] of Object.entries(change.set)) {
      await tx
        .insertInto('labels')
        .values({ version_uid: uid, key, value })
        .onConflict((oc) => oc.columns(['version_uid', 'key']).doUpdateSet({ value }))
        .execute();
    }
  });
}

/** Labels of the given versions (all versions when omitted), by uid. */
export async function labelsOf(
  meta: MetaHandle,
  uids?: readonly string[],
): Promise<Map<string, Record<string, string>>> {
  const out = new Map<string, Record<string, string>>();
  const add = (rows: { version_uid: string; key: string; value: string }[]) => {
    for (const r of rows) {
      let m = out.get(r.version_uid);
      if (!m) out.set(r.version_uid, (m = {}));
      m[r.key] = r.value;
    }
  };
  const q = meta.db.selectFrom('labels').select(['version_uid', 'key', 'value']).orderBy('key');
  if (uids === undefined) add(await q.execute());
  else
    for (let i = 0; i < uids.length; i += 500)
      add(await q.where('version_uid', 'in', uids.slice(i, i + 500)).execute());
  return out;
}

/** Versions by date (oldest first), optionally by name and having every label in `labels`. */
export async function findVersions(
  meta: MetaStore,
  filter: { name?: string; labels?: Record<string, string> },
): Promise<Version[]> {
  const labels = Object.entries(filter.labels ?? {});
  if (labels.length === 0) return meta.listVersions({ name: filter.name });
  let q = meta.db.selectFrom('versions').select('uid');
  if (filter.name !== undefined) q = q.where('name', '=', filter.name);
  for (const [key, value] of labels) {
    q = q.where('uid', 'in', (eb) =>
      eb.selectFrom('labels').select('version_uid').where('key', '=', key).where('value', '=', value),
    );
  }
  const uids = new Set((await q.execute()).map((r) => r.uid));
  return (await meta.listVersions({ name: filter.name })).filter((v) => uids.has(v.uid));
}

export interface VersionSpace {
  uid: string;
  name: string;
  sizeBytes: number;
  /** Bytes of sparse (all-zero) blocks: neither read back from nor stored in the data store. */
  sparseBytes: number;
  /** Stored bytes of the distinct objects the version references. */
  referencedBytes: number;
  /** Stored bytes of the objects no other version references: what rm + cleanup would free. */
  exclusiveBytes: number;
}

export interface StoreSpace {
  versions: number;
  /** Sum of all versions' sizes. */
  logicalBytes: number;
  /** Non-sparse bytes of all block lists (what would be stored without dedup or compression). */
  dataBytes: number;
  /** Plaintext bytes of the distinct objects referenced (after dedup, before compression). */
  uniqueBytes: number;
  /** Stored bytes of those objects (after compression, with headers). */
  storedBytes: number;
  /** Stored bytes of all recorded objects, referenced or not (cleanup frees the difference). */
  recordedBytes: number;
  recordedObjects: number;
  /** dataBytes / uniqueBytes. */
  dedupRatio: number;
  /** uniqueBytes / storedBytes. */
  compressionRatio: number;
}

const n = (x: unknown) => Number(x ?? 0);

/**
 * Space of one version: its sparse bytes (kept with the version), and the stored bytes of the
 * distinct objects its tree reaches, and of those only it reaches (page-ops.ts). Costs a walk
 * of its tree.
 */
export async function versionSpace(meta: MetaHandle, v: Version, cache?: SpaceCache): Promise<VersionSpace> {
  const db = meta.db;
  const row = await db
    .selectFrom('versions')
    .select('sparse_bytes')
    .where('uid', '=', v.uid)
    .executeTakeFirst();
  const head = await treeHead(db, v.uid);
  const reached = head ? await reachedObjects(db, head, cache?.pages) : new Set<number>();
  const exclusive = await exclusiveObjects(db, [v.uid], { cache: cache?.pages });
  return {
    uid: v.uid,
    name: v.name,
    sizeBytes: v.sizeBytes,
    sparseBytes: n(row?.sparse_bytes),
    referencedBytes: await storedBytes(db, reached, cache?.sizes),
    exclusiveBytes: await storedBytes(db, exclusive, cache?.sizes),
  };
}

/** What du over many versions reads once: their shared pages and objects' stored sizes. */
export interface SpaceCache {
  pages: PageCache;
  sizes: Map<number, number>;
}

export function spaceCache(): SpaceCache {
  return { pages: new Map(), sizes: new Map() };
}

async function storedBytes(
  db: MetaHandle['db'],
  ids: Set<number>,
  sizes = new Map<number, number>(),
): Promise<number> {
  const missing = [...ids].filter((id) => !sizes.has(id));
  for (const part of chunks(missing)) {
    const rows = await db
      .selectFrom('objects')
      .select(['id', 'stored_size'])
      .where('id', 'in', part)
      .execute();
    for (const r of rows) sizes.set(Number(r.id), Number(r.stored_size));
  }
  let total = 0;
  for (const id of ids) total += sizes.get(id) ?? 0;
  return total;
}

export async function storeSpace(meta: MetaHandle): Promise<StoreSpace> {
  const db = meta.db;
  const versions = await db
    .selectFrom('versions')
    .select((eb) => [
      eb.fn.countAll<number>().as('c'),
      eb.fn.sum<number>('size_bytes').as('s'),
      eb.fn.sum<number>('data_bytes').as('d'),
    ])
    .executeTakeFirstOrThrow();
  // The objects some page names (a page freed since the last cleanup still counts).
  const unique = await db
    .selectFrom('objects')
    .select((eb) => [eb.fn.sum<number>('size').as('plain'), eb.fn.sum<number>('stored_size').as('stored')])
    .where('refs', '>', 0)
    .executeTakeFirstOrThrow();
  const recorded = await db
    .selectFrom('objects')
    .select((eb) => [eb.fn.countAll<number>().as('c'), eb.fn.sum<number>('stored_size').as('s')])
    .executeTakeFirstOrThrow();
  const dataBytes = n(versions.d);
  const uniqueBytes = n(unique.plain);
  const storedBytes = n(unique.stored);
  return {
    versions: n(versions.c),
    logicalBytes: n(versions.s),
    dataBytes,
    uniqueBytes,
    storedBytes,
    recordedBytes: n(recorded.s),
    recordedObjects: n(recorded.c),
    dedupRatio: uniqueBytes > 0 ? dataBytes / uniqueBytes : 1,
    compressionRatio: storedBytes > 0 ? uniqueBytes / storedBytes : 1,
  };
}
