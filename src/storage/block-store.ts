/**
 * Content-addressed blocks on a StorageBackend: the key is the block's name, the store's hash
 * of its plaintext (keyed when the store is encrypted). The object format, compression and
 * encryption are in codec.ts; with a CodecPool they run on its worker threads.
 * Every read is verified: header, length, authentication tag and name of the decoded plaintext.
 */
import { CorruptBlockError } from '../errors.js';
import { CHECKSUM_RE } from '../blocks/hash.js';
import { CorruptObject } from '../util/codec-pool.js';
import type { CodecPool } from '../util/codec-pool.js';
import { makeCodec } from './codec.js';
import type { Codec, CodecSpec, Decoded } from './codec.js';
import type { PutOptions, StorageBackend } from './backend.js';

export { ENCODE_ROOM, HEADER_SIZE, objectBufferSize } from './codec.js';

/** Below this, a worker round trip costs more than doing the work on the spot. */
const POOL_MIN_BYTES = 64 << 10;

export class BlockStore {
  readonly backend: StorageBackend;
  readonly spec: CodecSpec;
  readonly #codec: Codec;
  readonly #pool: CodecPool | undefined;

  /** With a pool, naming, encoding and decoding run on its worker threads. */
  constructor(backend: StorageBackend, spec: CodecSpec, pool?: CodecPool) {
    this.backend = backend;
    this.spec = spec;
    this.#codec = makeCodec(spec);
    this.#pool = pool;
  }

  /** Bytes of blocks a pipeline keeps in flight on this store (see blocksInFlight). */
  get inFlightBytes(): number | undefined {
    return this.backend.inFlightBytes;
  }

  /** The block name of `data`, synchronous, on the calling thread. */
  readonly hash = (data: Buffer): string => this.#codec.name(data);

  /** The block name of `data`; off the main thread when there is a pool. Leave `data` alone until it settles. */
  async digest(data: Buffer): Promise<string> {
    if (!this.#pool || data.length < POOL_MIN_BYTES) return this.#codec.name(data);
    return this.#pool.hash(data);
  }

  /**
   * Stores a block under its name (computed by the caller with `hash`/`digest`); returns the
   * stored size. With `{ defer: true }` it is durable only after the next sync() (see
   * StorageBackend). Leave `data` alone until it settles. With `{ inPlace: true }` the caller
   * gives `data` up: the object is encoded over it and the ENCODE_ROOM bytes around it (a
   * BufferPool with that room), so a block costs no buffer of its own; afterwards `data` holds
   * anything.
   */
  async put(checksum: string, data: Buffer, opts?: PutOptions & { inPlace?: boolean }): Promise<number> {
    const inPlace = opts?.inPlace ?? false;
    // Stored raw and in clear, a block needs only a header: no reason to visit a worker.
    const trivial = this.spec.compression.codec === 'none' && !this.spec.keys;
    if (!this.#pool || trivial || data.length < POOL_MIN_BYTES) {
      return this.#write(checksum, this.#codec.encode(checksum, data, inPlace), opts);
    }
    return this.#write(checksum, await this.#pool.encode(checksum, data, inPlace), opts);
  }

  async #write(checksum: string, chunks: Uint8Array[], opts?: PutOptions): Promise<number> {
    const buffers = chunks.map((c) =>
      Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.length),
    );
    await this.backend.put(checksum, buffers, opts);
    return buffers.reduce((n, b) => n + b.length, 0);
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
   * (at least objectBufferSize(block size) bytes, e.g. from a BufferPool) and a backend that
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
    // The plaintext may be written over the object only inside the caller's buffer.
    const room = into && obj.buffer === into.buffer && obj.byteOffset === into.byteOffset ? into.length : 0;
    let d: Decoded;
    try {
      d =
        !this.#pool || (obj.length < POOL_MIN_BYTES && plainLength(obj) < POOL_MIN_BYTES)
          ? this.#codec.decode(checksum, obj, expectedLength, room)
          : await this.#pool.decode(checksum, obj, expectedLength, room);
    } catch (err) {
      if (err instanceof CorruptObject || (err as { corrupt?: boolean }).corrupt === true) {
        throw new CorruptBlockError(checksum, (err as Error).message);
      }
      throw err;
    }
    if (!d.shared) {
      const data = Buffer.from(d.data.buffer, d.data.byteOffset, d.data.length);
      // A worker could not write into an ordinary (not shared) buffer: keep the contract.
      if (!room || data.length > room) return data;
      data.copy(into!);
      return into!.subarray(0, data.length);
    }
    return Buffer.from(obj.buffer, obj.byteOffset + d.offset, d.length);
  }
}

/** What the header claims (a compressed object may be far smaller); 0 when there is none. */
function plainLength(obj: Buffer): number {
  return obj.length >= 16 ? Number(obj.readBigUInt64LE(8)) : 0;
}
