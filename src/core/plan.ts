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
 *   is read when the length changed (the image grew or shrank through it), and is sparse
 *   without a base or beyond the base's end.
 *
 * One byte per block: 1 TiB at 4 MiB is 256 KiB of plan.
 */
import { blockCount, blockLength } from '../blocks/blocks.js';
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
  /** Checked (sorted, non-overlapping, inside the source) extents, or undefined for "read all". */
  hints?: readonly HintExtent[];
  base?: { size: number };
}

export function plan(input: PlanInput): Uint8Array {
  const { size, blockSize, hints, base } = input;
  const n = blockCount(size, blockSize);
  const actions = new Uint8Array(n);
  if (!hints) return actions.fill(READ);

  const baseBlocks = base ? blockCount(base.size, blockSize) : 0;
  for (let i = 0; i < n; i++) {
    if (i < baseBlocks && base) {
      actions[i] = blockLength(i, base.size, blockSize) === blockLength(i, size, blockSize) ? KEEP : READ;
    } else {
      actions[i] = SPARSE;
    }
  }

  // exists:false first: whole blocks become sparse, partly covered ones are read.
  const partial = new Map<number, number>();
  for (const e of hints) {
    if (e.exists || e.length === 0) continue;
    const end = e.offset + e.length;
    for (let i = Math.floor(e.offset / blockSize); i * blockSize < end; i++) {
      const start = i * blockSize;
      const covered = Math.min(end, start + blockSize) - Math.max(e.offset, start);
      const len = blockLength(i, size, blockSize);
      if (covered >= len) actions[i] = DISCARD;
      else partial.set(i, (partial.get(i) ?? 0) + covered);
    }
  }
  for (const [i, covered] of partial) {
    actions[i] = covered >= blockLength(i, size, blockSize) ? DISCARD : READ;
  }
  // exists:true wins over everything.
  for (const e of hints) {
    if (!e.exists || e.length === 0) continue;
    const end = e.offset + e.length;
    for (let i = Math.floor(e.offset / blockSize); i * blockSize < end; i++) actions[i] = READ;
  }
  return actions;
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
