import { holderName } from '../../core/lease.js';
import { InputError } from '../../errors.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { versionJsonFields } from '../render.js';

export async function rmCommand(ctx: Context, uidArg: string, opts: { force?: boolean }) {
  const uid = parseUid(uidArg);
  const meta = await ctx.meta({ write: 'rm', withoutStore: true });
  const version = await meta.getVersion(uid);
  const undo = await ctx.recordRemoval(uid, 'rm');
  let holders;
  try {
    holders = opts.force ? [] : await meta.removeVersionUnlessHeld(uid, (l) => meta.isLeaseAlive(l));
    if (opts.force) await meta.removeVersion(uid);
  } catch (err) {
    await undo();
    throw err;
  }
  if (holders.length > 0) {
    await undo();
    const l = holders.find((h) => h.kind === 'backup') ?? holders[0];
    if (l?.kind === 'backup') {
      throw new InputError(
        `version ${uid} is still being written by pid ${l.pid} on ${l.hostname}; wait for it, or use --force`,
      );
    }
    if (l) {
      throw new InputError(
        `version ${uid} is in use by ${holderName(l.kind)} (pid ${l.pid} on ${l.hostname}); wait for it, or use --force to remove it anyway`,
      );
    }
  }
  await ctx.updateCopies([uid]);
  if (ctx.json) ctx.out(JSON.stringify({ removed: versionJsonFields(version) }));
  ctx.log.info(
    `Removed version ${uid} (${version.name}, ${version.status}); run 'backy cleanup' to free blocks no other version uses`,
  );
}
