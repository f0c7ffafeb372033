/**
 * A version's block list as the NBD server holds it: compact (33 bytes a block: 8.6 MB for a
 * 1 TiB image of 4 MiB blocks), loaded once and shared by every connection to the version.
 */
import { blockCount } from '../blocks/blocks.js';
import { CHECKSUM_RE } from '../blocks/hash.js';
import type { MetaStore, Version } from '../meta/meta-store.js';

// Block kinds in BlockTable; 0: no entry in the block list.
const SPARSE = 1;
const DATA = 2;
const ODD = 3; // a checksum that is not plain hex: kept as is, and fails verification on read

/** A version's block list, immutable once loaded. */
export class BlockTable {
  readonly n: number;
  readonly #kind: Uint8Array;
  readonly #sums: Buffer;
  readonly #odd = new Map<number, string>();

  private constructor(n: number) {
    this.n = n;
    this.#kind = new Uint8Array(n);
    this.#sums = Buffer.alloc(32 * n);
  }

  static async load(meta: MetaStore, version: Version): Promise<BlockTable> {
    const t = new BlockTable(blockCount(version.sizeBytes, version.blockSize));
    for await (const row of meta.blocks(version.uid)) {
      if (row.idx >= t.n) break;
      if (row.checksum === null) t.#kind[row.idx] = SPARSE;
      else if (CHECKSUM_RE.test(row.checksum)) {
        t.#kind[row.idx] = DATA;
        t.#sums.write(row.checksum, 32 * row.idx, 'hex');
      } else {
        t.#kind[row.idx] = ODD;
        t.#odd.set(row.idx, row.checksum);
      }
    }
    return t;
  }

  /** The block's checksum, null for a sparse block, undefined when the list has no entry. */
  get(idx: number): string | null | undefined {
    switch (this.#kind[idx]) {
      case SPARSE:
        return null;
      case DATA:
        return this.#sums.toString('hex', 32 * idx, 32 * idx + 32);
      case ODD:
        return this.#odd.get(idx);
      default:
        return undefined;
    }
  }

  isSparse(idx: number): boolean {
    return this.#kind[idx] === SPARSE;
  }
}
