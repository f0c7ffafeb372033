import { scrubQueue, scrubRecorded } from '../../core/batch-scrub.js';
import { IntegrityError, InterruptedError, UsageError } from '../../errors.js';
import { parseDurationSeconds } from '../../jobs/duration.js';
import { nowMicros } from '../../meta/meta-store.js';
import { forgetScrubTimes, scrubTimes } from '../../meta/scrub-times.js';
import type { Context } from '../context.js';
import { progressBar } from '../render.js';
import { parsePercent, reportScrub, scrubMachineLine } from './scrub.js';

/**
 * `scrub --all [-p PERCENT] [--older-than DURATION]`: every complete version (valid or
 * invalid) not scrubbed within DURATION, longest-unscrubbed first (core/batch-scrub.ts). Goes
 * on past damage (exit 3 at the end when any was found); stops at the first other error (an
 * unreachable store fails every version alike), keeping what was done.
 */
export async function scrubAllCommand(ctx: Context, opts: { percent?: string; olderThan?: string }) {
  const percent = opts.percent !== undefined ? parsePercent(opts.percent) : 100;
  let olderThan: number | undefined;
  if (opts.olderThan !== undefined) {
    olderThan = parseDurationSeconds(opts.olderThan);
    if (olderThan === undefined) {
      throw new UsageError(
        `--older-than must be a duration such as 30m, 12h, 7d or 2w, got '${opts.olderThan}'`,
      );
    }
  }
  const meta = await ctx.meta();
  const store = await ctx.store();
  const copies = await ctx.copies();
  const versions = await meta.listVersions();
  const times = await scrubTimes(meta);
  if (!meta.readOnly) {
    const live = new Set(versions.map((v) => v.uid));
    await forgetScrubTimes(
      meta,
      [...times.keys()].filter((u) => !live.has(u)),
    );
  }
  const queue = scrubQueue(versions, times, {
    before: olderThan === undefined ? undefined : nowMicros() - olderThan * 1_000_000,
  });
  const scrubbed: { uid: string; name: string; bad: number; checked: number; json: object }[] = [];
  const skipped: { uid: string; reason: string }[] = [];
  const progress = progressBar(ctx.log);
  for (const v of queue) {
    let r;
    try {
      r = await scrubRecorded({ meta, store, copies, uid: v.uid, percent, progress, signal: ctx.signal });
    } catch (err) {
      const done = `${scrubbed.length} of ${queue.length} versions scrubbed before`;
      if (err instanceof InterruptedError) {
        throw err.leaving(
          `scrub --all stopped at version ${v.uid}; ${done}; damage found so far is recorded`,
        );
      }
      ctx.log.info(`scrub --all: ${done} version ${v.uid} failed`);
      throw err;
    }
    if ('skipped' in r) {
      skipped.push({ uid: r.uid, reason: r.skipped });
      ctx.log.info(`Skipped version ${r.uid}: ${r.skipped}`);
      continue;
    }
    const { result } = r;
    reportScrub(ctx, r.version, result, percent, { batch: true });
    if (ctx.machine && !ctx.json) ctx.out(scrubMachineLine(r.uid, result));
    scrubbed.push({
      uid: r.uid,
      name: r.version.name,
      bad: result.bad,
      checked: result.checked,
      json: {
        uid: r.uid,
        name: r.version.name,
        checked: result.checked,
        bad: result.bad,
        versions_affected: result.versionsAffected,
        revalidated: result.revalidated,
        versions_revalidated: result.versionsRevalidated,
      },
    });
  }
  const damaged = scrubbed.filter((s) => s.bad > 0);
  ctx.log.info(
    `Scrubbed ${scrubbed.length} versions (${percent >= 100 ? 'every block' : `${percent}% of the blocks`}` +
      `${olderThan === undefined ? '' : `, not scrubbed within ${opts.olderThan}`}), ` +
      `${scrubbed.reduce((n, s) => n + s.checked, 0)} blocks checked, ${damaged.length} with damage`,
  );
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        percent,
        scrubbed: scrubbed.map((s) => s.json),
        skipped,
        damaged: damaged.map((s) => s.uid),
      }),
    );
  }
  if (damaged.length > 0) {
    throw new IntegrityError(
      `scrub --all found damaged or missing blocks in ${damaged.length} of ${scrubbed.length} versions (${damaged
        .slice(0, 3)
        .map((s) => s.uid)
        .join(', ')}${damaged.length > 3 ? ', ...' : ''})` +
        (meta.readOnly
          ? '; the metadata database is read-only, so nothing could be marked invalid'
          : '; they and the versions sharing the blocks are marked invalid'),
    );
  }
}
