/**
 * `backy copy`: one version from a source store (its database and data store) to a target
 * store, which has its own engine, backend, compression, key and hash function.
 *
 * Object names: a block's name is its store's hash of the plaintext, keyed when the store is
 * encrypted, so the same block has different names in stores with different keys (or hash
 * functions). Every block the target lacks is read at the source, decoded and verified there
 * (BlockStore.get: authentication tag, checksum), named anew by the target and encoded for it.
 * When both stores name blocks alike (same hash function and naming key, or both plain), a
 * block whose object the target already holds is not read at all; otherwise it must be read
 * to learn its target name, but travels only when the target lacks that name.
 *
 * A version whose base is already at the target (valid there, same uid) starts from the
 * base's block list at the target (BlockLists.copyBlocks), and only the entries in which the
 * version differs from its base at the source are read and put: a hinted incremental sends
 * its changed blocks only.
 *
 * Safety, as for a backup (backup.ts): the target version is created incomplete together
 * with its lease ('copy', a writer's: cleanup keeps everything it touches or stores), objects
 * are durable and recorded before a block entry names them, and the version becomes valid in
 * one transaction that checks every entry (completeVersion). Killed, it leaves an incomplete
 * version with a dead lease, which the target's cleanup removes and a new copy replaces; the
 * objects it stored are found again then and not sent twice. At the source the version (and
 * its base, while its block list is compared) is held by an 'export' lease, a reader's: rm
 * refuses it, and cleanup keeps its objects (its block entries name them).
 *
 * Damage: a source block that is missing or fails verification is reported, recorded at the
 * source like a restore does (unless the source is read-only), and entered at the target as
 * an invalid entry under its source name (the target never holds an object of that name, so
 * a restore there writes zeros), which makes the target version invalid. A version that is
 * invalid at the source arrives invalid; its entries marked invalid there stay so (a full
 * scrub at the target may make it valid again once every block verifies).
 *
 * Memory: blocksInFlight(block size, the target's inFlightBytes) blocks in a BufferPool, each
 * read, decoded, re-encoded (in place) and written within its buffer, plus a page of each
 * block list and one batch of entries to put.
 */
import { blockCount, blockLength } from '../blocks/blocks.js';
import { BackyError, CorruptBlockError, MissingBlockError, NotFoundError } from '../errors.js';
import { changeLabels, labelsOf, setProtected } from '../meta/catalog.js';
import { nowMicros } from '../meta/meta-store.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import type { VersionStatus } from '../meta/schema.js';
import { ENCODE_ROOM, objectBufferSize } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { BufferPool, blocksInFlight } from '../util/buffer-pool.js';
import { mapOrdered } from '../util/concurrency.js';
import { holdVersion, keepLeaseAlive, removalCheck } from './lease.js';
import type { Hold } from './lease.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

/** Entries per putBlocks batch (objects are synced and recorded before each). */
const ROW_BATCH = 1000;
/** Source names remembered per version (dedup within it); forgotten in bulk past this. */
const KNOWN_LIMIT = 65_536;

export interface CopyEnd {
  meta: MetaStore;
  store: BlockStore;
}

export interface CopyBadBlock {
  idx: number;
  checksum: string | null;
  reason: string;
}

export interface VersionCopyResult {
  uid: string;
  name: string;
  /** copied now (or would be, with dryRun); present at the target already; skipped (see note). */
  outcome: 'copied' | 'present' | 'skipped';
  note?: string;
  /** The version's status at the target afterwards (the source's for a dry run or a skip). */
  status: VersionStatus;
  blocks: number;
  /** Blocks whose entry came from the base's list at the target (not read). */
  blocksFromBase: number;
  /** Objects written to the target store, and their stored bytes. */
  blocksSent: number;
  bytesSent: number;
  /** Plaintext bytes read (and verified) at the source. */
  bytesRead: number;
  bad: CopyBadBlock[];
  /** Why the target could not make the version valid although the source block list was sound. */
  problem?: string;
  /** Source versions marked invalid by damage this copy found (their metadata copies follow). */
  sourceAffected: string[];
  /** The target's version changed without being copied (protection brought in step). */
  touched: boolean;
}

