import { VersionRemovedError, errorMessage } from '../errors.js';
import type { Lease, MetaStore, Version } from '../meta/meta-store.js';

const HEARTBEAT_MS = 30_000;

/**
 * Keeps a lease's heartbeat fresh until the returned function is called. Other hosts' cleanups
 * judge a lease by its heartbeat (same-host ones by pid, PostgreSQL by advisory lock).
 */
export function keepLeaseAlive(meta: MetaStore, leaseId: string): () => void {
  const timer = setInterval(() => void meta.heartbeat(leaseId).catch(() => {}), HEARTBEAT_MS);
  timer.unref();
  return () => clearInterval(timer);
}

/** A lease held with its heartbeat; release() ends both and never throws. */
export interface Hold {
  /** Undefined on a read-only database: nothing can remove the version there, so nothing is held. */
  lease: Lease | undefined;
  release(): Promise<void>;
}

/** What holds a version, as rm names it: "a restore", "a backup as its base". */
const HOLDERS: Record<string, string> = {
  backup: 'a backup',
  base: 'a backup as its base',
  restore: 'a restore',
  scrub: 'a scrub',
  // `backy copy` reads its source versions under an export's lease (a reader's kind).
  export: 'an export or a copy to another store',
  copy: 'a copy from another store',
  import: 'an import',
  recover: 'a recover',
  nbd: 'an NBD export',
};

export function holderName(kind: string): string {
  return HOLDERS[kind] ?? `a ${kind}`;
}

/**
 * Takes a lease of `kind` (naming `versionUid`, or no version) and keeps it alive. A lease
 * naming no version keeps nothing by itself except unrecorded files (cleanup sweeps them only
 * while no lease exists); an import's kind keeps every object (ANY_OBJECT_LEASE_KINDS).
 */
export async function hold(meta: MetaStore, kind: string, versionUid: string | null): Promise<Hold> {
  // A read-only database cannot take a lease, and needs none: no rm or cleanup can run on it.
  if (meta.readOnly) return { lease: undefined, release: async () => {} };
  const lease = await meta.acquireLease(kind, versionUid);
  const stop = keepLeaseAlive(meta, lease.id);
  let released = false;
  return {
    lease,
    async release() {
      if (released) return;
      released = true;
      stop();
      // Tried twice: a release that fails leaves a row that only the next cleanup drops (the
      // holder's pid is gone by then, so it never counts as live, but rm and cleanup see it).
      await meta.releaseLease(lease.id).catch(async () => {
        await new Promise((r) => setTimeout(r, 200));
        await meta.releaseLease(lease.id).catch(() => {});
      });
    },
  };
}

/**
 * Holds version `uid` for a reader (restore, scrub, export, the base of a backup): rm refuses
 * it without --force, and if it is removed anyway, cleanup deletes no object while the lease
 * lives. The version is looked up after the lease exists: rm checks leases and removes in one
 * transaction, so either it saw this lease or the version is gone now (NotFoundError).
 */
export async function holdVersion(
  meta: MetaStore,
  uid: string,
  kind: string,
  opts: { bestEffort?: boolean } = {},
): Promise<Hold & { version: Version; unheld?: string }> {
  let h: Hold;
  let unheld: string | undefined;
  try {
    h = await hold(meta, kind, uid);
  } catch (err) {
    // A reader (restore, export) must work when the metadata file system is full: getting the
    // data back matters more than keeping rm away. It goes on without a lease and says so.
    if (!opts.bestEffort || !isDiskFull(err)) throw err;
    h = { lease: undefined, release: async () => {} };
    unheld = errorMessage(err);
  }
  try {
    return { ...h, version: await meta.getVersion(uid), unheld };
  } catch (err) {
    await h.release();
    throw err;
  }
}

function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === 'SQLITE_FULL' || code === 'ENOSPC' || code === '53100'; /* PostgreSQL disk_full */
}

/** Block indices per removal check: a page of the block list. */
const CHECK_WINDOW = 1000;

/**
 * Tells a reader's gaps in a block list from the removal of its version (rm --force deletes
 * the whole list at once, so every later page is empty). `atBad` looks the version up at the
 * first bad block of each window of CHECK_WINDOW indices, `atEnd` once more: a heavily damaged
 * or incomplete version costs one query per window, not one per block. Both throw
 * VersionRemovedError with `message` once the version is gone.
 */
export function removalCheck(
  meta: MetaStore,
  uid: string,
  message: string,
): { atBad(idx: number): Promise<void>; atEnd(): Promise<void> } {
  let checked = -1;
  const atEnd = async () => {
    if (!(await meta.findVersion(uid))) throw new VersionRemovedError(message);
  };
  return {
    async atBad(idx) {
      const window = Math.floor(idx / CHECK_WINDOW);
      if (window === checked) return;
      checked = window;
      await atEnd();
    },
    atEnd,
  };
}
