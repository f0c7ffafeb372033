import { ExitStatus, errorMessage } from '../../errors.js';
import { nagiosReport } from '../../jobs/job-status.js';
import type { Context } from '../context.js';
import { jobViews } from './jobs.js';

/** Nagios's UNKNOWN: the check itself could not be made. */
export const NAGIOS_UNKNOWN = 3;

/**
 * `check [JOB...]`: a Nagios/Icinga plugin. One line on stdout with perfdata; exit 0 OK,
 * 1 WARNING, 2 CRITICAL, 3 UNKNOWN (no jobs, an unknown job, the database unreadable).
 * With --json one document: the state, code, line and each job's status.
 */
export async function checkCommand(ctx: Context, names: string[]) {
  if (ctx.config.jobs.length === 0) throw checkUnknown(ctx, `no jobs in ${ctx.config.source}`);
  const views = await jobViews(ctx, names);
  const { line, code } = nagiosReport(
    views.map((v) => v.status),
    views.map((v) => v.job),
  );
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        code,
        line,
        jobs: views.map((v) => ({ job: v.job.job, state: v.status.state, reasons: v.status.reasons })),
      }),
    );
  } else ctx.out(line);
  if (code !== 0) throw new ExitStatus(code);
}

/** The UNKNOWN line for an error (printed here), and the exit status that goes with it. */
export function checkUnknown(ctx: { out(line: string): void } | undefined, err: unknown): ExitStatus {
  if (err instanceof ExitStatus) return err;
  const msg = typeof err === 'string' ? err : errorMessage(err);
  const line = `BACKY UNKNOWN - ${msg.split('\n')[0].replace(/\|/g, '/')}`;
  if (ctx) ctx.out(line);
  else process.stdout.write(`${line}\n`);
  return new ExitStatus(NAGIOS_UNKNOWN);
}
