/**
 * Tombstones of removals made while the store could not be reached (meta/removal-pending.ts),
 * written once it can: for each marked uid whose version is gone, the tombstone, then the mark
 * goes. A mark whose version is still there (an rm that failed or is still running after
 * marking) stays: it writes nothing while the version exists, and a later removal writes its
 * own tombstone anyway.
 */
import type { MetaStore } from '../meta/meta-store.js';
import { clearRemovalPending, pendingRemovals } from '../meta/removal-pending.js';
import type { StorageBackend } from '../storage/backend.js';
import { writeTombstone } from './store-authority.js';

/** Writes the pending tombstones; returns the uids written. A store error propagates. */
export async function writePendingTombstones(meta: MetaStore, backend: StorageBackend): Promise<string[]> {
  const written: string[] = [];
  for (const [uid, by] of await pendingRemovals(meta)) {
    if (await meta.findVersion(uid)) continue;
    await writeTombstone(backend, uid, by || 'rm');
    await clearRemovalPending(meta, uid);
    written.push(uid);
  }
  return written;
}
