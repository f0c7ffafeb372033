/** Pure block arithmetic: no I/O. */

let zeroBuffer = Buffer.alloc(0);

/** One shared all-zero buffer at least `length` long, for comparisons and zero writes. */
export function zeros(length: number): Buffer {
  if (zeroBuffer.length < length) zeroBuffer = Buffer.alloc(length);
  return zeroBuffer.subarray(0, length);
}

export function isZero(data: Uint8Array): boolean {
  return Buffer.compare(data, zeros(data.length)) === 0;
}

export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/** Length of block `idx` of an image of `size` bytes (the last block may be short). */
export function blockLength(idx: number, size: number, blockSize: number): number {
  return Math.min(blockSize, size - idx * blockSize);
}
