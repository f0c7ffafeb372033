import { cleanup } from '../../core/cleanup.js';
import { cleanupCopies } from '../../core/copy-cleanup.js';
import { behindError, readCatalogue } from '../../core/store-authority.js';
import { InterruptedError } from '../../errors.js';
import type { Context } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export async function cleanupCommand(ctx: Context, opts: { dryRun?: boolean }) {
  const meta = await ctx.meta({ write: 'cleanup', probe: true });
  const store = await ctx.store({ root: 'any' });
  const dryRun = Boolean(opts.dryRun);
  const start = Date.now();
  // The store's catalogue first: a database behind its store deletes nothing at all
  // (store-authority.ts rule 2).
  const catalogue = await readCatalogue(meta, store.backend);
  if (catalogue.unknown.length > 0) throw behindError(catalogue.unknown);
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
  // A store without a descriptor is described now, unless the database has no version yet
  // (then there is no copy to write, and an empty database never describes a store with data).
  const complete = (await meta.listVersions()).some((v) => v.status !== 'incomplete');
  const storeId = ctx.knownDescriptor?.storeId ?? (complete ? (await ctx.descriptor()).storeId : undefined);
  const copies =
    storeId === undefined
      ? { removed: [], written: [], held: false }
      : await cleanupCopies({ meta, store, storeId, cutoffMs: start, dryRun, catalogue });
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
  if (r.leasesLive.length > 0) {
    ctx.log.info(`Running: ${holdersByKind(r.leasesLive)}; objects they may use are kept`);
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

/** "2 backups, 1 NBD connection": live leases counted by what holds them. */
function holdersByKind(kinds: readonly string[]): string {
  const names: Record<string, [string, string]> = {
    backup: ['backup', 'backups'],
    base: ['backup base', 'backup bases'],
    import: ['import', 'imports'],
    recover: ['recover', 'recovers'],
    restore: ['restore', 'restores'],
    scrub: ['scrub', 'scrubs'],
    export: ['export', 'exports'],
    nbd: ['NBD connection', 'NBD connections'],
  };
  const counts = new Map<string, number>();
  for (const k of kinds) counts.set(k, (counts.get(k) ?? 0) + 1);
  return [...counts]
    .sort((a, b) => a[0].localeCompare(b[0]))
    .map(([k, n]) => `${n} ${(names[k] ?? [`${k} lease`, `${k} leases`])[n === 1 ? 0 : 1]}`)
    .join(', ');
}
