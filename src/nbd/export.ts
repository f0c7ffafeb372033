/**
 * A version as a block device for the NBD server: reads verified like a restore, block status
 * from the block list, and (ExportWriter) copy-on-write into a new version.
 *
 * Memory: the block list of each exported version is held once (BlockTable), shared by every
 * connection to it; block contents live in one BlockCache shared by all (a fixed number of
 * bytes); modified blocks live in buffers of one DirtyPool shared by all writers (a writer
 * holds at most DIRTY_LIMIT of them before storing its oldest). Reads in flight are bounded by
 * the server (ReadAccount).
 */
import { blockLength } from '../blocks/blocks.js';
import { BlockWriter, emptyStats } from '../core/backup.js';
import { NO_COPIES, completeWithCopy } from '../core/copy-keeper.js';
import type { CopyKeeper } from '../core/copy-keeper.js';
import { CorruptBlockError, MissingBlockError, errorMessage } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { BlockCache, BlockRef } from './block-cache.js';
import type { BlockTable } from './block-table.js';
import type { BufferPool } from '../util/buffer-pool.js';
import type { DirtyHolder, DirtyPool } from './dirty-pool.js';
import { DIRTY_LIMIT } from './limits.js';

export type Piece =
  | { kind: 'data'; offset: number; data: Buffer; release: () => void }
  | { kind: 'hole'; offset: number; length: number }
  | { kind: 'error'; offset: number; length: number; reason: string };

/** Gives back the cached blocks that a read's data pieces are views of. */
export function releasePieces(pieces: readonly Piece[]): void {
  for (const p of pieces) if (p.kind === 'data') p.release();
}

export interface Extent {
  length: number;
  /** base:allocation flags: 0 data, 3 hole reading as zeros. */
  flags: number;
}

/** Blocks one NBD_CMD_BLOCK_STATUS looks at, at most. */
const MAX_STATUS_BLOCKS = 65536;
/** Blocks after a read's last one fetched ahead into the cache. */
const READ_AHEAD = 2;

/** A block's state as a reader sees it. */
type BlockState =
  | { kind: 'data'; checksum: string }
  | { kind: 'sparse' }
  | { kind: 'missing' }
  | { kind: 'dirty'; data: Buffer };

export interface DeviceEvents {
  /** A damaged or missing block was met (already marked invalid). */
  onBadBlock?: (idx: number, reason: string) => void;
  /** The validity of versions changed (damage marked): their metadata copies are out of date. */
  onValidityChanged?: () => void;
}

/** Read access to one version. */
export class ExportReader {
  readonly version: Version;
  readonly size: number;
  readonly blockSize: number;
  protected readonly meta: MetaStore;
  protected readonly store: BlockStore;
  protected readonly table: BlockTable;
  /** The store's metadata copies: the new version's is written at completion. */
  protected readonly copies: CopyKeeper;
  readonly #cache: BlockCache;
  readonly #events: DeviceEvents;
  /** Objects this reader has marked damaged already (a client retries a failed read often). */
  readonly #marked = new Set<string>();

  constructor(opts: {
    meta: MetaStore;
    store: BlockStore;
    version: Version;
    table: BlockTable;
    cache: BlockCache;
    events?: DeviceEvents;
    copies?: CopyKeeper;
  }) {
    this.meta = opts.meta;
    this.store = opts.store;
    this.version = opts.version;
    this.table = opts.table;
    this.size = opts.version.sizeBytes;
    this.blockSize = opts.version.blockSize;
    this.#cache = opts.cache;
    this.#events = opts.events ?? {};
    this.copies = opts.copies ?? NO_COPIES;
  }

  protected state(idx: number): BlockState {
    const c = this.table.get(idx);
    if (c === undefined) return { kind: 'missing' };
    return c === null ? { kind: 'sparse' } : { kind: 'data', checksum: c };
  }

