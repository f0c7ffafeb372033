/**
 * Versions whose metadata copy in the store may be out of date: settings rows
 * `copy_pending:<uid>`. Every change of a version's validity (its status, or the validity of
 * its block entries) marks it in the same transaction (markCopiesPendingIn), so a crash
 * between the commit and the copy's rewrite leaves the mark behind; a failed write leaves it
 * too. The copy's writer clears it once the copy is written (core/copy-keeper.ts), and cleanup
 * rewrites whatever is still marked. The value is a token that every mark renews: a writer
 * clears the mark only if no change marked it again meanwhile (its copy may predate that change).
 */
import { randomBytes } from 'node:crypto';
import type { MetaHandle } from './meta-db.js';
import { nowMicros } from './meta-types.js';
import type { Db } from './meta-types.js';

const PREFIX = 'copy_pending:';

function token(): string {
  return `${nowMicros()}-${randomBytes(4).toString('hex')}`;
}

/** Marks the copies of `uids` out of date, inside the caller's transaction `tx`. */
export async function markCopiesPendingIn(tx: Db, uids: readonly string[]): Promise<void> {
  const unique = [...new Set(uids)];
  for (let i = 0; i < unique.length; i += 500) {
    const value = token();
    await tx
      .insertInto('settings')
      .values(unique.slice(i, i + 500).map((uid) => ({ key: `${PREFIX}${uid}`, value })))
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
  }
}

/**
 * The versions whose copies this process marked out of date, for the command to write before
 * it ends (MetaStore.takeMarkedCopies). One per MetaStore, shared by the repositories that
 * change validity (versions, objects): every such change goes through mark.
 */
export class CopyMarks {
  readonly #marked = new Set<string>();

  /** Marks the copies of `uids` out of date inside `tx`, and remembers them. */
  async mark(tx: Db, uids: readonly string[]): Promise<void> {
    if (uids.length === 0) return;
    await markCopiesPendingIn(tx, uids);
    for (const uid of uids) this.#marked.add(uid);
  }

  /**
   * The versions marked since the last call, forgotten here. A transaction that rolled back
   * may have left one: writing its copy again costs a write, never a wrong copy (it is
   * written as the database says).
   */
  take(): string[] {
    const uids = [...this.#marked];
    this.#marked.clear();
    return uids;
  }
}

export async function markCopyPending(meta: MetaHandle, uid: string): Promise<void> {
  await meta.write((tx) => markCopiesPendingIn(tx, [uid]));
}

export async function pendingCopies(meta: MetaHandle): Promise<string[]> {
  const rows = await meta.db
    .selectFrom('settings')
    .select('key')
    .where('key', 'like', `${PREFIX}%`)
    .execute();
  return rows.map((r) => r.key.slice(PREFIX.length));
}

/** The mark's current token, undefined when the copy is not marked. */
export async function copyPendingToken(meta: MetaHandle, uid: string): Promise<string | undefined> {
  const row = await meta.db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', `${PREFIX}${uid}`)
    .executeTakeFirst();
  return row?.value;
}

/** Clears the mark; with `token`, only if no change renewed it since that token was read. */
export async function clearCopyPending(meta: MetaHandle, uid: string, token?: string): Promise<void> {
  await meta.write(async (tx) => {
    let q = tx.deleteFrom('settings').where('key', '=', `${PREFIX}${uid}`);
    if (token !== undefined) q = q.where('value', '=', token);
    await q.execute();
  });
}
