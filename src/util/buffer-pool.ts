/**
 * A fixed set of equal-sized buffers, reused block after block: no per-block allocation (and
 * so no garbage-collector churn or RSS growth), and a hard cap on the memory a pipeline holds.
 * The buffers live on SharedArrayBuffers, so CodecPool workers read them without a copy.
 */
export class BufferPool {
  readonly bufferSize: number;
  readonly #free: Buffer[] = [];
  readonly #waiting: ((b: Buffer) => void)[] = [];

  constructor(count: number, bufferSize: number) {
    this.bufferSize = bufferSize;
    for (let i = 0; i < count; i++) this.#free.push(Buffer.from(new SharedArrayBuffer(bufferSize)));
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
      view.byteOffset === 0 && view.length === this.bufferSize
        ? view
        : Buffer.from(view.buffer, 0, this.bufferSize);
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
 * (6 blocks of 4 MiB), more for small blocks, never fewer than 4; memory stays about
 * max(24 MiB, 4 blocks) whatever the image size (peak RSS is a goal: <= 150 MB).
 */
export function blocksInFlight(blockSize: number): number {
  return Math.max(4, Math.min(64, Math.ceil((24 << 20) / blockSize)));
}
