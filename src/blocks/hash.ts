import { createHash } from 'node:crypto';
import { blake3 } from '@napi-rs/blake-hash';
import type { HashFunction } from '../config/config.js';

export type Hasher = (data: Buffer) => string;

/** Hex digest of a block's plaintext; the store's object key. */
export function hasherFor(name: HashFunction): Hasher {
  switch (name) {
    case 'blake3':
      return (data) => blake3(data).toString('hex');
    case 'sha256':
      return (data) => createHash('sha256').update(data).digest('hex');
  }
}

/** Both supported functions give 32-byte digests: 64 lower-case hex characters. */
export const CHECKSUM_RE = /^[0-9a-f]{64}$/;
