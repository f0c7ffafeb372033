import type { Socket } from 'node:net';

/** The peer closed the connection (or it failed) before the bytes asked for arrived. */
export class ConnectionClosed extends Error {}

/**
 * Exact-length reads from a socket, for length-prefixed protocols (NBD on both sides).
 * Memory stays bounded whatever the peer sends: the socket is paused while more than
 * HIGH_WATER bytes wait unread, and skip() discards without buffering.
 */
const HIGH_WATER = 1 << 20;

export class ByteReader {
  readonly #socket: Socket;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #ended: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(socket: Socket) {
    this.#socket = socket;
    socket.on('data', (b: Buffer) => {
      this.#chunks.push(b);
      this.#buffered += b.length;
      if (this.#buffered > HIGH_WATER) socket.pause();
      this.#notify();
    });
    const end = (err?: Error) => {
      this.#ended ??= new ConnectionClosed(err ? `connection failed: ${err.message}` : 'connection closed');
      this.#notify();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (err) => end(err));
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async #waitFor(n: number): Promise<void> {
    while (this.#buffered < n) {
      if (this.#ended) throw this.#ended;
      this.#socket.resume();
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Exactly `n` bytes (n may be large: a write's payload); throws ConnectionClosed if they never come. */
  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      await this.#waitFor(1);
      filled += this.#take(out, filled, n - filled);
    }
    return out;
  }

  /** Discards exactly `n` bytes as they arrive. */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      await this.#waitFor(1);
      left -= this.#take(undefined, 0, left);
    }
  }

  #take(into: Buffer | undefined, at: number, max: number): number {
    let taken = 0;
    while (taken < max && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const n = Math.min(c.length, max - taken);
      if (into) c.copy(into, at + taken, 0, n);
      taken += n;
      if (n === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(n);
    }
    this.#buffered -= taken;
    if (this.#buffered <= HIGH_WATER) this.#socket.resume();
    return taken;
  }
}