export interface CopyVersionOptions {
  source: CopyEnd;
  target: CopyEnd;
  uid: string;
  dryRun?: boolean;
  /** Record damage at the source (mark objects and versions invalid). Off for a read-only source. */
  record?: boolean;
  progress?: ProgressReporter;
  signal?: AbortSignal;
  /** Called after each block entry is settled, in order (tests pause a copy here). */
  afterBlock?: (done: number) => Promise<void>;
}

/** Copies version `uid`. Throws on I/O errors (the target's incomplete version is removed). */
export async function copyVersion(opts: CopyVersionOptions): Promise<VersionCopyResult> {
  const { source: src, target: dst, uid } = opts;
  const held = await holdVersion(src.meta, uid, 'export');
  try {
    const v = held.version;
    const result = emptyResult(v);
    if (v.status === 'incomplete') {
      return {
        ...result,
        outcome: 'skipped',
        note: 'incomplete at the source (its backup is running or crashed)',
      };
    }
    const there = await dst.meta.findVersion(uid);
    if (there && there.status !== 'incomplete') {
      if (v.protected && !there.protected && !opts.dryRun) {
        await setProtected(dst.meta, [uid], true);
        result.touched = true;
      }
      return { ...result, outcome: 'present', status: there.status };
    }
    if (opts.dryRun) return result;
    if (there) await removeAbandoned(dst.meta, uid);
    return await copyOnto(opts, v, result, there !== undefined);
  } finally {
    await held.release();
  }
}

function emptyResult(v: Version): VersionCopyResult {
  return {
    uid: v.uid,
    name: v.name,
    outcome: 'copied',
    status: v.status,
    blocks: blockCount(v.sizeBytes, v.blockSize),
    blocksFromBase: 0,
    blocksSent: 0,
    bytesSent: 0,
    bytesRead: 0,
    bad: [],
    sourceAffected: [],
    touched: false,
  };
}

/**
 * An incomplete version of this uid at the target: a copy that was killed (its lease's process
 * is gone: released here, as cleanup would) is removed; a copy still running is an error.
 */
async function removeAbandoned(meta: MetaStore, uid: string): Promise<void> {
  for (const l of await meta.leases()) {
    if (l.versionUid === uid && !(await meta.isLeaseAlive(l))) await meta.releaseLease(l.id);
  }
  if (!(await meta.removeOrphanedIncompleteVersion(uid)) && (await meta.findVersion(uid))) {
    throw new BackyError(
      `version ${uid} is being written at the target by another process (an incomplete version with a live lease); run the copy again when that ends`,
    );
  }
}

/** The base's block list can be the starting point: valid at the target, still at the source. */
async function holdBases(
  src: CopyEnd,
  dst: CopyEnd,
  baseUid: string | null,
): Promise<{ uid: string; holds: Hold[] } | undefined> {
  if (baseUid === null) return undefined;
  const atTarget = await dst.meta.findVersion(baseUid);
  if (atTarget?.status !== 'valid') return undefined;
  const holds: Hold[] = [];
  try {
    const t = await holdVersion(dst.meta, baseUid, 'base');
    holds.push(t);
    if (t.version.status !== 'valid') throw new NoBase();
    holds.push(await holdVersion(src.meta, baseUid, 'export'));
    return { uid: baseUid, holds };
  } catch (err) {
    for (const h of holds) await h.release();
    // Gone from either side meanwhile: the version is copied whole instead.
    if (err instanceof NoBase || err instanceof NotFoundError) return undefined;
    throw err;
  }
}

class NoBase extends Error {}

interface Work {
  idx: number;
  row: BlockRow | undefined;
}

interface Settled {
  row: BlockRow;
  bad?: CopyBadBlock;
  sent: number;
  read: number;
}

