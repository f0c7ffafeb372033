/**
 * Bytes in use against a fixed total, shared by every connection of the NBD server: a request
 * waits for its share, in arrival order, so what all requests in flight hold never exceeds the
 * total, however many connections send them.
 */
export class Budget {
  readonly total: number;
  #free: number;
  readonly #waiting: { n: number; go: () => void }[] = [];

  constructor(total: number) {
    this.total = total;
    this.#free = total;
  }

  /** Bytes now in use (taken and not given back). */
  get used(): number {
    return this.total - this.#free;
  }

  /**
   * Sets `n` bytes aside for the caller once they are free, and resolves with what it took:
   * `n`, or the whole budget when `n` is more (such a request runs alone rather than never).
   * Give exactly that back.
   */
  async take(n: number): Promise<number> {
    n = Math.min(n, this.total);
    if (this.#waiting.length === 0 && this.#free >= n) this.#free -= n;
    else await new Promise<void>((go) => this.#waiting.push({ n, go }));
    return n;
  }

  give(n: number): void {
    this.#free += n;
    while (this.#waiting.length > 0 && this.#free >= this.#waiting[0].n) {
      const w = this.#waiting.shift()!;
      this.#free -= w.n;
      w.go();
    }
  }
}
