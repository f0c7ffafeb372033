/**
 * Versions whose metadata copy in the store may be out of date (writing it failed): settings
 * rows `copy_pending:<uid>`, rewritten and cleared by cleanup.
 */
import type { MetaStore } from './meta-store.js';

const PREFIX = 'copy_pending:';

export async function markCopyPending(meta: MetaStore, uid: string): Promise<void> {
  await meta.write((tx) =>
    tx
      .insertInto('settings')
      .values({ key: `${PREFIX}${uid}`, value: '1' })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute(),
  );
}

export async function pendingCopies(meta: MetaStore): Promise<string[]> {
  const rows = await meta.db
    .selectFrom('settings')
    .select('key')
    .where('key', 'like', `${PREFIX}%`)
    .execute();
  return rows.map((r) => r.key.slice(PREFIX.length));
}

export async function clearCopyPending(meta: MetaStore, uid: string): Promise<void> {
  await meta.write((tx) => tx.deleteFrom('settings').where('key', '=', `${PREFIX}${uid}`).execute());
}
