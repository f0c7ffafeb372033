/**
 * Whether a store is encrypted, and with which key, is fixed when the store is created (like
 * its hash function): the settings rows `encryption` (`none` or `aes-256-gcm`) and
 * `key_fingerprint` (never the key). A store that predates these rows and holds data is a
 * plaintext store; an empty one takes what the first config that opens it asks for.
 */
import { ConfigError } from '../errors.js';
import type { MetaHandle } from './meta-db.js';

export type StoreEncryption = { codec: 'none' } | { codec: 'aes-256-gcm'; fingerprint: string };

/**
 * Records the wanted encryption on a new store, or checks it against what the store records.
 * Throws ConfigError (one line, naming what to do) when they differ.
 */
export async function settleEncryption(meta: MetaHandle, wanted: StoreEncryption): Promise<void> {
  // Read first: an existing store is only compared with (no write transaction on every command,
  // and a read-only store opens at all); only a new one records its setting.
  const existing = await meta.db
    .selectFrom('settings')
    .select(['key', 'value'])
    .where('key', 'in', ['encryption', 'key_fingerprint'])
    .execute();
  const known = existing.find((r) => r.key === 'encryption')?.value;
  const recorded =
    known === 'aes-256-gcm'
      ? ({
          codec: known,
          fingerprint: existing.find((r) => r.key === 'key_fingerprint')?.value ?? '',
        } as StoreEncryption)
      : known === 'none' || (known === undefined && meta.readOnly)
        ? ({ codec: 'none' } as StoreEncryption)
        : await recordEncryption(meta, wanted);
  checkEncryption(recorded, wanted);
}

async function recordEncryption(meta: MetaHandle, wanted: StoreEncryption): Promise<StoreEncryption> {
  return meta.write(async (tx) => {
    const rows = await tx
      .selectFrom('settings')
      .select(['key', 'value'])
      .where('key', 'in', ['encryption', 'key_fingerprint'])
      .execute();
    const get = (k: string) => rows.find((r) => r.key === k)?.value;
    const codec = get('encryption');
    if (codec === 'aes-256-gcm')
      return { codec, fingerprint: get('key_fingerprint') ?? '' } as StoreEncryption;
    if (codec === 'none') return { codec } as StoreEncryption;
    if (codec !== undefined) throw new ConfigError(`metadata database records unknown encryption '${codec}'`);
    const used =
      (await tx.selectFrom('versions').select('uid').limit(1).executeTakeFirst()) ??
      (await tx.selectFrom('objects').select('checksum').limit(1).executeTakeFirst());
    if (used) return { codec: 'none' } as StoreEncryption;
    const values: { key: string; value: string }[] = [{ key: 'encryption', value: wanted.codec }];
    if (wanted.codec === 'aes-256-gcm') values.push({ key: 'key_fingerprint', value: wanted.fingerprint });
    // Two processes creating a store at once on PostgreSQL: the first insert wins, and the
    // other process checks its wish against it.
    await tx
      .insertInto('settings')
      .values(values)
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const now = await tx
      .selectFrom('settings')
      .select(['key', 'value'])
      .where('key', 'in', ['encryption', 'key_fingerprint'])
      .execute();
    const c = now.find((r) => r.key === 'encryption')?.value;
    const fingerprint = now.find((r) => r.key === 'key_fingerprint')?.value ?? '';
    return (c === 'aes-256-gcm' ? { codec: c, fingerprint } : { codec: 'none' }) as StoreEncryption;
  });
}

function checkEncryption(recorded: StoreEncryption, wanted: StoreEncryption): void {
  if (recorded.codec === 'none' && wanted.codec !== 'none') {
    throw new ConfigError(
      'this store was created without encryption and cannot be encrypted later: remove encryption and key_file from [DataBackend], or back up into a new store (new path and database)',
    );
  }
  if (recorded.codec === 'aes-256-gcm' && wanted.codec === 'none') {
    throw new ConfigError(
      'this store is encrypted: set encryption = aes-256-gcm and key_file = PATH (its key file) in [DataBackend]',
    );
  }
  if (
    recorded.codec === 'aes-256-gcm' &&
    wanted.codec === 'aes-256-gcm' &&
    recorded.fingerprint !== wanted.fingerprint
  ) {
    throw new ConfigError(
      `the key file is not this store's key (fingerprint ${wanted.fingerprint.slice(0, 16)}, the store's ${recorded.fingerprint.slice(0, 16)}); nothing was read or written`,
    );
  }
}
