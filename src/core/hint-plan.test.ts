/**
 * planFromHints against the old checker and planner (test/lib/rbd-diff-reference.ts): extents
 * in any order are accepted exactly when the old code accepted them and give the same plan;
 * past the unsorted limit, only out-of-order input is refused, with one line.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../errors.js';
import type { HintExtent } from '../hints/rbd-diff.js';
import { oldCheckHints, oldPlan } from '../../test/lib/rbd-diff-reference.js';
import { planFromHints } from './hint-plan.js';

const reader = (extents: HintExtent[]) => ({
  name: 'hint file h.json',
  read: async (onExtent: (e: HintExtent, i: number) => void) => extents.forEach((e, i) => onExtent(e, i)),
});

type Outcome = { ok: true; actions: Uint8Array } | { ok: false; message: string };

async function outcome(f: () => Promise<Uint8Array> | Uint8Array): Promise<Outcome> {
  try {
    return { ok: true, actions: await f() };
  } catch (err) {
    assert.ok(err instanceof InputError, `threw ${String(err)}`);
    assert.doesNotMatch(err.message, /[\r\n]/);
    return { ok: false, message: err.message };
  }
}

const input = fc.record({
  extents: fc.array(fc.record({ offset: fc.nat(2000), length: fc.nat(400), exists: fc.boolean() }), {
    maxLength: 20,
  }),
  sorted: fc.boolean(),
  size: fc.nat(2500),
  blockSize: fc.constantFrom(1, 7, 64, 512),
  baseSize: fc.option(fc.nat(2500), { nil: undefined }),
});

describe('planFromHints', () => {
  it('accepts extents in any order exactly as the old checker did, with the same plan', async () => {
    await fc.assert(
      fc.asyncProperty(input, async ({ extents, sorted, size, blockSize, baseSize }) => {
        const list = sorted ? [...extents].sort((a, b) => a.offset - b.offset) : extents;
        const base = baseSize === undefined ? undefined : { size: baseSize };
        const old = await outcome(() =>
          oldPlan({
            size,
            blockSize,
            hints: oldCheckHints(
              list.map((e) => ({ ...e })),
              size,
            ),
            base,
          }),
        );
        const now = await outcome(() => planFromHints(size, blockSize, base, reader(list)));
        assert.equal(now.ok, old.ok, JSON.stringify({ old, now }));
        if (now.ok && old.ok) assert.deepEqual(now.actions, old.actions);
      }),
      { numRuns: 500 },
    );
  });

  it('past the unsorted limit refuses only extents out of order', async () => {
    await fc.assert(
      fc.asyncProperty(input, async ({ extents, size, blockSize, baseSize }) => {
        const base = baseSize === undefined ? undefined : { size: baseSize };
        const old = await outcome(() =>
          oldPlan({
            size,
            blockSize,
            hints: oldCheckHints(
              extents.map((e) => ({ ...e })),
              size,
            ),
            base,
          }),
        );
        const now = await outcome(() => planFromHints(size, blockSize, base, reader(extents), 3));
        if (now.ok) {
          assert.ok(old.ok);
          assert.deepEqual(now.actions, old.actions);
        } else if (old.ok) {
          assert.match(now.message, /offset order/);
          const nonEmpty = extents.filter((e) => e.length > 0);
          assert.ok(nonEmpty.length > 3, 'refused within the limit');
          assert.ok(nonEmpty.some((e, i) => i > 0 && e.offset < nonEmpty[i - 1].offset));
        }
      }),
      { numRuns: 500 },
    );
  });

  it('names the file and the extent', async () => {
    const e = (offset: number) => ({ offset, length: 10, exists: true });
    await assert.rejects(
      planFromHints(1000, 100, undefined, reader([e(500), e(0), e(505)])),
      /hint file h\.json: extents overlap at offset 505 \(extent \[2\]\)/,
    );
    await assert.rejects(
      planFromHints(1000, 100, undefined, reader([e(0), e(100), e(200), e(300), e(50)]), 3),
      /hint file h\.json: extent \[4\] at offset 50 is out of offset order; more than 3 extents/,
    );
    await assert.rejects(
      planFromHints(1000, 100, undefined, reader([e(100), e(0), e(200), e(300), e(400)]), 3),
      /hint file h\.json: more than 3 extents out of offset order/,
    );
  });
});
