import { restore } from '../../core/restore.js';
import { IntegrityError } from '../../errors.js';
import { checkTargetOutsideStore, openTarget } from '../../target/target.js';
import { sqlitePath } from '../../config/config.js';
import { resolve } from 'node:path';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export async function restoreCommand(
  ctx: Context,
  uidArg: string,
  targetPath: string,
  opts: { sparse?: boolean; force?: boolean },
) {
  const uid = parseUid(uidArg);
  await checkTargetOutsideStore(targetPath, storePaths(ctx));
  const meta = await ctx.meta();
  const store = await ctx.store();
  const version = await meta.getVersion(uid);
  if (version.status !== 'valid') {
    ctx.log.warn(
      `version ${uid} is ${version.status}; restoring what is there (damaged or missing blocks are written as zeros)`,
    );
  }
  const target = await openTarget(targetPath, version.sizeBytes, { force: Boolean(opts.force) });
  let result;
  try {
    result = await restore({
      meta,
      store,
      version,
      target,
      sparse: Boolean(opts.sparse),
      progress: progressBar(ctx.log),
    });
  } finally {
    await target.close().catch(() => {});
  }
  for (const bad of result.bad.slice(0, 20))
    ctx.log.error(`block ${bad.idx}: ${bad.reason}; written as zeros`);
  if (result.bad.length > 20) ctx.log.error(`... and ${result.bad.length - 20} more bad blocks`);
  ctx.log.info(
    `Restored ${version.name} (${uid}, ${formatBytes(version.sizeBytes)}) to ${target.name}: ` +
      `${result.blocksWritten} blocks written, ${result.blocksSkipped} zero blocks skipped`,
  );
  if (result.bad.length > 0) {
    throw new IntegrityError(
      `restore of ${uid} finished with ${result.bad.length} missing or damaged blocks written as zeros; the version is marked invalid`,
    );
  }
}

/** What a file written by backy (restore TARGET, export FILE) must never be or be inside. */
export function storePaths(ctx: Context): { dataDir?: string; dbPath?: string } {
  const { engine, dataBackend } = ctx.config;
  return {
    dataDir: dataBackend.type === 'file' ? dataBackend.path : undefined,
    dbPath: engine.startsWith('sqlite:///') ? resolve(sqlitePath(engine)) : undefined,
  };
}
