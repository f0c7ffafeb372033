import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockRow } from '../meta/meta-store.js';
import { compareUnchanged, touchedBlocks } from './rbd-verify.js';

async function* rows(list: [number, string | null][]): AsyncIterable<BlockRow> {
  for (const [idx, checksum] of list) yield { idx, checksum, size: 0, valid: true };
}

describe('rbd verify run: the chain against a full read', () => {
  it('touchedBlocks marks every block an extent overlaps, clipped to the image', () => {
    const t = touchedBlocks(
      [
        { offset: 0, length: 1 },
        { offset: 2 * 1024 - 1, length: 2 },
        { offset: 7 * 1024, length: 10 * 1024 },
        { offset: 5 * 1024, length: 0 },
      ],
      8,
      1024,
    );
    assert.deepEqual([...t], [1, 1, 1, 0, 0, 0, 0, 1]);
  });

  it('compares only unchanged blocks; missing entries are sparse; reports the first differing', async () => {
    const changed = new Uint8Array([0, 1, 0, 0, 0, 0]);
    const base = rows([
      [0, 'a'],
      [1, 'b'],
      [2, 'c'],
      [4, 'e'],
      [5, 'f'],
    ]);
    const fresh = rows([
      [0, 'a'],
      [1, 'B'], // changed: not compared
      [2, 'X'], // unchanged per rbd diff, yet different: the chain is wrong here
      [3, null], // sparse in both (absent in base)
      [4, 'e'],
      // 5 missing: sparse in the new version, 'f' in the base
    ]);
    const r = await compareUnchanged(changed, 6, base, fresh);
    assert.deepEqual(r, { compared: 5, differing: [2, 5], differingCount: 2 });
    const same = await compareUnchanged(changed, 3, rows([[0, 'a']]), rows([[0, 'a']]));
    assert.deepEqual(same, { compared: 2, differing: [], differingCount: 0 });
    const capped = await compareUnchanged(
      new Uint8Array(20),
      20,
      rows([]),
      rows(Array.from({ length: 20 }, (_, i) => [i, 'z'] as [number, string])),
      3,
    );
    assert.deepEqual(capped, { compared: 20, differing: [0, 1, 2], differingCount: 20 });
  });
});
