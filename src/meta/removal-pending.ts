/**
 * Removals whose tombstone the store has not received yet: settings rows
 * `removal_pending:<uid>`. `rm` and `enforce` write the tombstone before the rows go
 * (core/store-authority.ts rule 2); while the store cannot be reached they record this mark
 * instead, before the rows go, and the first writing command that reaches the store writes
 * the tombstone (core/pending-removals.ts), before cleanup or recover looks at the copies.
 */
import type { MetaHandle } from './meta-db.js';
import { nowMicros } from './meta-types.js';

const PREFIX = 'removal_pending:';

export async function markRemovalPending(meta: MetaHandle, uid: string, by: string): Promise<void> {
  const value = `${nowMicros()} ${by}`;
  await meta.write(async (tx) => {
    await tx
      .insertInto('settings')
      .values({ key: `${PREFIX}${uid}`, value })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
  });
}

/** Marked removals: uid -> what removed it (rm, enforce). */
export async function pendingRemovals(meta: MetaHandle): Promise<Map<string, string>> {
  const rows = await meta.db
    .selectFrom('settings')
    .select(['key', 'value'])
    .where('key', 'like', `${PREFIX}%`)
    .execute();
  return new Map(rows.map((r) => [r.key.slice(PREFIX.length), r.value.split(' ').slice(1).join(' ')]));
}

export async function clearRemovalPending(meta: MetaHandle, uid: string): Promise<void> {
  await meta.write(async (tx) => {
    await tx.deleteFrom('settings').where('key', '=', `${PREFIX}${uid}`).execute();
  });
}