  /**
   * The whole block idx, verified (undefined when sparse); release() it when done. Throws
   * MissingBlockError, CorruptBlockError, or another error for an I/O failure.
   */
  protected async blockData(idx: number, st: BlockState): Promise<BlockRef | undefined> {
    const length = blockLength(idx, this.size, this.blockSize);
    if (st.kind === 'sparse') return undefined;
    if (st.kind === 'dirty') return { data: st.data, release: () => {} };
    if (st.kind === 'missing') {
      // As restore does: a version with a gap in its block list is not valid.
      if (this.version.status === 'valid') {
        this.version.status = 'invalid';
        await this.meta.setVersionStatus(this.version.uid, 'invalid').catch(() => {});
        this.#events.onValidityChanged?.();
      }
      throw new Error('no entry in the block list');
    }
    try {
      return await this.#cache.get(this.store, st.checksum, length, this.blockSize);
    } catch (err) {
      if (
        (err instanceof MissingBlockError || err instanceof CorruptBlockError) &&
        !this.#marked.has(st.checksum)
      ) {
        // Like restore: the damage is recorded so scrub, backups and ls know of it, and so
        // are the copies of the versions it makes invalid (a recover must not bring them back valid).
        this.#marked.add(st.checksum);
        await this.meta.markObjectInvalid(st.checksum).catch(() => {});
        this.#events.onValidityChanged?.();
      }
      throw err;
    }
  }

  /**
   * Reads [offset, offset+length): one piece per block part, in order; a block that cannot be
   * read is an error piece (the rest still reads). Blocks are fetched in parallel. Data pieces
   * are views of cached blocks, or copies of blocks that may still change: call
   * releasePieces() once they have been sent.
   */
  async read(offset: number, length: number): Promise<Piece[]> {
    const bs = this.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const jobs: Promise<Piece>[] = [];
    for (let idx = first; idx <= last; idx++) {
      const start = Math.max(offset, idx * bs);
      const end = Math.min(offset + length, (idx + 1) * bs);
      const st = this.state(idx);
      if (st.kind === 'dirty') {
        // Copied now: once stored, the modified block's buffer goes back to the pool for reuse.
        const data = Buffer.from(st.data.subarray(start - idx * bs, end - idx * bs));
        jobs.push(Promise.resolve({ kind: 'data', offset: start, data, release: () => {} }));
        continue;
      }
      jobs.push(
        this.blockData(idx, st).then(
          (ref): Piece => {
            if (!ref) return { kind: 'hole', offset: start, length: end - start };
            const view = ref.data.subarray(start - idx * bs, end - idx * bs);
            return { kind: 'data', offset: start, data: view, release: ref.release };
          },
          (err: unknown): Piece => {
            const reason = errorMessage(err);
            this.#events.onBadBlock?.(idx, reason);
            return { kind: 'error', offset: start, length: end - start, reason };
          },
        ),
      );
    }
    this.#readAhead(last + 1);
    return Promise.all(jobs);
  }

  /**
   * A reader one request at a time (a boot, `dd`, a single-request copy) would otherwise wait
   * for every block's fetch and verification in turn: the next blocks are fetched into the
   * cache while it reads this one. Failures are left for the real read to meet and report.
   */
  #readAhead(from: number): void {
    for (let idx = from; idx < Math.min(from + READ_AHEAD, this.table.n); idx++) {
      const st = this.state(idx);
      if (st.kind === 'data')
        this.#cache.prefetch(
          this.store,
          st.checksum,
          blockLength(idx, this.size, this.blockSize),
          this.blockSize,
        );
    }
  }

  /** base:allocation extents from `offset`, covering at most `length` bytes (one with `one`). */
  status(offset: number, length: number, one: boolean): Extent[] {
    const bs = this.blockSize;
    const end = Math.min(this.size, offset + length);
    const out: Extent[] = [];
    let pos = offset;
    // A reply may describe less than was asked: bound the work one request can cause.
    const stop = Math.min(end, (Math.floor(offset / bs) + MAX_STATUS_BLOCKS) * bs);
    while (pos < stop) {
      const idx = Math.floor(pos / bs);
      const blockEnd = Math.min(stop, (idx + 1) * bs);
      const flags = this.isSparse(idx) ? 3 : 0;
      const prev = out[out.length - 1];
      // 32-bit lengths on the wire: a run stops short of 4 GiB.
      if (prev && prev.flags === flags && prev.length + (blockEnd - pos) <= 0xffffffff - bs)
        prev.length += blockEnd - pos;
      else {
        if (one && prev) break;
        out.push({ length: blockEnd - pos, flags });
      }
      pos = blockEnd;
    }
    return out;
  }

  protected isSparse(idx: number): boolean {
    return this.state(idx).kind === 'sparse';
  }
}