/** `resuming`: an earlier copy of this version was killed; the objects it stored are looked for. */
async function copyOnto(
  opts: CopyVersionOptions,
  v: Version,
  result: VersionCopyResult,
  resuming: boolean,
): Promise<VersionCopyResult> {
  const { source: src, target: dst, signal } = opts;
  const progress = opts.progress ?? noProgress;
  const n = blockCount(v.sizeBytes, v.blockSize);
  const base = await holdBases(src, dst, v.baseUid);
  let lease;
  try {
    lease = await dst.meta.insertVersionWithLease({ ...v, status: 'incomplete', protected: false }, 'copy');
  } catch (err) {
    for (const h of base?.holds ?? []) await h.release();
    throw err;
  }
  const stopHeartbeat = keepLeaseAlive(dst.meta, lease.id);
  let done = false;
  try {
    if (base) await dst.meta.blockLists.copyBlocks(base.uid, v.uid, n);
    const inFlight = blocksInFlight(v.blockSize, dst.store.inFlightBytes);
    const copier = new ObjectCopier(src.store, dst, inFlight, v.blockSize, resuming);
    const removed = removalCheck(
      src.meta,
      v.uid,
      `version ${v.uid} was removed at the source while being copied`,
    );

    async function* work(): AsyncIterable<Work> {
      let next = 0;
      for await (const page of src.meta.blockLists.blockPages(v.uid)) {
        const inBase = base
          ? await src.meta.blockLists.blocksAt(
              base.uid,
              page.map((r) => r.idx),
            )
          : undefined;
        for (const row of page) {
          if (row.idx >= n) return;
          while (next < row.idx) yield { idx: next++, row: undefined };
          next = row.idx + 1;
          const b = inBase?.get(row.idx);
          if (b && b.valid && row.valid && b.checksum === row.checksum && b.size === row.size) {
            // The target's entry, copied from the base, names this very block.
            result.blocksFromBase++;
            progress.advance(row.size);
            continue;
          }
          yield { idx: row.idx, row };
        }
      }
      while (next < n) yield { idx: next++, row: undefined };
    }

    progress.start('copy', v.sizeBytes);
    let rows: BlockRow[] = [];
    const flush = async () => {
      await copier.recordObjects();
      await dst.meta.blockLists.putBlocks(v.uid, rows);
      rows = [];
    };
    const settled = mapOrdered(
      work(),
      inFlight,
      async ({ idx, row }): Promise<Settled> => {
        const length = blockLength(idx, v.sizeBytes, v.blockSize);
        if (!row) {
          const reason = 'no entry in the source block list';
          return {
            row: { idx, checksum: null, size: length, valid: false },
            bad: { idx, checksum: null, reason },
            sent: 0,
            read: 0,
          };
        }
        if (row.checksum === null) return { row: { ...row }, sent: 0, read: 0 };
        const r = await copier.copy(row.checksum, row.size);
        if ('bad' in r) {
          return {
            row: { idx, checksum: row.checksum, size: row.size, valid: false },
            bad: { idx, checksum: row.checksum, reason: r.bad },
            sent: 0,
            read: 0,
          };
        }
        return {
          row: { idx, checksum: r.name, size: row.size, valid: row.valid },
          sent: r.sent,
          read: r.read,
        };
      },
      signal,
    );
    let count = 0;
    const marked = new Set<string>();
    const affected = new Set<string>();
    for await (const s of settled) {
      if (s.bad) {
        await removed.atBad(s.row.idx);
        result.bad.push(s.bad);
        const c = s.bad.checksum;
        if (opts.record && c !== null && !marked.has(c)) {
          marked.add(c);
          for (const u of await src.meta.markObjectInvalid(c)) affected.add(u);
        }
      }
      if (s.sent > 0) {
        result.blocksSent++;
        result.bytesSent += s.sent;
      }
      result.bytesRead += s.read;
      rows.push(s.row);
      if (rows.length >= ROW_BATCH) await flush();
      progress.advance(s.row.size);
      await opts.afterBlock?.(++count);
    }
    signal?.throwIfAborted();
    await flush();
    result.sourceAffected = [...affected].sort();
    // The source's state now: a scrub meanwhile may have found damage; rm --force may have removed it.
    await removed.atEnd();
    const now = await src.meta.getVersion(v.uid);
    const labels = (await labelsOf(src.meta, [v.uid])).get(v.uid);
    if (labels) await changeLabels(dst.meta, v.uid, { set: labels, remove: [] });
    signal?.throwIfAborted();
    if (now.status === 'valid' && result.bad.length === 0) {
      result.problem = await dst.meta.completeVersion(v.uid);
      if (result.problem) await dst.meta.setVersionStatus(v.uid, 'invalid');
    } else await dst.meta.setVersionStatus(v.uid, 'invalid');
    result.status = result.problem || now.status !== 'valid' || result.bad.length > 0 ? 'invalid' : 'valid';
    if (now.protected) await setProtected(dst.meta, [v.uid], true);
    done = true;
    return result;
  } finally {
    progress.stop();
    if (!done) await dst.meta.removeVersion(v.uid, { protectedToo: true }).catch(() => {});
    stopHeartbeat();
    await dst.meta.releaseLease(lease.id).catch(() => {});
    for (const h of base?.holds ?? []) await h.release();
  }
}

