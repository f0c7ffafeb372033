import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Version } from '../meta/meta-store.js';
import type { ScrubTime } from '../meta/scrub-times.js';
import { scrubQueue } from './batch-scrub.js';

const v = (uid: string, date: number, status: Version['status'] = 'valid') =>
  ({ uid, date, status, name: 'vm' }) as Version;

describe('scrubQueue', () => {
  const versions = [v('a', 10), v('b', 20), v('c', 30), v('inc', 5, 'incomplete'), v('bad', 40, 'invalid')];
  const cases: { what: string; times: [string, number][]; before?: number; want: string[] }[] = [
    { what: 'never scrubbed: oldest version first', times: [], want: ['a', 'b', 'c', 'bad'] },
    {
      what: 'never scrubbed before the longest-unscrubbed',
      times: [
        ['a', 300],
        ['b', 100],
      ],
      want: ['c', 'bad', 'b', 'a'],
    },
    {
      what: 'ties by version date',
      times: [
        ['c', 100],
        ['a', 100],
      ],
      want: ['b', 'bad', 'a', 'c'],
    },
    {
      what: 'before: only versions not scrubbed since',
      times: [
        ['a', 300],
        ['b', 100],
        ['c', 200],
        ['bad', 250],
      ],
      before: 250,
      want: ['b', 'c'],
    },
  ];
  for (const t of cases) {
    it(t.what, () => {
      const times = new Map<string, ScrubTime>(t.times.map(([u, at]) => [u, { at, percent: 100 }]));
      assert.deepEqual(
        scrubQueue(versions, times, { before: t.before }).map((x) => x.uid),
        t.want,
      );
    });
  }
});
