import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Budget } from './budget.js';
import { ReadAccount } from './read-account.js';

const tick = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

describe('ReadAccount', () => {
  it('a connection that holds its share waits for its own releases; another goes on', async () => {
    const global = new Budget(10);
    const stalled = new ReadAccount({ global, share: 2, unit: 1, perBlock: false });
    const other = new ReadAccount({ global, share: 2, unit: 1, perBlock: false });
    const held = [await stalled.acquire(0), await stalled.acquire(1)];
    let third = false;
    const pending = stalled.acquire(2).then((r) => ((third = true), r));
    await tick();
    assert.equal(third, false, 'over its share: waits');
    assert.equal(stalled.used, 2);
    // The other connection is served meanwhile, again and again.
    for (let i = 0; i < 5; i++) (await other.acquire(i))();
    assert.equal(global.used, 2);
    held[0]();
    (await pending)();
    held[1]();
    assert.equal(global.used, 0);
    assert.equal(stalled.used, 0);
  });

  it('per block: requests into one block hold it once; it is given back with the last', async () => {
    const global = new Budget(10);
    const a = new ReadAccount({ global, share: 2, unit: 1, perBlock: true });
    const r = await Promise.all(Array.from({ length: 64 }, () => a.acquire(7)));
    assert.equal(global.used, 1);
    r.slice(0, 63).forEach((f) => f());
    assert.equal(global.used, 1);
    r[63]();
    r[63](); // twice is once
    assert.equal(global.used, 0);
  });

  it('exclusive waits for what was granted before, and runs before what comes after', async () => {
    const global = new Budget(10);
    const a = new ReadAccount({ global, share: 2, unit: 1, perBlock: false });
    const first = await a.acquire(0);
    const order: string[] = [];
    const ex = a.exclusive(async (acquire) => {
      order.push('exclusive');
      (await acquire(1))();
    });
    const after = a.acquire(2).then((f) => (order.push('after'), f()));
    await tick();
    assert.deepEqual(order, [], 'the block granted before is still held');
    first();
    await Promise.all([ex, after]);
    assert.deepEqual(order, ['exclusive', 'after']);
    assert.equal(global.used, 0);
  });
});
