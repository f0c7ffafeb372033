import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { JobConfig } from './job-config.js';
import type { JobRecord } from './job-records.js';
import type { JobResult } from './job-result.js';
import { jobStatus, nagiosReport, nextDue } from './job-status.js';
import { nextRunAt, slotAfter, spreadSeconds } from './schedule.js';

const S = 1e6; // microseconds per second
const NOW = 1_800_000_000 * S;
const job = (over: Partial<JobConfig> = {}): JobConfig => ({
  job: 'vm1',
  name: 'vm1',
  source: { kind: 'file', path: '/x' },
  sourceText: 'file:/x',
  labels: {},
  every: 3600,
  ...over,
});
const result = (ok: boolean, at: number): JobResult => ({
  job: 'vm1',
  ok,
  started: at,
  finished: at + S,
  bytes: 0,
  bytesStored: 0,
  error: ok ? undefined : 'rbd info failed',
});
const valid = (ageS: number) => ({ status: 'valid' as const, date: NOW - ageS * S });

describe('job status (check)', () => {
  const ok: JobRecord = {
    last: result(true, NOW - 60 * S),
    lastSuccess: result(true, NOW - 60 * S),
    successes: 1,
  };
  it('table', () => {
    const cases: [
      string,
      JobConfig,
      JobRecord,
      { status: 'valid' | 'invalid' | 'incomplete'; date: number }[],
      string,
      RegExp?,
    ][] = [
      ['fresh', job(), ok, [valid(60)], 'ok'],
      ['exactly 1.5 x every old: still ok', job(), ok, [valid(5400)], 'ok'],
      [
        'older than 1.5 x every',
        job(),
        ok,
        [valid(5401)],
        'critical',
        /newest valid version is 1h30m1s old \(limit 1h30m\)/,
      ],
      ['never ran', job(), { successes: 0 }, [], 'critical', /never succeeded/],
      [
        'never succeeded, failed',
        job(),
        { last: result(false, NOW), successes: 0 },
        [],
        'critical',
        /never succeeded; last run failed: rbd info failed/,
      ],
      ['succeeded once, versions gone', job(), ok, [], 'critical', /no valid version/],
      [
        'last run failed',
        job(),
        { ...ok, last: result(false, NOW) },
        [valid(60)],
        'warning',
        /last run failed/,
      ],
      [
        'invalid versions',
        job(),
        ok,
        [valid(60), { status: 'invalid', date: NOW - 100 * S }],
        'warning',
        /1 invalid version/,
      ],
      ['incomplete versions do not count', job(), ok, [valid(60), { status: 'incomplete', date: NOW }], 'ok'],
      ['no every: never stale', job({ every: undefined }), ok, [valid(10 * 86400)], 'ok'],
      [
        'stale and failed: critical first',
        job(),
        { ...ok, last: result(false, NOW) },
        [valid(86400)],
        'critical',
        /old .*; last run failed/,
      ],
    ];
    for (const [what, j, rec, versions, state, reason] of cases) {
      const s = jobStatus(j, rec, versions, NOW);
      assert.equal(s.state, state, what);
      if (reason) assert.match(s.reasons.join('; '), reason, what);
      else assert.deepEqual(s.reasons, [], what);
    }
  });

  it("next due: the daemon's next slot after the last run started, failed ones included; now if it never ran", () => {
    const spread = spreadSeconds('vm1', 3600);
    const slot = (t: number) => slotAfter(t, 3600, spread);
    // The last success two hours ago, then a failed run a minute ago: the failed run counts
    // (the daemon tries again at its next slot, not at once because success + every passed).
    const rec = {
      successes: 1,
      lastSuccess: result(true, NOW - 7200 * S),
      last: result(false, NOW - 60 * S),
    };
    assert.equal(nextDue(job(), rec, NOW), slot(NOW - 60 * S));
    assert.ok(nextDue(job(), rec, NOW)! > NOW - 60 * S);
    for (const last of [NOW - 60 * S, NOW - 3 * 3600 * S, NOW - 1]) {
      const r = { successes: 1, last: result(true, last), lastSuccess: result(true, last) };
      const at = nextDue(job(), r, NOW)!;
      assert.equal(at, nextRunAt({ job: 'vm1', every: 3600, lastStarted: last }, NOW));
      assert.ok(at > last && at <= last + 3600 * S, 'within one interval of the last start');
      assert.equal((at / S - spread) % 3600, 0, "on one of the job's slots");
    }
    assert.equal(nextDue(job(), { successes: 0 }, NOW), NOW);
    assert.equal(nextDue(job({ every: undefined }), ok, NOW), undefined);
  });

  it('the Nagios line: worst state, reasons, perfdata; exit codes 0/1/2', () => {
    const a = jobStatus(job(), ok, [valid(60)], NOW);
    const b = jobStatus(job({ job: 'vm2' }), { ...ok, last: result(false, NOW) }, [valid(60)], NOW);
    const c = jobStatus(job({ job: 'vm3' }), { successes: 0 }, [], NOW);
    const jobs = [job(), job({ job: 'vm2' }), job({ job: 'vm3' })];
    assert.deepEqual(nagiosReport([a], jobs), {
      code: 0,
      line: "BACKY OK - 1 job(s) ok | 'vm1_age'=60s;;5400;0 'vm1_versions'=1;;;0",
    });
    assert.equal(nagiosReport([a, b], jobs).code, 1);
    assert.match(
      nagiosReport([a, b], jobs).line,
      /^BACKY WARNING - vm2 warning: last run failed: rbd info failed; 1 ok \| /,
    );
    const all = nagiosReport([a, b, c], jobs);
    assert.equal(all.code, 2);
    assert.match(
      all.line,
      /^BACKY CRITICAL - vm2 warning: .*, vm3 critical: never succeeded; 1 ok \| .*'vm3_age'=U;;5400;0/,
    );
    const pipe = jobStatus(
      job(),
      { ...ok, last: { ...result(false, NOW), error: 'a | b\nc' } },
      [valid(1)],
      NOW,
    );
    assert.doesNotMatch(nagiosReport([pipe], jobs).line.split(' | ')[0], /[|\n]/);
  });
});
