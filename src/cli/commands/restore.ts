import { unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import { sqlitePath } from '../../config/config.js';
import { holdVersion } from '../../core/lease.js';
import { restore } from '../../core/restore.js';
import type { RestoreResult } from '../../core/restore.js';
import {
  BackyError,
  EXIT_ERROR,
  InputError,
  IntegrityError,
  InterruptedError,
  errorMessage,
  ioReason,
} from '../../errors.js';
import { checkTargetOutsideStore, openTarget } from '../../target/target.js';
import type { Target } from '../../target/target.js';
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
  const paths = storePaths(ctx);
  await checkTargetOutsideStore(targetPath, paths);
  const meta = await ctx.meta();
  const store = await ctx.store();
  // Held from before the version is looked up until the restore ends: rm refuses it meanwhile.
  const held = await holdVersion(meta, uid, 'restore', { bestEffort: true });
  const { version } = held;
  if (held.unheld) {
    ctx.log.warn(
      `cannot hold version ${uid} while it is restored (${held.unheld}); going on without: do not remove it meanwhile`,
    );
  }
  let result: RestoreResult;
  let target: Target | undefined;
  try {
    if (version.status === 'incomplete') {
      // Its recorded size and block list may be anything a running or crashed backup left (a
      // stdin backup records its size only at the end): never written out as if it were whole.
      throw new InputError(
        `version ${uid} is incomplete (its backup is running or crashed) and cannot be restored; restore a valid version, or remove it with 'backy rm'`,
      );
    }
    if (version.status !== 'valid') {
      ctx.log.warn(
        `version ${uid} is ${version.status}; restoring what is there (damaged or missing blocks are written as zeros)`,
      );
    }
    // Checked again on the opened file: the database's -wal/-shm may exist only now.
    target = await openTarget(targetPath, version.sizeBytes, { force: Boolean(opts.force), store: paths });
    result = await restore({
      meta,
      store,
      version,
      target,
      // A file this restore created reads back zeros where nothing is written: zero blocks stay
      // holes without -s (devices and existing files are written in full unless -s).
      sparse: Boolean(opts.sparse) || target.created,
      record: !meta.readOnly,
      progress: progressBar(ctx.log),
      signal: ctx.signal,
    });
  } catch (err) {
    if (!target) throw err;
    await target.close().catch(() => {});
    throw await incompleteTarget(err, uid, target);
  } finally {
    await target?.close().catch(() => {});
    await held.release();
  }
  await ctx.updateCopies(result.versionsAffected);
  for (const bad of result.bad.slice(0, 20))
    ctx.log.error(`block ${bad.idx}: ${bad.reason}; written as zeros`);
  if (result.bad.length > 20) ctx.log.error(`... and ${result.bad.length - 20} more bad blocks`);
  ctx.log.info(
    `Restored ${version.name} (${uid}, ${formatBytes(version.sizeBytes)}) to ${target!.name}: ` +
      `${result.blocksWritten} blocks written, ${result.blocksSkipped} zero blocks skipped`,
  );
  // Restored to stdout, stdout carries the image: no document is added to it.
  if (ctx.json && targetPath !== '-') {
    ctx.out(
      JSON.stringify({
        uid,
        target: target!.name,
        bytes: version.sizeBytes,
        blocks_written: result.blocksWritten,
        blocks_skipped: result.blocksSkipped,
        blocks_damaged: result.bad.length,
      }),
    );
  }
  if (result.bad.length > 0) {
    const recorded = meta.readOnly
      ? `the metadata database is read-only, so this could not be recorded (the version still shows as ${version.status})`
      : `the version is marked ${(await meta.getVersion(uid).catch(() => version)).status}`;
    throw new IntegrityError(
      `restore of ${uid} finished with ${result.bad.length} missing or damaged blocks written as zeros; ${recorded}`,
    );
  }
}

/**
 * A restore that stopped (a signal, an I/O error: S3 403, a gateway gone, a full disk) must not
 * leave a partial image that passes for a finished one, nor block its own retry with "target
 * exists": a file this restore created goes; an existing file (--force) or a device that was
 * partly overwritten is named as such. The error keeps its class and exit code.
 */
async function incompleteTarget(err: unknown, uid: string, target: Target): Promise<unknown> {
  const stopped = `restore of ${uid} to ${target.name} stopped`;
  let what: string;
  if (!target.positional) what = `${stopped}; the output is incomplete`;
  else if (target.created) {
    const removed = await unlink(target.name).then(
      () => true,
      (e: unknown) => ioReason(e),
    );
    what =
      removed === true
        ? `${stopped}; the partial file ${target.name} was removed`
        : `${stopped}; the partial file ${target.name} could not be removed (${removed}): delete it before using it`;
  } else {
    what = `${stopped}; ${target.name} is now incomplete (partly overwritten): restore again before using it`;
  }
  if (err instanceof InterruptedError) return err.leaving(what);
  return new RestoreStoppedError(`${errorMessage(err)}; ${what}`, err);
}

/** Any other failure of a restore with the target's fate added; the exit code is the cause's. */
class RestoreStoppedError extends BackyError {
  override readonly exitCode: number;
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.exitCode = cause instanceof BackyError ? cause.exitCode : EXIT_ERROR;
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
