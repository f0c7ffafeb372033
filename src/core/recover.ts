/**
 * `backy recover`: rebuilds the metadata database from the store alone. Every version copy
 * (version-copy.ts) whose version the database lacks is validated as strictly as an import
 * (it is one: importVersion on the decoded copy, so its objects are adopted and its blocks
 * checked the same way) and added. A copy that cannot be decoded, fails validation, names
 * another version or another store is reported and skipped; versions already present are left
 * alone, so a second run adds nothing. Held as 'recover' from before the first copy is read:
 * cleanup then deletes no object and sweeps no unrecorded file (cleanup.ts).
 *
 * Scale: each copy is parsed twice (validated whole, then its rows read), objects are looked up
 * a batch at a time, small versions are recorded many to a transaction (record-import.ts), and
 * the commits are made durable by one fsync at the end (a power loss before it loses recovered
 * versions, never consistency: run it again).
 */
import { InputError } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { DamagedCopyError } from '../storage/meta-codec.js';
import { hold } from './lease.js';
import { ExportParser, splitLines, versionOf } from './export-format.js';
import { importVersion, inPieces, prepareImport } from './metadata-io.js';
import { recordImportedVersions } from '../meta/record-import.js';
import type { ImportedVersion } from '../meta/record-import.js';
import type { ExportHeader } from './export-format.js';
import { copyName, copyUid, readVersionCopyChecked } from './version-copy.js';
import { tombstoneUid } from './store-authority.js';

/** Small versions recorded in one transaction: at most this many, and this many block rows. */
const GROUP_VERSIONS = 200;
const GROUP_ROWS = 10_000;

export interface RecoverProblem {
  uid: string;
  reason: string;
}

export interface RecoverResult {
  /** Added (with dryRun: would be added), oldest first; a dry run's are as the copies say. */
  added: Version[];
  /** Imported as invalid although the copy says valid (blocks missing from the store). */
  downgraded: string[];
  /** Already in the database: left alone. */
  present: string[];
  /** Copies a tombstone gives up (rm, recover --forget): skipped unless named. */
  forgotten: string[];
  problems: RecoverProblem[];
  /**
   * Added from a copy of the old format without a checksum (unencrypted, format version 1):
   * read unverified; the caller writes its copy again.
   */
  unverified: string[];
  /** dryRun only: the labels each copy would restore (a real run records them in the database). */
  labels: Map<string, Record<string, string>>;
}

