/**
 * Scrub: pick blocks of a version (all, or each independently with probability PERCENT/100,
 * at least one) -> fetch, decode, rehash (BlockStore.get verifies) -> record damage.
 * Deep scrub also reads the same range of a source and compares it with the stored block
 * (by checksum: the stored block verified against the same checksum), sparse blocks included.
 *
 * A missing object, a wrong size or a wrong checksum marks the object, every block entry that
 * references it and every version holding such an entry invalid (MetaStore.markObjectInvalid);
 * the scrub keeps going. A difference from the source fails the scrub but invalidates nothing:
 * the source may be what changed.
 *
 * Validity follows objects: an object marked damaged that this scrub reads and verifies (it was
 * repaired: stored again, or its file put back) is sound again, and so is every version, of any
 * name, whose only problem it was (MetaStore.objectsSound): no scrub per version is needed. A
 * partial scrub contributes only what it read: a version becomes valid through it only when
 * every block entry it had marked invalid names an object verified sound since (by this scrub
 * or an earlier one, or stored again by a backup); an entry it did not pick keeps it invalid. A
 * full scrub that finds every block sound also makes valid a version whose problem was not an
 * object (its objects rows, MetaStore.revalidateVersion).
 *
 * Memory: blocksInFlight() blocks in flight, each in a reused buffer of a fixed BufferPool
 * (decoding and verification on the store's CodecPool workers), one page of the block list, one byte
 * per block for the pick map and the set of distinct checksums already verified in this run
 * (read once each).
 *
 * The caller holds the version (core/lease.ts holdVersion). If it is removed anyway (rm
 * --force), its block list has gaps from then on: the scrub fails saying so and takes no gap for damage.
 */
import { blockCount, blockLength, isZero } from '../blocks/blocks.js';
import { CorruptBlockError, InputError, MissingBlockError } from '../errors.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import type { RandomSource } from '../source/source.js';
import { blocksWithData } from '../blocks/allocation.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { BufferPool, blocksInFlight } from '../util/buffer-pool.js';
import { mapOrdered } from '../util/concurrency.js';
import { removalCheck } from './lease.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

export interface ScrubProblem {
  idx: number;
  checksum: string | null;
  /** 'damaged': stored block missing or corrupt; 'differs': does not match the source. */
  kind: 'damaged' | 'differs';
  reason: string;
}

export interface ScrubResult {
  /** Blocks in the version. */
  blocks: number;
  /** Blocks picked and checked. */
  checked: number;
  /** Picked blocks whose stored data is missing or damaged. */
  bad: number;
  /** Picked blocks that differ from the source (deep scrub). */
  differing: number;
  problems: ScrubProblem[];
  /** Versions marked invalid because of damage found here (this one included). */
  versionsAffected: string[];
  /** True when the scrubbed version was invalid and is valid again. */
  revalidated: boolean;
  /**
   * Versions made valid again because objects marked damaged verified sound here (the scrubbed
   * one among them when that was its only problem).
   */
  versionsRevalidated: string[];
  /** Why a full clean scrub of an invalid version could not make it valid. */
  notRevalidated?: string;
}

export interface ScrubOptions {
  meta: MetaStore;
  store: BlockStore;
  version: Version;
  /** 0 < percent <= 100; 100 checks every block. */
  percent: number;
  /** Deep scrub: compare with this source. Its size must equal the version's. */
  source?: RandomSource;
  progress?: ProgressReporter;
  /** Uniform in [0, 1); injectable for tests. */
  random?: () => number;
  /** Problems kept in the result (all are counted). */
  maxProblems?: number;
  /** Stops the scrub (SIGINT): it rejects with the signal's reason; damage found so far stays recorded. */
  signal?: AbortSignal;
  /** Record damage and revalidate (default). Off for a read-only store: report only. */
  record?: boolean;
}

/** Which blocks to check: each independently with probability percent/100; never none. */
export function pickBlocks(n: number, percent: number, random: () => number = Math.random): Uint8Array {
  const picks = new Uint8Array(n);
  if (n === 0) return picks;
  if (percent >= 100) return picks.fill(1);
  let any = false;
  for (let i = 0; i < n; i++) {
    if (random() * 100 < percent) {
      picks[i] = 1;
      any = true;
    }
  }
  if (!any) picks[Math.min(n - 1, Math.floor(random() * n))] = 1;
  return picks;
}

