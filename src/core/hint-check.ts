/**
 * Checking change hints against the source before a hinted backup stores anything.
 *
 * Hints say which regions changed since the base and which were discarded. Wrong hints (a
 * bitmap cleared or paired with the wrong base, a delta for the wrong devices) would silently
 * produce a wrong backup: a changed block kept from the base, a block with data stored as zeros.
 *
 * - sampleHints: the default check. A few random blocks of each kind are read: blocks the hints
 *   call unchanged must match the base, blocks they call discarded must read as zeros. It is a
 *   sample: with W wrong blocks among N unhinted ones and k sampled, it finds them with
 *   probability 1 - C(N-W,k)/C(N,k) (README, "How far hints are trusted"). Gross errors are
 *   caught; a few wrong blocks mostly are not.
 * - verifyUnhinted (`backup --verify-unhinted`): every block the hints call unchanged is read
 *   and compared with the base, every discarded one must read as zeros. A full read that still
 *   stores only the changes; it proves the chain up to this version.
 *
 * A block's match with the base: the checksum of the data read equals the base entry's, or
 * the base entry is sparse and the data all zeros. Memory: the backup's buffer pool, and one
 * page of the base's block list.
 */
import { blockLength, isZero } from '../blocks/blocks.js';
import { InputError, IntegrityError } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { RandomSource } from '../source/source.js';
import type { BufferPool } from '../util/buffer-pool.js';
import { mapOrdered } from '../util/concurrency.js';
import { DISCARD, KEEP, pickBlocks } from './plan.js';

function advice(base: Version | undefined): string {
  return (
    'nothing was stored. Check that the hints are for this image' +
    (base ? ' and base snapshot' : '') +
    ', or back up without hints'
  );
}

/** Up to `count` random unhinted and discarded blocks, checked; throws InputError at the first wrong one. */
export async function sampleHints(
  meta: MetaStore,
  store: BlockStore,
  source: RandomSource,
  base: Version | undefined,
  actions: Uint8Array,
  buffers: BufferPool,
  count: number,
): Promise<{ unchanged: number; discarded: number }> {
  const blockSize = buffers.bufferSize;
  const size = source.size;
  const discarded = pickBlocks(actions, DISCARD, count);
  for (const idx of discarded) {
    const zero = await buffers.with(async (buf) =>
      isZero(await source.read(idx * blockSize, blockLength(idx, size, blockSize), buf)),
    );
    if (!zero) {
      throw new InputError(
        `hints are wrong: block ${idx} (offset ${idx * blockSize}) is not zeros although the hints say it was discarded ("exists":"false"); ${advice(base)}`,
      );
    }
  }
  if (!base) return { unchanged: 0, discarded: discarded.length };
  const picks = pickBlocks(actions, KEEP, count);
  const rows = await meta.blocksAt(base.uid, picks);
  for (const idx of picks) {
    const row = rows.get(idx);
    if (!row)
      throw new IntegrityError(
        `base version ${base.uid} has no entry for block ${idx}; run 'backy scrub ${base.uid}'`,
      );
    const same = await buffers.with(async (buf) => {
      const data = await source.read(idx * blockSize, row.size, buf);
      return row.checksum === null ? isZero(data) : (await store.digest(data)) === row.checksum;
    });
    if (!same) {
      throw new InputError(
        `hints are wrong: block ${idx} (offset ${idx * blockSize}) differs from base ${base.uid} although no hint covers it; ${advice(base)}`,
      );
    }
  }
  return { unchanged: picks.length, discarded: discarded.length };
}

/**
 * Reads every block the plan keeps from `base` (KEEP) or calls discarded (DISCARD) and checks
 * it: all of them, with `inFlight` reads at once. Returns how many were verified; throws one
 * InputError with the number of wrong blocks and the first, after reading them all.
 */
export async function verifyUnhinted(
  meta: MetaStore,
  store: BlockStore,
  source: RandomSource,
  base: Version,
  actions: Uint8Array,
  buffers: BufferPool,
  inFlight: number,
  signal?: AbortSignal,
  onProgress?: (bytes: number) => void,
): Promise<number> {
  const blockSize = buffers.bufferSize;
  const size = source.size;
  const baseBlocks = async function* () {
    for await (const page of meta.blockPages(base.uid)) {
      for (const row of page) {
        const a = actions[row.idx];
        if (row.idx < actions.length && (a === KEEP || a === DISCARD)) yield { row, discard: a === DISCARD };
      }
    }
  };
  let verified = 0;
  let wrong = 0;
  let first: { idx: number; discard: boolean } | undefined;
  const results = mapOrdered(
    baseBlocks(),
    inFlight,
    ({ row, discard }) =>
      buffers.with(async (buf) => {
        const length = blockLength(row.idx, size, blockSize);
        const data = await source.read(row.idx * blockSize, length, buf);
        let ok: boolean;
        if (discard) ok = isZero(data);
        else if (row.size !== length)
          ok = false; // KEEP only where the lengths agree (plan.ts)
        else ok = row.checksum === null ? isZero(data) : (await store.digest(data)) === row.checksum;
        return { idx: row.idx, discard, ok, length };
      }),
    signal,
  );
  let seen = 0;
  for await (const r of results) {
    seen++;
    onProgress?.(r.length);
    if (r.ok) verified++;
    else {
      wrong++;
      first ??= { idx: r.idx, discard: r.discard };
    }
  }
  // A base block list without an entry for a kept block: the base is damaged, not the hints.
  let expected = 0;
  for (const a of actions) if (a === KEEP || a === DISCARD) expected++;
  const discardedBeyondBase = countDiscardedBeyond(actions, base, blockSize);
  if (seen + discardedBeyondBase < expected) {
    throw new IntegrityError(
      `base version ${base.uid} lacks entries for ${expected - seen - discardedBeyondBase} blocks; run 'backy scrub ${base.uid}'`,
    );
  }
  verified += await verifyDiscardedBeyond(source, base, actions, buffers, (idx) => {
    wrong++;
    first ??= { idx, discard: true };
  });
  if (first) {
    const f = first;
    throw new InputError(
      `--verify-unhinted: ${wrong} block(s) are not what the hints say (first: block ${f.idx}, offset ${f.idx * blockSize}, ` +
        (f.discard
          ? 'not zeros although discarded'
          : `differs from base ${base.uid} although no hint covers it`) +
        `); ${advice(base)}`,
    );
  }
  return verified;
}

/** Discarded blocks past the base's end have no base entry: counted here, checked in verifyDiscardedBeyond. */
function countDiscardedBeyond(actions: Uint8Array, base: Version, blockSize: number): number {
  let n = 0;
  for (let i = Math.ceil(base.sizeBytes / blockSize); i < actions.length; i++)
    if (actions[i] === DISCARD) n++;
  return n;
}

async function verifyDiscardedBeyond(
  source: RandomSource,
  base: Version,
  actions: Uint8Array,
  buffers: BufferPool,
  onWrong: (idx: number) => void,
): Promise<number> {
  const blockSize = buffers.bufferSize;
  let verified = 0;
  for (let i = Math.ceil(base.sizeBytes / blockSize); i < actions.length; i++) {
    if (actions[i] !== DISCARD) continue;
    const zero = await buffers.with(async (buf) =>
      isZero(await source.read(i * blockSize, blockLength(i, source.size, blockSize), buf)),
    );
    if (zero) verified++;
    else onWrong(i);
  }
  return verified;
}
