import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { freeBuffer } from './free-buffer.js';

describe('freeBuffer', () => {
  it('frees a whole buffer at once, and leaves views, shared and pooled buffers alone', () => {
    const b = Buffer.allocUnsafeSlow(1 << 20).fill(1);
    const before = process.memoryUsage().arrayBuffers;
    freeBuffer(b);
    assert.equal(b.length, 0, 'detached');
    assert.equal(before - process.memoryUsage().arrayBuffers, 1 << 20, 'its memory given back now');

    const big = Buffer.alloc(1000, 2);
    const view = big.subarray(0, 10);
    freeBuffer(view);
    assert.equal(big.length, 1000);
    assert.equal(big[999], 2);
    const pooled = Buffer.from('abc');
    freeBuffer(pooled);
    assert.equal(pooled.toString(), 'abc');
    const shared = Buffer.from(new SharedArrayBuffer(16));
    freeBuffer(shared);
    assert.equal(shared.length, 16);
    freeBuffer(Buffer.alloc(0));
  });
});
