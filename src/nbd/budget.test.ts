import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Budget } from './budget.js';

const tick = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

describe('Budget', () => {
  it('never lets what is taken grow past its total; waiters go in arrival order', async () => {
    const b = new Budget(100);
    assert.equal(await b.take(60), 60);
    const order: string[] = [];
    const x = b.take(50).then((n) => order.push(`x${n}`));
    const y = b.take(10).then((n) => order.push(`y${n}`));
    await tick();
    assert.deepEqual(order, [], 'x does not fit, and y does not overtake it');
    assert.equal(b.used, 60);
    b.give(60);
    await Promise.all([x, y]);
    assert.deepEqual(order, ['x50', 'y10']);
    assert.equal(b.used, 60);
    b.give(50);
    b.give(10);
    assert.equal(b.used, 0);
  });

  it('a request costing more than the total takes all of it and runs alone', async () => {
    const b = new Budget(100);
    assert.equal(await b.take(1000), 100);
    let small = false;
    const s = b.take(1).then(() => (small = true));
    await tick();
    assert.equal(small, false);
    b.give(100);
    await s;
    assert.equal(b.used, 1);
  });
});
