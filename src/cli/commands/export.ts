import { holdVersion } from '../../core/lease.js';
import { exportVersion, openExportTarget } from '../../core/metadata-io.js';
import { InterruptedError } from '../../errors.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { storePaths } from './restore.js';
import { checkTargetOutsideStore } from '../../target/target.js';

export async function exportCommand(ctx: Context, uidArg: string, file: string) {
  const uid = parseUid(uidArg);
  const meta = await ctx.meta({ databaseOnly: true });
  // The path is checked before the version is held: a refused FILE leaves the database as it was.
  await checkTargetOutsideStore(file, storePaths(ctx), 'export file');
  const held = await holdVersion(meta, uid, 'export', { bestEffort: true }); // not found: fail before creating FILE
  let blocks: number;
  if (held.unheld) {
    ctx.log.warn(
      `cannot hold version ${uid} while it is exported (${held.unheld}); going on without: do not remove it meanwhile`,
    );
  }
  try {
    const target = await openExportTarget(file);
    try {
      blocks = await exportVersion({ meta, uid, out: target.out, signal: ctx.signal });
    } catch (err) {
      // A partial export file is removed, so no partial export passes for a whole one.
      await target.done(false);
      if (err instanceof InterruptedError) {
        throw err.leaving(
          file === '-'
            ? `export of ${uid} to stdout stopped; the output is incomplete`
            : `export of ${uid} to ${file} stopped; the partial file was removed`,
        );
      }
      throw err;
    }
    await target.done(true);
  } finally {
    await held.release();
  }
  ctx.log.info(`Exported version ${uid} (${blocks} blocks) to ${file === '-' ? 'stdout' : file}`);
  // Exported to stdout, stdout carries the export: no document is added to it.
  if (ctx.json && file !== '-') ctx.out(JSON.stringify({ uid, file, blocks }));
}
