import { CorruptBlockError } from '../errors.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';

/** A cached block handed to a reader; release() when its data has been sent. */
export interface BlockRef {
  data: Buffer;
  release: () => void;
}

interface Entry {
  /** The object buffer (shared memory) the data is a view of, once it has one. */
  buf: Buffer | undefined;
  ready: Promise<Buffer>;
  /** Readers holding or waiting for it; its buffer is reused only at 0 and once evicted. */
  refs: number;
  cached: boolean;
}

/**
 * Verified block contents by checksum, shared by all connections and versions (content
 * addressed, so never stale); one fetch per checksum at a time, however many readers want it.
 * Blocks are read into shared memory (verification hashes them on a worker without a copy)
 * and the buffers are reused.
 *
 * All buffers together, cached, held by readers (a reply still being sent) or being filled,
 * never exceed `maxBytes`, and the cache keeps every block it can within that: a fetch takes
 * a free buffer, or a new one while they fit, or the buffer of the least recently used block
 * no reader holds, or else waits for one to come back. A reader waiting for a buffer holds
 * none of its own; what reads hold while their replies are sent is bounded below `maxBytes`
 * for all connections together (ReadAccount), so some buffer always comes back.
 */
export class BlockCache {
  readonly maxBytes: number;
  readonly #entries = new Map<string, Entry>();
  readonly #pending = new Map<string, Entry>();
  readonly #free: Buffer[] = [];
  readonly #waiting: (() => void)[] = [];
  #allocated = 0;

  constructor(opts: { maxBytes: number }) {
    this.maxBytes = opts.maxBytes;
  }

  /** Bytes of all buffers in existence (free, cached, held or being filled). */
  get allocatedBytes(): number {
    return this.#allocated;
  }

  /** Block `checksum` of `length` bytes (at most `blockSize`), verified; release() it after use. */
  async get(store: BlockStore, checksum: string, length: number, blockSize: number): Promise<BlockRef> {
    let e = this.#entries.get(checksum);
    if (e) {
      this.#entries.delete(checksum);
      this.#entries.set(checksum, e);
    } else e = this.#pending.get(checksum);
    if (!e) e = this.#fetch(store, checksum, length, objectBufferSize(blockSize));
    e.refs++;
    const entry = e;
    let data: Buffer;
    try {
      data = await entry.ready;
    } catch (err) {
      entry.refs--;
      throw err;
    }
    if (data.length !== length) {
      this.#unref(entry);
      throw new CorruptBlockError(checksum, `block is ${data.length} bytes, expected ${length}`);
    }
    let released = false;
    return {
      data,
      release: () => {
        if (!released) this.#unref(entry);
        released = true;
      },
    };
  }

  /**
   * Fetches a block into the cache ahead of its readers, only when that takes nobody's place:
   * a buffer is free or can be made without waiting, and no fetch waits for one.
   */
  prefetch(store: BlockStore, checksum: string, length: number, blockSize: number): void {
    if (this.#entries.has(checksum) || this.#pending.has(checksum) || this.#waiting.length > 0) return;
    const size = objectBufferSize(blockSize);
    const evictable = [...this.#entries.values()].some((e) => e.refs === 0);
    if (!evictable && !this.#free.some((b) => b.length === size) && !this.#fits(size)) return;
    this.get(store, checksum, length, blockSize).then(
      (ref) => ref.release(),
      () => {},
    );
  }

  #fetch(store: BlockStore, checksum: string, length: number, size: number): Entry {
    const entry: Entry = { buf: undefined, ready: Promise.resolve(Buffer.alloc(0)), refs: 0, cached: false };
    entry.ready = this.#buffer(size).then((buf) => {
      entry.buf = buf;
      return store.get(checksum, length, buf);
    });
    this.#pending.set(checksum, entry);
    entry.ready.then(
      () => {
        this.#pending.delete(checksum);
        entry.cached = true;
        this.#entries.set(checksum, entry);
        this.#wake();
      },
      () => {
        // Nobody ever saw this buffer's contents: it can go back at once.
        this.#pending.delete(checksum);
        if (entry.buf) this.#recycle(entry.buf);
      },
    );
    return entry;
  }

  #evict(checksum: string, e: Entry): void {
    this.#entries.delete(checksum);
    e.cached = false;
  }

  #unref(e: Entry): void {
    if (--e.refs > 0) return;
    if (!e.cached) this.#recycle(e.buf!);
    else this.#wake(); // evictable now
  }

  #fits(size: number): boolean {
    return this.#allocated + size <= this.maxBytes || this.#allocated === 0;
  }

  async #buffer(size: number): Promise<Buffer> {
    for (;;) {
      const i = this.#free.findIndex((b) => b.length === size);
      if (i >= 0) return this.#free.splice(i, 1)[0];
      // Room first from free buffers of other sizes, then from unheld cached blocks, oldest first.
      while (!this.#fits(size) && this.#free.length > 0) this.#allocated -= this.#free.pop()!.length;
      for (const [checksum, e] of this.#entries) {
        if (this.#fits(size)) break;
        if (e.refs > 0) continue;
        this.#evict(checksum, e);
        if (e.buf!.length === size) return e.buf!;
        this.#allocated -= e.buf!.length;
      }
      if (this.#fits(size)) {
        this.#allocated += size;
        return Buffer.from(new SharedArrayBuffer(size));
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
  }

  #recycle(buf: Buffer): void {
    this.#free.push(buf);
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiting.splice(0)) w();
  }
}
