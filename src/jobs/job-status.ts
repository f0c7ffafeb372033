/**
 * A job's state as `jobs` shows it and `check` judges it. Pure: the caller passes the record,
 * the versions and `now`.
 *
 * - critical: no valid version (it never succeeded, or every version is gone or damaged), or
 *   the newest valid version is older than 1.5 x `every` (flyingcircus backy's SLA);
 * - warning: the last run failed, or the job has invalid versions;
 * - ok otherwise.
 */
import type { VersionStatus } from '../meta/meta-store.js';
import { formatDuration } from './duration.js';
import type { JobConfig } from './job-config.js';
import type { JobRecord } from './job-records.js';
import { nextRunAt } from './schedule.js';

export type JobState = 'ok' | 'warning' | 'critical';

/** How much older than `every` the newest valid version may be before the job is critical. */
export const STALE_FACTOR = 1.5;

export interface JobStatus {
  job: string;
  state: JobState;
  /** Why it is not ok, most serious first; empty when ok. */
  reasons: string[];
  /** Microseconds; undefined without a valid version. */
  newestValid?: number;
  /** Seconds since newestValid. */
  age?: number;
  /** Microseconds; when the daemon runs the job next (undefined: without `every`, never due). */
  nextDue?: number;
  versions: { valid: number; invalid: number; incomplete: number };
}

/**
 * When the job is due: when the daemon runs it (its next slot after its last run started,
 * failed runs included; now if it never ran), so `jobs`, `run --due` and the daemon agree.
 */
export function nextDue(job: JobConfig, record: JobRecord, now: number): number | undefined {
  return nextRunAt({ job: job.job, every: job.every, lastStarted: record.last?.started }, now);
}

export function jobStatus(
  job: JobConfig,
  record: JobRecord,
  versions: readonly { status: VersionStatus; date: number }[],
  now: number,
): JobStatus {
  const counts = { valid: 0, invalid: 0, incomplete: 0 };
  let newestValid: number | undefined;
  for (const v of versions) {
    counts[v.status] += 1;
    if (v.status === 'valid' && (newestValid === undefined || v.date > newestValid)) newestValid = v.date;
  }
  const critical: string[] = [];
  const warning: string[] = [];
  const age = newestValid === undefined ? undefined : Math.max(0, (now - newestValid) / 1e6);
  if (newestValid === undefined) {
    critical.push(record.lastSuccess ? 'no valid version' : 'never succeeded');
  } else if (job.every !== undefined && age! > STALE_FACTOR * job.every) {
    critical.push(
      `newest valid version is ${formatDuration(age!)} old (limit ${formatDuration(STALE_FACTOR * job.every)})`,
    );
  }
  if (record.last && !record.last.ok)
    warning.push(`last run failed: ${record.last.error ?? 'unknown error'}`);
  if (counts.invalid > 0) warning.push(`${counts.invalid} invalid version(s)`);
  return {
    job: job.job,
    state: critical.length > 0 ? 'critical' : warning.length > 0 ? 'warning' : 'ok',
    reasons: [...critical, ...warning],
    newestValid,
    age,
    nextDue: nextDue(job, record, now),
    versions: counts,
  };
}

const NAGIOS: Record<JobState, { code: number; word: string }> = {
  ok: { code: 0, word: 'OK' },
  warning: { code: 1, word: 'WARNING' },
  critical: { code: 2, word: 'CRITICAL' },
};

/**
 * The Nagios plugin's line and exit code for these jobs: the worst state, the jobs that are
 * not ok with their reasons, and perfdata (each job's age in seconds with the critical limit,
 * and its number of valid versions).
 */
export function nagiosReport(
  statuses: readonly JobStatus[],
  jobs: readonly JobConfig[],
): { line: string; code: number } {
  const worst = statuses.some((s) => s.state === 'critical')
    ? 'critical'
    : statuses.some((s) => s.state === 'warning')
      ? 'warning'
      : 'ok';
  const every = new Map(jobs.map((j) => [j.job, j.every]));
  const bad = statuses.filter((s) => s.state !== 'ok');
  const summary =
    bad.length === 0
      ? `${statuses.length} job(s) ok`
      : bad.map((s) => `${s.job} ${s.state}: ${s.reasons.join('; ')}`).join(', ') +
        (statuses.length > bad.length ? `; ${statuses.length - bad.length} ok` : '');
  const perf = statuses.map((s) => {
    const e = every.get(s.job);
    const crit = e === undefined ? '' : String(Math.round(STALE_FACTOR * e));
    const age = s.age === undefined ? 'U' : `${Math.round(s.age)}s`;
    return `'${s.job}_age'=${age};;${crit};0 '${s.job}_versions'=${s.versions.valid};;;0`;
  });
  const { code, word } = NAGIOS[worst];
  return { line: `BACKY ${word} - ${oneLine(summary)} | ${perf.join(' ')}`, code };
}

/** Nagios reads the first line only, and '|' starts perfdata. */
function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ').replace(/\|/g, '/');
}
