/**
 * The streaming hint parser against the old whole-file parser (test/lib/rbd-diff-reference.ts):
 * on any bytes, cut into chunks anywhere, it accepts exactly what the old one accepted, yields
 * the same extents, and otherwise throws one one-line InputError. Plus a large file (200k
 * extents) parsed and planned as before.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../errors.js';
import { HintPlanner } from '../core/plan.js';
import { RbdDiffParser } from './rbd-diff.js';
import type { HintExtent } from './rbd-diff.js';
import { oldCheckHints, oldParseRbdDiff, oldPlan } from '../../test/lib/rbd-diff-reference.js';

const RUNS = 500;

/** Parses `bytes` pushed in chunks cut at `cuts` (fractions of the length). */
function streamParse(bytes: Buffer, cuts: number[] = []): HintExtent[] {
  const out: HintExtent[] = [];
  const parser = new RbdDiffParser('hint file h.json', (e, i) => {
    assert.equal(i, out.length, 'indices in order');
    out.push(e);
  });
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  let pos = 0;
  for (const p of [...points, bytes.length]) {
    // A reused buffer, as the file reader hands out: the parser must copy what it keeps.
    const chunk = Buffer.from(bytes.subarray(pos, p));
    parser.push(chunk);
    chunk.fill(0x41);
    pos = p;
  }
  parser.end();
  return out;
}

type Outcome = { ok: true; extents: HintExtent[] } | { ok: false; message: string };

function outcome(f: () => HintExtent[]): Outcome {
  try {
    return { ok: true, extents: f() };
  } catch (err) {
    assert.ok(err instanceof InputError, `threw ${String(err)}`);
    assert.doesNotMatch(err.message, /[\r\n]/, 'one line');
    assert.match(err.message, /hint file h\.json/, 'names the file');
    return { ok: false, message: err.message };
  }
}

function sameAsOld(bytes: Buffer, cuts: number[]): void {
  const old = outcome(() => oldParseRbdDiff(bytes.toString('utf8'), 'hint file h.json'));
  const now = outcome(() => streamParse(bytes, cuts));
  assert.equal(now.ok, old.ok, `old: ${JSON.stringify(old)}, new: ${JSON.stringify(now)}`);
  if (now.ok && old.ok) assert.deepEqual(now.extents, old.extents);
}

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 });

/** Whitespace as JSON allows it, and some it does not. */
const ws = fc.constantFrom('', '', ' ', '\n', '\t', '\r\n  ', '\u00a0', '\f');

const value = fc.oneof(
  fc.nat(2 ** 40),
  fc.integer({ min: -5, max: 5 }),
  fc.double(),
  fc.constantFrom(
    'true',
    'false',
    true,
    false,
    null,
    '0',
    2 ** 53,
    1e300,
    '4096.0',
    '1e3',
    '-0',
    '01',
    '"tru\\u0065"',
  ),
  fc.string({ maxLength: 4 }),
);

/** One element as text: near-miss extents, odd keys and escapes, nested extra fields. */
const element = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .record({ offset: value, length: value, exists: value }, { requiredKeys: [] })
      .map((o) => JSON.stringify(o)),
  },
  {
    weight: 4,
    arbitrary: fc
      .tuple(
        fc.nat(2 ** 40),
        fc.nat(2 ** 30),
        fc.boolean(),
        fc.boolean(),
        ws,
        fc.option(fc.jsonValue({ maxDepth: 2 })),
      )
      .map(([o, l, e, asString, w, extra]) => {
        const ex = asString ? `"${e}"` : String(e);
        const extraField = extra === null ? '' : `,${w}"x\\"]}":${w}${JSON.stringify(extra)}`;
        return `{${w}"offset":${o},"length":${w}${l},"exists"${w}:${ex}${extraField}}`;
      }),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '{"off\\u0073et":1,"length":2,"exists":"true"}',
      '{"offset":1,"length":2,"exists":"true","offset":3}',
      '{"__proto__":{},"offset":1,"length":2,"exists":false}',
      '{"offset":1,"length":2,"exists":"tr\u00fce"}',
      '{"offset":1,"length":2,"exists":"true"',
      '{"offset":1,"length":2,"exists":"true"}}',
      '{"offset":1,"length":2,"exists":"true"]',
      '[{"offset":1,"length":2,"exists":"true"}]',
      '{"a":"\\\\","offset":1,"length":2,"exists":"true"}',
      '{"a":"\\"]","offset":1,"length":2,"exists":"true"}',
      '0',
      'null',
      '"x"',
      'tru',
      '',
      '}',
    ),
  },
  { weight: 1, arbitrary: fc.json({ maxDepth: 2 }) },
);

