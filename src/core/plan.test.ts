import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DISCARD, HintPlanner, KEEP, READ, SPARSE, countActions, pickBlocks, plan } from './plan.js';
import type { HintExtent } from '../hints/rbd-diff.js';

const B = 100; // block size in these tables
const t = (offset: number, length: number): HintExtent => ({ offset, length, exists: true });
const f = (offset: number, length: number): HintExtent => ({ offset, length, exists: false });
const letters = (a: Uint8Array) =>
  Array.from(a, (x) => (x === READ ? 'R' : x === KEEP ? 'K' : x === DISCARD ? 'D' : 'S')).join('');

describe('plan', () => {
  const cases: { name: string; size: number; hints?: HintExtent[]; base?: number; want: string }[] = [
    { name: 'no hints reads everything', size: 450, want: 'RRRRR' },
    { name: 'no hints with base still reads everything', size: 450, base: 450, want: 'RRRRR' },
    { name: 'empty hint list, no base: all sparse', size: 400, hints: [], want: 'SSSS' },
    { name: 'empty hint list with base: all kept', size: 400, hints: [], base: 400, want: 'KKKK' },
    { name: 'aligned exists:true', size: 400, hints: [t(100, 100)], want: 'SRSS' },
    { name: 'unaligned exists:true touches two blocks', size: 400, hints: [t(150, 100)], want: 'SRRS' },
    { name: 'one byte at a block end', size: 400, hints: [t(299, 1)], want: 'SSRS' },
    {
      name: 'whole exists:false block is discarded (sparse) over base',
      size: 400,
      hints: [f(100, 100)],
      base: 400,
      want: 'KDKK',
    },
    {
      name: 'partial exists:false is read, never assumed zero',
      size: 400,
      hints: [f(100, 50)],
      base: 400,
      want: 'KRKK',
    },
    {
      name: 'two exists:false pieces covering a block discard it',
      size: 400,
      hints: [f(100, 50), f(150, 50)],
      base: 400,
      want: 'KDKK',
    },
    {
      name: 'exists:false spanning blocks unaligned',
      size: 400,
      hints: [f(50, 200)],
      base: 400,
      want: 'RDRK',
    },
    {
      name: 'exists:true wins over exists:false in the same block',
      size: 400,
      hints: [f(100, 50), t(150, 50)],
      base: 400,
      want: 'KRKK',
    },
    { name: 'short last block, no base', size: 350, hints: [t(320, 10)], want: 'SSSR' },
    {
      name: 'exists:false covering a short last block',
      size: 350,
      hints: [f(300, 50)],
      base: 350,
      want: 'KKKD',
    },
    {
      name: 'image grew: old short last block is re-read, new blocks read too',
      size: 500,
      hints: [],
      base: 350,
      want: 'KKKRR',
    },
    { name: 'image grew: hinted new block read', size: 500, hints: [t(420, 10)], base: 350, want: 'KKKRR' },
    // Nothing names these blocks, but the base never had them: never assumed zero.
    {
      name: 'image grew: unhinted blocks past the base are read',
      size: 600,
      hints: [],
      base: 350,
      want: 'KKKRRR',
    },
    {
      name: 'image grew: from a block boundary, unhinted read',
      size: 500,
      hints: [],
      base: 300,
      want: 'KKKRR',
    },
    {
      name: 'image grew: discarded blocks past the base stay discarded',
      size: 500,
      hints: [f(400, 100)],
      base: 300,
      want: 'KKKRD',
    },
    { name: 'image shrank: new short last block is re-read', size: 250, hints: [], base: 400, want: 'KKR' },
    { name: 'image shrank to a block boundary keeps', size: 200, hints: [], base: 400, want: 'KK' },
    { name: 'empty image', size: 0, hints: [], want: '' },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const actions = plan({
        size: c.size,
        blockSize: B,
        hints: c.hints,
        base: c.base !== undefined ? { size: c.base } : undefined,
      });
      assert.equal(letters(actions), c.want);
    });
  }

  it('counts actions', () => {
    const actions = Uint8Array.from([READ, SPARSE, KEEP, KEEP, READ, DISCARD]);
    assert.deepEqual(countActions(actions), { read: 2, sparse: 2, keep: 2 });
  });
});

describe('pickBlocks', () => {
  it('picks only KEEP blocks, distinct and sorted', () => {
    const actions = Uint8Array.from([KEEP, READ, KEEP, SPARSE, KEEP, KEEP, READ, KEEP]);
    for (let seed = 0; seed < 20; seed++) {
      let s = seed;
      const random = () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
      const picks = pickBlocks(actions, KEEP, 3, random);
      assert.equal(picks.length, 3);
      assert.equal(new Set(picks).size, 3);
      assert.deepEqual(
        [...picks].sort((a, b) => a - b),
        picks,
      );
      for (const p of picks) assert.equal(actions[p], KEEP);
    }
  });
  it('returns all KEEP blocks when asked for more', () => {
    assert.deepEqual(pickBlocks(Uint8Array.from([KEEP, READ, KEEP]), KEEP, 10), [0, 2]);
  });
  it('returns nothing for zero', () => {
    assert.deepEqual(pickBlocks(Uint8Array.from([KEEP, KEEP]), KEEP, 0), []);
  });
});

describe('HintPlanner checks', () => {
  const build = (extents: HintExtent[], size = 1000) => {
    const p = new HintPlanner(size, B);
    extents.forEach((e, i) => p.add(e, i));
    return p.finish();
  };
  it('ignores empty extents anywhere (even past the end)', () => {
    assert.equal(letters(build([t(0, 10), t(5000, 0), t(5, 0), t(200, 10)])), 'RSRSSSSSSS');
  });
  it('rejects extents past the end of the source, naming the extent', () => {
    assert.throws(() => build([t(0, 1), t(990, 11)]), /extent \[1\] 990\+11 ends past the end of the source/);
  });
  it('accepts an extent ending exactly at the end', () => {
    assert.equal(letters(build([t(990, 10)])), 'SSSSSSSSSR');
  });
  it('rejects overlapping extents', () => {
    assert.throws(() => build([t(0, 100), f(50, 100)]), /extents overlap at offset 50 \(extent \[1\]\)/);
  });
  it('rejects extents out of offset order (rbd diff prints them in order)', () => {
    assert.throws(
      () => build([t(200, 10), f(0, 10)]),
      /extent \[1\] at offset 0 comes before .*offset order/,
    );
  });
  it('sums exists:false pieces of one block across extents, with exists:true in between', () => {
    assert.equal(letters(build([f(100, 30), f(130, 70), f(200, 50), t(260, 5), f(270, 30)], 400)), 'SDRS');
  });
});
