/**
 * The backup pipeline: plan -> read (several blocks in flight) -> zero check -> hash ->
 * dedup (this run, then the objects table) -> store -> record (batched transactions).
 *
 * Concurrency: blocksInFlight() blocks (8 of 4 MiB on a directory store, 4 on S3) are read, zero-checked, hashed (on the
 * CodecPool's worker threads, when the store has one) and stored at once; results are recorded
 * in order. Each block lives in one buffer of a fixed BufferPool from read to store, and is
 * encoded (compressed, encrypted) in place there, so memory is that many block buffers plus
 * one batch of block rows, whatever the image size, and nothing is allocated per block.
 *
 * Safety: a version starts incomplete and under a lease (cleanup keeps everything a leased
 * backup stores or references), and a -f base under a lease of its own (rm refuses it); an
 * object is durable before any row names it; the version becomes valid in one transaction
 * that checks every block entry is present and backed by a valid object. A crash at any point leaves an incomplete version that is never a base.
 */
import { blockCount, blockLength, isZero } from '../blocks/blocks.js';
import { IntegrityError, UsageError } from '../errors.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import { nowMicros } from '../meta/meta-store.js';
import { ENCODE_ROOM } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { Source } from '../source/source.js';
import { BufferPool, blocksInFlight } from '../util/buffer-pool.js';
import { mapOrdered } from '../util/concurrency.js';
import { DISCARD, KEEP, READ, SPARSE, countActions, plan } from './plan.js';
import { checkBase, checkTracking } from './base-check.js';
import { sampleHints, verifyUnhinted } from './hint-check.js';
import type { Tracking } from '../meta/tracking.js';
import { blocksWithData } from '../blocks/allocation.js';
import type { Extent } from '../source/extents.js';
import { planFromHints } from './hint-plan.js';
import type { HintReader } from './hint-plan.js';
import { holdVersion, keepLeaseAlive } from './lease.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

/** Blocks in flight in pipelines without a BufferPool (backup-export-diff.ts). */
export const READ_AHEAD = 8;
const ROW_BATCH = 1000;

/** Makes a finished backup valid, or marks it invalid and throws when it cannot be verified. */
export async function completeOrInvalidate(meta: MetaStore, uid: string): Promise<void> {
  const problem = await meta.completeVersion(uid);
  if (problem) {
    await meta.setVersionStatus(uid, 'invalid');
    throw new IntegrityError(`backup ${uid} could not be verified: ${problem}; it is marked invalid`);
  }
}

export function emptyStats(blocks = 0): BackupStats {
  return {
    blocks,
    read: 0,
    sparse: 0,
    kept: 0,
    stored: 0,
    deduplicated: 0,
    bytesRead: 0,
    bytesStored: 0,
    verified: 0,
  };
}

export interface BackupOptions {
  meta: MetaStore;
  store: BlockStore;
  source: Source;
  name: string;
  /** The Ceph (or other) snapshot this backup was read from; '' or undefined when none. */
  snapshotName?: string;
  /** Block size for a version without a base (a base's block size wins). */
  blockSize: number;
  hints?: HintSource;
  baseUid?: string;
  /**
   * With hints: up to this many random unhinted blocks are re-read and compared with the base
   * (with a base), and up to this many blocks the hints call discarded must read as zeros.
   */
  hintCheckBlocks: number;
  /**
   * With hints and a base: read every block the hints call unchanged (or discarded) and check
   * it against the base (or zeros) before anything is stored, instead of a sample.
   */
  verifyUnhinted?: boolean;
  /** Accept a base whose name differs from `name` (or whose thin device differs from the delta's). */
  forceBase?: boolean;
  /** Informational messages (what the hint check sampled). */
  onInfo?: (message: string) => void;
  /** Warnings (a base that cannot be checked against the change source). */
  onWarn?: (message: string) => void;
  progress?: ProgressReporter;
  /** Called with the new version as soon as it exists (so the CLI can name it on failure). */
  onVersion?: (v: Version) => void;
  /** Stops the backup (SIGINT): it rejects with the signal's reason, the version incomplete. */
  signal?: AbortSignal;
}

/**
 * Hint extents, streamed; read once the source's size is known (see hint-plan.ts). `tracking`
 * (once they are read) says what they are relative to, recorded with the version and checked
 * against the base's.
 */
export type HintSource = HintReader & { tracking?(base: Version | undefined): Tracking | null };

export interface BackupStats {
  blocks: number;
  read: number;
  sparse: number;
  kept: number;
  stored: number;
  deduplicated: number;
  bytesRead: number;
  bytesStored: number;
  /** Blocks --verify-unhinted read and found as the hints say (0 without it). */
  verified: number;
}

export interface BackupResult {
  version: Version;
  stats: BackupStats;
}

export async function backup(opts: BackupOptions): Promise<BackupResult> {
  // The base is in use until the backup ends: rm refuses it, cleanup keeps its objects.
  const held = opts.baseUid !== undefined ? await holdVersion(opts.meta, opts.baseUid, 'base') : undefined;
  try {
    return await backupOnto(opts, held?.version);
  } finally {
    await held?.release();
  }
}

