/**
 * Property-based tests (fast-check) for the hint parser, the hint checker and the planner:
 * random extents, sizes, block sizes and bases against a byte-level reference model and the
 * safety rules (a block an exists:true extent touches is read; a block only partly covered by
 * exists:false is read, never assumed zero; KEEP only with a base; the parser throws nothing
 * but InputError, whatever the input).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../errors.js';
import { parseRbdDiff } from '../hints/rbd-diff.js';
import type { HintExtent } from '../hints/rbd-diff.js';
import { DISCARD, HintPlanner, KEEP, READ, SPARSE, plan } from './plan.js';
import { oldCheckHints, oldPlan } from '../../test/lib/rbd-diff-reference.js';

const RUNS = 400;

/** Sorted, non-overlapping extents inside [0, size): what checkHints hands the planner. */
const checkedExtents = (size: number) =>
  fc
    .array(fc.record({ gap: fc.nat(300), length: fc.nat(300), exists: fc.boolean() }), { maxLength: 25 })
    .map((parts) => {
      const out: HintExtent[] = [];
      let pos = 0;
      for (const p of parts) {
        const offset = pos + p.gap;
        const length = Math.min(p.length, size - offset);
        if (offset >= size || length < 0) break;
        out.push({ offset, length, exists: p.exists });
        pos = offset + length;
      }
      return out;
    });

const planInput = fc
  .record({
    blockSize: fc.constantFrom(1, 7, 64, 100, 512),
    size: fc.nat(3000),
    baseSize: fc.option(fc.nat(3000), { nil: undefined }),
  })
  .chain((p) => checkedExtents(p.size).map((hints) => ({ ...p, hints })));

function overlap(e: HintExtent, start: number, end: number): number {
  return Math.max(0, Math.min(end, e.offset + e.length) - Math.max(start, e.offset));
}

