/**
 * When the daemon runs a job. Pure: no clock, no I/O; times in microseconds since the epoch.
 *
 * Each job with `every = E` has slots at `spread + k * E` (k whole, counted from the epoch):
 * `spread` is a fixed offset in [0, E) derived from the job's name, so a fleet's jobs start
 * spread over the interval, the same times on every host and after every restart (flyingcircus
 * backy's scheduler does the same). A job is due when a slot has passed since its last run
 * started (failed runs included: a failing job is tried again at its next slot, not in a
 * loop). After downtime that spanned several slots the job is due once: the run that catches
 * up starts after all of them. A job that never ran is due at once (`check` calls it
 * critical). A job without `every` is never due.
 */
import { createHash } from 'node:crypto';

const US = 1_000_000;

/** The job's offset in its interval, in whole seconds in [0, every): deterministic per name. */
export function spreadSeconds(job: string, every: number): number {
  const h = createHash('sha256').update(`backy-job:${job}`).digest();
  return Number(h.readBigUInt64BE(0) % BigInt(Math.max(1, Math.floor(every))));
}

/** The latest slot at or before `t` (microseconds). */
export function slotAtOrBefore(t: number, every: number, spread: number): number {
  const e = every * US;
  const s = spread * US;
  return Math.floor((t - s) / e) * e + s;
}

/** The first slot strictly after `t`. */
export function slotAfter(t: number, every: number, spread: number): number {
  return slotAtOrBefore(t, every, spread) + every * US;
}

export interface ScheduleInput {
  job: string;
  /** Seconds; undefined: never due. */
  every?: number;
  /** When its last run started (microseconds); undefined: it never ran. */
  lastStarted?: number;
}

/** When the job is due next: at or before `now` means now; undefined: never. */
export function nextRunAt(j: ScheduleInput, now: number): number | undefined {
  if (j.every === undefined) return undefined;
  if (j.lastStarted === undefined) return now;
  const spread = spreadSeconds(j.job, j.every);
  return slotAfter(j.lastStarted, j.every, spread);
}

export function isDue(j: ScheduleInput, now: number): boolean {
  const at = nextRunAt(j, now);
  return at !== undefined && at <= now;
}

/**
 * The jobs due at `now`, most overdue first (never-run ones first, then by the slot they
 * missed, then by name), leaving out those in `running`.
 */
export function dueJobs(jobs: readonly ScheduleInput[], now: number, running: ReadonlySet<string>): string[] {
  return jobs
    .filter((j) => !running.has(j.job) && isDue(j, now))
    .map((j) => ({ job: j.job, at: j.lastStarted === undefined ? -Infinity : nextRunAt(j, now)! }))
    .sort((a, b) => a.at - b.at || (a.job < b.job ? -1 : a.job > b.job ? 1 : 0))
    .map((j) => j.job);
}

/** The earliest time after `now` at which one of these jobs (not running) becomes due; undefined: none. */
export function nextWake(
  jobs: readonly ScheduleInput[],
  now: number,
  running: ReadonlySet<string>,
): number | undefined {
  let next: number | undefined;
  for (const j of jobs) {
    if (running.has(j.job)) continue;
    const at = nextRunAt(j, now);
    if (at === undefined || at <= now) continue;
    if (next === undefined || at < next) next = at;
  }
  return next;
}