async function backupOnto(opts: BackupOptions, base: Version | undefined): Promise<BackupResult> {
  const { meta, store, source } = opts;
  const progress = opts.progress ?? noProgress;
  if (base) checkBase(base, opts.name, opts.forceBase ?? false, opts.onWarn);
  const blockSize = base ? base.blockSize : opts.blockSize;
  const inFlight = blocksInFlight(blockSize, store.inFlightBytes);
  // One more buffer than tasks: a stream fills the next block while `inFlight` are stored.
  // With room around each block, an object is encoded in place: no output buffers.
  const buffers = new BufferPool(inFlight + 1, blockSize, ENCODE_ROOM);

  let actions: Uint8Array | undefined;
  let size: number | undefined;
  let tracking: Tracking | null = null;
  let verified = 0;
  if (opts.verifyUnhinted && (!opts.hints || !base)) {
    throw new UsageError(
      '--verify-unhinted needs change hints and -f UID: it checks what the hints keep from the base',
    );
  }
  if (source.kind === 'random') {
    size = source.size;
    const hints = opts.hints;
    if (hints) {
      actions = await planFromHints(size, blockSize, base ? { size: base.sizeBytes } : undefined, hints);
      tracking = hints.tracking?.(base) ?? null;
      if (base) checkTracking(base, tracking, opts.forceBase ?? false, opts.onWarn);
    } else {
      actions = plan({ size, blockSize });
    }
    if (hints && base && opts.verifyUnhinted) {
      progress.start(
        'verify',
        countBytes(actions, size, blockSize, (a) => a === KEEP || a === DISCARD),
      );
      verified = await verifyUnhinted(
        meta,
        store,
        source,
        base,
        actions,
        buffers,
        inFlight,
        opts.signal,
        (n) => progress.advance(n),
      );
      progress.stop();
      opts.onInfo?.(`verify-unhinted: ${verified} blocks outside the hints read, all as the hints say`);
    } else if (hints && opts.hintCheckBlocks > 0) {
      const sampled = await sampleHints(meta, store, source, base, actions, buffers, opts.hintCheckBlocks);
      opts.onInfo?.(
        sampled.unchanged + sampled.discarded === 0
          ? 'hint check: no unhinted or discarded blocks to sample'
          : `hint check: ${sampled.unchanged} unhinted and ${sampled.discarded} discarded blocks sampled (a sample: see --verify-unhinted), all as the hints say`,
      );
    }
    if (source.dataExtents) await skipHoles(actions, source.dataExtents(), size, blockSize);
  } else if (opts.hints) {
    throw new UsageError('hints (-r) need a seekable source (a file or block device), not a stream');
  }

  // Version and lease in one transaction: cleanup never sees this version without its lease.
  const { version, lease } = await meta.createVersionWithLease(
    {
      name: opts.name,
      snapshotName: opts.snapshotName,
      sizeBytes: size ?? 0,
      blockSize,
      baseUid: base?.uid,
      tracking,
    },
    'backup',
  );
  opts.onVersion?.(version);
  const stopHeartbeat = keepLeaseAlive(meta, lease.id);
  try {
    if (base && size !== undefined) await meta.copyBlocks(base.uid, version.uid, blockCount(size, blockSize));
    const writer = new BlockWriter(meta, store, version.uid);
    const stats = emptyStats();
    stats.verified = verified;

    if (source.kind === 'random' && actions && size !== undefined) {
      const counts = countActions(actions);
      stats.blocks = actions.length;
      stats.kept = counts.keep;
      const total = size;
      const toRead = countBytes(actions, total, blockSize, (a) => a === READ);
      progress.start('backup', toRead);
      const work = function* () {
        for (let idx = 0; idx < actions.length; idx++) {
          if (actions[idx] !== KEEP) yield idx;
        }
      };
      const results = mapOrdered(
        work(),
        inFlight,
        async (idx) => {
          const length = blockLength(idx, total, blockSize);
          if (actions[idx] !== READ) return { idx, length, read: false, stored: undefined };
          return buffers.with(async (buf) => {
            const data = await source.read(idx * blockSize, length, buf);
            return { idx, length, read: true, stored: await writer.store(data, { inPlace: true }) };
          });
        },
        opts.signal,
      );
      for await (const r of results) {
        if (r.read) {
          stats.read++;
          stats.bytesRead += r.length;
          progress.advance(r.length);
        }
        await writer.add(r.idx, r.length, r.stored, stats);
      }
    } else if (source.kind === 'stream') {
      progress.start('backup', undefined);
      let idx = 0;
      let total = 0;
      const chunks = (async function* () {
        for await (const data of source.chunks(blockSize, () => buffers.acquire()))
          yield { idx: idx++, data };
      })();
      const results = mapOrdered(
        chunks,
        inFlight,
        async ({ idx, data }) => {
          try {
            return { idx, length: data.length, stored: await writer.store(data, { inPlace: true }) };
          } finally {
            buffers.release(data);
          }
        },
        opts.signal,
      );
      for await (const r of results) {
        stats.read++;
        stats.bytesRead += r.length;
        total += r.length;
        progress.advance(r.length);
        await writer.add(r.idx, r.length, r.stored, stats);
      }
      stats.blocks = idx;
      size = total;
      await meta.setVersionSize(version.uid, size);
      version.sizeBytes = size;
    }
    // Interrupted after the last block: still nothing is made valid after a stop was asked for.
    opts.signal?.throwIfAborted();
    await writer.flush();
    stats.bytesStored = writer.bytesStored;
    progress.stop();

    await completeOrInvalidate(meta, version.uid);
    version.status = 'valid';
    return { version, stats };
  } finally {
    progress.stop();
    stopHeartbeat();
    await meta.releaseLease(lease.id).catch(() => {});
  }
}

