/**
 * Runs a list of jobs, at most `maxParallel` at once; what `backy run` and the daemon call.
 * Each job's result is handed to `onResult` as it finishes, and all of them (in the order
 * given) are returned. Jobs not started when `signal` aborts get a failed result saying so.
 */
import { UsageError } from '../errors.js';
import { nowMicros } from '../meta/meta-store.js';
import type { JobContext } from './job-context.js';
import type { JobResult } from './job-result.js';
import { runJob } from './run-job.js';

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
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= names.length) return;
      const job = byName.get(names[i])!;
      let r: JobResult;
      if (opts.signal?.aborted) {
        const now = nowMicros();
        r = {
          job: job.job,
          ok: false,
          error: 'not started: interrupted',
          started: now,
          finished: now,
          bytes: 0,
          bytesStored: 0,
        };
      } else r = await runJob(ctx, job, opts.signal);
      results[i] = r;
      opts.onResult?.(r);
    }
  };
  const n = Math.max(1, Math.min(opts.maxParallel, names.length));
  await Promise.all(Array.from({ length: n }, worker));
  return results;
}
