import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../errors.js';
import {
  FUTURE_TOLERANCE_MICROS,
  futureDated,
  isFutureDated,
  parseRetentionRules,
  selectForRemoval,
} from './retention.js';
import type { RetentionCandidate } from './retention.js';

const us = (iso: string) => Date.parse(iso) * 1000;
const v = (uid: string, iso: string): RetentionCandidate => ({ uid, date: us(iso) });

describe('parseRetentionRules', () => {
  it('parses every category', () => {
    assert.deepEqual(parseRetentionRules('latest3,hours24,days7,weeks4,months12,years3'), {
      latest: 3,
      hours: 24,
      days: 7,
      weeks: 4,
      months: 12,
      years: 3,
    });
  });

  for (const bad of [
    '',
    'days',
    'days0',
    'days-1',
    'day7',
    'days 7',
    'days7,',
    ',days7',
    'days7,days8',
    'DAYS7',
  ]) {
    it(`refuses ${JSON.stringify(bad)} with one line`, () => {
      assert.throws(
        () => parseRetentionRules(bad),
        (e: unknown) => e instanceof InputError && !e.message.includes('\n'),
      );
    });
  }

  it('names the bad part', () => {
    assert.throws(() => parseRetentionRules('latest3,dais7'), /"dais7"/);
  });
});

