/**
 * Passphrase protection of a key file's master key (key file version 2).
 *
 * The master key is sealed with AES-256-GCM under a key derived from the passphrase by scrypt
 * (node:crypto). The KDF parameters and the salt travel in the file, so that they can be raised
 * later without breaking old files; the GCM tag authenticates the parameters too (they are the
 * additional data), so an edited file fails as a whole. A wrong passphrase and a damaged file
 * look the same to GCM: the message says both.
 *
 * Unwrapping gives the same 32-byte master key as a plain (version 1) file holding it, so a
 * store's key fingerprint does not change when a passphrase is added, changed or removed.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';

export interface KdfParams {
  name: 'scrypt';
  /** CPU/memory cost: a power of two; 128 * N * r bytes of memory. */
  N: number;
  r: number;
  p: number;
  /** 16 random bytes, base64. */
  salt: string;
}

export interface WrappedKey {
  kdf: KdfParams;
  /** 12 bytes, base64. */
  iv: string;
  /** The sealed 32-byte master key, base64. */
  sealed: string;
  /** 16 bytes, base64. */
  tag: string;
}

/**
 * 2^16 * 8 * 128 = 64 MiB and about 0.1-0.3 s per command here: costly enough per guess for an
 * offline attack, cheap enough for a command that runs once. borg and Proxmox Backup Server use
 * similar costs.
 */
export const DEFAULT_KDF = { N: 1 << 16, r: 8, p: 1 } as const;

/** Upper bounds for parameters read from a file: a doctored file must not make backy hang or swap. */
const MAX_N = 1 << 22;
const MAX_R = 32;
const MAX_P = 16;

export class BadKdfParamsError extends Error {}

function derive(passphrase: string, kdf: KdfParams): Promise<Buffer> {
  const { N, r, p } = kdf;
  if (
    !Number.isInteger(N) ||
    N < 2 ||
    N > MAX_N ||
    (N & (N - 1)) !== 0 ||
    !Number.isInteger(r) ||
    r < 1 ||
    r > MAX_R ||
    !Number.isInteger(p) ||
    p < 1 ||
    p > MAX_P
  ) {
    return Promise.reject(new BadKdfParamsError(`scrypt parameters out of range (N=${N}, r=${r}, p=${p})`));
  }
  const salt = Buffer.from(kdf.salt, 'base64');
  if (salt.length < 16) return Promise.reject(new BadKdfParamsError('scrypt salt shorter than 16 bytes'));
  return new Promise((resolve, reject) =>
    scrypt(
      Buffer.from(passphrase.normalize('NFC'), 'utf8'),
      salt,
      32,
      { N, r, p, maxmem: 128 * N * r * p + (8 << 20) },
      (err, key) => (err ? reject(err) : resolve(key)),
    ),
  );
}

/** What GCM authenticates besides the sealed key: the format and the KDF parameters. */
function additionalData(kdf: KdfParams): Buffer {
  return Buffer.from(`backy-key v2 scrypt ${kdf.N} ${kdf.r} ${kdf.p} ${kdf.salt}`, 'utf8');
}

export async function wrapKey(
  master: Buffer,
  passphrase: string,
  cost: { N: number; r: number; p: number } = DEFAULT_KDF,
): Promise<WrappedKey> {
  const kdf: KdfParams = { name: 'scrypt', ...cost, salt: randomBytes(16).toString('base64') };
  const kek = await derive(passphrase, kdf);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', kek, iv);
  cipher.setAAD(additionalData(kdf));
  const sealed = Buffer.concat([cipher.update(master), cipher.final()]);
  kek.fill(0);
  return {
    kdf,
    iv: iv.toString('base64'),
    sealed: sealed.toString('base64'),
    tag: cipher.getAuthTag().toString('base64'),
  };
}

/** The master key, or undefined when the passphrase is wrong (or the file was altered). */
export async function unwrapKey(w: WrappedKey, passphrase: string): Promise<Buffer | undefined> {
  const kek = await derive(passphrase, w.kdf);
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek, Buffer.from(w.iv, 'base64'));
    decipher.setAAD(additionalData(w.kdf));
    decipher.setAuthTag(Buffer.from(w.tag, 'base64'));
    return Buffer.concat([decipher.update(Buffer.from(w.sealed, 'base64')), decipher.final()]);
  } catch {
    return undefined;
  } finally {
    kek.fill(0);
  }
}
