/**
 * Data extents -> which blocks hold any data. A block no extent touches lies wholly in a hole:
 * it reads as zeros by definition and is sparse without a read. A block an extent touches even
 * by one byte is read (never assumed zero). One byte per block: 256 KiB for a 1 TiB image of
 * 4 MiB blocks, whatever the number of extents.
 */
import type { Extent } from '../source/extents.js';

/** 1 where block i holds data (or may), 0 where it lies wholly in a hole. */
export async function blocksWithData(
  extents: Iterable<Extent> | AsyncIterable<Extent>,
  size: number,
  blockSize: number,
): Promise<Uint8Array> {
  const n = Math.ceil(size / blockSize);
  const has = new Uint8Array(n);
  let last = -1;
  for await (const e of extents) {
    if (e.length <= 0) continue;
    if (e.offset < last) throw new Error(`data extents out of order at offset ${e.offset}`);
    last = e.offset + e.length;
    const first = Math.floor(e.offset / blockSize);
    const end = Math.min(n, Math.ceil(Math.min(e.offset + e.length, size) / blockSize));
    has.fill(1, first, end);
  }
  return has;
}
