import { importVersion } from '../../core/metadata-io.js';
import { InterruptedError } from '../../errors.js';
import type { Context } from '../context.js';
import { progressBar, versionJsonFields } from '../render.js';

export async function importCommand(ctx: Context, file: string) {
  const meta = await ctx.meta({ write: 'import' });
  const store = await ctx.store();
  let r;
  try {
    r = await importVersion({ meta, store, path: file, progress: progressBar(ctx.log), signal: ctx.signal });
  } catch (err) {
    if (err instanceof InterruptedError) {
      throw err.leaving(`import of ${file === '-' ? 'stdin' : file} stopped; nothing was imported`);
    }
    throw err;
  }
  await ctx.clearRemovals([r.version.uid]);
  await ctx.updateCopies([r.version.uid]);
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
  if (ctx.json) {
    ctx.out(
      JSON.stringify({ ...versionJsonFields(r.version), blocks_imported: r.blocks, missing: r.missing }),
    );
  } else ctx.out(r.version.uid);
}
