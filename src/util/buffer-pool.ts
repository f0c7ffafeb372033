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
 * How many blocks a pipeline keeps in flight: enough to overlap reads, hashing and writes
 * (4 blocks of 4 MiB: 16 MiB; 2 GiB backups and restores took as long as with 6, within the
 * noise of a loaded two-core machine), more for small blocks, never fewer than 4.
 *
 * This is the one bound on block memory: backup, restore and scrub hold each block in flight
 * in one buffer of a BufferPool of this many (+1 for a stream) from read to write, including
 * while it waits in the CodecPool's queue or is being written, and the codec works in those
 * buffers (in place) or in its workers' two scratch buffers. So a pipeline's block memory is
 * (blocksInFlight + 1 + 2 x codec workers) x block size: ~29 MB with 4 MiB blocks and one
 * worker, whatever the image size (the goal is a peak RSS <= 150 MB, of which Node, the
 * bundle and SQLite take ~70 MB, and the S3 client's heap ~40 MB more).
 */
export function blocksInFlight(blockSize: number): number {
  return Math.max(4, Math.min(64, Math.ceil((16 << 20) / blockSize)));
}
