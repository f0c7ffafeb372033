/**
 * Backup from an `rbd export-diff` stream: the diff is applied onto the base version's block
 * list, so only changed data crosses the wire and no device has to be mapped.
 *
 * - An incremental diff (--from-snap) needs a base (-f) whose recorded snapshot, if any, is
 *   the diff's from-snap; a full diff (no from-snap) starts from an all-sparse image and takes
 *   no base: unchanged regions are not in a full diff at all, so applying it onto a base would
 *   keep stale data.
 * - The new version's rows start as a copy of the base's. Each block a record touches is
 *   rebuilt: wholly overwritten by data -> hashed and stored; wholly zeroed -> sparse; partly
 *   touched -> the base block is fetched (verified on read), patched, hashed and stored. A
 *   block whose length changed (the image was resized) is rebuilt the same way, and blocks
 *   beyond the base's end start as zeros.
 * - Records come in increasing offset order (the parser checks it), so a block is complete as
 *   soon as a record starts in a later block: one pass, no buffering of the stream.
 *
 * Memory: READ_AHEAD blocks in flight plus the block being assembled (its pieces together are
 * at most one block, as records do not overlap): about (READ_AHEAD + 1) x block size.
 *
 * Safety is the core backup's: the version starts incomplete under a lease, objects are
 * durable before rows name them, and it becomes valid in one checking transaction. A stream
 * found bad half-way (truncated, out of order) removes the incomplete version again, so bad
 * input leaves the metadata as it was; objects already written are left to cleanup.
 */
import { blockCount, blockLength } from '../blocks/blocks.js';
import { CorruptBlockError, InputError, IntegrityError, MissingBlockError, UsageError } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { ExportDiffReader } from '../source/rbd-export-diff.js';
import type { ExportDiffPiece } from '../source/rbd-export-diff.js';
import { abortableIterable, mapOrdered } from '../util/concurrency.js';
import { BlockWriter, READ_AHEAD, completeOrInvalidate, emptyStats } from './backup.js';
import { holdVersion, keepLeaseAlive } from './lease.js';
import { checkBase } from './base-check.js';
import type { Tracking } from '../meta/tracking.js';
import type { BackupResult, Stored } from './backup.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

export interface ExportDiffBackupOptions {
  meta: MetaStore;
  store: BlockStore;
  /** The export-diff stream (a file's or stdin's chunks). */
  input: AsyncIterable<Buffer | Uint8Array | string>;
  /** For messages: "stdin" or the file name. */
  inputName: string;
  name: string;
  /** Block size for a version without a base (a base's block size wins). */
  blockSize: number;
  baseUid?: string;
  /** Recorded when the stream names no to-snap; must agree with it otherwise. */
  snapshotName?: string;
  progress?: ProgressReporter;
  onVersion?: (v: Version) => void;
  /** Stops the backup (SIGINT): it rejects with the signal's reason and records nothing. */
  signal?: AbortSignal;
  /** Accept a base whose name differs from `name` (base-check.ts). */
  forceBase?: boolean;
  onWarn?: (message: string) => void;
}

interface Job {
  idx: number;
  pieces: ExportDiffPiece[];
}

export async function backupExportDiff(opts: ExportDiffBackupOptions): Promise<BackupResult> {
  // The base is in use until the backup ends: rm refuses it, cleanup keeps its objects.
  const held = opts.baseUid !== undefined ? await holdVersion(opts.meta, opts.baseUid, 'base') : undefined;
  try {
    return await backupExportDiffOnto(opts, held?.version);
  } finally {
    await held?.release();
  }
}

async function backupExportDiffOnto(
  opts: ExportDiffBackupOptions,
  base: Version | undefined,
): Promise<BackupResult> {
  const progress = opts.progress ?? noProgress;
  const what = `export-diff ${opts.inputName}`;
  if (base) checkBase(base, opts.name, opts.forceBase ?? false, opts.onWarn);
  const blockSize = base ? base.blockSize : opts.blockSize;
  const reader = await ExportDiffReader.open(abortableIterable(opts.input, opts.signal), {
    name: what,
    pieceSize: blockSize,
  });
  try {
    const { fromSnap, toSnap, size } = reader.header;
    if (fromSnap !== undefined && !base) {
      throw new UsageError(
        `${what} is incremental (from snapshot '${fromSnap}'): give -f UID, the backup of snapshot '${fromSnap}'`,
      );
    }
    if (fromSnap === undefined && base) {
      throw new UsageError(
        `${what} is a full export-diff (no --from-snap): it does not name unchanged regions, so it cannot be applied onto base ${base.uid}; back up without -f`,
      );
    }
    if (base && base.snapshotName !== '' && base.snapshotName !== fromSnap) {
      throw new InputError(
        `${what} starts from snapshot '${fromSnap}' but base ${base.uid} is a backup of snapshot '${base.snapshotName}'; give -f the backup of '${fromSnap}'`,
      );
    }
    if (toSnap !== undefined && (toSnap === '' || toSnap === '-' || /\s/.test(toSnap))) {
      // 'ls -m' lines are space-separated and show '-' for "no snapshot".
      throw new InputError(
        `${what} names snapshot '${toSnap}', which backy cannot record (empty, '-' or whitespace)`,
      );
    }
    if (toSnap !== undefined && opts.snapshotName !== undefined && toSnap !== opts.snapshotName) {
      throw new UsageError(
        `--snapshot-name '${opts.snapshotName}' differs from the export-diff's snapshot '${toSnap}'; leave the option out`,
      );
    }
    const snapshot = toSnap ?? opts.snapshotName;
    const tracking: Tracking = {
      kind: 'rbd-export-diff',
      snapshot: snapshot ?? null,
      base_snapshot: fromSnap ?? null,
    };
    return await apply(opts, reader, base, blockSize, size, snapshot, tracking, progress);
  } finally {
    await reader.close().catch(() => {});
  }
}

