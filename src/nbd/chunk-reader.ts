/** The peer closed the connection (or it failed) before the bytes asked for arrived. */
export class ConnectionClosed extends Error {}

/** Unread bytes above which a reader stops its socket until reads drain them. */
export const HIGH_WATER = 1 << 20;

/**
 * What the NBD socket readers share (ByteReader on the server side, DirectReader on the client
 * side): bytes that arrived ahead of the reads wanting them, queued as chunks and taken out in
 * order; the connection's end, which fails every read still waiting; and back-pressure, so that
 * memory stays bounded whatever the peer sends: a subclass stops its socket while more than
 * HIGH_WATER bytes wait unread, and resume() starts it again once reads have taken them.
 */
export abstract class ChunkReader {
  #chunks: Buffer[] = [];
  #buffered = 0;
  #ended: Error | undefined;
  #wake: (() => void) | undefined;

  /** Lets the socket read again. */
  protected abstract resume(): void;

  /** The connection ended (`err` is what reads now throw); runs before waiting reads wake. */
  protected onEnd(_err: Error): void {}

  /** Bytes queued, not yet taken. */
  protected get buffered(): number {
    return this.#buffered;
  }

  /** Set once the connection has ended. */
  protected get ended(): Error | undefined {
    return this.#ended;
  }

  /** Ends the reader with the socket: its end, close or error. */
  protected watchEnd(socket: { on(event: string, fn: (err?: Error) => void): unknown }): void {
    const end = (err?: Error) => {
      this.#ended ??= new ConnectionClosed(err ? `connection failed: ${err.message}` : 'connection closed');
      this.onEnd(this.#ended);
      this.#notify();
    };
    socket.on('end', () => end());
    socket.on('close', () => end());
    socket.on('error', (err) => end(err));
  }

  /** Queues bytes that arrived ahead of a read; false once more than HIGH_WATER wait. */
  protected push(b: Buffer): boolean {
    this.#chunks.push(b);
    this.#buffered += b.length;
    this.#notify();
    return this.#buffered <= HIGH_WATER;
  }

  /** Waits for more bytes to be queued; throws ConnectionClosed once the connection has ended. */
  protected async more(): Promise<void> {
    if (this.#ended) throw this.#ended;
    await new Promise<void>((resolve) => {
      this.#wake = resolve;
      this.resume();
    });
  }

  /** Moves up to `max` queued bytes into `into` at `at` (without `into`: discards them). */
  protected take(into: Buffer | undefined, at: number, max: number): number {
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
    if (taken > 0 && this.#buffered <= HIGH_WATER) this.resume();
    return taken;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}