/**
 * Copy-on-write: reads see the exported version with this connection's writes on top; written
 * blocks go through the normal BlockWriter (dedup, codecs) into a new version that started as
 * a copy of the exported one's block list. The exported version is never touched.
 * Writes are serialised (a read-modify-write of a block must not race another); reads are not.
 * Modified blocks are buffers of the server's DirtyPool; storing one (when this writer holds
 * DIRTY_LIMIT, at FLUSH, or early when another writer waits for a buffer) gives it back.
 */
export class ExportWriter extends ExportReader implements DirtyHolder {
  readonly newVersion: Version;
  readonly #writer: BlockWriter;
  readonly #stats = emptyStats();
  readonly #pool: DirtyPool;
  readonly #storeBuffers: BufferPool;
  /** Blocks stored by this writer: checksum, or null for sparse. */
  readonly #overlay = new Map<number, string | null>();
  /**
   * Blocks stored since the store was last synced, by the number of their store: a deferred
   * put appears under its name only once the store is synced, so reading one back (a block
   * stored early, then written again or read) syncs first.
   */
  readonly #unsynced = new Map<number, number>();
  #stores = 0;
  /**
   * Modified blocks not stored yet, oldest first: the block's bytes, and the pool's buffer.
   * `torn`: a block a write covers entirely, taken without reading what it held, whose part of
   * that write has not all arrived: until it has, the block holds the new bytes received and
   * zeros. It is never stored in that state: should the payload stop (the client gone
   * mid-write), the block is dropped and keeps what it held before, so that an unacknowledged
   * write leaves each block old or new, never zeros, and acknowledged writes stay.
   */
  readonly #dirty = new Map<number, { data: Buffer; buf: Buffer; torn: boolean }>();
  #queue: Promise<unknown> = Promise.resolve();
  #disposed = false;

  constructor(
    opts: ConstructorParameters<typeof ExportReader>[0] & {
      newVersion: Version;
      dirty: DirtyPool;
      storeBuffers: BufferPool;
    },
  ) {
    super(opts);
    this.newVersion = opts.newVersion;
    this.#writer = new BlockWriter(this.meta, this.store, this.newVersion.uid);
    this.#pool = opts.dirty;
    this.#storeBuffers = opts.storeBuffers;
    this.#pool.register(this);
  }

