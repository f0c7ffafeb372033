/**
 * Keeps the store's metadata copies (version-copy.ts) in step with the database, at once:
 * every path that completes a version or changes its validity (backup, nbd -w, import,
 * recover, scrub, restore, nbd reads that meet damage, a backup storing a damaged object
 * again) ends in CopyKeeper.update. The meta layer marks a version's copy out of date in the
 * same transaction as the change (meta/copy-pending.ts) and remembers it in the process
 * (MetaStore.takeMarkedCopies), so update writes those too, even when its caller did not name
 * them (the versions a re-stored object made valid again). A copy that cannot be written
 * stays marked, and `cleanup` writes it later.
 *
 * Why refresh copies rather than recompute validity on recover: damage found by reading an
 * object (a wrong checksum) is known only from that read; recover cannot see it without
 * reading every object again (a full scrub of the store). The copy is where it is kept.
 */
import { clearCopyPending, copyPendingToken, markCopyPending } from '../meta/copy-pending.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { completeOrInvalidate } from './backup.js';
import { writeVersionCopy } from './version-copy.js';

export interface CopyKeeper {
  /**
   * Writes the copies of `uids` (removed for a version that is gone) and of every version whose
   * validity this process changed since. Never throws: a failure is reported through the
   * keeper's onFailure and leaves the copy marked for cleanup.
   */
  update(uids: readonly string[]): Promise<void>;
}

/** A keeper for a database nobody may write to (read-only): nothing to bring in step. */
export const NO_COPIES: CopyKeeper = { update: async () => {} };

export function copyKeeper(opts: {
  meta: MetaStore;
  /** The store and its id, opened when first needed (a command that changed nothing opens nothing). */
  target: () => Promise<{ store: BlockStore; storeId: string }>;
  onFailure: (uid: string, err: unknown) => void;
}): CopyKeeper {
  const { meta } = opts;
  return {
    async update(uids) {
      if (meta.readOnly) return;
      const named = new Set(uids);
      const marked = meta.takeMarkedCopies().filter((uid) => !named.has(uid));
      const todo: [string, 'remove' | 'keep'][] = [
        ...[...named].map((uid): [string, 'remove'] => [uid, 'remove']),
        ...marked.map((uid): [string, 'keep'] => [uid, 'keep']),
      ];
      for (const [uid, ifGone] of todo) {
        try {
          const token = await copyPendingToken(meta, uid);
          const { store, storeId } = await opts.target();
          await writeVersionCopy(meta, store, storeId, uid, { ifGone });
          if (token !== undefined) await clearCopyPending(meta, uid, token);
        } catch (err) {
          await markCopyPending(meta, uid).catch(() => {});
          opts.onFailure(uid, err);
        }
      }
    },
  };
}

/**
 * A writer is done with version `uid` (nbd -w at the end of a connection; whatever path
 * completes a written version): valid when its block list is complete and sound, else invalid
 * (IntegrityError); either way its copy is written now, so a `recover` right after brings it
 * back as it is.
 */
export async function completeWithCopy(meta: MetaStore, uid: string, copies: CopyKeeper): Promise<void> {
  try {
    await completeOrInvalidate(meta, uid);
  } finally {
    await copies.update([uid]);
  }
}