const document = fc
  .tuple(
    ws,
    fc.array(fc.tuple(ws, element, ws), { maxLength: 6 }),
    ws,
    fc.constantFrom('', '', ',', ']', ' x', '['),
  )
  .map(
    ([lead, elems, trail, junk]) =>
      `${lead}[${elems.map(([a, e, b]) => `${a}${e}${b}`).join(',')}]${trail}${junk}`,
  );

describe('streaming hint parser = old parser', () => {
  it('on extent lists with whitespace, near misses, extra fields and escapes, in any chunks', () => {
    fc.assert(
      fc.property(document, cuts, (text, c) => sameAsOld(Buffer.from(text, 'utf8'), c)),
      { numRuns: RUNS },
    );
  });

  it('on arbitrary JSON', () => {
    fc.assert(
      fc.property(fc.json(), cuts, (text, c) => sameAsOld(Buffer.from(text, 'utf8'), c)),
      { numRuns: RUNS },
    );
  });

  it('on arbitrary bytes (invalid UTF-8 included), and valid documents with bytes mutated', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 80 }), cuts, (bytes, c) => sameAsOld(Buffer.from(bytes), c)),
      { numRuns: RUNS },
    );
    fc.assert(
      fc.property(
        document,
        fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 0, max: 255 })), {
          minLength: 1,
          maxLength: 3,
        }),
        cuts,
        (text, edits, c) => {
          const bytes = Buffer.from(text, 'utf8');
          for (const [at, byte] of edits) bytes[Math.floor(at * (bytes.length - 1))] = byte;
          sameAsOld(bytes, c);
        },
      ),
      { numRuns: RUNS },
    );
  });

  it('names the extent index in errors about an extent', () => {
    const text = '[{"offset":0,"length":1,"exists":"true"} , {"offset":1,"length":-1,"exists":"true"}]';
    assert.throws(() => streamParse(Buffer.from(text)), /hint file h\.json .*at \[1\]\.length/);
    assert.throws(
      () =>
        streamParse(
          Buffer.from('[{"offset":0,"length":1,"exists":"true"},{"offset":1,"length":1,"exists":"true"'),
        ),
      /hint file h\.json is not valid JSON/,
    );
    assert.throws(
      () =>
        streamParse(
          Buffer.from('[{"offset":0,"length":1,"exists":"true"},{"offset":1,"length":1,"exists":"true",}]'),
        ),
      /not valid JSON at extent \[1\]/,
    );
  });
});

describe('a large hint file (200,000 extents)', () => {
  it('parses in chunks to the same extents and the same plan as the old parser', () => {
    const n = 200_000;
    const parts: string[] = [];
    let offset = 0;
    for (let i = 0; i < n; i++) {
      // Varying gaps and lengths (some spanning blocks, some several per block), both kinds.
      const gap = (i * 7919) % 5000;
      const length = 1 + ((i * 104729) % 9000);
      offset += gap;
      parts.push(`{"offset":${offset},"length":${length},"exists":"${i % 3 ? 'true' : 'false'}"}`);
      offset += length;
    }
    const size = offset + 12345;
    const bytes = Buffer.from(`[\n${parts.join(',\n')}\n]\n`);
    const cutsAt = Array.from({ length: 50 }, (_, i) => (i + 0.37) / 50);
    const extents = streamParse(bytes, cutsAt);
    const old = oldParseRbdDiff(bytes.toString('utf8'));
    assert.equal(extents.length, n);
    // Compared field by field: deepEqual on 200k objects takes seconds.
    assert.equal(old.length, n);
    for (let i = 0; i < n; i++) {
      const a = extents[i];
      const b = old[i];
      if (a.offset !== b.offset || a.length !== b.length || a.exists !== b.exists) {
        assert.fail(`extent [${i}]: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
      }
    }
    for (const blockSize of [4096, 65536]) {
      const base = { size: size - 100_000 };
      const planner = new HintPlanner(size, blockSize, base);
      extents.forEach((e, i) => planner.add(e, i));
      const actions = planner.finish();
      assert.deepEqual(actions, oldPlan({ size, blockSize, hints: oldCheckHints(old, size), base }));
    }
  });
});