async function apply(
  opts: ExportDiffBackupOptions,
  reader: ExportDiffReader,
  base: Version | undefined,
  blockSize: number,
  size: number,
  snapshotName: string | undefined,
  tracking: Tracking,
  progress: ProgressReporter,
): Promise<BackupResult> {
  const { meta, store } = opts;
  const n = blockCount(size, blockSize);
  const baseSize = base?.sizeBytes ?? 0;
  const baseN = blockCount(baseSize, blockSize);
  // Version and lease in one transaction: cleanup never sees this version without its lease.
  const { version, lease } = await meta.createVersionWithLease(
    { name: opts.name, snapshotName, sizeBytes: size, blockSize, baseUid: base?.uid, tracking },
    'backup',
  );
  opts.onVersion?.(version);
  const stopHeartbeat = keepLeaseAlive(meta, lease.id);
  let ok = false;
  try {
    if (base) await meta.copyBlocks(base.uid, version.uid, n);
    const writer = new BlockWriter(meta, store, version.uid);
    const stats = emptyStats(n);
    // Blocks no record touches keep the base's entry, unless resizing changed them.
    const needsJob = (i: number) =>
      i >= baseN || blockLength(i, baseSize, blockSize) !== blockLength(i, size, blockSize);

    async function* jobs(): AsyncGenerator<Job> {
      let next = 0; // every block below `next` has had its job (or keeps the base's entry)
      let cur: Job | undefined;
      function* untouched(to: number): Generator<Job> {
        for (let i = next; i < to; i++) {
          if (needsJob(i)) yield { idx: i, pieces: [] };
          else stats.kept++;
        }
      }
      for await (const piece of reader.pieces()) {
        const idx = Math.floor(piece.offset / blockSize);
        if (cur?.idx !== idx) {
          if (cur) yield cur;
          yield* untouched(idx);
          cur = { idx, pieces: [] };
          next = idx + 1;
        }
        cur.pieces.push(piece);
      }
      if (cur) yield cur;
      yield* untouched(n);
    }

    const baseBlock = async (idx: number, length: number): Promise<Buffer> => {
      const out = Buffer.alloc(length);
      if (!base || idx >= baseN) return out;
      const row = (await meta.blocksAt(base.uid, [idx])).get(idx);
      const damaged = (reason: string) =>
        new IntegrityError(
          `base ${base.uid} block ${idx} ${reason}; the export-diff changes part of it, so it cannot be patched: ` +
            `run 'backy scrub ${base.uid}', or back up a full export-diff (without --from-snap and -f)`,
        );
      if (!row) throw damaged('has no entry');
      if (!row.valid) throw damaged('is marked invalid');
      if (row.checksum === null) return out;
      let data: Buffer;
      try {
        data = await store.get(row.checksum, row.size);
      } catch (err) {
        if (err instanceof MissingBlockError || err instanceof CorruptBlockError)
          throw damaged(`is damaged (${err.message})`);
        throw err;
      }
      data.copy(out, 0, 0, Math.min(length, data.length));
      return out;
    };

    const build = async (
      job: Job,
    ): Promise<{ idx: number; length: number; data: number; stored?: Stored }> => {
      const length = blockLength(job.idx, size, blockSize);
      const start = job.idx * blockSize;
      let covered = 0;
      let data = 0;
      for (const p of job.pieces) {
        covered += p.length;
        if (p.data) data += p.length;
      }
      if (covered === length && data === 0) return { idx: job.idx, length, data }; // wholly zeroed
      // Untouched beyond the base's end (most of a sparse image in a full diff): zeros, no work.
      if (covered === 0 && job.idx >= baseN) return { idx: job.idx, length, data };
      let block: Buffer;
      if (covered === length && job.pieces.length === 1) block = job.pieces[0].data!;
      else {
        // Pieces do not overlap (records are ordered), so full coverage means no base is needed.
        block = covered === length ? Buffer.alloc(length) : await baseBlock(job.idx, length);
        for (const p of job.pieces) {
          if (p.data) p.data.copy(block, p.offset - start);
          else block.fill(0, p.offset - start, p.offset - start + p.length);
        }
      }
      return { idx: job.idx, length, data, stored: await writer.store(block) };
    };

    progress.start('backup', undefined);
    for await (const r of mapOrdered(jobs(), READ_AHEAD, build, opts.signal)) {
      if (r.data > 0) {
        stats.read++;
        stats.bytesRead += r.data;
        progress.advance(r.data);
      }
      await writer.add(r.idx, r.length, r.stored, stats);
    }
    opts.signal?.throwIfAborted();
    await writer.flush();
    stats.bytesStored = writer.bytesStored;
    progress.stop();

    try {
      await completeOrInvalidate(meta, version.uid);
    } catch (err) {
      if (err instanceof IntegrityError) ok = true; // keep the invalid version: it records what went wrong
      throw err;
    }
    version.status = 'valid';
    ok = true;
    return { version, stats };
  } finally {
    progress.stop();
    stopHeartbeat();
    if (!ok) {
      // Bad input found half-way: leave the metadata as it was (objects go at the next cleanup).
      await meta.removeVersion(version.uid, { protectedToo: true }).catch(() => {});
    }
    await meta.releaseLease(lease.id).catch(() => {});
  }
}
