/**
 * Which store a metadata database belongs to: the settings row `store_id`, the same random
 * id the store's descriptor carries (see core/store-descriptor.ts). A fresh database takes
 * over a descriptor's settings wholesale (adopt); one that records another id is another
 * store's.
 */
import { randomUUID } from 'node:crypto';
import type { HashFunction } from '../config/config.js';
import type { MetaHandle } from './meta-db.js';

export interface StoreSettings {
  storeId: string;
  hashFunction: HashFunction;
  encryption: 'none' | 'aes-256-gcm';
  keyFingerprint: string | null;
}

export async function readStoreId(meta: MetaHandle): Promise<string | undefined> {
  const row = await meta.db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', 'store_id')
    .executeTakeFirst();
  return row?.value;
}

/**
 * Records `candidate` as the store id unless one is recorded already (two processes creating a
 * store at once: the first wins); returns the recorded one.
 */
export async function recordStoreId(meta: MetaHandle, candidate: string): Promise<string> {
  return meta.write(async (tx) => {
    await tx
      .insertInto('settings')
      .values({ key: 'store_id', value: candidate })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const row = await tx
      .selectFrom('settings')
      .select('value')
      .where('key', '=', 'store_id')
      .executeTakeFirstOrThrow();
    return row.value;
  });
}

/**
 * Takes the descriptor's settings into a database that holds nothing yet (no store id, no
 * version, no object): hash function, encryption, key fingerprint and store id, replacing
 * what opening it recorded from the config's defaults. Returns false (and changes nothing)
 * when the database is not fresh after all.
 */
export async function adoptStoreSettings(meta: MetaHandle, s: StoreSettings): Promise<boolean> {
  return meta.write(async (tx) => {
    const id = await tx
      .selectFrom('settings')
      .select('value')
      .where('key', '=', 'store_id')
      .executeTakeFirst();
    const used =
      id ??
      (await tx.selectFrom('versions').select('uid').limit(1).executeTakeFirst()) ??
      (await tx.selectFrom('objects').select('checksum').limit(1).executeTakeFirst());
    if (used) return false;
    const keys = ['hash_function', 'encryption', 'key_fingerprint', 'store_id'];
    await tx.deleteFrom('settings').where('key', 'in', keys).execute();
    const values = [
      { key: 'store_id', value: s.storeId },
      { key: 'hash_function', value: s.hashFunction },
      { key: 'encryption', value: s.encryption },
    ];
    if (s.keyFingerprint !== null) values.push({ key: 'key_fingerprint', value: s.keyFingerprint });
    await tx.insertInto('settings').values(values).execute();
    return true;
  });
}

/**
 * The database's own random id (settings row `database_id`), made the first time it is asked
 * for: the store's descriptor names its owner by it (core/store-authority.ts). A copy of the
 * database file carries the same id; hosts sharing one PostgreSQL database share it.
 */
export async function databaseId(meta: MetaHandle): Promise<string | undefined> {
  const row = await meta.db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', DATABASE_ID)
    .executeTakeFirst();
  if (row || meta.readOnly) return row?.value;
  return meta.write(async (tx) => {
    await tx
      .insertInto('settings')
      .values({ key: DATABASE_ID, value: randomUUID() })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const r = await tx
      .selectFrom('settings')
      .select('value')
      .where('key', '=', DATABASE_ID)
      .executeTakeFirstOrThrow();
    return r.value;
  });
}
const DATABASE_ID = 'database_id';

/** The database records a version or an object: it has been used with a store. */
export async function databaseHoldsData(meta: MetaHandle): Promise<boolean> {
  const used =
    (await meta.db.selectFrom('versions').select('uid').limit(1).executeTakeFirst()) ??
    (await meta.db.selectFrom('objects').select('checksum').limit(1).executeTakeFirst());
  return used !== undefined;
}

/** The database's own settings, to describe a store that has no descriptor yet. */
export async function readStoreSettings(meta: MetaHandle): Promise<Omit<StoreSettings, 'storeId'>> {
  const rows = await meta.db
    .selectFrom('settings')
    .select(['key', 'value'])
    .where('key', 'in', ['encryption', 'key_fingerprint'])
    .execute();
  const get = (k: string) => rows.find((r) => r.key === k)?.value;
  const encrypted = get('encryption') === 'aes-256-gcm';
  return {
    hashFunction: meta.hashFunction,
    encryption: encrypted ? 'aes-256-gcm' : 'none',
    keyFingerprint: encrypted ? (get('key_fingerprint') ?? null) : null,
  };
}
