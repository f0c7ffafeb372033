/**
 * `rbd diff --format=json` output -> validated extents.
 * `exists` is accepted as the strings "true"/"false" (what rbd prints) and as booleans.
 */
import { z } from 'zod';
import { InputError } from '../errors.js';

export interface HintExtent {
  offset: number;
  length: number;
  exists: boolean;
}

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
export function parseRbdDiff(text: string, what = 'hint file'): HintExtent[] {
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
export function checkHints(extents: HintExtent[], size: number, what = 'hint file'): HintExtent[] {
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
