/**
 * Where a backup reads from. A file or block device is random-access (hints work); stdin and
 * pipes are sequential: blocks come in order and the size is known only at the end.
 */
import { constants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { InputError, NotFoundError, BackyError, ioReason } from '../errors.js';
import { dataExtents, seekSupported } from './extents.js';
import type { Extent } from './extents.js';
import { isNbdUri } from '../nbd/client.js';
import { NbdSource } from './nbd-source.js';

export interface RandomSource {
  readonly kind: 'random';
  readonly name: string;
  readonly size: number;
  /**
   * Exactly `length` bytes at `offset`, or an error naming the source and offset. With `into`
   * (at least `length` bytes) the data lands there and the result is a view of it.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  /**
   * Where the source holds data, when it can tell (a sparse file; an NBD export's
   * base:allocation): ascending, non-overlapping extents; everything else reads as zeros and
   * need not be read. Undefined when the source cannot tell: then everything may hold data.
   */
  dataExtents?(): Iterable<Extent> | AsyncIterable<Extent>;
  close(): Promise<void>;
}

export interface StreamSource {
  readonly kind: 'stream';
  readonly name: string;
  /**
   * Consecutive chunks of `blockSize` bytes; only the last may be shorter. With `alloc`, each
   * chunk is a view of a buffer it returned (at least `blockSize` bytes; the caller frees it).
   */
  chunks(blockSize: number, alloc?: () => Promise<Buffer>): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

export type Source = RandomSource | StreamSource;

export async function openSource(path: string, stdin: Readable = process.stdin): Promise<Source> {
  if (path === '-') return streamSource('stdin', stdin);
  if (isNbdUri(path)) return NbdSource.open(path);
  let fh: FileHandle;
  try {
    fh = await open(path, constants.O_RDONLY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`source ${path} does not exist`);
    throw new InputError(`cannot open source ${path}: ${ioReason(err)}`);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory())
      throw new InputError(`source ${path} is a directory, not an image file or block device`);
    let size: number;
    if (st.isFile()) size = st.size;
    else if (st.isBlockDevice()) size = await blockDeviceSize(path, st.rdev);
    else {
      // A FIFO or character device: sequential. The stream owns the FileHandle and closes it.
      return streamSource(path, fh.createReadStream({ highWaterMark: 1 << 20 }));
    }
    return new FileSource(path, fh, size, st.isFile() && seekSupported(fh.fd));
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
}

/** A block device's size from sysfs (stat reports 0 for devices). */
export async function blockDeviceSize(path: string, rdev: number): Promise<number> {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 0x100000) & 0xfff) << 8);
  try {
    const sectors = Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim());
    return sectors * 512;
  } catch (err) {
    throw new BackyError(`cannot determine the size of block device ${path}: ${ioReason(err)}`);
  }
}

class FileSource implements RandomSource {
  readonly kind = 'random';
  readonly name: string;
  readonly size: number;
  readonly #fh: FileHandle;
  readonly dataExtents?: () => Iterable<Extent>;

  constructor(name: string, fh: FileHandle, size: number, sparse: boolean) {
    this.name = name;
    this.#fh = fh;
    this.size = size;
    // Regular files on a file system with SEEK_DATA: holes are known without reading them.
    if (sparse) this.dataExtents = () => dataExtents(this.#fh.fd, this.size);
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      let bytesRead: number;
      try {
        ({ bytesRead } = await this.#fh.read(buf, done, length - done, offset + done));
      } catch (err) {
        throw new BackyError(`cannot read ${this.name} at offset ${offset + done}: ${ioReason(err)}`);
      }
      if (bytesRead === 0) {
        throw new InputError(
          `${this.name} ended at offset ${offset + done}, expected ${this.size} bytes; did it shrink during the backup?`,
        );
      }
      done += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    await this.#fh.close();
  }
}

function streamSource(name: string, stream: Readable): StreamSource {
  return {
    kind: 'stream',
    name,
    async *chunks(blockSize: number, alloc?: () => Promise<Buffer>) {
      // Taken only when data arrives, so a stream that ends on a block boundary leaves none unused.
      const next = async () =>
        alloc ? (await alloc()).subarray(0, blockSize) : Buffer.allocUnsafe(blockSize);
      let block: Buffer | undefined;
      let filled = 0;
      for await (const piece of stream as AsyncIterable<Buffer>) {
        let pos = 0;
        while (pos < piece.length) {
          block ??= await next();
          const n = Math.min(piece.length - pos, blockSize - filled);
          piece.copy(block, filled, pos, pos + n);
          filled += n;
          pos += n;
          if (filled === blockSize) {
            yield block;
            block = undefined;
            filled = 0;
          }
        }
      }
      if (block && filled > 0) yield block.subarray(0, filled);
    },
    async close() {
      stream.destroy();
    },
  };
}
