import type { Budget } from './budget.js';

/**
 * What one connection's reads hold of the block buffers, charged to that connection from the
 * moment a block is let through until the reply chunk sent from it has been handed to the
 * kernel: the block stays pinned in the cache while the chunk waits in the socket, so a client
 * that does not read its replies keeps it, and pays for it alone.
 *
 * Replies are sent a block at a time, so a connection needs little: at most `share` bytes
 * (two 4 MiB blocks), taken from the server-wide `global` budget, which is below the cache's
 * size (whatever connections hold, a block that has its charge gets its buffer). A connection
 * whose share is spent waits for its own replies to drain; the others go on.
 *
 * Reads of a read-only export are charged once per block the connection holds (64 small
 * requests into one block hold one buffer); a writer's are charged per block and request,
 * since reads of its modified blocks are copies.
 */
export class ReadAccount {
  readonly #global: Budget;
  readonly #share: number;
  readonly #unit: number;
  readonly #perBlock: boolean;
  /** Grants held on each block (perBlock only). */
  readonly #held = new Map<number, number>();
  #used = 0;
  /** Grants run one at a time, in arrival order: a block's cost depends on those before it. */
  #queue: Promise<unknown> = Promise.resolve();
  #released: (() => void) | undefined;

  constructor(opts: { global: Budget; share: number; unit: number; perBlock: boolean }) {
    this.#global = opts.global;
    this.#unit = Math.min(opts.unit, opts.global.total);
    this.#share = Math.min(Math.max(opts.share, this.#unit), opts.global.total);
    this.#perBlock = opts.perBlock;
  }

  /** Bytes this connection holds now. */
  get used(): number {
    return this.#used;
  }

  /** Waits until block `idx` may be held; resolves with its release (call once its chunk is sent). */
  acquire(idx: number): Promise<() => void> {
    return this.#turn(() => this.#grant(idx));
  }

  /**
   * Runs `fn` with this connection's grants to itself alone, once everything granted before is
   * given back (a reply that must go out in one piece: no other reply may be waiting with a
   * block held while it streams). Inside, take blocks with `acquire` as usual.
   */
  exclusive<T>(fn: (acquire: (idx: number) => Promise<() => void>) => Promise<T>): Promise<T> {
    return this.#turn(async () => {
      while (this.#used > 0) await this.#whenReleased();
      return fn((idx) => this.#grant(idx));
    });
  }

  #turn<T>(fn: () => Promise<T>): Promise<T> {
    const turn = this.#queue.then(fn);
    this.#queue = turn.catch(() => {});
    return turn;
  }

  #whenReleased(): Promise<void> {
    return new Promise<void>((r) => (this.#released = r));
  }

  async #grant(idx: number): Promise<() => void> {
    const n = this.#perBlock ? (this.#held.get(idx) ?? 0) : 0;
    if (this.#perBlock) this.#held.set(idx, n + 1);
    const cost = n === 0 ? this.#unit : 0;
    while (cost > 0 && this.#used + cost > this.#share) await this.#whenReleased();
    this.#used += cost;
    await this.#global.take(cost);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      let give = this.#unit;
      if (this.#perBlock) {
        const left = this.#held.get(idx)! - 1;
        if (left > 0) give = 0;
        if (left > 0) this.#held.set(idx, left);
        else this.#held.delete(idx);
      }
      if (give === 0) return;
      this.#used -= give;
      this.#global.give(give);
      const wake = this.#released;
      this.#released = undefined;
      wake?.();
    };
  }
}
