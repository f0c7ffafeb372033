/**
 * Hint extents (streamed) -> plan. Extents in offset order, as rbd diff prints them, go
 * straight into a HintPlanner: nothing is held per extent. A file whose extents are out of
 * order (hand-made, another tool) was accepted before hints were streamed, so it still is:
 * the extents seen so far are kept compactly (21 bytes each, in typed arrays) from the start,
 * and when one arrives out of order the rest is kept too, sorted at the end and planned as
 * before. Keeping stops at `maxUnsorted` extents, which bounds the memory: a larger file must
 * be in order (any rbd diff output is).
 */
import { InputError } from '../errors.js';
import type { HintExtent } from '../hints/rbd-diff.js';
import { HintPlanner } from './plan.js';

/**
 * 500k extents kept: ~10.5 MB (plus growth and the sort order); measured with a reversed file
 * of 1M extents, keeping 1M took the backup to 149 MB peak RSS, too close to the 150 MB bound.
 */
export const MAX_UNSORTED = 500_000;

export interface HintReader {
  /** 'hint file PATH', for messages. */
  name: string;
  /** Hands each extent (in file order, with its index) to `onExtent`; throws InputError. */
  read(onExtent: (extent: HintExtent, index: number) => void): Promise<void>;
}

export async function planFromHints(
  size: number,
  blockSize: number,
  base: { size: number } | undefined,
  hints: HintReader,
  maxUnsorted = MAX_UNSORTED,
): Promise<Uint8Array> {
  const planner = new HintPlanner(size, blockSize, base, hints.name);
  let kept: ExtentList | undefined = new ExtentList(maxUnsorted);
  let sorted = true;
  await hints.read((e, index) => {
    if (e.length === 0) return; // ignored, as before: not even checked against the size
    if (sorted) {
      if (kept && !kept.push(e, index)) kept = undefined; // too many to keep; fine while in order
      if (planner.inOrder(e)) return planner.add(e, index);
      if (!kept) {
        throw new InputError(
          `${hints.name}: extent [${index}] at offset ${e.offset} is out of offset order; ` +
            `more than ${maxUnsorted} extents are accepted only in offset order, as rbd diff prints them`,
        );
      }
      sorted = false; // e is kept; everything from here on is kept and sorted at the end
      return;
    }
    if (!kept!.push(e, index)) {
      throw new InputError(
        `${hints.name}: more than ${maxUnsorted} extents out of offset order; sort them by offset (rbd diff prints them sorted)`,
      );
    }
  });
  if (sorted) return planner.finish();
  return kept!.plan(size, blockSize, base, hints.name);
}

class ExtentList {
  #offsets = new Float64Array(1024);
  #lengths = new Float64Array(1024);
  #exists = new Uint8Array(1024);
  #indices = new Uint32Array(1024);
  #count = 0;

  constructor(readonly max: number) {}

  /** False when full (`max` extents). */
  push(e: HintExtent, index: number): boolean {
    if (this.#count >= this.max) return false;
    if (this.#count === this.#offsets.length) this.#grow(Math.min(this.max, this.#count * 2));
    const i = this.#count++;
    this.#offsets[i] = e.offset;
    this.#lengths[i] = e.length;
    this.#exists[i] = e.exists ? 1 : 0;
    this.#indices[i] = index;
    return true;
  }

  #grow(capacity: number): void {
    const grow = <T extends Float64Array | Uint8Array | Uint32Array>(a: T, make: (n: number) => T): T => {
      const b = make(capacity);
      b.set(a);
      return b;
    };
    this.#offsets = grow(this.#offsets, (n) => new Float64Array(n));
    this.#lengths = grow(this.#lengths, (n) => new Float64Array(n));
    this.#exists = grow(this.#exists, (n) => new Uint8Array(n));
    this.#indices = grow(this.#indices, (n) => new Uint32Array(n));
  }

  /** Sorted by offset (file order among equal offsets, which then overlap), into a fresh planner. */
  plan(size: number, blockSize: number, base: { size: number } | undefined, what: string): Uint8Array {
    const offsets = this.#offsets;
    const order = new Uint32Array(this.#count);
    for (let i = 0; i < order.length; i++) order[i] = i;
    order.sort((a, b) => offsets[a] - offsets[b] || a - b);
    const planner = new HintPlanner(size, blockSize, base, what);
    for (const i of order) {
      planner.add(
        { offset: offsets[i], length: this.#lengths[i], exists: this.#exists[i] === 1 },
        this.#indices[i],
      );
    }
    return planner.finish();
  }
}
