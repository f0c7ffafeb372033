/**
 * Key files and the keys derived from them.
 *
 * A key file is one line of JSON, mode 0600, in one of two versions:
 *   {"format":"backy-key","version":1,"key":"<32 random bytes, base64>","check":"<16 hex>"}
 *   {"format":"backy-key","version":2,"kdf":{...},"iv":"..","sealed":"..","tag":".."}
 * Version 1 holds the master key in the clear; `check` is the first 8 bytes of SHA-256 over it:
 * a truncated or edited file is refused with one line instead of being taken for another key
 * (which would only show as every object failing authentication). Version 2 holds it sealed
 * under a passphrase (key-wrap.ts); GCM's tag does the checking there.
 *
 * From the 32-byte master key, HKDF-SHA256 derives independent sub-keys: one for AES-256-GCM,
 * one for block names (HMAC), one for the fingerprint the store records to recognise its key.
 * The fingerprint reveals nothing of the other two (HKDF outputs are independent), so it may
 * be stored in the metadata database and shown in messages; the key never is.
 */
import { createHash, hkdfSync, randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { ConfigError, InputError, ioReason } from '../errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { TooLargeError, readTextLimitedSync } from '../util/read-limited.js';
import { BadKdfParamsError, type WrappedKey, unwrapKey, wrapKey } from './key-wrap.js';

const KEY_BYTES = 32;
const SALT = 'backy key derivation v1';

export interface StoreKeys {
  encryption: Buffer;
  naming: Buffer;
  /** 32 hex characters; identifies the key, reveals nothing about it. */
  fingerprint: string;
}

function check(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

/** The file's line for `master`: sealed under `passphrase` when one is given. */
async function keyFileLine(master: Buffer, passphrase: string | undefined): Promise<string> {
  const body =
    passphrase === undefined
      ? { format: 'backy-key', version: 1, key: master.toString('base64'), check: check(master) }
      : { format: 'backy-key', version: 2, ...(await wrapKey(master, passphrase)) };
  return `${JSON.stringify(body)}\n`;
}

/**
 * Writes a new random key file; refuses an existing path. Mode 0600 whatever the umask. With
 * `passphrase`, the key is sealed under it (version 2). Written atomically: a crash never
 * leaves a truncated key file.
 */
export async function createKeyFile(path: string, passphrase?: string): Promise<StoreKeys> {
  const key = randomBytes(KEY_BYTES);
  const line = await keyFileLine(key, passphrase);
  try {
    await writeFileAtomic(path, line, { mode: 0o600, exclusive: true, dirSync: 'best-effort' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new InputError(
        `key file ${path} exists; backy never overwrites a key (a lost key loses the data)`,
      );
    }
    throw new InputError(`cannot create key file ${path}: ${ioReason(err)}`);
  }
  return deriveKeys(key);
}

/** Asks for the passphrase of a sealed key file; `what` names the file for a prompt or an error. */
export type PassphraseSource = (what: string) => Promise<string>;

type Parsed = { version: 1; key: Buffer } | { version: 2; wrapped: WrappedKey };

/**
 * Refuses a key file other users may read or change, as ssh refuses a loose private key: a
 * key readable by others is as good as published, one writable by them can be swapped.
 */
function checkPrivate(path: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch (err) {
    throw new ConfigError(`cannot read key file ${path}: ${ioReason(err)}`);
  }
  if ((mode & 0o077) === 0) return;
  const what = mode & 0o044 ? 'readable' : 'accessible';
  throw new ConfigError(
    `key file ${path} is ${what} by others (mode ${mode.toString(8).padStart(4, '0')}): chmod 600 ${path}`,
  );
}

function parseKeyFile(path: string): Parsed {
  checkPrivate(path);
  let text: string;
  try {
    text = readTextLimitedSync(path, 4096);
  } catch (err) {
    if (err instanceof TooLargeError)
      throw new ConfigError(`key file ${path} is not a backy key file (too large)`);
    throw new ConfigError(`cannot read key file ${path}: ${ioReason(err)}`);
  }
  const bad = (why: string) => new ConfigError(`key file ${path} is not a valid backy key file (${why})`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw bad('not one line of JSON; truncated or edited?');
  }
  const p = parsed as Record<string, unknown>;
  if (typeof p !== 'object' || p === null || p.format !== 'backy-key') throw bad('no "format": "backy-key"');
  if (p.version === 1) {
    if (typeof p.key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(p.key))
      throw bad('the key is not 32 bytes of base64');
    const key = Buffer.from(p.key, 'base64');
    if (p.check !== check(key)) throw bad('the check value does not match the key; truncated or edited?');
    return { version: 1, key };
  }
  if (p.version === 2) {
    const kdf = p.kdf as Record<string, unknown> | null;
    const b64 = (v: unknown, bytes: number) =>
      typeof v === 'string' && v.length === Math.ceil(bytes / 3) * 4 && /^[A-Za-z0-9+/]+={0,2}$/.test(v);
    if (
      typeof kdf !== 'object' ||
      kdf === null ||
      kdf.name !== 'scrypt' ||
      typeof kdf.N !== 'number' ||
      typeof kdf.r !== 'number' ||
      typeof kdf.p !== 'number' ||
      !b64(kdf.salt, 16)
    )
      throw bad('no valid "kdf" (scrypt with N, r, p and a 16-byte salt)');
    if (!b64(p.iv, 12) || !b64(p.sealed, KEY_BYTES) || !b64(p.tag, 16))
      throw bad('"iv", "sealed" or "tag" missing or of the wrong length; truncated or edited?');
    return {
      version: 2,
      wrapped: {
        kdf: { name: 'scrypt', N: kdf.N, r: kdf.r, p: kdf.p, salt: kdf.salt as string },
        iv: p.iv as string,
        sealed: p.sealed as string,
        tag: p.tag as string,
      },
    };
  }
  throw bad(`unknown version ${JSON.stringify(p.version)}`);
}

/** The master key of a key file, asking `passphrase` when it is sealed. One-line ConfigErrors. */
async function readMasterKey(path: string, passphrase: PassphraseSource): Promise<Buffer> {
  const parsed = parseKeyFile(path);
  if (parsed.version === 1) return parsed.key;
  const given = await passphrase(`key file ${path}`);
  let key: Buffer | undefined;
  try {
    key = await unwrapKey(parsed.wrapped, given);
  } catch (err) {
    if (err instanceof BadKdfParamsError)
      throw new ConfigError(`key file ${path} is not a valid backy key file (${err.message})`);
    throw err;
  }
  if (!key) throw new ConfigError(`wrong passphrase for key file ${path} (or the file was altered)`);
  return key;
}

/** Reads and checks a key file; one-line ConfigError for anything wrong. */
export async function readKeyFile(path: string, passphrase: PassphraseSource): Promise<StoreKeys> {
  return deriveKeys(await readMasterKey(path, passphrase));
}

/** Whether a key file is sealed under a passphrase (it is parsed and checked, not opened). */
export function isSealedKeyFile(path: string): boolean {
  return parseKeyFile(path).version === 2;
}

/**
 * Seals the key of `path` under the passphrase `next` gives (asked after the current one is
 * found right), or stores it in the clear when `next` is undefined,
 * replacing the file atomically: a crash leaves the old file or the new one, never neither.
 * The master key, and so the store's key fingerprint, stay the same. A symlink is followed:
 * the file it points to is rewritten (next to itself), and the link stays a link; replacing
 * the link would leave the real key file, the one other configs may name, under the old
 * passphrase.
 */
export async function rewrapKeyFile(
  path: string,
  current: PassphraseSource,
  next: (() => Promise<string>) | undefined,
): Promise<StoreKeys> {
  const key = await readMasterKey(path, current);
  const line = await keyFileLine(key, next ? await next() : undefined);
  try {
    const real = await realpath(path);
    // The directory fsync is best effort: some file systems refuse it, and the file is
    // already replaced by then.
    await writeFileAtomic(real, line, { mode: 0o600, dirSync: 'best-effort' });
  } catch (err) {
    throw new InputError(`cannot rewrite key file ${path}: ${ioReason(err)}`);
  }
  return deriveKeys(key);
}

export function deriveKeys(master: Buffer): StoreKeys {
  const sub = (info: string, n: number) => Buffer.from(hkdfSync('sha256', master, SALT, info, n));
  return {
    encryption: sub('aes-256-gcm object encryption', 32),
    naming: sub('hmac-sha256 block names', 32),
    fingerprint: sub('key fingerprint', 16).toString('hex'),
  };
}
