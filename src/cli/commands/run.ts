import { ExitStatus, UsageError } from '../../errors.js';
import { nowMicros } from '../../meta/meta-store.js';
import { readJobRecords } from '../../jobs/job-records.js';
import { jobResultJson } from '../../jobs/job-result.js';
import type { JobResult } from '../../jobs/job-result.js';
import { nextDue } from '../../jobs/job-status.js';
import { runJobs } from '../../jobs/run-jobs.js';
import type { Context } from '../context.js';
import { formatBytes } from '../render.js';

/**
 * `run [--due] [JOB...]`: runs the named jobs (all without names; with --due those due now),
 * `max_parallel` at a time; one line per job as it finishes; exit 0 when all succeeded, 1
 * otherwise (the lines say which failed and why).
 */
export async function runCommand(ctx: Context, names: string[], opts: { due?: boolean }) {
  const jobs = ctx.config.jobs;
  if (jobs.length === 0) {
    throw new UsageError(`${ctx.config.source} has no [job NAME] sections; see 'Jobs' in the README`);
  }
  let wanted = names.length > 0 ? names : jobs.map((j) => j.job);
  if (opts.due) {
    // Opened as runJobs opens it (the database is opened once): for writing, the store's
    // descriptor checked, an unreachable store failing each job at once after one probe.
    const records = await readJobRecords(await ctx.meta({ write: 'run', probe: true }));
    const now = nowMicros();
    const byName = new Map(jobs.map((j) => [j.job, j]));
    wanted = wanted.filter((n) => {
      const job = byName.get(n);
      if (!job) return true; // runJobs names it
      const due = nextDue(job, records.get(n) ?? { successes: 0 }, now);
      return due !== undefined && due <= now;
    });
  }
  const results = await runJobs({
    ctx,
    jobs: wanted,
    signal: ctx.signal,
    maxParallel: ctx.config.scheduler.maxParallel,
    onResult: (r) => {
      if (!ctx.json) ctx.out(ctx.machine ? machineLine(r) : humanLine(r));
    },
  });
  if (ctx.json) ctx.out(JSON.stringify({ results: results.map(jobResultJson) }));
  // Stopped by SIGINT or SIGTERM: exit as interrupted (130, 143), after the lines above.
  ctx.signal.throwIfAborted();
  if (results.some((r) => !r.ok)) throw new ExitStatus(1);
}

function seconds(r: JobResult): string {
  return ((r.finished - r.started) / 1e6).toFixed(1);
}

/** `job NAME ok UID BYTES_READ BYTES_STORED SECONDS` or `job NAME failed UID|- SECONDS MESSAGE`. */
function machineLine(r: JobResult): string {
  return r.ok
    ? `job ${r.job} ok ${r.uid} ${r.bytes} ${r.bytesStored} ${seconds(r)}`
    : `job ${r.job} failed ${r.uid ?? '-'} ${seconds(r)} ${r.error}`;
}

function humanLine(r: JobResult): string {
  return r.ok
    ? `${r.job}: ok, version ${r.uid} (${formatBytes(r.bytes)} read, ${formatBytes(r.bytesStored)} stored, ${seconds(r)} s)`
    : `${r.job}: FAILED after ${seconds(r)} s: ${r.error}`;
}
