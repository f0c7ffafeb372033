import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { abortable, abortableIterable, mapOrdered } from './concurrency.js';

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
  it('stops at once when the signal aborts, waiting neither for a call nor for the next item', async () => {
    const ac = new AbortController();
    const never = new Promise<number>(() => {});
    async function* stalled() {
      yield 1;
      await never; // stdin that sends nothing more
    }
    const started: number[] = [];
    const out: number[] = [];
    const reason = new Error('stop');
    setTimeout(() => ac.abort(reason), 20);
    await assert.rejects(async () => {
      for await (const r of mapOrdered(
        stalled(),
        2,
        async (x) => {
          started.push(x);
          return x;
        },
        ac.signal,
      ))
        out.push(r);
    }, /stop/);
    assert.deepEqual(started, [1], 'the item before the stall was started');
    assert.deepEqual(out, [], 'filling waited on the stalled source, and the abort ended that wait');
    // A call that never settles is not waited for either.
    const ac2 = new AbortController();
    setTimeout(() => ac2.abort(reason), 20);
    await assert.rejects(async () => {
      for await (const _ of mapOrdered([1, 2, 3], 2, () => never, ac2.signal)) void _;
    }, /stop/);
  });
  it('abortable and abortableIterable reject with the reason; without a signal they pass through', async () => {
    const ac = new AbortController();
    const p = abortable(new Promise(() => {}), ac.signal);
    ac.abort(new Error('why'));
    await assert.rejects(p, /why/);
    await assert.rejects(abortable(Promise.resolve(1), ac.signal), /why/, 'already aborted');
    assert.equal(await abortable(Promise.resolve(7), undefined), 7);
    const seen: number[] = [];
    for await (const x of abortableIterable(
      (async function* () {
        yield* [1, 2];
      })(),
      new AbortController().signal,
    ))
      seen.push(x);
    assert.deepEqual(seen, [1, 2]);
  });
});
