import { access, writeFile } from 'node:fs/promises';
import { copyVersion } from '../../core/copy.js';
import type { VersionCopyResult } from '../../core/copy.js';
import { selectVersions } from '../../core/copy-select.js';
import { InputError, IntegrityError, InterruptedError, UsageError } from '../../errors.js';
import { nowMicros } from '../../meta/meta-store.js';
import { BlockStore } from '../../storage/block-store.js';
import { parseDuration } from '../../util/duration.js';
import { Context, parseUid } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export interface CopyCliOptions {
  to: string;
  name: string[];
  all?: boolean;
  since?: string;
  dryRun?: boolean;
}

/** Usage errors before anything is opened: what to copy, said one way. */
export function copyOperands(uids: string[], opts: CopyCliOptions): { uids: string[]; sinceMicros?: number } {
  const ways = [uids.length > 0, opts.name.length > 0, Boolean(opts.all)].filter(Boolean).length;
  if (ways !== 1) {
    throw new UsageError('copy needs exactly one of: UID..., --name NAME (repeatable), --all');
  }
  let sinceMicros: number | undefined;
  if (opts.since !== undefined) {
    const ms = parseDuration(opts.since);
    if (ms === undefined) {
      throw new UsageError(`--since '${opts.since}' is not a duration (e.g. 36h, 7d, 2w; units s m h d w)`);
    }
    sinceMicros = nowMicros() - ms * 1000;
  }
  return { uids: uids.map(parseUid), sinceMicros };
}

export async function copyCommand(ctx: Context, uidArgs: string[], opts: CopyCliOptions) {
  const { uids, sinceMicros } = copyOperands(uidArgs, opts);
  const dryRun = Boolean(opts.dryRun);
  const meta = await ctx.meta();
  // Decoded on the main thread: the target's worker names and encodes. A copy waits on the
  // target's writes more than on CPU (full copy to radosgw: 4.7 s CPU in 19.6 s), and a second
  // worker pool would cost ~13 MB more peak RSS (155 MB measured with it).
  const opened = await ctx.store();
  const store = new BlockStore(opened.backend, opened.spec);
  const versions = await selectVersions(meta, { uids, names: opts.name, all: opts.all, sinceMicros });
  const target = new Context(ctx.log, {
    machine: ctx.machine,
    json: ctx.json,
    config: opts.to,
    signal: ctx.signal,
  });
  const results: VersionCopyResult[] = [];
  try {
    if (target.config.engine === ctx.config.engine) {
      throw new InputError(`--to ${opts.to} names the source's own metadata database; copy to another store`);
    }
    const tmeta = await target.meta(dryRun ? {} : { write: 'copy' });
    const tstore = await target.store({ root: dryRun ? 'any' : 'create' });
    const from = ctx.knownDescriptor?.storeId;
    const to = dryRun ? target.knownDescriptor?.storeId : (await target.descriptor()).storeId;
    if (from !== undefined && from === to) {
      throw new InputError(
        `--to ${opts.to} names the source's own data store (store ${from}); copy to another store`,
      );
    }
    const progress = progressBar(ctx.log);
    const afterBlock = testPause(ctx.signal);
    for (const v of versions) {
      let r: VersionCopyResult;
      try {
        r = await copyVersion({
          source: { meta, store },
          target: { meta: tmeta, store: tstore },
          uid: v.uid,
          dryRun,
          record: !meta.readOnly,
          progress,
          signal: ctx.signal,
          afterBlock,
        });
      } catch (err) {
        if (err instanceof InterruptedError) {
          throw err.leaving(
            `copy of ${v.uid} stopped; it is not at the target (what it stored there goes with the target's cleanup or is reused by the next copy)`,
          );
        }
        throw err;
      }
      results.push(r);
      if (r.outcome === 'copied' && !dryRun) {
        await target.clearRemovals([r.uid]);
        await target.updateCopies([r.uid]);
      } else if (r.touched) await target.updateCopies([r.uid]);
      if (r.sourceAffected.length > 0) await ctx.updateCopies(r.sourceAffected);
      report(ctx, r, dryRun);
    }
  } finally {
    await target.close();
  }
  output(ctx, results, dryRun);
  const damaged = results.filter((r) => r.bad.length > 0 || r.problem !== undefined);
  if (damaged.length > 0) {
    throw new IntegrityError(
      `${damaged.length} version(s) copied invalid because of damage: ${damaged.map((r) => r.uid).join(', ')}; run 'backy scrub' on the source`,
    );
  }
}

