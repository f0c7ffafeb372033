/**
 * The restore pipeline: block list in order -> fetch and verify (several in flight) -> write.
 * A missing or damaged block is recorded (object, block entries and versions marked invalid),
 * written as zeros, and the restore goes on: the image is always written whole.
 * Concurrency: blocksInFlight() blocks are fetched, verified (decoded and hashed on the CodecPool's
 * workers when the store has one) and, for a positional target (file, block device), written
 * at their offsets at once; stdout gets them in order. Each block lives in one buffer of a
 * fixed BufferPool, so memory is that many block buffers plus one page of the block list.
 * The caller holds the version (core/lease.ts holdVersion): if it is removed anyway (rm
 * --force), the block list has gaps from then on, and the restore fails saying so instead of
 * marking anything invalid.
 */
import { blockCount, blockLength, zeros } from '../blocks/blocks.js';
import { CorruptBlockError, MissingBlockError } from '../errors.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { Target } from '../target/target.js';
import { BufferPool, blocksInFlight } from '../util/buffer-pool.js';
import { abortable, mapOrdered } from '../util/concurrency.js';
import { removalCheck } from './lease.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

export interface BadBlock {
  idx: number;
  checksum: string | null;
  reason: string;
}

export interface RestoreResult {
  bytes: number;
  blocksWritten: number;
  blocksSkipped: number;
  bad: BadBlock[];
  /** Versions marked invalid by this restore (their metadata copies follow). */
  versionsAffected: string[];
}

export async function restore(opts: {
  meta: MetaStore;
  store: BlockStore;
  version: Version;
  target: Target;
  /** Do not write zero blocks (the target reads back zeros). */
  sparse: boolean;
  /** Mark bad blocks and the version invalid (default). Off for a read-only store. */
  record?: boolean;
  progress?: ProgressReporter;
  /** Stops the restore (SIGINT): it rejects with the signal's reason; the target is partial. */
  signal?: AbortSignal;
}): Promise<RestoreResult> {
  const { meta, store, version, target, signal } = opts;
  const progress = opts.progress ?? noProgress;
  const { sizeBytes: size, blockSize } = version;
  const n = blockCount(size, blockSize);
  const skipZeros = opts.sparse && target.positional;
  const result: RestoreResult = {
    bytes: size,
    blocksWritten: 0,
    blocksSkipped: 0,
    bad: [],
    versionsAffected: [],
  };
  const record = opts.record ?? true;

  // Every index 0..n-1, with its row or a gap where the block list lacks one (incomplete version).
  async function* entries(): AsyncIterable<{ idx: number; row: BlockRow | undefined }> {
    let next = 0;
    for await (const row of meta.blocks(version.uid)) {
      if (row.idx >= n) break;
      while (next < row.idx) yield { idx: next++, row: undefined };
      yield { idx: next++, row };
    }
    while (next < n) yield { idx: next++, row: undefined };
  }

  const positional = target.positional;
  const inFlight = blocksInFlight(blockSize, store.inFlightBytes);
  // Positional targets are written inside the tasks; for stdout one more buffer waits its turn.
  const buffers = new BufferPool(inFlight + (positional ? 0 : 1), objectBufferSize(blockSize));

  /** Writes a block's data, or zeros for a sparse/bad block (none with -s on a positional target). */
  const put = async (idx: number, length: number, data: Buffer | undefined): Promise<boolean> => {
    if (data) await target.write(idx * blockSize, data);
    else if (skipZeros) return false;
    else await target.write(idx * blockSize, zeros(length));
    return true;
  };

  progress.start('restore', size);
  try {
    const fetched = mapOrdered(
      entries(),
      inFlight,
      async ({ idx, row }) => {
        const length = blockLength(idx, size, blockSize);
        let bad: BadBlock | undefined;
        let data: Buffer | undefined;
        let buf: Buffer | undefined;
        if (!row) bad = { idx, checksum: null, reason: 'no entry in the block list' };
        else if (row.checksum !== null) {
          buf = await buffers.acquire();
          try {
            data = await store.get(row.checksum, length, buf);
          } catch (err) {
            buffers.release(buf);
            buf = undefined;
            if (!(err instanceof MissingBlockError || err instanceof CorruptBlockError)) throw err;
            bad = { idx, checksum: row.checksum, reason: err.message };
          }
        }
        if (!positional) return { idx, length, bad, data, buf, written: undefined };
        try {
          return { idx, length, bad, data: undefined, buf: undefined, written: await put(idx, length, data) };
        } finally {
          if (buf) buffers.release(buf);
        }
      },
      signal,
    );
    const marked = new Set<string>();
    const affected = new Set<string>();
    // rm --force took the block list away: nothing is damaged, the version is just gone.
    // The caller adds what became of the target (removed, or incomplete).
    const removed = removalCheck(
      meta,
      version.uid,
      `version ${version.uid} was removed while being restored`,
    );
    for await (const r of fetched) {
      if (r.bad) {
        await removed.atBad(r.idx);
        result.bad.push(r.bad);
        if (!record) {
          // read-only store: reported by the caller, recorded nowhere
        } else if (r.bad.checksum && !marked.has(r.bad.checksum)) {
          marked.add(r.bad.checksum);
          for (const uid of await meta.markObjectInvalid(r.bad.checksum)) affected.add(uid);
        } else if (!r.bad.checksum && version.status === 'valid') {
          version.status = 'invalid';
          await meta.setVersionStatus(version.uid, 'invalid');
          affected.add(version.uid);
        }
      }
      let written = r.written;
      if (written === undefined) {
        try {
          // A pipe nobody reads (stdout) may block forever: the write is raced with the signal.
          written = await abortable(put(r.idx, r.length, r.data), signal);
        } finally {
          if (r.buf) buffers.release(r.buf);
        }
      }
      if (written) result.blocksWritten++;
      else result.blocksSkipped++;
      progress.advance(r.length);
    }
    signal?.throwIfAborted();
    if (result.bad.length > 0) await removed.atEnd();
    result.versionsAffected = [...affected].sort();
    await target.finish();
  } finally {
    progress.stop();
  }
  return result;
}