type Copied = { name: string; sent: number; read: number } | { bad: string };

/**
 * Source blocks to target objects for one version: dedup within it (a block met twice is
 * handled once), at the target (an object it holds is not sent), and durable, recorded
 * objects before entries name them (recordObjects).
 */
class ObjectCopier {
  readonly #src: BlockStore;
  readonly #dst: CopyEnd;
  readonly #buffers: BufferPool;
  /** Both stores name a block alike: a source name is the target name. */
  readonly #sameNames: boolean;
  /** Adopt object files without a row (what a killed copy stored but had not recorded yet). */
  readonly #adopt: boolean;
  readonly #known = new Map<string, Promise<Copied>>();
  #objects = new Map<string, number>();

  constructor(src: BlockStore, dst: CopyEnd, inFlight: number, blockSize: number, adopt: boolean) {
    this.#src = src;
    this.#dst = dst;
    this.#adopt = adopt;
    // Decoded in place and encoded in place: one buffer per block in flight, room around it.
    this.#buffers = new BufferPool(inFlight, objectBufferSize(blockSize), ENCODE_ROOM);
    const a = src.spec;
    const b = dst.store.spec;
    this.#sameNames =
      a.hashFunction === b.hashFunction &&
      (a.keys === undefined
        ? b.keys === undefined
        : b.keys !== undefined && a.keys.naming.equals(b.keys.naming));
  }

  async copy(checksum: string, size: number): Promise<Copied> {
    const pending = this.#known.get(checksum);
    if (pending) {
      const r = await pending;
      return 'bad' in r ? r : { name: r.name, sent: 0, read: 0 };
    }
    const p = this.#copyNew(checksum, size);
    this.#known.set(checksum, p);
    return p;
  }

  /**
   * The target holds a valid object `name`, touched (or adopted) under our lease, so cleanup
   * keeps it: as a backup's dedup, the row is touched before the file is looked for.
   */
  async #held(name: string): Promise<boolean> {
    const { meta, store } = this.#dst;
    if (await meta.touchObject(name, nowMicros())) return store.has(name);
    // Not valid under its row: a damaged object (adoptObjects refuses it) or a row naming an
    // object with nothing stored yet (a killed copy put its entry first: adopted if the file is there).
    if (!this.#adopt) return false;
    // A file without a row: cleanup sweeps such files only while no writer's lease exists, and
    // ours does, so it stays; with a row (last seen now) it is like any stored object.
    const size = (await store.backend.stat(name))?.size;
    return size !== undefined && (await meta.adoptObjects(new Map([[name, size]]))).has(name);
  }

  async #copyNew(checksum: string, size: number): Promise<Copied> {
    if (this.#sameNames && (await this.#held(checksum))) return { name: checksum, sent: 0, read: 0 };
    return this.#buffers.with(async (buf) => {
      let data: Buffer;
      try {
        data = await this.#src.get(checksum, size, buf);
      } catch (err) {
        if (err instanceof MissingBlockError || err instanceof CorruptBlockError) return { bad: err.message };
        throw err;
      }
      const name = this.#sameNames ? checksum : await this.#dst.store.digest(data);
      if (!this.#sameNames && (await this.#held(name))) return { name, sent: 0, read: data.length };
      const stored = await this.#dst.store.put(name, data, { defer: true, inPlace: true });
      this.#objects.set(name, stored);
      return { name, sent: stored, read: size };
    });
  }

  /**
   * Makes every object stored so far durable and records it, before any entry naming it is
   * put (entries are settled only after their object's put: see copyOnto).
   */
  async recordObjects(): Promise<void> {
    // Taken before the sync: an object whose put ends during it is synced and recorded next time.
    const objects = [...this.#objects].map(([checksum, storedSize]) => ({ checksum, storedSize }));
    this.#objects = new Map();
    await this.#dst.store.sync();
    await this.#dst.meta.recordObjects(objects, nowMicros());
    // Everything settled is recorded now (touched again by a later lookup); a copy still in
    // flight may be stored a second time after this, harmlessly (same name, same content).
    if (this.#known.size > KNOWN_LIMIT) this.#known.clear();
  }
}
