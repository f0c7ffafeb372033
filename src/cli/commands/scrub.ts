import { holdVersion } from '../../core/lease.js';
import { scrub } from '../../core/scrub.js';
import type { ScrubResult } from '../../core/scrub.js';
import { nowMicros } from '../../meta/meta-store.js';
import type { Version } from '../../meta/meta-store.js';
import { recordScrubbed } from '../../meta/scrub-times.js';
import { InputError, IntegrityError, InterruptedError, UsageError } from '../../errors.js';
import { openSource } from '../../source/source.js';
import type { RandomSource } from '../../source/source.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { progressBar } from '../render.js';

/** PERCENT for -p: a number with 0 < p <= 100. */
export function parsePercent(value: string): number {
  const p = /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN;
  if (!(p > 0 && p <= 100)) {
    throw new UsageError(`-p PERCENT must be a number greater than 0 and at most 100, got '${value}'`);
  }
  return p;
}

/** The operands that go together: UID, or --all (with --older-than); -s only with UID. */
export function scrubOperands(
  uid: string | undefined,
  opts: { source?: string; all?: boolean; olderThan?: string },
): void {
  if (opts.all) {
    if (uid !== undefined) throw new UsageError('give either a UID or --all, not both');
    if (opts.source !== undefined)
      throw new UsageError('-s SOURCE compares one version with its image: give a UID, not --all');
  } else {
    if (uid === undefined)
      throw new UsageError("missing UID (or --all to scrub every version); see 'backy scrub --help'");
    if (opts.olderThan !== undefined) throw new UsageError('--older-than goes with --all');
  }
}

export async function scrubCommand(
  ctx: Context,
  uidArg: string,
  opts: { percent?: string; source?: string },
) {
  const uid = parseUid(uidArg);
  const percent = opts.percent !== undefined ? parsePercent(opts.percent) : 100;
  if (opts.source === '-') throw new UsageError('-s SOURCE must be a file or block device, not stdin');
  const meta = await ctx.meta();
  const store = await ctx.store();
  const held = await holdVersion(meta, uid, 'scrub');
  const { version } = held;
  let source: RandomSource | undefined;
  let result;
  try {
    if (version.status === 'incomplete') {
      throw new InputError(
        `version ${uid} is incomplete (its backup is running or crashed): nothing to verify yet; wait for it, or remove it with 'backy rm'`,
      );
    }
    if (opts.source !== undefined) {
      const s = await openSource(opts.source);
      if (s.kind !== 'random') {
        await s.close().catch(() => {});
        throw new UsageError(`-s SOURCE must be a file or block device, not a stream (${opts.source})`);
      }
      source = s;
    }
    result = await scrub({
      meta,
      store,
      version,
      percent,
      source,
      record: !meta.readOnly,
      progress: progressBar(ctx.log),
      signal: ctx.signal,
    });
  } catch (err) {
    if (err instanceof InterruptedError) {
      throw err.leaving(
        `scrub of ${uid} stopped before it finished; damage it found so far is recorded, nothing else changed`,
      );
    }
    throw err;
  } finally {
    await source?.close().catch(() => {});
    await held.release();
  }
  await ctx.updateCopies(result.revalidated ? [uid, ...result.versionsAffected] : result.versionsAffected);
  if (!meta.readOnly) await recordScrubbed(meta, uid, { at: nowMicros(), percent });
  reportScrub(ctx, version, result, percent, { sourceName: source?.name });
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        uid,
        checked: result.checked,
        bad: result.bad,
        differing: result.differing,
        versions_affected: result.versionsAffected,
        revalidated: Boolean(result.revalidated),
        versions_revalidated: result.versionsRevalidated,
        problems: result.problems.map((p) => ({ idx: p.idx, kind: p.kind, reason: p.reason })),
      }),
    );
  } else if (ctx.machine) {
    ctx.out(scrubMachineLine(uid, result));
  }
  if (result.bad > 0) {
    throw new IntegrityError(
      `scrub of ${uid} found ${result.bad} damaged or missing blocks; ` +
        (meta.readOnly
          ? 'the metadata database is read-only, so nothing could be marked invalid'
          : `${result.versionsAffected.length} versions marked invalid`),
    );
  }
  if (result.differing > 0) {
    throw new IntegrityError(
      `deep scrub of ${uid}: ${result.differing} blocks differ from ${source?.name}; stored blocks verify, nothing was marked invalid`,
    );
  }
}

/** `-m`: `scrub UID CHECKED BAD DIFFERING AFFECTED REVALIDATED`. */
export function scrubMachineLine(uid: string, r: ScrubResult): string {
  return `scrub ${uid} ${r.checked} ${r.bad} ${r.differing} ${r.versionsAffected.length} ${r.revalidated ? 1 : 0}`;
}

/** The log lines of one finished scrub: its problems (20 at most), a summary, what changed. */
export function reportScrub(
  ctx: Context,
  version: Version,
  result: ScrubResult,
  percent: number,
  opts: { sourceName?: string; batch?: boolean } = {},
): void {
  const { uid } = version;
  const { sourceName } = opts;
  // In a batch each line names its version.
  const where = opts.batch ? `version ${uid} ` : '';
  for (const p of result.problems.slice(0, 20)) ctx.log.error(`${where}block ${p.idx}: ${p.reason}`);
  const shown = Math.min(result.problems.length, 20);
  const all = result.bad + result.differing;
  if (all > shown) ctx.log.error(`${where}... and ${all - shown} more problems`);
  const what = percent >= 100 ? 'full scrub' : `${percent}% sample`;
  ctx.log.info(
    `Scrubbed ${version.name} (${uid}), ${what}: ${result.checked} of ${result.blocks} blocks checked, ` +
      `${result.bad} bad${sourceName ? `, ${result.differing} differing from ${sourceName}` : ''}, ` +
      `${result.versionsAffected.length} versions affected`,
  );
  for (const v of result.versionsAffected) ctx.log.warn(`version ${v} is marked invalid`);
  if (result.revalidated)
    ctx.log.info(
      percent >= 100
        ? `Version ${uid} was invalid; every block is sound now, so it is valid again`
        : `Version ${uid} was invalid; every block it had marked invalid verifies now, so it is valid again`,
    );
  for (const v of result.versionsRevalidated.filter((v) => v !== uid))
    ctx.log.info(`Version ${v} is valid again: the damaged objects it named verify now`);
  if (result.notRevalidated) ctx.log.warn(`version ${uid} stays invalid: ${result.notRevalidated}`);
}
