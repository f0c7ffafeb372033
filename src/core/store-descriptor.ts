/**
 * The store describes itself: the meta object `descriptor`, written when a store is created
 * (its first backup) or first used by a backy that knows descriptors (cleanup writes it too).
 * JSON, never encrypted (it must be readable to tell which key a store needs):
 *   {"format":"backy-store","version":2,"store_id":"<uuid>","hash_function":"blake3",
 *    "block_size":4194304,"compression":"zstd:1","encryption":"none"|"aes-256-gcm",
 *    "key_fingerprint":"<32 hex>"|null,"owner_database":"<uuid>"|null}
 * The key's fingerprint is an HKDF output (keyfile.ts), never the key. block_size and
 * compression are what the creating config used, for information: both may differ per
 * version and per object. store_id ties a metadata database to its store (the settings row
 * `store_id`): a fresh database adopts a descriptor, a database recording another id is
 * refused, so that no command mixes one store's metadata with another store's objects.
 * owner_database (version 2) names the one database that may write to the store (see
 * store-authority.ts); version 1 (the previous backy) had none and is still read.
 */
import { HASH_FUNCTIONS } from '../config/config.js';
import type { HashFunction } from '../config/config.js';
import { BackyError, ConfigError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';
import { adoptStoreSettings, readStoreId } from '../meta/store-identity.js';
import type { StoreSettings } from '../meta/store-identity.js';
import type { StorageBackend } from '../storage/backend.js';

export const DESCRIPTOR_NAME = 'descriptor';
const FORMAT = 'backy-store';

export interface Descriptor extends StoreSettings {
  blockSize: number;
  compression: string;
  /** The database id of the store's owner; null in a version 1 descriptor or a rebuilt one. */
  owner: string | null;
}

/** The descriptor is there but cannot be read as one (truncated, overwritten). */
export class DamagedDescriptorError extends BackyError {}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function encodeDescriptor(d: Descriptor): Buffer {
  return Buffer.from(
    `${JSON.stringify({
      format: FORMAT,
      version: 2,
      store_id: d.storeId,
      hash_function: d.hashFunction,
      block_size: d.blockSize,
      compression: d.compression,
      encryption: d.encryption,
      key_fingerprint: d.keyFingerprint,
      owner_database: d.owner,
    })}\n`,
  );
}

/** Parses a descriptor; throws a one-line BackyError naming `where` when it is not one. */
export function parseDescriptor(data: Buffer, where: string): Descriptor {
  const bad = (why: string) =>
    new DamagedDescriptorError(
      `the store descriptor in ${where} is damaged: ${why}; 'backy recover' rebuilds it from the metadata copies`,
    );
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad('not JSON');
  }
  if (typeof v !== 'object' || v === null || v.format !== FORMAT) throw bad(`not a ${FORMAT} descriptor`);
  if (v.version !== 1 && v.version !== 2)
    throw new BackyError(
      `the store in ${where} has descriptor version ${String(v.version)}; this backy reads versions 1 and 2`,
    );
  const known = [
    'format',
    'version',
    'store_id',
    'hash_function',
    'block_size',
    'compression',
    'encryption',
    'key_fingerprint',
    ...(v.version === 2 ? ['owner_database'] : []),
  ];
  const extra = Object.keys(v).filter((k) => !known.includes(k));
  if (extra.length > 0) throw bad(`unknown field '${extra[0]}'`);
  if (typeof v.store_id !== 'string' || !UUID_RE.test(v.store_id)) throw bad("bad 'store_id'");
  if (!HASH_FUNCTIONS.includes(v.hash_function as HashFunction)) throw bad("bad 'hash_function'");
  if (!Number.isSafeInteger(v.block_size) || (v.block_size as number) <= 0) throw bad("bad 'block_size'");
  if (typeof v.compression !== 'string' || v.compression.length > 40) throw bad("bad 'compression'");
  if (v.encryption !== 'none' && v.encryption !== 'aes-256-gcm') throw bad("bad 'encryption'");
  const fp = v.key_fingerprint;
  if (v.encryption === 'none' ? fp !== null : typeof fp !== 'string' || !/^[0-9a-f]{32}$/.test(fp)) {
    throw bad("bad 'key_fingerprint'");
  }
  const owner = v.owner_database ?? null;
  if (owner !== null && (typeof owner !== 'string' || !UUID_RE.test(owner)))
    throw bad("bad 'owner_database'");
  return {
    storeId: v.store_id,
    hashFunction: v.hash_function as HashFunction,
    blockSize: v.block_size as number,
    compression: v.compression,
    encryption: v.encryption,
    keyFingerprint: fp as string | null,
    owner,
  };
}

export async function readDescriptor(backend: StorageBackend): Promise<Descriptor | undefined> {
  const data = await backend.getMeta(DESCRIPTOR_NAME);
  return data && parseDescriptor(data, backend.url);
}

/**
 * Ties the database to the store's descriptor: 'adopted' when a fresh database took the
 * descriptor's settings (the caller reopens it, since settings are read at open), 'ok' when it
 * is this store's. A database recording another store, or already used without a store id
 * while the store has one, is refused with one line.
 */
export async function checkDescriptor(
  meta: MetaStore,
  d: Descriptor,
  where: string,
): Promise<'ok' | 'adopted'> {
  const id = await readStoreId(meta);
  if (id === d.storeId) return 'ok';
  if (id === undefined && !meta.readOnly && (await adoptStoreSettings(meta, d))) return 'adopted';
  throw new ConfigError(
    `the metadata database belongs to another store than the data in ${where} (store ${id ?? 'without an id'}, the data's ${d.storeId}); check [MetaBackend] engine and [DataBackend]: nothing was read or written`,
  );
}
