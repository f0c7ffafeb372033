/**
 * The store is the authority for what may be deleted from it. A metadata database is one view
 * of a store, and a view can be wrong: a second database pointed at the same store, a database
 * put back from an older dump, one that recovered only part of the store, or one whose store
 * lost its descriptor. cleanup deletes whatever its database does not reference, so every one
 * of those views used to turn another view's versions into garbage. The rules:
 *
 * 1. One owner. Every database has a random id (settings row `database_id`); the descriptor
 *    (version 2) names the database that owns the store. Writing commands (backup, rm,
 *    cleanup, import, label, protect, enforce, nbd -w, ...) run only on the owner; `recover`
 *    runs on any database of the store and, once it has gone over every copy, makes its
 *    database the owner (the descriptor is rewritten in one put: a rename on a directory, a
 *    PUT on S3). A fresh database adopts a descriptor freely only while the store holds
 *    nothing; a version 1 descriptor (previous backy, or one rebuilt by recover) is claimed by
 *    the first writing command of a database that has versions there. This keeps two databases from writing one store, but cannot tell a
 *    database from an older dump of itself (same id): rule 2 does.
 * 2. The store's catalogue. Each version has a metadata copy in the store (version-copy.ts),
 *    and `rm` writes a tombstone `removed-<uid>` BEFORE the version's rows go (rm fails when
 *    the store cannot take it). Before deleting anything, cleanup lists the copies, then the
 *    database's versions, then the tombstones (that order: a copy is written only after its
 *    version is complete in the database, and a tombstone before the rows go, so a version
 *    removed during the listing is seen as tombstoned). A copy whose version the database
 *    does not hold as complete, and that has no tombstone, means the database is behind the
 *    store: cleanup refuses, names them, and deletes nothing at all (no object, no
 *    unrecorded file, no copy). `recover` brings them in; `recover --forget UID` writes the
 *    tombstone that gives one up. A copy that recover fails on therefore keeps cleanup away
 *    until it is recovered (e.g. after renaming it back) or forgotten.
 *    A version that was still being written when the older dump was taken is incomplete in
 *    it: its copy counts as unknown too (cleanup would otherwise remove it as a crashed
 *    backup). Tombstones go with their copy at cleanup (older than cleanup's start), and
 *    when their version is back in the database (import, a named recover). A copy written
 *    after its tombstone was swept (a label racing an rm) only makes cleanup refuse: safe.
 * 3. No store is created over data. A descriptor is written for a new store only when the
 *    store holds no meta object (copy, tombstone), and no object either unless the database
 *    has versions of its own (a store from before descriptors, or a database rebuilt from
 *    export files by import); a lost or damaged descriptor is rebuilt by `recover` from the
 *    copies, whose headers carry the store id and hash function.
 * 4. An absent store is not an empty one. A database that has versions and finds no
 *    descriptor and nothing else where its store should be (an unmounted mount point, a
 *    mistyped prefix) stops with one line; nothing is read as missing, nothing is written.
 *
 * Not covered, by decision: a version whose copy was never written (its write failed, the
 * backup warned, and the database was then replaced by an older dump) leaves no trace in the
 * store; an "intent" marker per backup would keep its blocks, but nothing could restore it
 * (no copy, no database rows), so the marker would only block cleanup forever.
 */
