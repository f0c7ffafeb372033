import type { Socket } from 'node:net';
import { ChunkReader } from './chunk-reader.js';

/**
 * Exact-length reads from a socket, for length-prefixed protocols (the NBD server, and the
 * raw client of the tests). Node allocates a buffer per socket read and read() copies from
 * them; the socket is paused while more than HIGH_WATER bytes wait unread, and skip()
 * discards without buffering.
 */
export class ByteReader extends ChunkReader {
  readonly #socket: Socket;
  readonly #onData = (b: Buffer) => {
    this.#lastData = Date.now();
    if (!this.push(b)) this.#socket.pause();
  };
  /** While a read waits for bytes from the peer: since when (ms). */
  #waitingSince: number | undefined;
  #lastData = 0;
  /** Bytes the read in progress has received. */
  #got = 0;

  constructor(socket: Socket) {
    super();
    this.#socket = socket;
    socket.on('data', this.#onData);
    this.watchEnd(socket);
  }

  /** Bytes received and not read yet. */
  get unread(): number {
    return this.buffered;
  }

  /** Stops taking the socket's bytes (another reader, TLS, takes over): paused until then. */
  detach(): void {
    this.#socket.off('data', this.#onData);
    this.#socket.pause();
  }

  /**
   * How long a read has been waiting for the peer with nothing arriving (0 when no read waits
   * on it); with `started`, only a read that has some of its bytes (a request cut off midway).
   */
  starvedMs(now: number, started = false): number {
    if (this.#waitingSince === undefined) return 0;
    if (started && this.#got === 0 && this.buffered === 0) return 0;
    return now - Math.max(this.#waitingSince, this.#lastData);
  }

  protected resume(): void {
    this.#socket.resume();
  }

  /** Exactly `n` bytes (n may be large: a write's payload); throws ConnectionClosed if they never come. */
  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    try {
      while (filled < n) {
        while (this.buffered === 0) await this.#more();
        filled += this.take(out, filled, n - filled);
        this.#got = filled;
      }
    } finally {
      this.#waitingSince = undefined;
      this.#got = 0;
    }
    return out;
  }

  #more(): Promise<void> {
    this.#waitingSince ??= Date.now();
    return this.more();
  }

  /** Discards exactly `n` bytes as they arrive. */
  async skip(n: number): Promise<void> {
    let left = n;
    try {
      while (left > 0) {
        while (this.buffered === 0) await this.#more();
        left -= this.take(undefined, 0, left);
        this.#got = n - left;
      }
    } finally {
      this.#waitingSince = undefined;
      this.#got = 0;
    }
  }
}
