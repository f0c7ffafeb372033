/** Which versions `backy copy` takes, and in what order: each base before the versions built on it. */
import type { MetaStore, Version } from '../meta/meta-store.js';

export interface CopySelection {
  /** Named versions (each must exist). */
  uids?: readonly string[];
  /** Every version with one of these names. */
  names?: readonly string[];
  all?: boolean;
  /** Only versions made at or after this time (microseconds since the epoch). */
  sinceMicros?: number;
}

export async function selectVersions(meta: MetaStore, sel: CopySelection): Promise<Version[]> {
  let picked: Version[];
  if (sel.uids && sel.uids.length > 0) {
    picked = [];
    for (const uid of new Set(sel.uids)) picked.push(await meta.getVersion(uid));
  } else if (sel.names && sel.names.length > 0) {
    picked = [];
    for (const name of new Set(sel.names)) picked.push(...(await meta.listVersions({ name })));
  } else picked = sel.all ? await meta.listVersions() : [];
  const since = sel.sinceMicros;
  return copyOrder(since === undefined ? picked : picked.filter((v) => v.date >= since));
}

/**
 * Oldest first, except that a version whose base is among them comes after its base (a base
 * dated later, e.g. a clock set back, is moved up): the child then starts from the base's
 * block list at the target and sends only what differs.
 */
export function copyOrder(versions: readonly Version[]): Version[] {
  const byUid = new Map(versions.map((v) => [v.uid, v]));
  const sorted = [...byUid.values()].sort((a, b) => a.date - b.date || (a.uid < b.uid ? -1 : 1));
  const out: Version[] = [];
  const placed = new Set<string>();
  const place = (v: Version, path: Set<string>) => {
    if (placed.has(v.uid)) return;
    const base = v.baseUid === null ? undefined : byUid.get(v.baseUid);
    // A cycle cannot come from backy; from a hostile database it must not loop.
    if (base && !path.has(base.uid)) place(base, new Set(path).add(v.uid));
    placed.add(v.uid);
    out.push(v);
  };
  for (const v of sorted) place(v, new Set());
  return out;
}