import { randomUUID } from 'node:crypto';
import { BackyError, ConfigError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';
import {
  databaseHoldsData,
  databaseId,
  readStoreId,
  readStoreSettings,
  recordStoreId,
} from '../meta/store-identity.js';
import type { StorageBackend } from '../storage/backend.js';
import { decodeMetaObject } from '../storage/meta-codec.js';
import { NoBucketError } from '../storage/s3-retry.js';
import type { MetaCodecSpec } from '../storage/meta-codec.js';
import { HASH_FUNCTIONS } from '../config/config.js';
import type { HashFunction } from '../config/config.js';
import { DESCRIPTOR_NAME, encodeDescriptor } from './store-descriptor.js';
import type { Descriptor } from './store-descriptor.js';
import { copyName, copyUid } from './version-copy.js';

const TOMBSTONE_PREFIX = 'removed-';
const TOMBSTONE_RE = /^removed-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

export function tombstoneName(uid: string): string {
  return `${TOMBSTONE_PREFIX}${uid}`;
}

export function tombstoneUid(name: string): string | undefined {
  return TOMBSTONE_RE.exec(name)?.[1];
}

/** Records in the store that version `uid` is given up (rm, recover --forget). */
export async function writeTombstone(backend: StorageBackend, uid: string, why: string): Promise<void> {
  await backend.putMeta(
    tombstoneName(uid),
    Buffer.from(`${JSON.stringify({ uid, removed: new Date().toISOString(), by: why })}\n`),
  );
}

/** The store holds a meta object other than the descriptor: a copy or a tombstone. */
async function storeHoldsMeta(backend: StorageBackend): Promise<boolean> {
  try {
    for await (const o of backend.listMeta()) if (o.key !== DESCRIPTOR_NAME) return true;
  } catch (err) {
    if (err instanceof NoBucketError) return false;
    throw err;
  }
  return false;
}

/**
 * The store holds an object or a meta object other than the descriptor. A missing bucket is an
 * empty store (a backup creates it), or with `missingBucket: 'error'` (a database that has
 * versions there) the one-line error that names it.
 */
export async function storeHoldsData(
  backend: StorageBackend,
  opts: { missingBucket?: 'empty' | 'error' } = {},
): Promise<boolean> {
  try {
    for await (const o of backend.listMeta()) if (o.key !== DESCRIPTOR_NAME) return true;
    for await (const o of backend.list()) if (o) return true;
  } catch (err) {
    if (err instanceof NoBucketError && opts.missingBucket !== 'error') return false;
    throw err;
  }
  return false;
}

export interface Catalogue {
  /** Copies (uid -> mtime ms). */
  copies: Map<string, number>;
  /** Tombstones (uid -> mtime ms). */
  tombstones: Map<string, number>;
  /** Copies of versions the database does not hold complete and that no tombstone gives up. */
  unknown: string[];
}

/** Lists the store's catalogue against the database, in the order rule 2 needs. */
export async function readCatalogue(meta: MetaStore, backend: StorageBackend): Promise<Catalogue> {
  const copies = new Map<string, number>();
  for await (const o of backend.listMeta()) {
    const uid = copyUid(o.key);
    if (uid) copies.set(uid, o.mtimeMs);
  }
  const complete = new Set(
    (await meta.listVersions()).filter((v) => v.status !== 'incomplete').map((v) => v.uid),
  );
  const tombstones = new Map<string, number>();
  for await (const o of backend.listMeta()) {
    const uid = tombstoneUid(o.key);
    if (uid) tombstones.set(uid, o.mtimeMs);
  }
  const unknown = [...copies.keys()].filter((u) => !complete.has(u) && !tombstones.has(u)).sort();
  return { copies, tombstones, unknown };
}

/** The one line cleanup refuses with when the database is behind its store. */
export function behindError(unknown: readonly string[]): BackyError {
  const shown = unknown.slice(0, 3).join(', ');
  const more = unknown.length > 3 ? ` and ${unknown.length - 3} more` : '';
  return new BackyError(
    `the store holds ${unknown.length} version${unknown.length === 1 ? '' : 's'} this database does not know (${shown}${more}): the database is behind its store (restored from an older copy, another database's versions, or an unfinished recover); run 'backy recover' (or 'backy recover --forget UID' to give one up); nothing was deleted`,
  );
}

/** Why a database may not write to the store, or undefined when it owns it (or may claim it). */
export type Ownership = { owner: true; claim: boolean } | { owner: false; why: string };

export async function ownership(
  meta: MetaStore,
  backend: StorageBackend,
  d: Descriptor,
  adopted: boolean,
): Promise<Ownership> {
  const mine = await databaseId(meta);
  if (mine !== undefined && d.owner === mine) return { owner: true, claim: false };
  // A fresh database over a store that holds nothing may take it.
  if (adopted && !(await storeHoldsData(backend))) return { owner: true, claim: true };
  if (adopted) return { owner: false, why: 'it was created over a store that already holds versions' };
  // A version 1 (or rebuilt) descriptor names no owner: the database that already has versions
  // of the store takes it, not one that adopted it earlier and holds nothing yet.
  if (d.owner === null) {
    if ((await databaseHoldsData(meta)) || !(await storeHoldsData(backend)))
      return { owner: true, claim: true };
    return { owner: false, why: 'it was created over a store that already holds versions' };
  }
  return {
    owner: false,
    why: `its descriptor names database ${d.owner} as the owner, this one is ${mine ?? 'without an id'}: another database took the store over, or this one was created over it`,
  };
}

/** Rewrites the descriptor naming this database its owner. */
export async function claimStore(
  meta: MetaStore,
  backend: StorageBackend,
  d: Descriptor,
): Promise<Descriptor> {
  const owner = (await databaseId(meta)) ?? null;
  const claimed = { ...d, owner };
  if (d.owner !== owner) await backend.putMeta(DESCRIPTOR_NAME, encodeDescriptor(claimed));
  return claimed;
}

export function notOwnerError(url: string, why: string): BackyError {
  return new ConfigError(
    `this database does not own the store at ${url} (${why}); run 'backy recover' to add the store's versions and make it the owner; nothing was written`,
  );
}

export function absentStoreError(storeId: string, url: string): BackyError {
  return new BackyError(
    `store ${storeId} not found at ${url}: unmounted or wrong prefix? nothing was read or written`,
  );
}

export function lostDescriptorError(url: string): BackyError {
  return new BackyError(
    `the store at ${url} holds data but its descriptor (meta/descriptor) is missing; run 'backy recover' to rebuild it from the metadata copies; nothing was written`,
  );
}

/**
 * Writes the descriptor of a store that has none yet (created now, or before descriptors
 * existed), recording a new store id in the database first, and naming this database the
 * owner. Refused over a store that already holds data unless the database has versions of
 * its own (a store from before descriptors): rule 3.
 */
export async function describeStore(
  meta: MetaStore,
  backend: StorageBackend,
  defaults: { blockSize: number; compression: string },
): Promise<Descriptor> {
  if (await storeHoldsMeta(backend)) throw lostDescriptorError(backend.url);
  // Objects alone: a store from before descriptors, described by a database with versions of
  // its own (its old one, or one rebuilt by import); never by an empty one.
  if (!(await databaseHoldsData(meta)) && (await storeHoldsData(backend)))
    throw lostDescriptorError(backend.url);
  const storeId = (await readStoreId(meta)) ?? (await recordStoreId(meta, randomUUID()));
  const d: Descriptor = {
    storeId,
    ...(await readStoreSettings(meta)),
    ...defaults,
    owner: (await databaseId(meta)) ?? null,
  };
  await backend.putMeta(DESCRIPTOR_NAME, encodeDescriptor(d));
  return d;
}

/** Copies read to rebuild a descriptor: enough to be sure, few enough to be quick. */
const REBUILD_SAMPLE = 16;

/**
 * A descriptor rebuilt from the store's metadata copies: their headers carry the store id and
 * hash function; a copy that decodes without the key tells an unencrypted store. Copies that
 * disagree on the store id, or none readable, are refused. `expectedStoreId` (the database's)
 * must match. Block size and compression are the config's (informational). Not written here.
 */
export async function rebuildDescriptor(opts: {
  backend: StorageBackend;
  compression: MetaCodecSpec['compression'];
  keys: { key: MetaCodecSpec['key']; fingerprint: string } | undefined;
  defaults: { blockSize: number; compression: string };
  expectedStoreId: string | undefined;
}): Promise<Descriptor> {
  const { backend } = opts;
  const found = new Map<string, HashFunction>();
  let encrypted: boolean | undefined;
  let read = 0;
  let lastProblem = 'the store holds no metadata copy';
  for await (const o of backend.listMeta()) {
    const uid = copyUid(o.key);
    if (!uid) continue;
    const obj = await backend.getMeta(copyName(uid));
    if (!obj) continue;
    let text: Buffer | undefined;
    let enc = false;
    try {
      text = decodeMetaObject(copyName(uid), obj, { compression: opts.compression, key: undefined });
    } catch {
      if (opts.keys) {
        try {
          text = decodeMetaObject(copyName(uid), obj, { compression: opts.compression, key: opts.keys.key });
          enc = true;
        } catch (err) {
          lastProblem = `copy ${uid}: ${(err as Error).message}`;
        }
      } else
        lastProblem = `copy ${uid} cannot be read without a key (an encrypted store needs its key file in the config)`;
    }
    if (!text) continue;
    const nl = text.indexOf(0x0a);
    let header: { store_id?: unknown; hash_function?: unknown };
    try {
      header = JSON.parse(text.subarray(0, nl < 0 ? text.length : nl).toString('utf8')) as typeof header;
    } catch {
      lastProblem = `copy ${uid} has no readable header`;
      continue;
    }
    if (
      typeof header.store_id !== 'string' ||
      !HASH_FUNCTIONS.includes(header.hash_function as HashFunction)
    ) {
      lastProblem = `copy ${uid} names no store`;
      continue;
    }
    found.set(header.store_id, header.hash_function as HashFunction);
    encrypted = enc;
    if (++read >= REBUILD_SAMPLE) break;
  }
  const rebuildError = (why: string) =>
    new BackyError(`cannot rebuild the descriptor of the store at ${backend.url}: ${why}`);
  if (found.size === 0 || encrypted === undefined) throw rebuildError(lastProblem);
  if (found.size > 1)
    throw rebuildError(`its copies name ${found.size} different stores (${[...found.keys()].join(', ')})`);
  const [[storeId, hashFunction]] = [...found];
  if (opts.expectedStoreId !== undefined && opts.expectedStoreId !== storeId) {
    throw new ConfigError(
      `the metadata database belongs to store ${opts.expectedStoreId}, the copies in ${backend.url} to ${storeId}; check [MetaBackend] engine and [DataBackend]: nothing was written`,
    );
  }
  return {
    storeId,
    hashFunction,
    encryption: encrypted ? 'aes-256-gcm' : 'none',
    keyFingerprint: encrypted ? opts.keys!.fingerprint : null,
    ...opts.defaults,
    owner: null,
  };
}