describe('selectForRemoval', () => {
  const now = us('2026-11-28T12:30:00Z');

  it('latestN keeps the N youngest, removes the rest oldest first', () => {
    const vs = [
      v('a', '2026-11-28T10:00:00Z'),
      v('b', '2026-11-28T11:00:00Z'),
      v('c', '2026-11-28T12:00:00Z'),
      v('d', '2026-11-27T12:00:00Z'),
    ];
    assert.deepEqual(selectForRemoval(vs, { latest: 2 }, now), ['d', 'a']);
  });

  it('daysN keeps the oldest version of each of the N+1 most recent days, today being day 0 (as Benji)', () => {
    const vs = [
      v('today-1', '2026-11-28T01:00:00Z'),
      v('today-2', '2026-11-28T09:00:00Z'),
      v('yday-1', '2026-11-27T00:00:00Z'),
      v('yday-2', '2026-11-27T23:59:59Z'),
      v('3ago', '2026-11-25T12:00:00Z'),
    ];
    // days2: today, yesterday and the day before (none); 3ago is outside.
    assert.deepEqual(selectForRemoval(vs, { days: 2 }, now), ['3ago', 'yday-2']);
    // today-2 is kept anyway: the youngest version is never removed.
  });

  it('weeks start on Monday (ISO)', () => {
    // 2026-11-28 is a Saturday; its week began Monday 2026-11-23.
    const vs = [
      v('sun2', '2026-11-15T12:00:00Z'), // two weeks back
      v('sun', '2026-11-22T12:00:00Z'), // previous week
      v('mon', '2026-11-23T00:00:01Z'), // this week, oldest
      v('fri', '2026-11-27T12:00:00Z'), // this week, youngest
    ];
    assert.deepEqual(selectForRemoval(vs, { weeks: 1 }, now), ['sun2']);
    assert.deepEqual(selectForRemoval(vs, { weeks: 2 }, now), []);
  });

  it('months and years follow calendar boundaries', () => {
    const vs = [
      v('dec', '2025-12-31T23:00:00Z'),
      v('jan', '2026-01-01T00:00:00Z'),
      v('oct', '2026-10-15T00:00:00Z'),
      v('nov', '2026-11-01T00:00:00Z'),
      v('nov2', '2026-11-20T00:00:00Z'),
    ];
    assert.deepEqual(selectForRemoval(vs, { months: 2 }, now), ['dec', 'jan']);
    // years1: this year and last year; jan is 2026's oldest, nov2 the youngest.
    assert.deepEqual(selectForRemoval(vs, { years: 1 }, now), ['oct', 'nov']);
    assert.deepEqual(selectForRemoval([vs[1], vs[2], vs[4]], { years: 1 }, now), ['oct']);
  });

  it('hours use whole clock hours', () => {
    const vs = [
      v('h10', '2026-11-28T10:59:59Z'),
      v('h11a', '2026-11-28T11:00:00Z'),
      v('h11b', '2026-11-28T11:30:00Z'),
      v('h12', '2026-11-28T12:10:00Z'),
    ];
    assert.deepEqual(selectForRemoval(vs, { hours: 1 }, now), ['h10', 'h11b']);
    assert.deepEqual(selectForRemoval(vs, { hours: 2 }, now), ['h11b']);
  });

  it('each version goes into the first category that fits, latestN taken out first (as Benji)', () => {
    const vs = [
      v('old', '2020-06-01T00:00:00Z'), // years: 2020 is 6 years back
      v('may', '2026-05-01T00:00:00Z'), // years: 2026's oldest outside days1
      v('y', '2026-11-27T00:00:00Z'), // days: yesterday
      v('t', '2026-11-28T00:00:00Z'), // days: today's oldest
      v('t2', '2026-11-28T06:00:00Z'), // days: today, youngest
    ];
    assert.deepEqual(selectForRemoval(vs, { days: 1, years: 7 }, now), []);
    assert.deepEqual(selectForRemoval(vs, { days: 1, years: 5 }, now), ['old']);
    assert.deepEqual(selectForRemoval(vs, { days: 1 }, now), ['old', 'may']);
    assert.deepEqual(selectForRemoval(vs, { years: 1 }, now), ['old', 'y', 't']);
    // latest2 takes t2 and t out: yesterday's bucket keeps y, today's has nobody left.
    assert.deepEqual(selectForRemoval(vs, { latest: 2, days: 1 }, now), ['old', 'may']);
    // latest1 takes t2 out; today's bucket keeps t, yesterday's y.
    assert.deepEqual(selectForRemoval(vs.slice(2), { latest: 1, days: 1 }, now), []);
    // Weeks do not nest in months. On Wednesday 2 December this week began on 30 November:
    // r (1 December) is in this week, whose oldest is u, so weeks1 removes it; it would be
    // December's oldest, but a version in weeks is in no months bucket (Benji's first match).
    const dec2 = us('2026-12-02T12:00:00Z');
    const wk = [
      v('u', '2026-11-30T08:00:00Z'),
      v('r', '2026-12-01T08:00:00Z'),
      v('x', '2026-12-02T10:00:00Z'),
    ];
    assert.deepEqual(selectForRemoval(wk, { weeks: 1, months: 1 }, dec2), ['r']);
    assert.deepEqual(selectForRemoval(wk, { months: 1 }, dec2), []);
  });

  it('never removes the youngest, nor versions dated in the future', () => {
    const vs = [
      v('old1', '2001-01-01T00:00:00Z'),
      v('old2', '2002-01-01T00:00:00Z'),
      v('future', '2027-01-01T00:00:00Z'),
    ];
    // old2 is the youngest that is not future-dated: kept.
    assert.deepEqual(selectForRemoval(vs, { hours: 1 }, now), ['old1']);
    assert.deepEqual(selectForRemoval([v('only', '2001-01-01T00:00:00Z')], { latest: 1 }, now), []);
  });

  it('a future-dated version counts for nothing: not the youngest, not toward latestN, in no bucket', () => {
    const vs = [
      v('real1', '2026-11-27T12:00:00Z'),
      v('real2', '2026-11-28T12:00:00Z'), // the real newest backup
      v('skewed', '2027-03-01T00:00:00Z'), // clock skew or an import
    ];
    // Before: 'skewed' was the youngest and filled latest1, so real2 was removed every run.
    assert.deepEqual(selectForRemoval(vs, { latest: 1 }, now), ['real1']);
    assert.deepEqual(selectForRemoval(vs, { latest: 2 }, now), []);
    assert.deepEqual(selectForRemoval(vs, { hours: 1 }, now), ['real1']);
    // Enforcing again keeps the real newest: the skewed one never pushes it out.
    assert.deepEqual(selectForRemoval([vs[1], vs[2]], { latest: 1 }, now), []);
    // Only future-dated versions: nothing is removed, nothing counted.
    assert.deepEqual(selectForRemoval([vs[2], v('skewed2', '2027-04-01T00:00:00Z')], { latest: 1 }, now), []);
  });

  it('a date up to the tolerance past now is not future-dated; beyond it is', () => {
    const soon = now + FUTURE_TOLERANCE_MICROS;
    const later = now + FUTURE_TOLERANCE_MICROS + 1;
    assert.equal(isFutureDated(soon, now), false);
    assert.equal(isFutureDated(later, now), true);
    const vs = [
      { uid: 'past', date: now - 3_600_000_000 },
      { uid: 'soon', date: soon },
    ];
    // 'soon' counts (a host whose clock is a little ahead): it is the youngest, latest1 keeps it.
    assert.deepEqual(selectForRemoval(vs, { latest: 1 }, now), ['past']);
    assert.deepEqual(
      futureDated([...vs, { uid: 'later', date: later }], now).map((x) => x.uid),
      ['later'],
    );
  });

  it('local time moves the day boundaries', () => {
    const prev = process.env.TZ;
    // Resolved per call by Date: set before use. UTC+14 (no DST): 2026-11-28T11:00Z is already the 29th.
    process.env.TZ = 'Pacific/Kiritimati';
    try {
      const vs = [
        v('a', '2026-11-28T09:00:00Z'),
        v('b', '2026-11-28T11:00:00Z'),
        v('c', '2026-11-28T12:00:00Z'),
      ];
      const at = us('2026-11-28T12:30:00Z');
      // UTC: all three fall on the 28th; a is that day's oldest, c the youngest.
      assert.deepEqual(selectForRemoval(vs, { days: 1 }, at), ['b']);
      // Local: a is on the 28th (23:00), yesterday; b and c on the 29th (01:00, 02:00), today.
      assert.deepEqual(selectForRemoval(vs, { days: 1 }, at, { localTime: true }), []);
      assert.deepEqual(selectForRemoval([vs[1], vs[2]], { days: 1 }, at, { localTime: true }), []);
      assert.deepEqual(selectForRemoval(vs, { hours: 2 }, at, { localTime: true }), ['a']);
    } finally {
      if (prev === undefined) delete process.env.TZ;
      else process.env.TZ = prev;
    }
  });

  it('properties: removes only candidates, never the youngest, and is idempotent', () => {
    const arbRules = fc.record(
      {
        latest: fc.integer({ min: 1, max: 5 }),
        hours: fc.integer({ min: 1, max: 48 }),
        days: fc.integer({ min: 1, max: 14 }),
        weeks: fc.integer({ min: 1, max: 8 }),
        months: fc.integer({ min: 1, max: 24 }),
        years: fc.integer({ min: 1, max: 5 }),
      },
      { requiredKeys: [] },
    );
    const arbVersions = fc.uniqueArray(
      fc.record({
        uid: fc.uuid(),
        date: fc.integer({ min: now - 3 * 365 * 86_400_000_000, max: now + 86_400_000_000 }),
      }),
      { selector: (x) => x.uid, maxLength: 60 },
    );
    fc.assert(
      fc.property(arbVersions, arbRules, (vs, rules) => {
        const removed = selectForRemoval(vs, rules, now);
        const uids = new Set(vs.map((x) => x.uid));
        for (const r of removed) assert.ok(uids.has(r));
        assert.equal(new Set(removed).size, removed.length);
        if (vs.length > 0) {
          const youngest = [...vs].sort((a, b) => b.date - a.date)[0];
          assert.ok(!removed.includes(youngest.uid));
          assert.ok(removed.length < vs.length);
        }
        // Future-dated ones are never removed, and the youngest of the rest is kept too.
        for (const f of futureDated(vs, now)) assert.ok(!removed.includes(f.uid));
        const present = vs.filter((x) => !isFutureDated(x.date, now)).sort((a, b) => b.date - a.date);
        if (present.length > 0) assert.ok(!removed.includes(present[0].uid));
        // Enforcing again right away removes nothing more: what is kept is a fixed point.
        const kept = vs.filter((x) => !removed.includes(x.uid));
        assert.deepEqual(selectForRemoval(kept, rules, now), []);
      }),
    );
  });
});

