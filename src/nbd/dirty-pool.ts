/**
 * The buffers of modified blocks of every -w connection (ExportWriter), not stored yet: at most
 * `total` bytes of them exist, whatever the number of writers, and they are reused rather than
 * left to the garbage collector: buffers freed and allocated again as writers come and go
 * would each stay in memory until a collection, far beyond the bound.
 *
 * A writer that needs a buffer when none is free stores its own oldest modified block first
 * (storing early is harmless: the block becomes part of the version being built); one that has
 * none waits in line, and the writer holding the most is asked to store one of its own, so that
 * writers gone quiet with modified blocks never keep the others waiting.
 */
export interface DirtyHolder {
  /** Modified blocks held. */
  readonly dirtyBlocks: number;
  /** Stores the oldest modified block (in the holder's own order of work) and gives its buffer back. */
  spill(): Promise<void>;
}

export class DirtyPool {
  readonly total: number;
  #allocated = 0;
  readonly #free: Buffer[] = [];
  readonly #waiting: { size: number; go: (b: Buffer) => void }[] = [];
  readonly #holders = new Set<DirtyHolder>();
  /** Holders asked to spill and not done yet. */
  readonly #spilling = new Set<DirtyHolder>();

  constructor(total: number) {
    this.total = total;
  }

  /** Bytes of buffers in existence (held or free). */
  get allocatedBytes(): number {
    return this.#allocated;
  }

  register(h: DirtyHolder): void {
    this.#holders.add(h);
  }

  unregister(h: DirtyHolder): void {
    this.#holders.delete(h);
  }

  /**
   * A buffer of `size` bytes (contents undefined) for `holder`, which calls this from its own
   * order of work; `spillOwn` stores the holder's oldest modified block there and then.
   */
  async acquire(holder: DirtyHolder, size: number, spillOwn: () => Promise<void>): Promise<Buffer> {
    for (;;) {
      if (this.#waiting.length === 0) {
        const b = this.#take(size);
        if (b) return b;
      }
      if (holder.dirtyBlocks === 0) break;
      await spillOwn();
    }
    const wait = new Promise<Buffer>((go) => this.#waiting.push({ size, go }));
    this.#askSpill(holder);
    return wait;
  }

  /** Gives a buffer from acquire() back. */
  release(buf: Buffer): void {
    const w = this.#waiting[0];
    if (w) {
      if (w.size === buf.length) {
        this.#waiting.shift();
        w.go(buf);
        return;
      }
      this.#allocated -= buf.length;
      const b = this.#take(w.size);
      if (b) {
        this.#waiting.shift();
        w.go(b);
      }
      return;
    }
    this.#free.push(buf);
  }

  #take(size: number): Buffer | undefined {
    const i = this.#free.findIndex((b) => b.length === size);
    if (i >= 0) return this.#free.splice(i, 1)[0];
    while (this.#allocated + size > this.total && this.#free.length > 0)
      this.#allocated -= this.#free.pop()!.length;
    if (this.#allocated + size > this.total && this.#allocated > 0) return undefined;
    this.#allocated += size;
    return Buffer.alloc(size);
  }

  #askSpill(except?: DirtyHolder): void {
    let victim: DirtyHolder | undefined;
    for (const h of this.#holders) {
      if (h === except || this.#spilling.has(h) || h.dirtyBlocks === 0) continue;
      if (!victim || h.dirtyBlocks > victim.dirtyBlocks) victim = h;
    }
    if (!victim) return; // buffers in flight come back without being asked
    const v = victim;
    this.#spilling.add(v);
    v.spill().then(
      () => {
        this.#spilling.delete(v);
        // More waiting: ask again (a failed spill is not retried: the holder reports its own
        // failure to its client, and buffers still come back as blocks are stored).
        if (this.#waiting.length > 0) this.#askSpill();
      },
      () => this.#spilling.delete(v),
    );
  }
}