export async function recover(opts: {
  meta: MetaStore;
  store: BlockStore;
  storeId: string;
  /** Only these versions; all copies when undefined. */
  uids?: readonly string[];
  dryRun: boolean;
  signal?: AbortSignal;
}): Promise<RecoverResult> {
  const { meta, store, signal } = opts;
  const result: RecoverResult = {
    added: [],
    downgraded: [],
    present: [],
    forgotten: [],
    problems: [],
    unverified: [],
    labels: new Map(),
  };
  const held = opts.dryRun ? undefined : await hold(meta, 'recover', null);
  try {
    const copies = new Set<string>();
    const tombstones = new Set<string>();
    for await (const o of store.backend.listMeta()) {
      const uid = copyUid(o.key);
      if (uid) copies.add(uid);
      const gone = tombstoneUid(o.key);
      if (gone) tombstones.add(gone);
    }
    // A removed or given-up version's copy (not yet deleted by cleanup) stays out, unless named.
    const wanted = opts.uids ?? [...copies].filter((u) => !tombstones.has(u)).sort();
    if (!opts.uids) result.forgotten = [...copies].filter((u) => tombstones.has(u)).sort();
    // A version the database holds incomplete while the store holds its copy was finished after
    // this database's state was taken (a dump restored): the copy replaces the stale row (a
    // running backup's version has no copy yet).
    const all = await meta.listVersions();
    const existing = new Set(all.filter((v) => v.status !== 'incomplete').map((v) => v.uid));
    const stale = new Set(all.filter((v) => v.status === 'incomplete').map((v) => v.uid));
    // Small versions are recorded GROUP_VERSIONS (or GROUP_ROWS block rows) to a transaction:
    // one commit and a few statements for many versions, not a dozen statements each.
    let group: ImportedVersion[] = [];
    let groupRows = 0;
    const flush = async () => {
      if (group.length === 0) return;
      const items = group;
      group = [];
      groupRows = 0;
      const recorded = await recordImportedVersions(meta, items, { durable: false, existing: 'skip' });
      for (const [i, r] of recorded.entries()) {
        const { version } = items[i];
        if (r.status === undefined) {
          result.present.push(version.uid);
          continue;
        }
        result.added.push({ ...version, status: r.status });
        if (r.downgraded) result.downgraded.push(version.uid);
      }
    };
    for (const uid of wanted) {
      signal?.throwIfAborted();
      if (existing.has(uid)) {
        result.present.push(uid);
        continue;
      }
      if (!copies.has(uid)) {
        result.problems.push({ uid, reason: 'the store holds no metadata copy of it' });
        continue;
      }
      const name = `metadata copy ${copyName(uid)}`;
      try {
        const decoded = await readVersionCopyChecked(store, uid);
        if (!decoded) throw new DamagedCopyError('it disappeared while recover ran');
        const content = decoded.plain;
        if (!decoded.verified) result.unverified.push(uid);
        if (opts.dryRun) {
          const header = await check(content, name, uid, opts.storeId, meta);
          result.added.push(versionOf(header));
          if (header.labels) result.labels.set(uid, header.labels);
          continue;
        }
        if (stale.has(uid)) await meta.removeVersion(uid);
        const checkThis = (h: ExportHeader) => checkHeader(h, uid, opts.storeId, meta);
        const item = await prepareImport({ meta, store, name, content, checkHeader: checkThis, signal });
        if (item) {
          group.push(item);
          groupRows += item.rows.length;
          if (group.length >= GROUP_VERSIONS || groupRows >= GROUP_ROWS) await flush();
          continue;
        }
        // Too large for one transaction: imported in batches under its own version lease.
        // Recover's lease keeps every object for the whole run, so the import takes none.
        await flush();
        const r = await importVersion({
          meta,
          store,
          path: name,
          content,
          signal,
          checkHeader: checkThis,
          leased: true,
        });
        result.added.push(r.version);
        if (r.downgraded) result.downgraded.push(uid);
      } catch (err) {
        if (err instanceof DamagedCopyError || err instanceof InputError) {
          result.problems.push({ uid, reason: err.message });
          continue;
        }
        throw err;
      }
    }
    await flush();
  } finally {
    if (held?.lease && result.added.length > 0) await meta.durableHeartbeat(held.lease.id).catch(() => {});
    await held?.release();
  }
  result.added.sort((a, b) => a.date - b.date || a.uid.localeCompare(b.uid));
  // Only versions now in the database: writing the copy of one that is not would remove it.
  const added = new Set(opts.dryRun ? [] : result.added.map((v) => v.uid));
  result.unverified = result.unverified.filter((uid) => added.has(uid));
  return result;
}

/** The whole copy validated, and it is this store's copy of `uid`. */
async function check(
  content: Buffer,
  name: string,
  uid: string,
  storeId: string,
  meta: MetaStore,
): Promise<ExportHeader> {
  const parser = new ExportParser(name);
  for await (const line of splitLines(inPieces(content), name)) parser.line(line);
  const { header } = parser.finish();
  checkHeader(header, uid, storeId, meta);
  return header;
}

/** The copy is this store's copy of `uid`. */
function checkHeader(header: ExportHeader, uid: string, storeId: string, meta: MetaStore): void {
  if (header.uid !== uid) throw new InputError(`it describes version ${header.uid} (moved from its name?)`);
  if (header.store_id !== storeId) {
    throw new InputError(`it belongs to another store (${header.store_id ?? 'none recorded'})`);
  }
  if (header.hash_function !== meta.hashFunction) {
    throw new InputError(`it uses hash function ${header.hash_function}, this store ${meta.hashFunction}`);
  }
}
