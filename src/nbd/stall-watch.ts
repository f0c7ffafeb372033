/**
 * Closes a connection in transmission that makes no progress for the stall timeout: replies
 * waiting in its socket that the client does not read (they hold block buffers charged to it),
 * or a request cut off midway (a write's payload that stops coming holds the connection's
 * writer). A client idle between requests is never closed: a VM booted from a backup may sit
 * idle for days.
 */
import type { Socket } from 'node:net';
import type { ByteReader } from './byte-reader.js';

export class StallWatch {
  readonly #socket: Socket;
  readonly #reader: ByteReader;
  readonly #timeoutMs: number;
  /** True while a request's payload is being received (its bytes are owed). */
  readonly #midRequest: () => boolean;
  readonly #onStall: (reason: string) => void;
  #timer: NodeJS.Timeout | undefined;
  #lastWrite = Date.now();
  #done = 0;
  #queued = 0;

  constructor(opts: {
    socket: Socket;
    reader: ByteReader;
    timeoutMs: number;
    midRequest: () => boolean;
    onStall: (reason: string) => void;
  }) {
    this.#socket = opts.socket;
    this.#reader = opts.reader;
    this.#timeoutMs = opts.timeoutMs;
    this.#midRequest = opts.midRequest;
    this.#onStall = opts.onStall;
  }

  start(): void {
    const every = Math.max(10, Math.min(1000, this.#timeoutMs / 4));
    this.#timer = setInterval(() => this.#check(), every).unref();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #check(): void {
    const now = Date.now();
    const s = this.#socket;
    const pending = s.writableLength;
    // Bytes the kernel has taken (bytesWritten counts what is still queued), and what libuv
    // still has of the write in progress: either moving is progress.
    const done = s.bytesWritten - pending;
    const queued = (s as unknown as { _handle?: { writeQueueSize?: number } })._handle?.writeQueueSize ?? 0;
    if (pending === 0 || done > this.#done || queued < this.#queued) this.#lastWrite = now;
    this.#done = done;
    this.#queued = queued;
    const secs = `${this.#timeoutMs / 1000} s (--stall-timeout)`;
    if (now - this.#lastWrite >= this.#timeoutMs) {
      this.stop();
      this.#onStall(`it has not read its replies for ${secs}; ${pending} bytes were waiting`);
    } else if (this.#reader.starvedMs(now, !this.#midRequest()) >= this.#timeoutMs) {
      this.stop();
      this.#onStall(`stopped in the middle of a request for ${secs}`);
    }
  }
}