describe('planner properties', () => {
  it('matches a byte-level reference model', () => {
    fc.assert(
      fc.property(planInput, ({ blockSize, size, baseSize, hints }) => {
        const base = baseSize === undefined ? undefined : { size: baseSize };
        const actions = plan({ size, blockSize, hints, base });
        const n = Math.ceil(size / blockSize);
        assert.equal(actions.length, n);
        const baseBlocks = base ? Math.ceil(base.size / blockSize) : 0;
        for (let i = 0; i < n; i++) {
          const start = i * blockSize;
          const end = Math.min(size, start + blockSize);
          const len = end - start;
          const touchedTrue = hints.some((e) => e.exists && overlap(e, start, end) > 0);
          const falseCovered = hints
            .filter((e) => !e.exists)
            .reduce((sum, e) => sum + overlap(e, start, end), 0);
          let want: number;
          if (touchedTrue) want = READ;
          else if (falseCovered > 0) want = falseCovered >= len ? DISCARD : READ;
          else if (base && i < baseBlocks) {
            const baseLen = Math.min(blockSize, base.size - start);
            want = baseLen === len ? KEEP : READ;
          } else want = base ? READ : SPARSE;
          assert.equal(actions[i], want, `block ${i} of ${n}`);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('never marks SPARSE or DISCARD a block that exists:true touches or exists:false covers only partly', () => {
    fc.assert(
      fc.property(planInput, ({ blockSize, size, baseSize, hints }) => {
        const actions = plan({
          size,
          blockSize,
          hints,
          base: baseSize === undefined ? undefined : { size: baseSize },
        });
        for (let i = 0; i < actions.length; i++) {
          if (actions[i] !== SPARSE && actions[i] !== DISCARD) continue;
          const start = i * blockSize;
          const end = Math.min(size, start + blockSize);
          assert.ok(
            !hints.some((e) => e.exists && overlap(e, start, end) > 0),
            `block ${i} touched by exists:true`,
          );
          const covered = hints.filter((e) => !e.exists).reduce((s, e) => s + overlap(e, start, end), 0);
          assert.ok(
            covered === 0 || covered === end - start,
            `block ${i} only partly covered by exists:false`,
          );
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('KEEP only with a base, only inside it, only for untouched blocks', () => {
    fc.assert(
      fc.property(planInput, ({ blockSize, size, baseSize, hints }) => {
        const base = baseSize === undefined ? undefined : { size: baseSize };
        const actions = plan({ size, blockSize, hints, base });
        for (let i = 0; i < actions.length; i++) {
          if (actions[i] !== KEEP) continue;
          assert.ok(base, 'KEEP without a base');
          assert.ok(i * blockSize < base.size, 'KEEP beyond the base');
          const start = i * blockSize;
          const end = Math.min(size, start + blockSize);
          assert.ok(!hints.some((e) => overlap(e, start, end) > 0), `block ${i} is hinted but kept`);
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('without hints every block is read', () => {
    fc.assert(
      fc.property(fc.nat(5000), fc.integer({ min: 1, max: 600 }), (size, blockSize) => {
        assert.ok(plan({ size, blockSize }).every((a) => a === READ));
      }),
    );
  });
});

describe('hint checker properties (HintPlanner)', () => {
  const rawExtent = fc.record({ offset: fc.nat(2000), length: fc.nat(500), exists: fc.boolean() });
  it('refuses (InputError) exactly extents past the end, overlapping or out of order; otherwise plans as before', () => {
    fc.assert(
      fc.property(
        fc.array(rawExtent, { maxLength: 20 }),
        fc.nat(2500),
        fc.constantFrom(1, 7, 64, 512),
        fc.option(fc.nat(2500), { nil: undefined }),
        (extents, size, blockSize, baseSize) => {
          const base = baseSize === undefined ? undefined : { size: baseSize };
          const nonEmpty = extents.filter((e) => e.length > 0);
          const pastEnd = nonEmpty.some((e) => e.offset + e.length > size);
          const outOfOrder = nonEmpty.some(
            (e, i) => i > 0 && e.offset < nonEmpty[i - 1].offset + nonEmpty[i - 1].length,
          );
          let actions: Uint8Array;
          try {
            const planner = new HintPlanner(size, blockSize, base);
            extents.forEach((e, i) => planner.add(e, i));
            actions = planner.finish();
          } catch (err) {
            assert.ok(err instanceof InputError, String(err));
            assert.doesNotMatch(err.message, /\n/);
            assert.ok(pastEnd || outOfOrder, `refused good extents: ${err.message}`);
            return;
          }
          assert.ok(!pastEnd && !outOfOrder, 'accepted bad extents');
          // The old checker (sorting) accepts the same in-order extents, and the old planner agrees.
          const old = oldPlan({ size, blockSize, hints: oldCheckHints(extents, size), base });
          assert.deepEqual(actions, old);
        },
      ),
      { numRuns: RUNS },
    );
  });
});

describe('hint parser properties', () => {
  const onlyInputError = (text: string) => {
    try {
      parseRbdDiff(text);
    } catch (err) {
      assert.ok(err instanceof InputError, `threw ${String(err)}`);
      assert.doesNotMatch(err.message, /[\r\n]/, 'one line');
    }
  };

  it('throws nothing but a one-line InputError on arbitrary JSON', () => {
    fc.assert(fc.property(fc.json(), onlyInputError), { numRuns: RUNS });
  });

  it('throws nothing but a one-line InputError on arbitrary text', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary', maxLength: 200 }), onlyInputError), { numRuns: RUNS });
  });

  it('throws nothing but a one-line InputError on near-miss extent lists', () => {
    const field = fc.oneof(
      fc.integer(),
      fc.double(),
      fc.constantFrom(
        -1,
        2 ** 53,
        2 ** 53 + 2,
        1e300,
        Number.MAX_SAFE_INTEGER,
        'true',
        'false',
        '0',
        null,
        true,
      ),
      fc.string({ maxLength: 5 }),
    );
    const extent = fc.record({ offset: field, length: field, exists: field }, { requiredKeys: [] });
    fc.assert(
      fc.property(fc.array(extent, { maxLength: 6 }), (arr) => onlyInputError(JSON.stringify(arr))),
      { numRuns: RUNS },
    );
  });

  it('round-trips valid extents, exists as strings or booleans', () => {
    const extent = fc.record({
      offset: fc.nat(Math.floor(Number.MAX_SAFE_INTEGER / 2)),
      length: fc.nat(Math.floor(Number.MAX_SAFE_INTEGER / 2)),
      exists: fc.boolean(),
      asString: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(extent, { maxLength: 10 }), (arr) => {
        const text = JSON.stringify(
          arr.map((e) => ({
            offset: e.offset,
            length: e.length,
            exists: e.asString ? String(e.exists) : e.exists,
          })),
        );
        assert.deepEqual(
          parseRbdDiff(text),
          arr.map((e) => ({ offset: e.offset, length: e.length, exists: e.exists })),
        );
      }),
      { numRuns: RUNS },
    );
  });
});