  /** Modified blocks that may be stored now (not torn). */
  get dirtyBlocks(): number {
    let n = 0;
    for (const e of this.#dirty.values()) if (!e.torn) n++;
    return n;
  }

  /** Stores the oldest modified block now (another writer waits for a buffer). */
  spill(): Promise<void> {
    return this.#serial(() => this.#storeOldest());
  }

  async #storeOldest(): Promise<void> {
    for (const [idx, e] of this.#dirty) if (!e.torn) return this.#storeBlock(idx, e.data);
  }

  protected override state(idx: number): BlockState {
    const d = this.#dirty.get(idx);
    if (d) return { kind: 'dirty', data: d.data };
    if (this.#overlay.has(idx)) {
      const c = this.#overlay.get(idx)!;
      return c === null ? { kind: 'sparse' } : { kind: 'data', checksum: c };
    }
    return super.state(idx);
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#queue.then(fn);
    this.#queue = p.catch(() => {});
    return p;
  }

  /**
   * Writes `data` at `offset`. `whole`: the whole write this is part of (its payload arrives
   * in parts): a block it covers entirely is not read first, its other parts follow.
   */
  write(offset: number, data: Buffer, whole = { offset, length: data.length }): Promise<void> {
    return this.#serial(() =>
      this.#modify(
        offset,
        data.length,
        (block, at, from, len) => data.copy(block, at, from, from + len),
        whole,
      ),
    );
  }

  /** TRIM and WRITE_ZEROES: both read back zeros afterwards (whole blocks become sparse). */
  zero(offset: number, length: number): Promise<void> {
    return this.#serial(() =>
      this.#modify(offset, length, (block, at, _from, len) => block.fill(0, at, at + len)),
    );
  }

  async #modify(
    offset: number,
    length: number,
    apply: (block: Buffer, at: number, from: number, len: number) => void,
    cover = { offset, length },
  ) {
    const bs = this.blockSize;
    for (let pos = offset; pos < offset + length;) {
      const idx = Math.floor(pos / bs);
      const blen = blockLength(idx, this.size, bs);
      const end = Math.min(offset + length, idx * bs + blen);
      let entry = this.#dirty.get(idx);
      if (!entry) {
        if (this.#disposed) throw new Error('the connection has ended');
        while (this.#dirty.size >= DIRTY_LIMIT && this.dirtyBlocks > 0) await this.#storeOldest();
        // Not read first when the write covers the whole block and this is its first part (the
        // rest follows); a part after an early store of the block must read what was stored.
        const whole = pos === idx * bs && cover.offset + cover.length >= idx * bs + blen;
        const buf = await this.#pool.acquire(this, bs, () => this.#storeOldest());
        const data = buf.subarray(0, blen);
        try {
          const cur = whole ? undefined : await this.blockData(idx, this.state(idx));
          if (cur) {
            cur.data.copy(data);
            cur.release();
          } else if (end - pos < blen) data.fill(0); // a reused buffer: nothing of another write shows
        } catch (err) {
          this.#pool.release(buf);
          throw err;
        }
        entry = { data, buf, torn: whole };
      } else this.#dirty.delete(idx); // re-inserted below as the newest
      apply(entry.data, pos - idx * bs, pos - offset, end - pos);
      // Pieces arrive in order: a torn block is whole once a piece reaches its end.
      if (end === idx * bs + blen) entry.torn = false;
      this.#dirty.set(idx, entry);
      pos = end;
    }
  }

  async #storeBlock(idx: number, block: Buffer): Promise<void> {
    // Stored from a copy in one of the server's few store buffers (shared memory, with room
    // to encode in place): hashing and encoding on a worker then allocate nothing, however many
    // blocks go by, and the modified block stays readable until it is stored.
    const buf = await this.#storeBuffers.acquire();
    let stored: Awaited<ReturnType<BlockWriter['store']>>;
    try {
      const copy = buf.subarray(0, block.length);
      block.copy(copy);
      stored = await this.#writer.store(copy, { inPlace: true });
    } finally {
      this.#storeBuffers.release(buf);
    }
    await this.#writer.add(idx, block.length, stored, this.#stats);
    // Only now may readers stop seeing the in-memory copy.
    this.#overlay.set(idx, stored?.checksum ?? null);
    if (stored) this.#unsynced.set(idx, ++this.#stores);
    const entry = this.#dirty.get(idx);
    if (entry?.data === block) {
      this.#dirty.delete(idx);
      this.#pool.release(entry.buf);
    }
  }

  /** Makes every write so far durable in the new version's block list (FLUSH, FUA). */
  flush(): Promise<void> {
    return this.#serial(async () => {
      for (const [idx, { data, buf, torn }] of [...this.#dirty]) {
        if (!torn) await this.#storeBlock(idx, data);
        else {
          // Only a write cut off mid-payload leaves one (a FLUSH follows a write's whole payload).
          this.#dirty.delete(idx);
          this.#pool.release(buf);
        }
      }
      const upTo = this.#stores;
      await this.#writer.flush();
      this.#synced(upTo);
    });
  }

  protected override async blockData(idx: number, st: BlockState): Promise<BlockRef | undefined> {
    if (st.kind === 'data' && this.#unsynced.has(idx)) {
      const upTo = this.#stores;
      await this.store.sync();
      this.#synced(upTo);
    }
    return super.blockData(idx, st);
  }

  /** Every store up to number `upTo` is readable now. */
  #synced(upTo: number): void {
    for (const [idx, n] of this.#unsynced) if (n <= upTo) this.#unsynced.delete(idx);
  }

  /**
   * Clean end: stores what is left and makes the new version valid (or invalid, and throws);
   * either way its metadata copy is written now (completeWithCopy), as a backup's is.
   */
  async complete(): Promise<void> {
    await this.flush();
    await completeWithCopy(this.meta, this.newVersion.uid, this.copies);
    this.newVersion.status = 'valid';
  }

  /**
   * Gives the modified blocks' buffers back without storing them (the connection has ended;
   * complete() first to keep them). Waits for work already queued.
   */
  dispose(): Promise<void> {
    return this.#serial(async () => {
      this.#disposed = true;
      for (const { buf } of this.#dirty.values()) this.#pool.release(buf);
      this.#dirty.clear();
      this.#pool.unregister(this);
    });
  }

  get blocksWritten(): number {
    return this.#overlay.size + this.#dirty.size;
  }
}
