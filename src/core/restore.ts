/**
 * The restore pipeline: block list in order -> fetch and verify (several in flight) -> write.
 * A missing or damaged block is recorded (object, block entries and versions marked invalid),
 * written as zeros, and the restore goes on: the image is always written whole.
 * Memory: READ_AHEAD blocks in flight plus one page of the block list.
 */
import { blockCount, blockLength, zeros } from '../blocks/blocks.js';
import { CorruptBlockError, MissingBlockError } from '../errors.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { Target } from '../target/target.js';
import { mapOrdered } from '../util/concurrency.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

const READ_AHEAD = 8;

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
}

export async function restore(opts: {
  meta: MetaStore;
  store: BlockStore;
  version: Version;
  target: Target;
  /** Do not write zero blocks (the target reads back zeros). */
  sparse: boolean;
  progress?: ProgressReporter;
}): Promise<RestoreResult> {
  const { meta, store, version, target } = opts;
  const progress = opts.progress ?? noProgress;
  const { sizeBytes: size, blockSize } = version;
  const n = blockCount(size, blockSize);
  const skipZeros = opts.sparse && target.positional;
  const result: RestoreResult = { bytes: size, blocksWritten: 0, blocksSkipped: 0, bad: [] };

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

  progress.start('restore', size);
  try {
    const fetched = mapOrdered(entries(), READ_AHEAD, async ({ idx, row }) => {
      const length = blockLength(idx, size, blockSize);
      if (!row)
        return {
          idx,
          length,
          data: undefined,
          bad: { idx, checksum: null, reason: 'no entry in the block list' },
        };
      if (row.checksum === null) return { idx, length, data: undefined };
      try {
        return { idx, length, data: await store.get(row.checksum, length) };
      } catch (err) {
        if (err instanceof MissingBlockError || err instanceof CorruptBlockError) {
          return { idx, length, data: undefined, bad: { idx, checksum: row.checksum, reason: err.message } };
        }
        throw err;
      }
    });
    const marked = new Set<string>();
    for await (const r of fetched) {
      if (r.bad) {
        result.bad.push(r.bad);
        if (r.bad.checksum && !marked.has(r.bad.checksum)) {
          marked.add(r.bad.checksum);
          await meta.markObjectInvalid(r.bad.checksum);
        }
        if (!r.bad.checksum && version.status === 'valid') {
          version.status = 'invalid';
          await meta.setVersionStatus(version.uid, 'invalid');
        }
      }
      if (r.data) {
        await target.write(r.idx * blockSize, r.data);
        result.blocksWritten++;
      } else if (skipZeros) {
        result.blocksSkipped++;
      } else {
        await target.write(r.idx * blockSize, zeros(r.length));
        result.blocksWritten++;
      }
      progress.advance(r.length);
    }
    await target.finish();
  } finally {
    progress.stop();
  }
  return result;
}
