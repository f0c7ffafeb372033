import { UsageError } from '../../errors.js';
import { changeLabels, labelsOf, parseLabelChanges } from '../../meta/catalog.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatLabels } from '../render.js';

/** `label UID KEY=VALUE... KEY-...`: sets and removes in one transaction. */
export async function labelCommand(ctx: Context, uidArg: string, changes: string[]) {
  const uid = parseUid(uidArg);
  if (changes.length === 0) throw new UsageError('give at least one KEY=VALUE (set) or KEY- (remove)');
  const change = parseLabelChanges(changes);
  const meta = await ctx.meta({ write: 'label', withoutStore: true });
  await changeLabels(meta, uid, change);
  await ctx.updateCopies([uid]);
  const labels = (await labelsOf(meta, [uid])).get(uid) ?? {};
  ctx.log.info(`Labels of ${uid}: ${formatLabels(labels, ', ') || '(none)'}`);
  if (ctx.json) ctx.out(JSON.stringify({ uid, labels }));
}
