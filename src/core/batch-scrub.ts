/**
 * Batch scrub (Benji's batch-scrub): `scrub --all` and the daemon's per-job scrubs. Which
 * versions, in which order (scrubQueue, pure), and one version scrubbed with its time
 * recorded (scrubRecorded). Incomplete versions are never scrubbed (nothing to verify yet);
 * valid and invalid ones are: a scrub that finds an invalid version's damage repaired makes
 * it valid again.
 *
 * Order: never scrubbed first, then the longest since its last scrub; ties by version date,
 * oldest first, then uid, so that runs that stop early (a time budget, Ctrl-C) still reach
 * every version over time.
 */
import { NotFoundError } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import { nowMicros } from '../meta/meta-store.js';
import { recordScrubbed } from '../meta/scrub-times.js';
import type { ScrubTime } from '../meta/scrub-times.js';
import type { BlockStore } from '../storage/block-store.js';
import type { CopyKeeper } from './copy-keeper.js';
import { holdVersion } from './lease.js';
import type { ProgressReporter } from './progress.js';
import { scrub } from './scrub.js';
import type { ScrubResult } from './scrub.js';

/**
 * The versions to scrub, in order: not incomplete, and not scrubbed at or after `before`
 * (microseconds; undefined: every version).
 */
export function scrubQueue(
  versions: readonly Version[],
  times: ReadonlyMap<string, ScrubTime>,
  opts: { before?: number } = {},
): Version[] {
  const last = (v: Version) => times.get(v.uid)?.at ?? -Infinity;
  return versions
    .filter((v) => v.status !== 'incomplete')
    .filter((v) => opts.before === undefined || last(v) < opts.before)
    .sort((a, b) => last(a) - last(b) || a.date - b.date || (a.uid < b.uid ? -1 : 1));
}

export type RecordedScrub =
  | { uid: string; version: Version; result: ScrubResult }
  /** Removed or no longer complete since the queue was made: nothing to do. */
  | { uid: string; skipped: string };

/**
 * Scrubs one version (held for the time), brings its copy and those of every version whose
 * validity changed in step, and records the time. A version removed meanwhile is skipped.
 */
export async function scrubRecorded(opts: {
  meta: MetaStore;
  store: BlockStore;
  copies: CopyKeeper;
  uid: string;
  percent: number;
  progress?: ProgressReporter;
  signal?: AbortSignal;
}): Promise<RecordedScrub> {
  const { meta, uid } = opts;
  let held;
  try {
    held = await holdVersion(meta, uid, 'scrub');
  } catch (err) {
    if (err instanceof NotFoundError) return { uid, skipped: 'removed meanwhile' };
    throw err;
  }
  let result: ScrubResult;
  try {
    if (held.version.status === 'incomplete') return { uid, skipped: 'incomplete' };
    result = await scrub({
      meta,
      store: opts.store,
      version: held.version,
      percent: opts.percent,
      record: !meta.readOnly,
      progress: opts.progress,
      signal: opts.signal,
    });
    if (!meta.readOnly) await recordScrubbed(meta, uid, { at: nowMicros(), percent: opts.percent });
  } finally {
    await held.release();
  }
  await opts.copies.update(result.revalidated ? [uid, ...result.versionsAffected] : result.versionsAffected);
  return { uid, version: held.version, result };
}
