import { importVersion } from '../../core/metadata-io.js';
import type { Context } from '../context.js';
import { progressBar } from '../render.js';

export async function importCommand(ctx: Context, file: string) {
  const meta = await ctx.meta({ write: 'import' });
  const store = await ctx.store();
  const r = await importVersion({ meta, store, path: file, progress: progressBar(ctx.log) });
  if (r.missing > 0) {
    ctx.log.warn(
      `${r.missing} blocks reference objects that are missing or invalid in the data store; they are marked invalid`,
    );
  }
  if (r.downgraded)
    ctx.log.warn(`version ${r.version.uid} was valid when exported; it is imported as invalid`);
  ctx.log.info(
    `Imported version ${r.version.uid} (${r.version.name}, ${r.blocks} blocks, ${r.version.status}) from ${file === '-' ? 'stdin' : file}`,
  );
  ctx.out(r.version.uid);
}
