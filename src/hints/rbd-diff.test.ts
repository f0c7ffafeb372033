import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { checkHints, parseRbdDiff } from './rbd-diff.js';

describe('parseRbdDiff', () => {
  it('accepts exists as rbd prints it (strings) and as booleans', () => {
    const text = JSON.stringify([
      { offset: 0, length: 4096, exists: 'true' },
      { offset: 8192, length: 4096, exists: 'false' },
      { offset: 16384, length: 10, exists: true },
      { offset: 20000, length: 10, exists: false },
    ]);
    assert.deepEqual(parseRbdDiff(text), [
      { offset: 0, length: 4096, exists: true },
      { offset: 8192, length: 4096, exists: false },
      { offset: 16384, length: 10, exists: true },
      { offset: 20000, length: 10, exists: false },
    ]);
  });
  it('accepts an empty list', () => {
    assert.deepEqual(parseRbdDiff('[]'), []);
  });
  it('ignores extra fields', () => {
    assert.equal(parseRbdDiff('[{"offset":0,"length":1,"exists":"true","extra":1}]').length, 1);
  });
  const bad: [string, string, RegExp][] = [
    ['not JSON', 'nope', /not valid JSON/],
    ['not an array', '{"offset":0}', /not rbd diff JSON/],
    ['negative offset', '[{"offset":-1,"length":1,"exists":"true"}]', /\[0\]\.offset/],
    ['non-integer length', '[{"offset":0,"length":1.5,"exists":"true"}]', /\[0\]\.length/],
    ['offset as string', '[{"offset":"0","length":1,"exists":"true"}]', /\[0\]\.offset/],
    ['huge offset', '[{"offset":1e300,"length":1,"exists":"true"}]', /\[0\]\.offset/],
    ['bad exists', '[{"offset":0,"length":1,"exists":"maybe"}]', /\[0\]\.exists/],
    ['missing field', '[{"offset":0,"exists":"true"}]', /\[0\]\.length/],
    ['sum beyond 2^53', `[{"offset":${2 ** 52},"length":${2 ** 52},"exists":"true"}]`, /too large/],
  ];
  for (const [name, text, re] of bad) {
    it(`rejects ${name} with one line`, () => {
      assert.throws(
        () => parseRbdDiff(text),
        (err: unknown) => err instanceof InputError && re.test(err.message) && !err.message.includes('\n'),
      );
    });
  }
});

describe('checkHints', () => {
  it('sorts, drops empty extents', () => {
    const sorted = checkHints(
      [
        { offset: 200, length: 10, exists: true },
        { offset: 0, length: 10, exists: false },
        { offset: 50, length: 0, exists: true },
      ],
      1000,
    );
    assert.deepEqual(
      sorted.map((e) => e.offset),
      [0, 200],
    );
  });
  it('rejects extents past the end of the source', () => {
    assert.throws(
      () => checkHints([{ offset: 990, length: 11, exists: true }], 1000),
      /past the end of the source/,
    );
  });
  it('accepts an extent ending exactly at the end', () => {
    assert.equal(checkHints([{ offset: 990, length: 10, exists: true }], 1000).length, 1);
  });
  it('rejects overlapping extents', () => {
    assert.throws(
      () =>
        checkHints(
          [
            { offset: 0, length: 100, exists: true },
            { offset: 50, length: 100, exists: false },
          ],
          1000,
        ),
      /overlap/,
    );
  });
});
