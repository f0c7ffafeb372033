import { recover } from '../../core/recover.js';
import { BackyError, IntegrityError, InterruptedError } from '../../errors.js';
import { labelsOf } from '../../meta/catalog.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatDate, machineVersionLine, versionJsonFields } from '../render.js';

/**
 * `recover [--dry-run] [UID...]`: adds the versions whose metadata copies the store holds and
 * the database lacks. Prints each added version (uid; `-m`: its `ls -m` line; `--json`: an
 * array). A damaged copy is one error line and exit 3, after the others are recovered; so is
 * a version recovered as invalid. A dry run shows what a real run would add, labels included.
 */
export async function recoverCommand(ctx: Context, uidArgs: string[], opts: { dryRun?: boolean }) {
  const uids = uidArgs.length > 0 ? [...new Set(uidArgs.map(parseUid))] : undefined;
  const dryRun = Boolean(opts.dryRun);
  const meta = await ctx.meta(dryRun ? { rebuild: true } : { write: 'recover', rebuild: true });
  const store = await ctx.store();
  const desc = ctx.knownDescriptor;
  if (!desc) {
    throw new BackyError(
      `${store.backend.url} has no store descriptor: it is not a backy store, or was written by a backy without metadata copies (run 'backy cleanup' with its database to write them); nothing to recover`,
    );
  }
  let r;
  try {
    r = await recover({ meta, store, storeId: desc.storeId, uids, dryRun, signal: ctx.signal });
  } catch (err) {
    if (err instanceof InterruptedError) {
      throw err.leaving(
        'recover stopped; the versions it added so far are complete, run it again for the rest',
      );
    }
    throw err;
  }
  // After a run over every copy this database is the store's owner (store-authority.ts): the
  // copies it could not recover keep cleanup away until recovered or forgotten.
  if (!dryRun && !uids) await ctx.takeOwnership();
  // Named, a removed version's copy is recovered; its tombstone goes.
  if (!dryRun && uids) await ctx.clearRemovals(r.added.map((v) => v.uid));
  // A copy that said valid but whose blocks are missing: its copy now says what the database does.
  // A copy of the old format without a checksum: written again in the current one.
  await ctx.updateCopies([...new Set([...r.downgraded, ...r.unverified])]);
  if (r.unverified.length > 0)
    ctx.log.warn(
      `${r.unverified.length} metadata copies were of the old format without a checksum: read unverified, now rewritten`,
    );
  const labels = dryRun
    ? r.labels
    : await labelsOf(
        meta,
        r.added.map((v) => v.uid),
      );
  for (const p of r.problems) ctx.log.error(`version ${p.uid} not recovered: ${p.reason}`);
  for (const v of r.added) {
    ctx.log.info(
      `${dryRun ? 'Would recover' : 'Recovered'} version ${v.uid} (${v.name}, ${formatDate(v.date)}, ${v.status})`,
    );
    if (r.downgraded.includes(v.uid))
      ctx.log.warn(`version ${v.uid} has missing blocks: recovered as invalid`);
    if (ctx.machine) ctx.out(machineVersionLine(v, labels.get(v.uid)));
    else if (!ctx.json) ctx.out(v.uid);
  }
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        dry_run: dryRun,
        recovered: r.added.map((v) => versionJsonFields(v, labels.get(v.uid))),
        present: r.present,
        failed: r.problems,
      }),
    );
  }
  ctx.log.info(
    `${r.added.length} versions ${dryRun ? 'would be ' : ''}recovered, ${r.present.length} already present, ${r.problems.length} not recoverable` +
      (r.forgotten.length > 0 ? `, ${r.forgotten.length} removed or forgotten (skipped)` : ''),
  );
  // Versions brought back invalid (their copy said so, or blocks are missing) are damage found,
  // as a scrub that finds it: exit 3, whatever else went well.
  const invalid = r.added.filter((v) => v.status === 'invalid').length;
  const damage = [
    r.problems.length > 0 ? `${r.problems.length} metadata copies could not be recovered (see above)` : '',
    invalid > 0
      ? `${invalid} versions ${dryRun ? 'would be' : 'were'} recovered as invalid (blocks missing or damaged)`
      : '',
  ].filter(Boolean);
  if (damage.length > 0) {
    throw new IntegrityError(
      `${damage.join('; ')}; ${r.added.length} versions ${dryRun ? 'would be ' : 'were '}recovered in all`,
    );
  }
}
