import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dueJobs, isDue, nextRunAt, nextWake, slotAfter, slotAtOrBefore, spreadSeconds } from './schedule.js';

const US = 1_000_000;
const at = (iso: string) => Date.parse(iso) * 1000;
const H = 3600;

describe('spreadSeconds', () => {
  it('is deterministic per name, within [0, every), and spreads names', () => {
    assert.equal(spreadSeconds('vm1', 86_400), spreadSeconds('vm1', 86_400));
    const spreads = Array.from({ length: 200 }, (_, i) => spreadSeconds(`vm${i}`, H));
    for (const s of spreads) assert.ok(Number.isInteger(s) && s >= 0 && s < H);
    // 200 names over an hour: spread over it, not bunched (each quarter gets some).
    for (let q = 0; q < 4; q++) {
      const n = spreads.filter((s) => s >= (q * H) / 4 && s < ((q + 1) * H) / 4).length;
      assert.ok(n >= 25, `quarter ${q}: ${n}`);
    }
    assert.equal(spreadSeconds('x', 1), 0);
  });
});

describe('slots', () => {
  const cases: [string, number, number, string, string][] = [
    // t, every, spread, slot at or before, slot after
    ['2026-12-08T10:30:00Z', H, 17 * 60, '2026-12-08T10:17:00Z', '2026-12-08T11:17:00Z'],
    ['2026-12-08T10:17:00Z', H, 17 * 60, '2026-12-08T10:17:00Z', '2026-12-08T11:17:00Z'],
    ['2026-12-08T10:16:59Z', H, 17 * 60, '2026-12-08T09:17:00Z', '2026-12-08T10:17:00Z'],
    ['2026-12-08T10:30:00Z', 86_400, 3 * H, '2026-12-08T03:00:00Z', '2026-12-09T03:00:00Z'],
    ['2026-12-08T02:00:00Z', 86_400, 3 * H, '2026-12-07T03:00:00Z', '2026-12-08T03:00:00Z'],
  ];
  for (const [t, every, spread, before, after] of cases) {
    it(`${t} every ${every} s + ${spread} s`, () => {
      assert.equal(slotAtOrBefore(at(t), every, spread), at(before));
      assert.equal(slotAfter(at(t), every, spread), at(after));
    });
  }
});

describe('when a job is due', () => {
  const every = H;
  const spread = spreadSeconds('vm', every);
  const slot = slotAfter(at('2026-12-08T10:00:00Z'), every, spread); // some slot
  const cases: {
    what: string;
    lastStarted?: number;
    now: number;
    every?: number;
    due: boolean;
    next?: number;
  }[] = [
    { what: 'never ran: due at once', now: slot - 100 * US, due: true, next: slot - 100 * US },
    { what: 'no every: never due', every: undefined, lastStarted: 0, now: slot, due: false },
    {
      what: 'ran at its slot: not due until the next',
      lastStarted: slot + 2 * US,
      now: slot + 1800 * US,
      due: false,
      next: slot + every * US,
    },
    {
      what: 'next slot reached: due',
      lastStarted: slot + 2 * US,
      now: slot + every * US,
      due: true,
      next: slot + every * US,
    },
    {
      what: 'run by hand between slots: the next slot still counts',
      lastStarted: slot + 1000 * US,
      now: slot + every * US + 1,
      due: true,
      next: slot + every * US,
    },
    {
      what: 'down for 5 slots: due once, at the first missed slot',
      lastStarted: slot,
      now: slot + 5.5 * every * US,
      due: true,
      next: slot + every * US,
    },
    {
      what: 'after the catch-up run: the next regular slot',
      lastStarted: slot + 5.5 * every * US,
      now: slot + 5.6 * every * US,
      due: false,
      next: slot + 6 * every * US,
    },
  ];
  for (const c of cases) {
    it(c.what, () => {
      const j = { job: 'vm', every: 'every' in c ? c.every : every, lastStarted: c.lastStarted };
      assert.equal(isDue(j, c.now), c.due);
      assert.equal(nextRunAt(j, c.now), c.next);
    });
  }

  it('dueJobs: most overdue first, never-run first, running ones left out', () => {
    const now = at('2026-12-08T12:00:00Z');
    const jobs = [
      { job: 'b', every: H, lastStarted: now - 3 * H * US },
      { job: 'a', every: H, lastStarted: now - 2 * H * US },
      { job: 'new', every: H },
      { job: 'fresh', every: H, lastStarted: now - 1 * US },
      { job: 'busy', every: H },
      { job: 'manual' },
    ];
    const due = dueJobs(jobs, now, new Set(['busy']));
    assert.deepEqual(due, ['new', 'b', 'a']);
    const wake = nextWake(jobs, now, new Set(['busy']));
    assert.equal(wake, nextRunAt(jobs[3], now));
    assert.ok(wake! > now && wake! <= now + H * US);
  });
});
