import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePercent } from '../cli/commands/scrub.js';
import { UsageError } from '../errors.js';
import { pickBlocks } from './scrub.js';

/** A deterministic stand-in for Math.random (a linear congruential generator). */
function seeded(seed: number): () => number {
  let s = seed;
  return () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32;
  };
}

describe('pickBlocks', () => {
  it('picks every block at 100%', () => {
    assert.deepEqual([...pickBlocks(5, 100)], [1, 1, 1, 1, 1]);
  });

  it('picks about PERCENT of the blocks', () => {
    const picks = pickBlocks(10_000, 10, seeded(1));
    const n = picks.reduce((a, b) => a + b, 0);
    assert.ok(n > 800 && n < 1200, `picked ${n} of 10000 at 10%`);
  });

  it('always picks at least one block', () => {
    for (let seed = 1; seed < 50; seed++) {
      const picks = pickBlocks(3, 0.001, seeded(seed));
      assert.equal(
        picks.reduce((a, b) => a + b, 0),
        1,
      );
    }
    assert.equal(pickBlocks(0, 50).length, 0);
  });
});

describe('parsePercent', () => {
  it('accepts 0 < p <= 100', () => {
    assert.equal(parsePercent('100'), 100);
    assert.equal(parsePercent('0.5'), 0.5);
    assert.equal(parsePercent('7'), 7);
  });
  for (const bad of ['0', '0.0', '100.1', '-1', 'abc', '', '1e2', '5%', 'NaN', 'Infinity']) {
    it(`refuses '${bad}'`, () => assert.throws(() => parsePercent(bad), UsageError));
  }
});
