import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Version } from '../meta/meta-store.js';
import { copyOrder } from './copy-select.js';

function v(uid: string, date: number, baseUid: string | null = null): Version {
  return {
    uid,
    name: 'vm',
    snapshotName: '',
    date,
    sizeBytes: 0,
    blockSize: 4096,
    status: 'valid',
    baseUid,
    protected: false,
    hostname: 'h',
  };
}

const uids = (vs: Version[]) => vs.map((x) => x.uid).join(' ');

describe('copyOrder', () => {
  it('oldest first', () => {
    assert.equal(uids(copyOrder([v('c', 3), v('a', 1), v('b', 2)])), 'a b c');
  });
  it('a base before its children even when dated later', () => {
    assert.equal(
      uids(copyOrder([v('child', 1, 'base'), v('grand', 2, 'child'), v('base', 5)])),
      'base child grand',
    );
  });
  it('a base not among them changes nothing', () => {
    assert.equal(uids(copyOrder([v('b', 2, 'x'), v('a', 1)])), 'a b');
  });
  it('terminates on a cycle and keeps every version once', () => {
    const out = copyOrder([v('a', 1, 'b'), v('b', 2, 'a'), v('a', 1, 'b')]);
    assert.deepEqual(out.map((x) => x.uid).sort(), ['a', 'b']);
  });
});