/**
 * A block the source reports wholly unallocated (a hole of a sparse file; an NBD export's
 * base:allocation hole) reads as zeros by definition: it is sparse without a read. Blocks the
 * data touches, even by one byte, are still read.
 */
async function skipHoles(
  actions: Uint8Array,
  extents: Iterable<Extent> | AsyncIterable<Extent>,
  size: number,
  blockSize: number,
): Promise<void> {
  const hasData = await blocksWithData(extents, size, blockSize);
  for (let i = 0; i < actions.length; i++) if (actions[i] === READ && hasData[i] === 0) actions[i] = SPARSE;
}

function countBytes(
  actions: Uint8Array,
  size: number,
  blockSize: number,
  which: (a: number) => boolean,
): number {
  let bytes = 0;
  for (let i = 0; i < actions.length; i++) if (which(actions[i])) bytes += blockLength(i, size, blockSize);
  return bytes;
}

export interface Stored {
  checksum: string;
  /** Bytes newly written to the data store (0 when deduplicated). */
  written: number;
}

/** Dedup, object writes and batched block rows for one backup (also used by backup-export-diff.ts). */
export class BlockWriter {
  readonly #meta: MetaStore;
  readonly #store: BlockStore;
  readonly #uid: string;
  /** Checksums stored or referenced in this run (object kept by our lease), or being stored now. */
  readonly #known = new Map<string, Promise<number>>();
  #rows: BlockRow[] = [];
  #objects: { checksum: string; storedSize: number }[] = [];
  bytesStored = 0;

  constructor(meta: MetaStore, store: BlockStore, uid: string) {
    this.#meta = meta;
    this.#store = store;
    this.#uid = uid;
  }

  /**
   * Stores one block read from the source; undefined for an all-zero (sparse) block. `data` is
   * not used after the promise settles (the caller may reuse the buffer then), and must not be
   * changed before. `inPlace`: see BlockStore.put (`data` holds anything afterwards).
   */
  async store(data: Buffer, opts?: { inPlace?: boolean }): Promise<Stored | undefined> {
    if (isZero(data)) return undefined;
    const checksum = await this.#store.digest(data);
    let pending = this.#known.get(checksum);
    if (pending) {
      await pending;
      return { checksum, written: 0 };
    }
    pending = this.#storeNew(checksum, data, opts?.inPlace ?? false);
    this.#known.set(checksum, pending);
    return { checksum, written: await pending };
  }

  async #storeNew(checksum: string, data: Buffer, inPlace: boolean): Promise<number> {
    // Refreshing last_seen under our lease keeps a concurrent cleanup away from this object.
    // The row alone is not proof: a file deleted behind backy's back (or lost by the file
    // system) would make this version valid yet unrestorable. Checked after the touch, so a
    // cleanup cannot remove the file between the check and our use of it; a missing file is
    // stored again, and recordObjects() then sets the row's size and validity afresh.
    if ((await this.#meta.touchObject(checksum, nowMicros())) && (await this.#store.has(checksum))) return 0;
    const storedSize = await this.#store.put(checksum, data, { defer: true, inPlace });
    this.#objects.push({ checksum, storedSize });
    return storedSize;
  }

  async add(idx: number, length: number, stored: Stored | undefined, stats: BackupStats): Promise<void> {
    if (stored) {
      if (stored.written > 0) {
        stats.stored++;
        this.bytesStored += stored.written;
      } else stats.deduplicated++;
    } else stats.sparse++;
    this.#rows.push({ idx, checksum: stored?.checksum ?? null, size: length, valid: true });
    if (this.#rows.length >= ROW_BATCH) await this.flush();
  }

  async flush(): Promise<void> {
    // Objects first: a block row is committed only after its object is durable and recorded.
    // Objects are put with deferred durability (their directory fsyncs batched): this sync
    // makes every object stored so far durable before any row naming one is committed. Blocks
    // still being stored are not in this batch's rows, which come from add() after store().
    await this.#store.sync();
    const objects = this.#objects;
    this.#objects = [];
    await this.#meta.recordObjects(objects, nowMicros());
    const rows = this.#rows;
    this.#rows = [];
    await this.#meta.putBlocks(this.#uid, rows);
  }
}
