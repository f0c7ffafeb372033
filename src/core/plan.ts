/**
 * The block planner (pure): source size + optional hints + optional base -> one action per block.
 *
 * - no hints: every block is read (with a base, unchanged blocks then dedup against it);
 * - a block touched by an `exists:true` extent is read;
 * - a block wholly covered by `exists:false` extents (and touched by no `exists:true`) is
 *   DISCARD: stored sparse like SPARSE, but kept apart so that the hint check can verify that it
 *   really reads as zeros;
 * - a block only partly covered by `exists:false` is read, never assumed zero;
 * - any other block keeps the base's entry when there is a base whose block has the same length,
 *   is read when the length changed (the image grew or shrank through it) or lies beyond the
 *   base's end (the image grew: never assumed zero), and is sparse without a base.
 *
 * One byte per block: 1 TiB at 4 MiB is 256 KiB of plan.
 */
import { blockCount, blockLength } from '../blocks/blocks.js';
import { InputError } from '../errors.js';
import type { HintExtent } from '../hints/rbd-diff.js';

export const SPARSE = 0;
export const READ = 1;
export const KEEP = 2;
/** Sparse because the hints say the region was discarded (exists:false). */
export const DISCARD = 3;
export type Action = typeof SPARSE | typeof READ | typeof KEEP | typeof DISCARD;

export interface PlanInput {
  size: number;
  blockSize: number;
  /** Extents in offset order, or undefined for "read all". */
  hints?: readonly HintExtent[];
  base?: { size: number };
}

export function plan(input: PlanInput): Uint8Array {
  const { size, blockSize, hints, base } = input;
  if (!hints) return new Uint8Array(blockCount(size, blockSize)).fill(READ);
  const planner = new HintPlanner(size, blockSize, base);
  hints.forEach((e, i) => planner.add(e, i));
  return planner.finish();
}

/**
 * Builds the plan from hint extents as they stream in, checking each (inside the source, in
 * offset order, no overlaps) so that no list of extents is ever held. Extents must come in
 * offset order, as rbd diff prints them: that is what lets a block's exists:false coverage be
 * summed and settled as soon as the extents move past it, and overlaps be found by comparing
 * with the previous extent alone. (hint-plan.ts sorts the rare file that is not in order.)
 */
export class HintPlanner {
  readonly #actions: Uint8Array;
  readonly #size: number;
  readonly #blockSize: number;
  readonly #what: string;
  #prevStart = 0;
  #prevEnd = 0;
  // The one block whose exists:false coverage is still being summed (-1: none).
  #partialBlock = -1;
  #partialCovered = 0;

  constructor(size: number, blockSize: number, base?: { size: number }, what = 'hint file') {
    this.#size = size;
    this.#blockSize = blockSize;
    this.#what = what;
    const n = blockCount(size, blockSize);
    const actions = new Uint8Array(n);
    const baseBlocks = base ? blockCount(base.size, blockSize) : 0;
    for (let i = 0; i < n; i++) {
      if (i < baseBlocks && base) {
        actions[i] = blockLength(i, base.size, blockSize) === blockLength(i, size, blockSize) ? KEEP : READ;
      } else {
        // Past the base's end (the source grew) nothing says what is there: hints name what
        // changed since the base, and these blocks were not in it. Read them; a hole the
        // source's allocation map reports is still skipped without a read (backup.ts).
        actions[i] = base ? READ : SPARSE;
      }
    }
    this.#actions = actions;
  }

  /** Whether `e` can follow the extents added so far (false: it starts before the previous one). */
  inOrder(e: HintExtent): boolean {
    return e.length === 0 || e.offset >= this.#prevStart;
  }

  add(e: HintExtent, index: number): void {
    if (e.length === 0) return;
    const end = e.offset + e.length;
    if (end > this.#size) {
      throw new InputError(
        `${this.#what}: extent [${index}] ${e.offset}+${e.length} ends past the end of the source (${this.#size} bytes); are the hints for this image?`,
      );
    }
    if (e.offset < this.#prevEnd) {
      throw new InputError(
        e.offset >= this.#prevStart
          ? `${this.#what}: extents overlap at offset ${e.offset} (extent [${index}])`
          : `${this.#what}: extent [${index}] at offset ${e.offset} comes before the previous one (${this.#prevStart}); extents must be in offset order, as rbd diff prints them`,
      );
    }
    this.#prevStart = e.offset;
    this.#prevEnd = end;
    const bs = this.#blockSize;
    const actions = this.#actions;
    if (e.exists) {
      // exists:true wins over everything.
      for (let i = Math.floor(e.offset / bs); i * bs < end; i++) actions[i] = READ;
      return;
    }
    // Whole blocks become DISCARD; partly covered ones are summed, and read unless the
    // pieces add up to the whole block.
    for (let i = Math.floor(e.offset / bs); i * bs < end; i++) {
      const start = i * bs;
      const covered = Math.min(end, start + bs) - Math.max(e.offset, start);
      if (covered >= blockLength(i, this.#size, bs)) actions[i] = DISCARD;
      else if (i === this.#partialBlock) this.#partialCovered += covered;
      else {
        this.#settlePartial();
        this.#partialBlock = i;
        this.#partialCovered = covered;
      }
    }
  }

  finish(): Uint8Array {
    this.#settlePartial();
    return this.#actions;
  }

  #settlePartial(): void {
    const i = this.#partialBlock;
    if (i < 0) return;
    // An exists:true extent in the same block has made it READ already; nothing can undo that,
    // since an exists:false coverage of the whole block leaves no room for it.
    this.#actions[i] = this.#partialCovered >= blockLength(i, this.#size, this.#blockSize) ? DISCARD : READ;
    this.#partialBlock = -1;
  }
}

export function countActions(actions: Uint8Array): { read: number; sparse: number; keep: number } {
  let read = 0;
  let sparse = 0;
  let keep = 0;
  for (const a of actions) {
    if (a === READ) read++;
    else if (a === KEEP) keep++;
    else sparse++;
  }
  return { read, sparse, keep };
}

/** Up to `count` distinct random indices of blocks with `action` (reservoir sample, for the hint check). */
export function pickBlocks(
  actions: Uint8Array,
  action: Action,
  count: number,
  random: () => number = Math.random,
): number[] {
  const sample: number[] = [];
  let seen = 0;
  for (let i = 0; i < actions.length; i++) {
    if (actions[i] !== action) continue;
    seen++;
    if (sample.length < count) sample.push(i);
    else {
      const j = Math.floor(random() * seen);
      if (j < count) sample[j] = i;
    }
  }
  return sample.sort((a, b) => a - b);
}