function report(ctx: Context, r: VersionCopyResult, dryRun: boolean): void {
  for (const bad of r.bad.slice(0, 20)) {
    ctx.log.error(`version ${r.uid} block ${bad.idx}: ${bad.reason}; the copy is marked invalid there`);
  }
  if (r.bad.length > 20) ctx.log.error(`... and ${r.bad.length - 20} more bad blocks in version ${r.uid}`);
  if (r.problem) ctx.log.error(`version ${r.uid} could not be made valid at the target: ${r.problem}`);
  if (r.outcome === 'skipped') ctx.log.warn(`version ${r.uid} (${r.name}) is not copied: ${r.note}`);
  else if (r.outcome === 'present') ctx.log.info(`version ${r.uid} (${r.name}) is at the target already`);
  else if (dryRun) ctx.log.info(`version ${r.uid} (${r.name}) would be copied`);
  else {
    ctx.log.info(
      `Copied ${r.name} (${r.uid}, ${r.status}): ${r.blocksSent} blocks (${formatBytes(r.bytesSent)}) sent, ` +
        `${r.blocksFromBase} blocks kept from its base, ${formatBytes(r.bytesRead)} read`,
    );
    if (r.status !== 'valid' && r.bad.length === 0 && !r.problem) {
      ctx.log.warn(`version ${r.uid} is invalid at the source and was copied as invalid`);
    }
  }
}

function output(ctx: Context, results: VersionCopyResult[], dryRun: boolean): void {
  const count = (o: VersionCopyResult['outcome']) => results.filter((r) => r.outcome === o).length;
  const bytesSent = results.reduce((n, r) => n + r.bytesSent, 0);
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        dry_run: dryRun,
        copied: count('copied'),
        present: count('present'),
        skipped: count('skipped'),
        bytes_sent: bytesSent,
        versions: results.map((r) => ({
          uid: r.uid,
          name: r.name,
          outcome: r.outcome,
          status: r.status,
          blocks: r.blocks,
          blocks_from_base: r.blocksFromBase,
          blocks_sent: r.blocksSent,
          bytes_sent: r.bytesSent,
          bytes_read: r.bytesRead,
          blocks_damaged: r.bad.length,
          note: r.note ?? null,
        })),
      }),
    );
  } else if (ctx.machine) {
    for (const r of results) {
      ctx.out(
        `copy ${r.uid} ${r.outcome} ${r.status} ${r.blocksSent} ${r.bytesSent} ${r.bytesRead} ${r.bad.length}`,
      );
    }
    ctx.out(`total ${count('copied')} ${count('present')} ${count('skipped')} ${bytesSent}`);
  } else {
    for (const r of results) {
      const what = r.outcome === 'copied' && dryRun ? 'would copy' : r.outcome;
      ctx.out(
        `${what} ${r.uid} ${r.name} ${r.status}${r.outcome === 'copied' && !dryRun ? ` ${formatBytes(r.bytesSent)} sent` : ''}`,
      );
    }
    ctx.out(
      `${count('copied')} ${dryRun ? 'to copy' : 'copied'}, ${count('present')} at the target already, ` +
        `${count('skipped')} skipped; ${formatBytes(bytesSent)} sent`,
    );
  }
}

/**
 * Tests only: BACKY_TEST_COPY_PAUSE=N:FILE stops each version's copy after its Nth block entry,
 * creates FILE and waits until it is removed, so a test can run rm or cleanup at that moment
 * (or kill the copy) without timing guesses.
 */
function testPause(signal: AbortSignal): ((done: number) => Promise<void>) | undefined {
  const spec = process.env.BACKY_TEST_COPY_PAUSE;
  const m = spec === undefined ? null : /^(\d+):(.+)$/.exec(spec);
  if (!m) return undefined;
  const at = Number(m[1]);
  const file = m[2];
  return async (done) => {
    if (done !== at) return;
    await writeFile(file, 'paused\n');
    const paused = () =>
      access(file).then(
        () => true,
        () => false,
      );
    while (!signal.aborted && (await paused())) await new Promise((r) => setTimeout(r, 50));
    signal.throwIfAborted();
  };
}
