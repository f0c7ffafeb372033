/**
 * `backy recover`: rebuilds the metadata database from the store alone. Every version copy
 * (version-copy.ts) whose version the database lacks is validated as strictly as an import
 * (it is one: importVersion on the decoded copy, so its objects are adopted and its blocks
 * checked the same way) and added. A copy that cannot be decoded, fails validation, names
 * another version or another store is reported and skipped; versions already present are left
 * alone, so a second run adds nothing. Held as 'recover' from before the first copy is read:
 * cleanup then deletes no object and sweeps no unrecorded file (cleanup.ts).
 *
 * Scale: each copy is parsed twice (validated whole, then inserted in batches), objects are
 * looked up a batch at a time, and the versions' commits are made durable by one fsync at the
 * end (a power loss before it loses recovered versions, never consistency: run it again).
 */
import { InputError } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { DamagedCopyError } from '../storage/meta-codec.js';
import { hold } from './lease.js';
import { ExportParser, splitLines } from './export-format.js';
import { importVersion, inPieces } from './metadata-io.js';
import type { ExportHeader } from './export-format.js';
import { copyName, copyUid, readVersionCopy } from './version-copy.js';

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
  problems: RecoverProblem[];
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
  const result: RecoverResult = { added: [], downgraded: [], present: [], problems: [] };
  const held = opts.dryRun ? undefined : await hold(meta, 'recover', null);
  try {
    const copies = new Set<string>();
    for await (const o of store.backend.listMeta()) {
      const uid = copyUid(o.key);
      if (uid) copies.add(uid);
    }
    const wanted = opts.uids ?? [...copies].sort();
    for (const uid of wanted) {
      signal?.throwIfAborted();
      if (await meta.findVersion(uid)) {
        result.present.push(uid);
        continue;
      }
      if (!copies.has(uid)) {
        result.problems.push({ uid, reason: 'the store holds no metadata copy of it' });
        continue;
      }
      const name = `metadata copy ${copyName(uid)}`;
      try {
        const content = await readVersionCopy(store, uid);
        if (!content) throw new DamagedCopyError('it disappeared while recover ran');
        if (opts.dryRun) {
          result.added.push(versionOf(await check(content, name, uid, opts.storeId, meta)));
          continue;
        }
        // Recover's own lease keeps every object for the whole run: the import takes none, and
        // its commits are made durable once, below, rather than one fsync per version.
        const r = await importVersion({
          meta,
          store,
          path: name,
          content,
          signal,
          checkHeader: (h) => checkHeader(h, uid, opts.storeId, meta),
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
  } finally {
    if (held?.lease && result.added.length > 0) await meta.durableHeartbeat(held.lease.id).catch(() => {});
    await held?.release();
  }
  result.added.sort((a, b) => a.date - b.date || a.uid.localeCompare(b.uid));
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

function versionOf(h: ExportHeader): Version {
  return {
    uid: h.uid,
    name: h.name,
    snapshotName: h.snapshot_name,
    date: h.date,
    sizeBytes: h.size_bytes,
    blockSize: h.block_size,
    status: h.status,
    baseUid: h.base_uid,
    protected: h.protected,
    hostname: h.hostname,
  };
}
