import { InputError } from '../../errors.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';

export async function rmCommand(ctx: Context, uidArg: string, opts: { force?: boolean }) {
  const uid = parseUid(uidArg);
  const meta = await ctx.meta({ write: 'rm' });
  const version = await meta.getVersion(uid);
  const running = [];
  for (const l of await meta.leases()) {
    if (l.versionUid === uid && (await meta.isLeaseAlive(l))) running.push(l);
  }
  if (running.length > 0 && !opts.force) {
    const l = running[0];
    throw new InputError(
      `version ${uid} is still being written by pid ${l.pid} on ${l.hostname}; wait for it, or use --force`,
    );
  }
  await meta.removeVersion(uid);
  ctx.log.info(
    `Removed version ${uid} (${version.name}, ${version.status}); run 'backy cleanup' to free blocks no other version uses`,
  );
}