/**
 * Benji's own tables (benji/tests/test_retentionfilter.py, test_single and test_multiple): 8641
 * versions 15 minutes apart, back from 2019-05-09T00:00 UTC (a Thursday), filtered at that
 * instant. `benji` is the number Benji keeps; backy keeps the same, plus the youngest version
 * where Benji's rules do not keep it (this week's, month's, year's oldest is then another one).
 */
describe("selectForRemoval on Benji's test tables", () => {
  const ref = us('2019-05-09T00:00:00Z');
  const step = 15 * 60 * 1_000_000;
  const versions: RetentionCandidate[] = Array.from({ length: 8641 }, (_, n) => ({
    uid: `v${n + 1}`,
    date: ref - n * step,
  }));
  const cases: [string, number, number][] = [
    // rules, Benji keeps, youngest kept besides
    ['latest3', 3, 0],
    ['latest10', 10, 0],
    ['hours12', 13, 0],
    ['hours25', 26, 0],
    ['days15', 16, 0],
    ['days31', 32, 0],
    ['weeks4', 5, 1],
    ['months1', 2, 1],
    ['months2', 3, 1],
    ['years1', 1, 1],
    ['latest3,months2', 6, 0],
    ['latest3,hours24,days3', 29, 0],
    ['latest3,hours48,days3', 52, 0],
    ['latest3,hours48,days3,months2', 55, 0],
    ['latest3,hours48,days30,months2', 81, 0],
  ];
  for (const [spec, benji, extra] of cases) {
    it(`${spec}: ${benji} kept as by Benji${extra ? ', and the youngest' : ''}`, () => {
      const rules = parseRetentionRules(spec);
      const removed = new Set(selectForRemoval(versions, rules, ref));
      const kept = versions.filter((x) => !removed.has(x.uid));
      assert.equal(kept.length, benji + extra);
      assert.ok(
        kept.some((x) => x.uid === 'v1'),
        'the youngest is kept',
      );
      // A fixed point, as Benji's tests check: filtering what is kept removes nothing.
      assert.deepEqual(selectForRemoval(kept, rules, ref), []);
    });
  }

  it('hours30 moving hour by hour: one version dismissed per hour (test_moving_single)', () => {
    const rules = parseRetentionRules('hours30');
    let left = versions.filter((x) => !selectForRemoval(versions, rules, ref).includes(x.uid));
    assert.equal(left.length, 31);
    for (let hour = 1; hour <= 30; hour++) {
      const at = ref + hour * 3_600_000_000;
      const removed = selectForRemoval(left, rules, at);
      assert.equal(removed.length, 1, `hour ${hour}`);
      left = left.filter((x) => !removed.includes(x.uid));
    }
    assert.equal(left.length, 1);
  });
});
