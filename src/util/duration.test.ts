import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDuration } from './duration.js';

describe('parseDuration', () => {
  it('reads one number and one unit', () => {
    assert.equal(parseDuration('90s'), 90_000);
    assert.equal(parseDuration('30m'), 1_800_000);
    assert.equal(parseDuration('12h'), 43_200_000);
    assert.equal(parseDuration('7d'), 604_800_000);
    assert.equal(parseDuration('2w'), 1_209_600_000);
    assert.equal(parseDuration('0d'), 0);
  });
  it('refuses anything else', () => {
    for (const bad of ['', '7', 'd', '7x', '-1d', '1.5h', '7 d x', '1d2h', '9999999999d']) {
      assert.equal(parseDuration(bad), undefined, bad);
    }
  });
});