export async function scrub(opts: ScrubOptions): Promise<ScrubResult> {
  const { meta, store, version, source } = opts;
  const progress = opts.progress ?? noProgress;
  const maxProblems = opts.maxProblems ?? 1000;
  const record = opts.record ?? true;
  const { sizeBytes: size, blockSize } = version;
  if (source && source.size !== size) {
    throw new InputError(
      `source ${source.name} is ${source.size} bytes but version ${version.uid} is ${size} bytes; deep scrub needs the same image`,
    );
  }
  const n = blockCount(size, blockSize);
  const full = opts.percent >= 100;
  const picks = pickBlocks(n, opts.percent, opts.random);
  const result: ScrubResult = {
    blocks: n,
    checked: 0,
    bad: 0,
    differing: 0,
    problems: [],
    versionsAffected: [],
    revalidated: false,
    versionsRevalidated: [],
  };
  /** Objects whose block entries were marked invalid and that verified sound in this run. */
  const soundAgain = new Set<string>();
  const affected = new Set<string>();
  const note = (p: ScrubProblem) => {
    if (result.problems.length < maxProblems) result.problems.push(p);
  };

  // Picked indices with their row, or undefined where the block list has a gap.
  async function* picked(): AsyncIterable<{ idx: number; row: BlockRow | undefined }> {
    let next = 0;
    for await (const row of meta.blocks(version.uid)) {
      if (row.idx >= n) break;
      for (; next < row.idx; next++) if (picks[next]) yield { idx: next, row: undefined };
      if (picks[row.idx]) yield { idx: row.idx, row };
      next = row.idx + 1;
    }
    for (; next < n; next++) if (picks[next]) yield { idx: next, row: undefined };
  }

  // A task holds at most one buffer at a time (the stored block, then the source's block).
  const inFlight = blocksInFlight(blockSize, store.inFlightBytes);
  const buffers = new BufferPool(inFlight, objectBufferSize(blockSize));

  // A checksum is fetched and verified once per run, however many blocks share it.
  const verified = new Map<string, Promise<string | undefined>>();
  const verify = (checksum: string, length: number): Promise<string | undefined> => {
    let p = verified.get(checksum);
    if (!p) {
      p = buffers
        .with((buf) => store.get(checksum, length, buf))
        .then(
          () => undefined,
          (err: unknown) => {
            if (err instanceof MissingBlockError || err instanceof CorruptBlockError) return err.message;
            throw err;
          },
        );
      verified.set(checksum, p);
    }
    return p;
  };

  // Deep scrub of a sparse file: its holes are known without reading them.
  const hasData = source?.dataExtents
    ? await blocksWithData(source.dataExtents(), size, blockSize)
    : undefined;

  let total = 0;
  for (let i = 0; i < n; i++) if (picks[i]) total += blockLength(i, size, blockSize);
  progress.start(source ? 'deep scrub' : 'scrub', total);
  try {
    const checked = mapOrdered(
      picked(),
      inFlight,
      async ({ idx, row }) => {
        const length = blockLength(idx, size, blockSize);
        let damage: string | undefined;
        if (!row) damage = 'no entry in the block list';
        else if (row.checksum !== null) damage = await verify(row.checksum, length);
        else if (row.size !== length) damage = `sparse entry of ${row.size} bytes, expected ${length}`;
        let differs: string | undefined;
        if (source && row && hasData?.[idx] === 0) {
          // The source block lies in a hole: zeros without a read. Backups never store a zero
          // block, so only a sparse entry matches.
          if (row.checksum !== null) differs = `differs from ${source.name} at offset ${idx * blockSize}`;
        } else if (source && row) {
          const same = await buffers.with(async (buf) => {
            const data = await source.read(idx * blockSize, length, buf);
            return row.checksum === null ? isZero(data) : (await store.digest(data)) === row.checksum;
          });
          if (!same) differs = `differs from ${source.name} at offset ${idx * blockSize}`;
        }
        return { idx, row, length, damage, differs };
      },
      opts.signal,
    );
    const marked = new Set<string>();
    // rm --force took the block list away: gaps that are no damage.
    const removed = removalCheck(
      meta,
      version.uid,
      `version ${version.uid} was removed while being scrubbed`,
    );
    for await (const r of checked) {
      result.checked++;
      progress.advance(r.length);
      if (r.damage === undefined && r.row?.checksum && !r.row.valid) soundAgain.add(r.row.checksum);
      if (r.damage !== undefined) {
        await removed.atBad(r.idx);
        result.bad++;
        note({ idx: r.idx, checksum: r.row?.checksum ?? null, kind: 'damaged', reason: r.damage });
        const checksum = r.row?.checksum ?? null;
        if (!record) {
          // read-only store: reported, recorded nowhere (versionsAffected stays empty)
        } else if (checksum !== null) {
          if (!marked.has(checksum)) {
            marked.add(checksum);
            for (const uid of await meta.markObjectInvalid(checksum)) affected.add(uid);
          }
        } else {
          // A gap or a malformed sparse entry: only this version is concerned (held invalid).
          if (r.row) await removed.atEnd();
          if (version.status === 'valid') await meta.setVersionStatus(version.uid, 'invalid');
          affected.add(version.uid);
        }
      }
      if (r.differs !== undefined) {
        result.differing++;
        note({ idx: r.idx, checksum: r.row?.checksum ?? null, kind: 'differs', reason: r.differs });
      }
    }
    if (result.bad > 0) await removed.atEnd();
  } finally {
    progress.stop();
  }
  result.versionsAffected = [...affected].sort();
  opts.signal?.throwIfAborted();

  if (record && soundAgain.size > 0) {
    result.versionsRevalidated = (await meta.objectsSound([...soundAgain])).sort();
    if (result.versionsRevalidated.includes(version.uid)) result.revalidated = true;
  }
  const pending = !result.revalidated && full && result.bad === 0 && version.status === 'invalid';
  if (pending && !record) {
    result.notRevalidated = 'the metadata database is read-only';
  } else if (pending) {
    const problem = await meta.revalidateVersion(version.uid);
    if (problem === undefined) {
      result.revalidated = true;
      result.versionsRevalidated = [...new Set([...result.versionsRevalidated, version.uid])].sort();
    } else result.notRevalidated = problem;
  }
  return result;
}
