/**
 * Reads a small text input (config file, hint file) with an upper bound on its size, so that
 * a wrong path such as /dev/zero or a multi-gigabyte image given by mistake fails at once with
 * a clear message instead of filling memory (fs.readFile reads a device until it ends).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

export class TooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`larger than ${limit} bytes`);
  }
}

const CHUNK = 1 << 20;

/** The file's text (UTF-8); throws TooLargeError past `limit` bytes, or the OS error. */
export async function readTextLimited(path: string, limit: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const parts: Buffer[] = [];
    let total = 0;
    while (true) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, limit + 1 - total));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      parts.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new TooLargeError(limit);
    }
    return Buffer.concat(parts).toString('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * The file's bytes in chunks, for inputs parsed as a stream (hint files); throws
 * TooLargeError past `limit` bytes, or the OS error. Each chunk is valid only until the next
 * one is asked for (one buffer is reused).
 */
export async function* readChunksLimited(fh: FileHandle, limit: number): AsyncGenerator<Buffer> {
  const buf = Buffer.allocUnsafe(CHUNK);
  let total = 0;
  while (true) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, null);
    if (bytesRead === 0) return;
    total += bytesRead;
    if (total > limit) throw new TooLargeError(limit);
    yield buf.subarray(0, bytesRead);
  }
}

export function readTextLimitedSync(path: string, limit: number): string {
  const fd = openSync(path, 'r');
  try {
    const parts: Buffer[] = [];
    let total = 0;
    while (true) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, limit + 1 - total));
      const bytesRead = readSync(fd, buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      parts.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > limit) throw new TooLargeError(limit);
    }
    return Buffer.concat(parts).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
