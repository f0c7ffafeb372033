/**
 * Each job's record in the metadata database, so that every host sharing it (`jobs`, `check`,
 * the daemon) sees the last run, failures included: settings rows `job_result:<job>` holding
 * JSON. No schema of its own: the settings table is a key-value table every database has.
 *
 * - last: the last run's result;
 * - last_success: the last successful run's result;
 * - successes: how many runs succeeded (protect_every and verify_every count them).
 */
import type { MetaStore } from '../meta/meta-store.js';
import { jobResultFromJson, jobResultJson } from './job-result.js';
import type { JobResult } from './job-result.js';

const PREFIX = 'job_result:';

export interface JobRecord {
  last?: JobResult;
  lastSuccess?: JobResult;
  successes: number;
}

function parseRecord(text: string | undefined): JobRecord {
  const empty: JobRecord = { successes: 0 };
  if (text === undefined) return empty;
  try {
    const o = JSON.parse(text) as Record<string, unknown>;
    return {
      last: jobResultFromJson(o.last),
      lastSuccess: jobResultFromJson(o.last_success),
      successes: typeof o.successes === 'number' && o.successes >= 0 ? o.successes : 0,
    };
  } catch {
    return empty; // damaged or written by a newer backy: as if never run
  }
}

function recordText(r: JobRecord): string {
  return JSON.stringify({
    last: r.last ? jobResultJson(r.last) : null,
    last_success: r.lastSuccess ? jobResultJson(r.lastSuccess) : null,
    successes: r.successes,
  });
}

/** The records of all jobs that ever ran, by job name. */
export async function readJobRecords(meta: MetaStore): Promise<Map<string, JobRecord>> {
  const rows = await meta.db
    .selectFrom('settings')
    .select(['key', 'value'])
    .where('key', 'like', `${PREFIX}%`)
    .execute();
  return new Map(rows.map((r) => [r.key.slice(PREFIX.length), parseRecord(r.value)]));
}

export async function readJobRecord(meta: MetaStore, job: string): Promise<JobRecord> {
  const row = await meta.db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', PREFIX + job)
    .executeTakeFirst();
  return parseRecord(row?.value);
}

/** Records a run's result (read, changed and written in one transaction). */
export async function recordJobResult(meta: MetaStore, result: JobResult): Promise<JobRecord> {
  return meta.write(async (tx) => {
    const row = await tx
      .selectFrom('settings')
      .select('value')
      .where('key', '=', PREFIX + result.job)
      .executeTakeFirst();
    const rec = parseRecord(row?.value);
    rec.last = result;
    if (result.ok) {
      rec.lastSuccess = result;
      rec.successes += 1;
    }
    const value = recordText(rec);
    await tx
      .insertInto('settings')
      .values({ key: PREFIX + result.job, value })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
    return rec;
  });
}
