/**
 * Cleanup's part for the metadata copies (version-copy.ts): removes copies whose version no
 * longer exists and that a tombstone gives up (store-authority.ts: the caller has checked the
 * catalogue, so every other unknown copy made it refuse), last written before `cutoffMs`
 * (cleanup's start: a copy written since belongs to a command that ran meanwhile), then
 * their tombstones, and writes the copy of every version that
 * lacks one (a store older than copies) or whose last write failed (copy-pending.ts). Removes nothing while a recover
 * runs, which is adding versions from exactly those copies.
 */
import { clearCopyPending, pendingCopies } from '../meta/copy-pending.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { tombstoneName } from './store-authority.js';
import type { Catalogue } from './store-authority.js';
import { copyName, writeVersionCopy } from './version-copy.js';

export interface CopyCleanupResult {
  removed: string[];
  written: string[];
  /** A recover runs: no copy was removed. */
  held: boolean;
}

export async function cleanupCopies(opts: {
  meta: MetaStore;
  store: BlockStore;
  storeId: string;
  cutoffMs: number;
  dryRun: boolean;
  /** The store's copies and tombstones as cleanup listed them before it began. */
  catalogue: Catalogue;
}): Promise<CopyCleanupResult> {
  const { meta, store } = opts;
  const result: CopyCleanupResult = { removed: [], written: [], held: false };
  const { copies, tombstones } = opts.catalogue;
  result.held = (await meta.leases()).some((l) => l.kind === 'recover');
  const versions = await meta.listVersions();
  const known = new Set(versions.map((v) => v.uid));
  for (const [uid, mtimeMs] of copies) {
    if (known.has(uid) || !tombstones.has(uid) || mtimeMs >= opts.cutoffMs || result.held) continue;
    // Re-checked just before: a version recovered or imported since the listing keeps its copy.
    if (await meta.findVersion(uid)) continue;
    if (!opts.dryRun) await store.backend.deleteMeta(copyName(uid));
    result.removed.push(uid);
  }
  // A tombstone has done its work once its copy is gone; one whose version is in the database
  // (imported again, or an rm that failed after writing it) is stale, and would make recover
  // skip the version. Both go once older than cleanup's start.
  for (const [uid, mtimeMs] of tombstones) {
    if (opts.dryRun || result.held || mtimeMs >= opts.cutoffMs) continue;
    if (!known.has(uid) && copies.has(uid) && !result.removed.includes(uid)) continue;
    await store.backend.deleteMeta(tombstoneName(uid));
  }
  const pending = new Set(await pendingCopies(meta));
  for (const v of versions) {
    if (v.status === 'incomplete' || (copies.has(v.uid) && !pending.has(v.uid))) continue;
    if (!opts.dryRun && (await writeVersionCopy(meta, store, opts.storeId, v.uid)) !== 'written') continue;
    result.written.push(v.uid);
  }
  if (!opts.dryRun && !result.held) {
    for (const uid of pending) {
      if (!known.has(uid)) await store.backend.deleteMeta(copyName(uid));
      await clearCopyPending(meta, uid);
    }
  }
  return result;
}
