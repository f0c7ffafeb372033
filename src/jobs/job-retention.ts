/**
 * A job's `retention`, applied to its versions after each successful backup: what `enforce`
 * does (core/retention.ts), limited to this job's versions. A version a running command holds
 * is kept; removal leaves its tombstone in the store first, as rm does.
 */
import { selectForRemoval } from '../core/retention.js';
import { nowMicros } from '../meta/meta-store.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { JobConfig } from './job-config.js';
import type { JobContext } from './job-context.js';
import type { JobVersion } from './job-source.js';

export async function applyRetention(
  ctx: JobContext,
  meta: MetaStore,
  job: JobConfig,
  versions: readonly JobVersion[],
): Promise<string[]> {
  if (!job.retention) return [];
  const candidates = versions.filter((v) => v.status === 'valid' && !v.protected);
  const inUse = new Set<string>();
  for (const l of await meta.leases()) {
    if (l.versionUid && (await meta.isLeaseAlive(l))) inUse.add(l.versionUid);
  }
  const removed: string[] = [];
  for (const uid of selectForRemoval(candidates, job.retention, nowMicros())) {
    if (inUse.has(uid)) {
      ctx.log.warn(`[job ${job.job}] retention kept ${uid}: a running command uses it`);
      continue;
    }
    const undo = await ctx.recordRemoval(uid, `job ${job.job} retention`);
    await meta.removeVersion(uid).catch(async (err: unknown) => {
      await undo();
      throw err;
    });
    removed.push(uid);
    await ctx.updateCopies([uid]);
  }
  return removed;
}
