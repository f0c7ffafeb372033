/**
 * A fixed set of equal-sized buffers, reused block after block: no per-block allocation (and
 * so no garbage-collector churn or RSS growth), and a hard cap on the memory a pipeline holds.
 * The buffers live on SharedArrayBuffers, so CodecPool workers read them without a copy.
 */
export class BufferPool {
  readonly bufferSize: number;
  readonly #before: number;
  readonly #free: Buffer[] = [];
  readonly #waiting: ((b: Buffer) => void)[] = [];

  /**
   * `room`: bytes kept free before and after each buffer in its SharedArrayBuffer, e.g.
   * ENCODE_ROOM for blocks that BlockStore.put may encode in place.
   */
  constructor(count: number, bufferSize: number, room = { before: 0, after: 0 }) {
    this.bufferSize = bufferSize;
    this.#before = room.before;
    const total = room.before + bufferSize + room.after;
    for (let i = 0; i < count; i++)
      this.#free.push(Buffer.from(new SharedArrayBuffer(total), room.before, bufferSize));
  }

  /** A free buffer (contents undefined); waits while all are in use. */
  acquire(): Promise<Buffer> {
    const b = this.#free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  /** Gives a buffer from acquire() (or any view of it) back; the caller must not use it afterwards. */
  release(view: Buffer): void {
    const b =
      view.byteOffset === this.#before && view.length === this.bufferSize
        ? view
        : Buffer.from(view.buffer, this.#before, this.bufferSize);
    const next = this.#waiting.shift();
    if (next) next(b);
    else this.#free.push(b);
  }

  /** acquire(), run `fn`, release(), whatever `fn` does. */
  async with<T>(fn: (b: Buffer) => Promise<T>): Promise<T> {
    const b = await this.acquire();
    try {
      return await fn(b);
    } finally {
      this.release(b);
    }
  }
}

/**
 * How many blocks a pipeline keeps in flight: `bytes` of blocks (the store's inFlightBytes),
 * more blocks when they are small, never fewer than 4. Enough to overlap reads, hashing,
 * compression and writes: on a local store 8 blocks of 4 MiB (32 MiB) backed up 2 GiB in
 * 2.16-2.40 s where 4 took 2.51-2.62 s (quiet two-core machine, 3 runs each, +10 MB RSS).
 *
 * This is the one bound on block memory: backup, restore and scrub hold each block in flight
 * in one buffer of a BufferPool of this many (+1 for a stream) from read to write, including
 * while it waits in the CodecPool's queue or is being written, and the codec works in those
 * buffers (in place) or in its workers' two scratch buffers. So a pipeline's block memory is
 * (blocksInFlight + 1 + 2 x codec workers) x block size, whatever the image size: ~52 MB with
 * 32 MiB in flight, 4 MiB blocks and two workers, ~36 MB with 16 MiB. The goal is a peak RSS
 * <= 150 MB, of which Node, the bundle and SQLite take ~70 MB: a directory store gets
 * 32 MiB, an S3 store 16 MiB (its client's heap takes ~40 MB more).
 */
export function blocksInFlight(blockSize: number, bytes = DEFAULT_IN_FLIGHT_BYTES): number {
  return Math.max(4, Math.min(64, Math.ceil(bytes / blockSize)));
}

/** Bytes of blocks in flight for a store that does not say (StorageBackend.inFlightBytes). */
export const DEFAULT_IN_FLIGHT_BYTES = 16 << 20;
