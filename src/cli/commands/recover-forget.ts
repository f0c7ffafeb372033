import { tombstoneName, writeTombstone } from '../../core/store-authority.js';
import { copyName, readVersionCopy } from '../../core/version-copy.js';
import { InputError, UsageError, errorMessage } from '../../errors.js';
import type { BlockStore } from '../../storage/block-store.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatDate } from '../render.js';

/**
 * `recover --forget UID...`: gives up versions whose metadata copies recover could not bring
 * back. Writes each one's tombstone (store-authority.ts), so that recover skips the copy and
 * cleanup stops refusing over it, then deletes the copy and frees every block that no version
 * of the database uses. Says first what it gives up; `--dry-run` only says it.
 */
export async function forgetCommand(ctx: Context, uidArgs: string[], opts: { dryRun?: boolean }) {
  if (uidArgs.length === 0) throw new UsageError('recover --forget needs the uid of each version to give up');
  const uids = [...new Set(uidArgs.map(parseUid))];
  const dryRun = Boolean(opts.dryRun);
  const meta = await ctx.meta(dryRun ? { rebuild: true } : { write: 'recover --forget', rebuild: true });
  const store = await ctx.store();
  for (const uid of uids) {
    const v = await meta.findVersion(uid);
    if (v && v.status !== 'incomplete') {
      throw new InputError(
        `version ${uid} is in the database: 'backy rm ${uid}' removes it; nothing was forgotten`,
      );
    }
    if (!(await store.backend.getMeta(copyName(uid)))) {
      const gone = await store.backend.getMeta(tombstoneName(uid));
      throw new InputError(
        gone
          ? `version ${uid} is given up already; nothing was forgotten`
          : `the store holds no metadata copy of version ${uid}; nothing was forgotten`,
      );
    }
  }
  for (const uid of uids) {
    ctx.log.warn(
      `${dryRun ? 'Would forget' : 'Forgetting'} version ${uid} (${await describe(store, uid)}): recover will skip it, and the next cleanup deletes its metadata copy and frees every block no version in this database uses`,
    );
    if (!dryRun) await writeTombstone(store.backend, uid, 'recover --forget');
    if (ctx.json) continue;
    ctx.out(ctx.machine ? `forgotten ${dryRun ? 1 : 0} ${uid}` : uid);
  }
  if (ctx.json) ctx.out(JSON.stringify({ dry_run: dryRun, forgotten: uids }));
}

/** What the copy says it is: "vm1, 2026-12-07 22:01:02", or why it cannot say. */
async function describe(store: BlockStore, uid: string): Promise<string> {
  try {
    const content = await readVersionCopy(store, uid);
    if (!content) return 'its copy disappeared';
    const nl = content.indexOf(0x0a);
    const h = JSON.parse(content.subarray(0, nl < 0 ? content.length : nl).toString('utf8')) as {
      uid?: unknown;
      name?: unknown;
      date?: unknown;
    };
    const what = `${String(h.name)}, ${typeof h.date === 'number' ? formatDate(h.date) : 'no date'}`;
    return h.uid === uid ? what : `its copy describes version ${String(h.uid)}: ${what}`;
  } catch (err) {
    return `its copy cannot be read: ${errorMessage(err)}`;
  }
}
