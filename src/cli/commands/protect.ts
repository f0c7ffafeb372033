import { setProtected } from '../../meta/catalog.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';

/** `protect UID...` / `unprotect UID...`: all or none. */
export async function protectCommand(ctx: Context, uidArgs: string[], value: boolean) {
  const uids = uidArgs.map(parseUid);
  const meta = await ctx.meta({ write: value ? 'protect' : 'unprotect', withoutStore: true });
  await setProtected(meta, uids, value);
  await ctx.updateCopies(uids);
  for (const uid of uids) ctx.log.info(`${value ? 'Protected' : 'Unprotected'} version ${uid}`);
  if (ctx.json) ctx.out(JSON.stringify({ protected: value, uids }));
}
