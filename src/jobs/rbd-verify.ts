/**
 * The proof an rbd verify run (verify_every) gives: the run reads the whole snapshot (a full
 * export-diff), then every block that `rbd diff --from-snap` calls unchanged since the chain's
 * last version must have the same checksum in both versions. A difference means the chain of
 * incrementals up to that version does not hold what the image held, though the new version,
 * read in full, does. Memory: one page of each block list and one byte per block.
 */
import { blockCount } from '../blocks/blocks.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import { RbdDiffParser } from '../hints/rbd-diff.js';
import { RBD_TIMEOUT_MS } from './rbd.js';
import { runTool } from './tool.js';

/** Blocks (of `blockSize`) that the extents touch, as a byte per block. Pure. */
export function touchedBlocks(
  extents: Iterable<{ offset: number; length: number }>,
  blocks: number,
  blockSize: number,
): Uint8Array {
  const touched = new Uint8Array(blocks);
  for (const e of extents) {
    if (e.length <= 0) continue;
    const first = Math.floor(e.offset / blockSize);
    const last = Math.min(blocks - 1, Math.floor((e.offset + e.length - 1) / blockSize));
    for (let i = first; i <= last; i++) touched[i] = 1;
  }
  return touched;
}

/**
 * Compares two block lists (ordered by idx; a missing entry is sparse) over the first `blocks`
 * blocks that `changed` does not mark. Returns how many were compared and the indices of the
 * first `limit` that differ.
 */
export async function compareUnchanged(
  changed: Uint8Array,
  blocks: number,
  base: AsyncIterable<BlockRow>,
  fresh: AsyncIterable<BlockRow>,
  limit = 10,
): Promise<{ compared: number; differing: number[]; differingCount: number }> {
  const a = base[Symbol.asyncIterator]();
  const b = fresh[Symbol.asyncIterator]();
  let ra = await a.next();
  let rb = await b.next();
  let compared = 0;
  let differingCount = 0;
  const differing: number[] = [];
  for (let idx = 0; idx < blocks; idx++) {
    while (!ra.done && ra.value.idx < idx) ra = await a.next();
    while (!rb.done && rb.value.idx < idx) rb = await b.next();
    if (changed[idx]) continue;
    const ca = !ra.done && ra.value.idx === idx ? ra.value.checksum : null;
    const cb = !rb.done && rb.value.idx === idx ? rb.value.checksum : null;
    compared++;
    if (ca !== cb) {
      differingCount++;
      if (differing.length < limit) differing.push(idx);
    }
  }
  return { compared, differing, differingCount };
}

/**
 * Checks full version `fresh` of `spec@snap` against `base` (the chain's youngest version,
 * of snapshot base.snapshotName). Returns a problem line, or undefined when every unchanged
 * block matches; `info` gets the count.
 */
export async function verifyAgainstChain(
  meta: MetaStore,
  spec: string,
  snap: string,
  base: Version,
  fresh: Version,
  info: (m: string) => void,
  signal?: AbortSignal,
): Promise<string | undefined> {
  if (base.blockSize !== fresh.blockSize) {
    info(`verify: base ${base.uid} has another block size (${base.blockSize}); not compared`);
    return undefined;
  }
  const bs = fresh.blockSize;
  const { stdout } = await runTool(
    'rbd',
    ['diff', '--from-snap', base.snapshotName, '--format', 'json', `${spec}@${snap}`],
    { timeoutMs: RBD_TIMEOUT_MS, signal },
  );
  const extents: { offset: number; length: number }[] = [];
  const parser = new RbdDiffParser(`rbd diff of ${spec}@${snap} from ${base.snapshotName}`, (e) =>
    extents.push(e),
  );
  parser.push(Buffer.from(stdout));
  parser.end();
  // Only the blocks both versions have in full are comparable: a partial last block of
  // either (the image was resized) counts as changed.
  const blocks = Math.floor(Math.min(base.sizeBytes, fresh.sizeBytes) / bs);
  const changed = touchedBlocks(extents, Math.max(blocks, blockCount(fresh.sizeBytes, bs)), bs);
  const r = await compareUnchanged(
    changed,
    blocks,
    meta.blockLists.blocks(base.uid),
    meta.blockLists.blocks(fresh.uid),
  );
  if (r.differingCount === 0) {
    info(`verify: ${r.compared} blocks rbd diff calls unchanged match base ${base.uid}`);
    return undefined;
  }
  return (
    `verify: ${r.differingCount} of ${r.compared} blocks that rbd diff calls unchanged since ${base.snapshotName} differ from version ${base.uid} ` +
    `(blocks ${r.differing.join(', ')}${r.differingCount > r.differing.length ? ', …' : ''}): the chain up to ${base.uid} does not hold what the image held; ` +
    `the new version ${fresh.uid}, read in full, does`
  );
}
