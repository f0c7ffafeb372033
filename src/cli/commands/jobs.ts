import { UsageError } from '../../errors.js';
import { nowMicros } from '../../meta/meta-store.js';
import type { MetaStore } from '../../meta/meta-store.js';
import { formatDuration } from '../../jobs/duration.js';
import type { JobConfig } from '../../jobs/job-config.js';
import { jobLeaseKind } from '../../jobs/job-lease.js';
import { readJobRecords } from '../../jobs/job-records.js';
import type { JobRecord } from '../../jobs/job-records.js';
import { jobResultJson } from '../../jobs/job-result.js';
import { jobStatus } from '../../jobs/job-status.js';
import type { JobStatus } from '../../jobs/job-status.js';
import { jobVersions } from '../../jobs/job-versions.js';
import type { Context } from '../context.js';
import { jsonDate } from '../render.js';
import { textTable } from '../text-table.js';

export interface JobView {
  job: JobConfig;
  record: JobRecord;
  status: JobStatus;
  running: boolean;
}

/** The state of each configured job (or of `names`), from the database alone. */
export async function jobViews(ctx: Context, names: readonly string[] = []): Promise<JobView[]> {
  const jobs = ctx.config.jobs;
  const unknown = names.filter((n) => !jobs.some((j) => j.job === n));
  if (unknown.length > 0) {
    throw new UsageError(`no job ${unknown.map((n) => `'${n}'`).join(', ')} in ${ctx.config.source}`);
  }
  const wanted = names.length > 0 ? jobs.filter((j) => names.includes(j.job)) : jobs;
  const meta = await ctx.meta({ databaseOnly: true });
  const records = await readJobRecords(meta);
  const running = await runningJobs(meta);
  const now = nowMicros();
  const views: JobView[] = [];
  for (const job of wanted) {
    const record = records.get(job.job) ?? { successes: 0 };
    const status = jobStatus(job, record, await jobVersions(meta, job), now);
    views.push({ job, record, status, running: running.has(job.job) });
  }
  return views;
}

async function runningJobs(meta: MetaStore): Promise<Set<string>> {
  const out = new Set<string>();
  for (const l of await meta.leases()) {
    if (l.kind.startsWith(jobLeaseKind('')) && (await meta.isLeaseAlive(l)))
      out.add(l.kind.slice(jobLeaseKind('').length));
  }
  return out;
}

function stateOf(v: JobView): string {
  return v.running ? 'running' : v.status.state;
}

/** `jobs`: job, source, last success and its age, last result, next due, versions, state. */
export async function jobsCommand(ctx: Context) {
  const views = await jobViews(ctx);
  const now = nowMicros();
  if (ctx.json) {
    ctx.out(
      JSON.stringify(
        views.map((v) => ({
          job: v.job.job,
          name: v.job.name,
          source: v.job.sourceText,
          every_s: v.job.every ?? null,
          last_success: v.record.lastSuccess ? jsonDate(v.record.lastSuccess.finished) : null,
          last_success_us: v.record.lastSuccess?.finished ?? null,
          newest_valid_age_s: v.status.age === undefined ? null : Math.round(v.status.age),
          last_result: v.record.last ? jobResultJson(v.record.last) : null,
          next_due: v.status.nextDue === undefined ? null : jsonDate(v.status.nextDue),
          next_due_us: v.status.nextDue ?? null,
          versions: v.status.versions,
          state: stateOf(v),
          reasons: v.status.reasons,
        })),
      ),
    );
    return;
  }
  if (ctx.machine) {
    // job NAME STATE LAST_SUCCESS AGE_S LAST_RESULT NEXT_DUE VALID INVALID SOURCE ('-' for none)
    for (const v of views) {
      const s = v.status;
      ctx.out(
        [
          'job',
          v.job.job,
          stateOf(v),
          v.record.lastSuccess ? jsonDate(v.record.lastSuccess.finished) : '-',
          s.age === undefined ? '-' : String(Math.round(s.age)),
          v.record.last ? (v.record.last.ok ? 'ok' : 'failed') : '-',
          s.nextDue === undefined ? '-' : jsonDate(s.nextDue),
          String(s.versions.valid),
          String(s.versions.invalid),
          v.job.sourceText,
        ].join(' '),
      );
    }
    return;
  }
  if (views.length === 0) {
    ctx.out(`no jobs in ${ctx.config.source}`);
    return;
  }
  const rows = views.map((v) => {
    const s = v.status;
    const last = v.record.last;
    const success = v.record.lastSuccess;
    return [
      v.job.job,
      v.job.sourceText,
      success
        ? `${jsonDate(success.finished).slice(0, 19).replace('T', ' ')} (${ago(now, success.finished)})`
        : 'never',
      last ? (last.ok ? 'ok' : `failed: ${last.error ?? ''}`) : '-',
      s.nextDue === undefined
        ? '-'
        : s.nextDue <= now
          ? 'now'
          : `in ${formatDuration((s.nextDue - now) / 1e6)}`,
      `${s.versions.valid}${s.versions.invalid > 0 ? ` (+${s.versions.invalid} invalid)` : ''}`,
      stateOf(v) + (s.reasons.length > 0 ? `: ${s.reasons.join('; ')}` : ''),
    ];
  });
  ctx.out(textTable(['job', 'source', 'last success', 'last result', 'next due', 'versions', 'state'], rows));
}

function ago(now: number, micros: number): string {
  const s = Math.max(0, (now - micros) / 1e6);
  return s < 1 ? 'just now' : `${formatDuration(s)} ago`;
}
