import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DirtyPool } from './dirty-pool.js';
import type { DirtyHolder } from './dirty-pool.js';

/** A holder keeping its buffers until asked to spill one. */
class Holder implements DirtyHolder {
  readonly bufs: Buffer[] = [];
  spills = 0;
  constructor(readonly pool: DirtyPool) {
    pool.register(this);
  }
  get dirtyBlocks(): number {
    return this.bufs.length;
  }
  async take(size: number): Promise<void> {
    this.bufs.push(await this.pool.acquire(this, size, () => this.spill()));
  }
  async spill(): Promise<void> {
    this.spills++;
    const b = this.bufs.shift();
    if (b) this.pool.release(b);
  }
}

describe('DirtyPool', () => {
  it('never holds more than its total; a writer with none gets one spilled by the writer holding most', async () => {
    const pool = new DirtyPool(4 * 100);
    const idle = new Holder(pool);
    for (let i = 0; i < 4; i++) await idle.take(100);
    assert.equal(pool.allocatedBytes, 400);
    const busy = new Holder(pool);
    await busy.take(100); // the quiet writer is asked to store one of its blocks
    assert.equal(idle.spills, 1);
    assert.equal(pool.allocatedBytes, 400);
    // A writer holding blocks stores its own oldest rather than wait.
    await busy.take(100);
    assert.equal(busy.spills, 1);
    assert.equal(idle.spills, 1);
    assert.equal(pool.allocatedBytes, 400);
  });

  it('reuses its buffers as writers come and go', async () => {
    const pool = new DirtyPool(1000);
    for (let round = 0; round < 5; round++) {
      const h = new Holder(pool);
      await h.take(100);
      await h.take(100);
      for (const b of h.bufs.splice(0)) pool.release(b);
      pool.unregister(h);
      assert.equal(pool.allocatedBytes, 200);
    }
  });
});
