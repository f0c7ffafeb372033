/**
 * Content-addressed blocks on a StorageBackend: the key is the hex checksum of the plaintext.
 *
 * Object format (version 1): a 16-byte header, then the payload.
 *   0..3   magic "BKYO"
 *   4      format version (1)
 *   5      compression codec (0 = none)
 *   6      encryption codec (0 = none)
 *   7      reserved (0)
 *   8..15  plaintext length, unsigned 64-bit little endian
 * New codecs get new ids, so old objects stay readable without a migration.
 * Every read is verified: header, length and checksum of the decoded plaintext.
 */
import { CorruptBlockError } from '../errors.js';
import { CHECKSUM_RE } from '../blocks/hash.js';
import type { Hasher } from '../blocks/hash.js';
import type { HashPool } from '../util/hash-pool.js';
import type { PutOptions, StorageBackend } from './backend.js';

export const HEADER_SIZE = 16;
const MAGIC = Buffer.from('BKYO', 'latin1');
const FORMAT_VERSION = 1;
const CODEC_NONE = 0;

export function encodeHeader(plainLength: number): Buffer {
  const h = Buffer.alloc(HEADER_SIZE);
  MAGIC.copy(h, 0);
  h[4] = FORMAT_VERSION;
  h[5] = CODEC_NONE;
  h[6] = CODEC_NONE;
  h.writeBigUInt64LE(BigInt(plainLength), 8);
  return h;
}

/** Below this, a worker round trip costs more than hashing on the spot. */
const POOL_MIN_BYTES = 64 << 10;

/** Parses and checks an object; returns the plaintext or throws CorruptBlockError. */
export function decodeObject(checksum: string, obj: Buffer): Buffer {
  if (obj.length < HEADER_SIZE)
    throw new CorruptBlockError(checksum, `object is ${obj.length} bytes, shorter than its header`);
  if (!obj.subarray(0, 4).equals(MAGIC)) throw new CorruptBlockError(checksum, 'bad object header (magic)');
  if (obj[4] !== FORMAT_VERSION)
    throw new CorruptBlockError(checksum, `unknown object format version ${obj[4]}`);
  if (obj[5] !== CODEC_NONE || obj[6] !== CODEC_NONE) {
    throw new CorruptBlockError(checksum, `unknown codec (compression ${obj[5]}, encryption ${obj[6]})`);
  }
  const length = obj.readBigUInt64LE(8);
  const payload = obj.subarray(HEADER_SIZE);
  if (length !== BigInt(payload.length)) {
    throw new CorruptBlockError(checksum, `object holds ${payload.length} bytes, header says ${length}`);
  }
  return payload;
}

export class BlockStore {
  readonly backend: StorageBackend;
  /** Synchronous, on the calling thread. */
  readonly hash: Hasher;
  readonly #pool: HashPool | undefined;

  /** With a pool, digest() and verification run on its worker threads. */
  constructor(backend: StorageBackend, hash: Hasher, pool?: HashPool) {
    this.backend = backend;
    this.hash = hash;
    this.#pool = pool;
  }

  /** The checksum of `data`; off the main thread when there is a pool. Leave `data` alone until it settles. */
  async digest(data: Buffer): Promise<string> {
    if (!this.#pool || data.length < POOL_MIN_BYTES) return this.hash(data);
    return this.#pool.hash(data);
  }

  /**
   * Stores a block under its checksum (computed by the caller with `hash`/`digest`). With
   * `{ defer: true }` it is durable only after the next sync() (see StorageBackend).
   */
  async put(checksum: string, data: Buffer, opts?: PutOptions): Promise<number> {
    await this.backend.put(checksum, [encodeHeader(data.length), data], opts);
    return HEADER_SIZE + data.length;
  }

  /**
   * Whether the object exists in the backend (a stat, or a HEAD on object stores); not
   * verified. A dedup hit is trusted only for an object that exists.
   */
  async has(checksum: string): Promise<boolean> {
    return (await this.backend.stat(checksum)) !== undefined;
  }

  /** Makes every deferred put durable. */
  async sync(): Promise<void> {
    await this.backend.sync?.();
  }

  /**
   * Reads and verifies a block. Throws MissingBlockError or CorruptBlockError.
   * `expectedLength`, when given, is checked too (a block list entry's size). With `into`
   * (at least HEADER_SIZE + block size bytes, e.g. from a BufferPool) and a backend that
   * supports getInto, the result is a view of `into`: no allocation per block.
   */
  async get(checksum: string, expectedLength?: number, into?: Buffer): Promise<Buffer> {
    // A checksum comes from the metadata database: one that is not plain hex (a damaged or
    // hostile row, e.g. '../../etc/passwd') must never become a path.
    if (!CHECKSUM_RE.test(checksum)) {
      throw new CorruptBlockError(checksum, 'the block list names an invalid checksum');
    }
    const obj =
      into && this.backend.getInto
        ? await this.backend.getInto(checksum, into)
        : await this.backend.get(checksum);
    const data = decodeObject(checksum, obj);
    if (expectedLength !== undefined && data.length !== expectedLength) {
      throw new CorruptBlockError(checksum, `block is ${data.length} bytes, expected ${expectedLength}`);
    }
    const actual = await this.digest(data);
    if (actual !== checksum)
      throw new CorruptBlockError(checksum, `checksum mismatch (content hashes to ${actual.slice(0, 16)}…)`);
    return data;
  }
}
