/**
 * The hint parser, checker and planner as they were before hints were streamed (whole file
 * through JSON.parse, extents sorted in memory): the reference the streaming parser and
 * HintPlanner are compared with in the property tests. Test-only; do not use in src/.
 * The one intended difference: the old checker sorted extents, the planner now requires them
 * in offset order (as rbd diff prints them). Whole exists:false blocks are DISCARD here too.
 */
import { z } from 'zod';
import { blockCount, blockLength } from '../../src/blocks/blocks.js';
import { InputError } from '../../src/errors.js';
import type { HintExtent } from '../../src/hints/rbd-diff.js';
import { DISCARD, KEEP, READ, SPARSE } from '../../src/core/plan.js';

const extentSchema = z
  .object({
    offset: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    length: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    exists: z.union([z.boolean(), z.enum(['true', 'false'])], {
      error: 'expected true, false, "true" or "false"',
    }),
  })
  .loose();

const hintsSchema = z.array(extentSchema);

/** Parses and validates hint JSON. Throws InputError naming the file and the first problem. */
export function oldParseRbdDiff(text: string, what = 'hint file'): HintExtent[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // JSON.parse quotes the offending text, newlines included: keep the error on one line.
    throw new InputError(
      `${what} is not valid JSON: ${(err as Error).message.replace(/\s*[\r\n]+\s*/g, ' ')}`,
    );
  }
  const parsed = hintsSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue.path.length
      ? `at ${issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}`
      : '';
    throw new InputError(
      `${what} is not rbd diff JSON (expected [{"offset":N,"length":N,"exists":"true"|"false"}, ...]) ${where}: ${issue.message}`.replace(
        /\s+:/,
        ':',
      ),
    );
  }
  const extents = parsed.data.map((e) => ({
    offset: e.offset,
    length: e.length,
    exists: e.exists === true || e.exists === 'true',
  }));
  for (const e of extents) {
    if (!Number.isSafeInteger(e.offset + e.length)) {
      throw new InputError(`${what}: extent at offset ${e.offset} with length ${e.length} is too large`);
    }
  }
  return extents;
}

/** Checks extents against the source size and for overlaps; returns them sorted by offset. */
export function oldCheckHints(extents: HintExtent[], size: number, what = 'hint file'): HintExtent[] {
  const sorted = extents.filter((e) => e.length > 0).sort((a, b) => a.offset - b.offset);
  let end = 0;
  for (const e of sorted) {
    if (e.offset + e.length > size) {
      throw new InputError(
        `${what}: extent ${e.offset}+${e.length} ends past the end of the source (${size} bytes); are the hints for this image?`,
      );
    }
    if (e.offset < end) throw new InputError(`${what}: extents overlap at offset ${e.offset}`);
    end = e.offset + e.length;
  }
  return sorted;
}

export function oldPlan(input: {
  size: number;
  blockSize: number;
  hints?: readonly HintExtent[];
  base?: { size: number };
}): Uint8Array {
  const { size, blockSize, hints, base } = input;
  const n = blockCount(size, blockSize);
  const actions = new Uint8Array(n);
  if (!hints) return actions.fill(READ);

  const baseBlocks = base ? blockCount(base.size, blockSize) : 0;
  for (let i = 0; i < n; i++) {
    if (i < baseBlocks && base) {
      actions[i] = blockLength(i, base.size, blockSize) === blockLength(i, size, blockSize) ? KEEP : READ;
    } else {
      // Past a base's end nothing is known: read. Without a base, unhinted means sparse.
      actions[i] = base ? READ : SPARSE;
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
