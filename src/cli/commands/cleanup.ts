import { cleanup } from '../../core/cleanup.js';
import { cleanupCopies } from '../../core/copy-cleanup.js';
import { copyUid } from '../../core/version-copy.js';
import { BackyError, InterruptedError } from '../../errors.js';
import type { MetaStore } from '../../meta/meta-store.js';
import { clearRecoverPending, recoverPending } from '../../meta/store-identity.js';
import type { BlockStore } from '../../storage/block-store.js';
import type { Context } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export async function cleanupCommand(ctx: Context, opts: { dryRun?: boolean }) {
  const meta = await ctx.meta({ write: 'cleanup' });
  const store = await ctx.store({ root: 'any' });
  const dryRun = Boolean(opts.dryRun);
  const start = Date.now();
  await refuseBeforeRecover(ctx, meta, store);
  let r;
  try {
    r = await cleanup({
      meta,
      backend: store.backend,
      dryRun,
      progress: progressBar(ctx.log),
      signal: ctx.signal,
    });
  } catch (err) {
    if (err instanceof InterruptedError) {
      throw err.leaving('cleanup stopped before it finished; run it again to reclaim the rest');
    }
    throw err;
  }
  const copies = await cleanupCopies({
    meta,
    store,
    storeId: (await ctx.descriptor()).storeId,
    cutoffMs: start,
    dryRun,
  });
  const would = dryRun ? 'would be ' : '';
  if (copies.removed.length > 0 || copies.written.length > 0) {
    ctx.log.info(
      `Metadata copies in the store: ${copies.removed.length} of removed versions ${would}deleted, ${copies.written.length} missing ${would}written`,
    );
  }
  if (copies.held) ctx.log.info('No metadata copy is deleted while a recover runs');
  if (r.leasesReleased > 0) ctx.log.info(`${r.leasesReleased} leases of crashed backups ${would}released`);
  for (const v of r.versionsRemoved) {
    ctx.log.info(`Incomplete version ${v.uid} (${v.name}) has no running backup: ${would}removed`);
  }
  if (r.leasesLive > 0) {
    ctx.log.info(`${r.leasesLive} backups running: objects they may use are kept`);
  }
  if (r.objectsHeld) {
    ctx.log.info(
      'No objects are deleted while an import runs, or a reader whose version was removed with --force; run cleanup again later',
    );
  }
  if (r.sweepSkipped) {
    ctx.log.info('Files without a database entry are kept while a backup runs; run cleanup again later');
  }
  const summary =
    `Cleanup${dryRun ? ' (dry run)' : ''}: ${r.objects} objects (${formatBytes(r.bytes)}) ${would}freed` +
    (r.unrecordedFiles > 0
      ? `, ${r.unrecordedFiles} unrecorded object files (${formatBytes(r.unrecordedBytes)})`
      : '') +
    (r.tempFiles > 0 ? `, ${r.tempFiles} temp files (${formatBytes(r.tempBytes)})` : '') +
    `, ${r.versionsRemoved.length} incomplete versions ${would}removed`;
  // A dry run's summary is what was asked for: shown without -v too.
  if (dryRun) ctx.log.notice(summary);
  else ctx.log.info(summary);
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        dry_run: dryRun,
        objects: r.objects,
        bytes: r.bytes,
        files: r.unrecordedFiles + r.tempFiles,
        file_bytes: r.unrecordedBytes + r.tempBytes,
        versions_removed: r.versionsRemoved.map((v) => v.uid),
      }),
    );
  } else if (ctx.machine) {
    ctx.out(
      `cleanup ${dryRun ? 1 : 0} ${r.objects} ${r.bytes} ${r.unrecordedFiles + r.tempFiles} ${r.unrecordedBytes + r.tempBytes} ${r.versionsRemoved.length}`,
    );
    for (const v of r.versionsRemoved) ctx.out(`removed ${v.uid}`);
  }
}

/**
 * A database that adopted an existing store's descriptor and has not run recover yet lacks
 * versions the store holds: their objects and copies would look like garbage. Refused while
 * the store holds a copy of a version the database lacks (once every copy has its version,
 * e.g. after imports, the mark goes).
 */
async function refuseBeforeRecover(ctx: Context, meta: MetaStore, store: BlockStore): Promise<void> {
  if (!(await recoverPending(meta))) return;
  for await (const o of store.backend.listMeta()) {
    const uid = copyUid(o.key);
    if (uid && !(await meta.findVersion(uid))) {
      throw new BackyError(
        `this database was created over an existing store whose versions it lacks (e.g. ${uid}): run 'backy recover' first, or cleanup would delete their blocks; nothing was deleted`,
      );
    }
  }
  await clearRecoverPending(meta);
  ctx.log.debug('every metadata copy has its version: cleanup may run');
}
