import { readFile } from 'node:fs/promises';
import { backup } from '../../core/backup.js';
import { InputError, UsageError } from '../../errors.js';
import { parseRbdDiff } from '../../hints/rbd-diff.js';
import { openSource } from '../../source/source.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export async function backupCommand(
  ctx: Context,
  sourcePath: string,
  name: string,
  opts: { rbd?: string; from?: string },
) {
  if (name.trim() === '' || /[\n\r]/.test(name)) throw new UsageError('NAME must be a non-empty single line');
  if (/\s/.test(name))
    throw new UsageError(`NAME must not contain whitespace ('${name}'); 'ls -m' output is space-separated`);
  const baseUid = opts.from !== undefined ? parseUid(opts.from) : undefined;
  let hints;
  if (opts.rbd !== undefined) {
    if (sourcePath === '-') throw new UsageError('-r (hints) needs a seekable SOURCE, not stdin');
    let text: string;
    try {
      text = await readFile(opts.rbd, 'utf8');
    } catch (err) {
      throw new InputError(
        `cannot read hint file ${opts.rbd}: ${(err as NodeJS.ErrnoException).code ?? err}`,
      );
    }
    hints = parseRbdDiff(text, `hint file ${opts.rbd}`);
  }
  const meta = await ctx.meta();
  const store = await ctx.store();
  const source = await openSource(sourcePath);
  try {
    const { version, stats } = await backup({
      meta,
      store,
      source,
      name,
      blockSize: ctx.config.blockSize,
      hints,
      hintsName: opts.rbd !== undefined ? `hint file ${opts.rbd}` : undefined,
      baseUid,
      hintCheckBlocks: ctx.config.hintCheckBlocks,
      progress: progressBar(ctx.log),
      onVersion: (v) => ctx.log.debug(`new version ${v.uid}`),
    });
    ctx.log.info(
      `Backed up ${source.name} as ${version.name} (${formatBytes(version.sizeBytes)}, ${stats.blocks} blocks): ` +
        `${stats.read} read, ${stats.stored} stored (${formatBytes(stats.bytesStored)}), ${stats.deduplicated} deduplicated, ` +
        `${stats.sparse} sparse, ${stats.kept} kept from base`,
    );
    ctx.out(version.uid);
  } finally {
    await source.close().catch(() => {});
  }
}
