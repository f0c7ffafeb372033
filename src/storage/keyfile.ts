/**
 * Key files and the keys derived from them.
 *
 * A key file is one line of JSON, mode 0600:
 *   {"format":"backy-key","version":1,"key":"<32 random bytes, base64>","check":"<16 hex>"}
 * `check` is the first 8 bytes of SHA-256 over the key bytes: a truncated or edited file is
 * refused with one line instead of being taken for another key (which would only show as
 * every object failing authentication).
 *
 * From the 32-byte master key, HKDF-SHA256 derives independent sub-keys: one for AES-256-GCM,
 * one for block names (HMAC), one for the fingerprint the store records to recognise its key.
 * The fingerprint reveals nothing of the other two (HKDF outputs are independent), so it may
 * be stored in the metadata database and shown in messages; the key never is.
 */
import { createHash, hkdfSync, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { ConfigError, InputError, ioReason } from '../errors.js';
import { TooLargeError, readTextLimitedSync } from '../util/read-limited.js';

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

/** Writes a new random key file; refuses an existing path. Mode 0600 whatever the umask. */
export async function createKeyFile(path: string): Promise<StoreKeys> {
  const key = randomBytes(KEY_BYTES);
  const line = `${JSON.stringify({ format: 'backy-key', version: 1, key: key.toString('base64'), check: check(key) })}\n`;
  let fh;
  try {
    fh = await open(path, 'wx', 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new InputError(
        `key file ${path} exists; backy never overwrites a key (a lost key loses the data)`,
      );
    }
    throw new InputError(`cannot create key file ${path}: ${ioReason(err)}`);
  }
  try {
    await fh.chmod(0o600);
    await fh.writeFile(line);
    await fh.sync();
  } catch (err) {
    throw new InputError(`cannot write key file ${path}: ${ioReason(err)}`);
  } finally {
    await fh.close();
  }
  return deriveKeys(key);
}

/** Reads and checks a key file; one-line ConfigError for anything wrong. */
export function readKeyFile(path: string): StoreKeys {
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
  if (p.version !== 1) throw bad(`unknown version ${JSON.stringify(p.version)}`);
  if (typeof p.key !== 'string' || !/^[A-Za-z0-9+/]{43}=$/.test(p.key))
    throw bad('the key is not 32 bytes of base64');
  const key = Buffer.from(p.key, 'base64');
  if (p.check !== check(key)) throw bad('the check value does not match the key; truncated or edited?');
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
