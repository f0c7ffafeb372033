/**
 * One client's socket as the NBD server uses it: exact-length reads, whole replies that never
 * interleave, and back-pressure; and the error that ends a connection the protocol cannot
 * answer.
 */
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { ByteReader } from './byte-reader.js';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Log = (level: LogLevel, msg: string) => void;

/** Input the protocol has no error reply for: the connection is closed. */
export class DropConnection extends Error {}

export class Wire {
  /** The socket replies go to: the accepted one, or after STARTTLS the TLS socket over it. */
  socket: Socket;
  reader: ByteReader;
  readonly #raw: Socket;

  constructor(socket: Socket) {
    this.#raw = socket;
    this.socket = socket;
    this.reader = new ByteReader(socket);
  }

  /** From now on reads and replies go through `secure` (a TLS socket over the accepted one). */
  upgrade(secure: Socket): void {
    secure.on('error', () => {}); // seen by the reader as a closed connection
    this.socket = secure;
    this.reader = new ByteReader(secure);
  }

  /** Closes the connection (the TLS socket and the one under it). */
  destroy(): void {
    this.socket.destroy();
    this.#raw.destroy();
  }

  /** Writes one reply; `sent` runs once its buffers are no longer needed. */
  send(reply: Buffer | Buffer[], sent?: () => void): void {
    const bufs = Array.isArray(reply) ? reply : [reply];
    if (this.socket.destroyed) {
      sent?.();
      return;
    }
    // One reply is written in one go: replies to concurrent requests never interleave.
    this.socket.cork();
    bufs.forEach((b, i) => this.socket.write(b, i === bufs.length - 1 && sent ? () => sent() : undefined));
    this.socket.uncork();
  }

  /**
   * Resolves once the socket has room again, or is gone (the reader reports how it ended: a
   * reset is the client's doing, not an error of ours). Leaves no listener behind: a waiting
   * loop calls this once per request.
   */
  async drained(): Promise<void> {
    if (!this.socket.writableNeedDrain || this.socket.destroyed) return;
    const ac = new AbortController();
    const opts = { signal: ac.signal };
    try {
      await Promise.race([once(this.socket, 'drain', opts), once(this.socket, 'close', opts)]);
    } catch {
      // 'error' (the connection failed) or our own abort: either way, nothing to wait for.
    } finally {
      ac.abort();
    }
  }
}
