/**
 * Runs a list of jobs, at most `maxParallel` at once; what `backy run` and the daemon call.
 * Each job's result is handed to `onResult` as it finishes, and all of them (in the order
 * given) are returned. Jobs not started when `signal` aborts get a failed result saying so.
 */
import { UsageError, errorMessage } from '../errors.js';
import { nowMicros } from '../meta/meta-store.js';
import type { JobContext } from './job-context.js';
import type { JobResult } from './job-result.js';
import { runJob } from './run-job.js';
import type { Opened } from './run-job.js';

export type { JobResult } from './job-result.js';
export type { JobContext } from './job-context.js';

export interface RunJobsOptions {
  ctx: JobContext;
  /** Job names ([job NAME] sections); each runs once even when named twice. */
  jobs: readonly string[];
  signal?: AbortSignal;
  maxParallel: number;
  onResult?: (r: JobResult) => void;
}

export async function runJobs(opts: RunJobsOptions): Promise<JobResult[]> {
  const { ctx } = opts;
  const byName = new Map(ctx.config.jobs.map((j) => [j.job, j]));
  const names = [...new Set(opts.jobs)];
  const unknown = names.filter((n) => !byName.has(n));
  if (unknown.length > 0) {
    throw new UsageError(
      `no job ${unknown.map((n) => `'${n}'`).join(', ')} in ${ctx.config.source}` +
        (byName.size > 0 ? ` (jobs: ${[...byName.keys()].join(', ')})` : ' (it has no [job NAME] sections)'),
    );
  }
  const results = new Array<JobResult>(names.length);
  if (names.length === 0) return results;
  // The database and store are opened once, before any job starts: concurrent first opens
  // would race, and a store that cannot be reached fails every job at once, after one probe
  // (a few seconds) rather than each job waiting out the S3 timeout and its retries.
  let opened: Opened | Error;
  try {
    opened = {
      meta: await ctx.meta({ write: 'run', probe: true }),
      store: await ctx.store({ root: 'create' }),
    };
  } catch (err) {
    opened = err instanceof Error ? err : new Error(String(err));
  }
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= names.length) return;
      const job = byName.get(names[i])!;
      const now = nowMicros();
      const failed = (error: string): JobResult => ({
        job: job.job,
        ok: false,
        error,
        started: now,
        finished: now,
        bytes: 0,
        bytesStored: 0,
      });
      let r: JobResult;
      if (opts.signal?.aborted) r = failed('not started: interrupted');
      else if (opened instanceof Error) r = failed(errorMessage(opened).split('\n')[0]);
      else r = await runJob(ctx, opened, job, opts.signal);
      results[i] = r;
      opts.onResult?.(r);
    }
  };
  const n = Math.max(1, Math.min(opts.maxParallel, names.length));
  await Promise.all(Array.from({ length: n }, worker));
  return results;
}
