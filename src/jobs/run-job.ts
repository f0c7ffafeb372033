/**
 * One run of one job: its lease, pre hook, the source's backup, post hook, labels and
 * protection, the source's rotation of snapshots or bitmaps, retention, on_failure hook, and
 * the result recorded in the database. Never throws: every failure is the result's one line.
 */
import { changeLabels, setProtected } from '../meta/catalog.js';
import { nowMicros } from '../meta/meta-store.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { IntegrityError, errorMessage } from '../errors.js';
import type { JobConfig } from './job-config.js';
import type { JobContext } from './job-context.js';
import { JobBusyError, holdJob } from './job-lease.js';
import { readJobRecord, recordJobResult } from './job-records.js';
import type { JobResult } from './job-result.js';
import { applyRetention } from './job-retention.js';
import { JOB_LABEL } from './job-source.js';
import type { JobSourceHandler } from './job-source.js';
import { jobVersions } from './job-versions.js';
import { runHook } from './hooks.js';
import { qcow2Job } from './qcow2-job.js';
import { rbdJob } from './rbd-job.js';
import { readJob } from './read-job.js';

function handlerOf(job: JobConfig): JobSourceHandler {
  switch (job.source.kind) {
    case 'rbd':
      return rbdJob;
    case 'qcow2':
      return qcow2Job;
    case 'file':
    case 'nbd':
      return readJob;
  }
}

/** The database and store, opened once for all jobs of a run. */
export interface Opened {
  meta: MetaStore;
  store: BlockStore;
}

export async function runJob(
  ctx: JobContext,
  { meta, store }: Opened,
  job: JobConfig,
  signal?: AbortSignal,
): Promise<JobResult> {
  const started = nowMicros();
  const log = ctx.log;
  let created: Version | undefined;
  let stats = { bytesRead: 0, bytesStored: 0 };
  let busy = false;
  try {
    const held = await holdJob(meta, job.job);
    try {
      const record = await readJobRecord(meta, job.job);
      const n = record.successes + 1; // this run's number, if it succeeds
      const verify = job.verifyEvery !== undefined && n % job.verifyEvery === 0;
      await runHook(job, 'pre', { status: 'running' }, signal);
      let postRan = false;
      const post = async (status: string) => {
        if (postRan) return;
        postRan = true;
        // Not stopped by an interruption: post undoes what pre did (a thaw after a freeze).
        await runHook(job, 'post', { status, uid: created?.uid }).catch((err: unknown) =>
          log.warn(`[job ${job.job}] ${errorMessage(err)}`),
        );
      };
      let r;
      try {
        r = await handlerOf(job).backup({
          job,
          meta,
          store,
          blockSize: ctx.config.blockSize,
          hintCheckBlocks: ctx.config.hintCheckBlocks,
          versions: await jobVersions(meta, job),
          verify,
          signal,
          log,
          captured: () => post('ok'),
          onVersion: (v) => {
            created = v;
            log.debug(`[job ${job.job}] new version ${v.uid}`);
          },
        });
      } finally {
        await post('failed');
      }
      stats = r.stats;
      const uid = r.version.uid;
      await changeLabels(meta, uid, {
        set: { ...job.labels, ...r.labels, [JOB_LABEL]: job.job },
        remove: [],
      });
      if (job.protectEvery !== undefined && n % job.protectEvery === 0) await setProtected(meta, [uid], true);
      await ctx.updateCopies([uid]);
      await r.finish();
      const removed = await applyRetention(ctx, meta, job, await jobVersions(meta, job));
      log.info(
        `[job ${job.job}] backed up ${job.sourceText} as ${uid}: ${r.stats.bytesRead} bytes read, ${r.stats.bytesStored} stored` +
          (verify ? ', unchanged blocks verified' : '') +
          (removed.length > 0 ? `; retention removed ${removed.length} version(s)` : ''),
      );
      if (r.problem !== undefined) throw new IntegrityError(r.problem);
      const result: JobResult = {
        job: job.job,
        ok: true,
        uid,
        started,
        finished: nowMicros(),
        bytes: r.stats.bytesRead,
        bytesStored: r.stats.bytesStored,
      };
      await recordJobResult(meta, result);
      return result;
    } finally {
      await held.release();
    }
  } catch (err) {
    busy = err instanceof JobBusyError;
    const error = errorMessage(err).split('\n')[0];
    const result: JobResult = {
      job: job.job,
      ok: false,
      uid: created?.uid,
      error,
      started,
      finished: nowMicros(),
      bytes: stats.bytesRead,
      bytesStored: stats.bytesStored,
    };
    // Another run holds the job: its result is the one to record, not this refusal.
    if (!busy) {
      await runHook(job, 'on_failure', { status: 'failed', uid: created?.uid, error }).catch((e: unknown) =>
        log.warn(`[job ${job.job}] ${errorMessage(e)}`),
      );
      try {
        await recordJobResult(meta, result);
      } catch (e) {
        log.warn(`[job ${job.job}] its result was not recorded: ${errorMessage(e)}`);
      }
    }
    return result;
  }
}
