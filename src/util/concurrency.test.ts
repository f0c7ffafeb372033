import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mapOrdered } from './concurrency.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('mapOrdered', () => {
  it('keeps input order and bounds calls in flight', async () => {
    let inFlight = 0;
    let peak = 0;
    const out: number[] = [];
    for await (const r of mapOrdered([5, 1, 4, 2, 3, 0, 6, 2], 3, async (x) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await sleep(x);
      inFlight--;
      return x * 10;
    })) {
      out.push(r);
    }
    assert.deepEqual(out, [50, 10, 40, 20, 30, 0, 60, 20]);
    assert.ok(peak <= 3 && peak >= 2, `peak ${peak}`);
  });
  it('propagates errors and starts nothing new after', async () => {
    const started: number[] = [];
    await assert.rejects(async () => {
      for await (const _ of mapOrdered([1, 2, 3, 4, 5, 6], 2, async (x) => {
        started.push(x);
        if (x === 2) throw new Error('boom');
        await sleep(1);
        return x;
      })) {
        // consume
      }
    }, /boom/);
    assert.ok(!started.includes(6), `started ${started}`);
  });
  it('works on async iterables and stops early', async () => {
    async function* gen() {
      for (let i = 0; ; i++) yield i;
    }
    const out: number[] = [];
    for await (const r of mapOrdered(gen(), 4, async (x) => x)) {
      out.push(r);
      if (out.length === 5) break;
    }
    assert.deepEqual(out, [0, 1, 2, 3, 4]);
  });
});
