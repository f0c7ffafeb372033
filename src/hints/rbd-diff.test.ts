import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { parseRbdDiff } from './rbd-diff.js';

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
