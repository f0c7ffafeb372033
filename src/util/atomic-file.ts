/**
 * Durable, atomic file writes: a temp file in the same directory, written, fsynced, renamed
 * over the final name, and the directory fsynced. After a crash the path holds the old
 * content or the new, never a part. Temp names start with '.tmp-': the data directory's
 * cleanup recognises and sweeps them (DirBackend.listTemp).
 */
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export interface AtomicWriteOptions {
  /** The file's mode, whatever the umask. Default 0o600. */
  mode?: number;
  /**
   * Refuse an existing path (an error with code EEXIST), even one created meanwhile by
   * another writer. The name is taken only once the content is durable, so a crash leaves at
   * worst an empty file under it.
   */
  exclusive?: boolean;
  /**
   * The directory fsync that makes the rename durable: 'sync' (default) fails if it fails;
   * 'best-effort' ignores a file system that refuses it; 'defer' leaves it to the caller
   * (who must fsync the directory before relying on the file, e.g. with syncDir).
   */
  dirSync?: 'sync' | 'best-effort' | 'defer';
}

/**
 * Writes `data` to `path` atomically and durably. The parent directory must exist. Any
 * error removes the temp file and is thrown as it came (an errno error), for the caller to
 * word.
 */
export async function writeFileAtomic(
  path: string,
  data: string | Buffer | readonly Buffer[] | AsyncIterable<Buffer>,
  opts: AtomicWriteOptions = {},
): Promise<void> {
  const staged = await stageFileAtomic(path, data, opts);
  await staged.commit();
}

/**
 * The first half of writeFileAtomic: the content is written to the temp file (the caller may
 * reuse `data` once this resolves); commit() then fsyncs it, renames it over `path` and fsyncs
 * the directory as `dirSync` says. A failed commit removes the temp file.
 */
export async function stageFileAtomic(
  path: string,
  data: string | Buffer | readonly Buffer[] | AsyncIterable<Buffer>,
  opts: AtomicWriteOptions = {},
): Promise<{ commit(): Promise<void> }> {
  const { mode = 0o600, exclusive = false, dirSync = 'sync' } = opts;
  const dir = dirname(path);
  const tmp = join(dir, `.tmp-${basename(path).slice(0, 40)}-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
  try {
    await fh.chmod(mode);
    if (typeof data === 'string' || Buffer.isBuffer(data)) await fh.writeFile(data);
    else if (Symbol.asyncIterator in data) for await (const chunk of data) await writeAll(fh, [chunk]);
    else await writeAll(fh, data);
  } catch (err) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw err;
  }
  const commit = async (): Promise<void> => {
    try {
      try {
        // Content first, then the name: no crash can leave a partial file under the final name.
        await fh.sync();
      } catch (err) {
        await fh.close().catch(() => {});
        throw err;
      }
      await fh.close();
      if (exclusive) {
        // rename() replaces whatever is there; taking the name with O_EXCL first makes the
        // refusal atomic against another writer, on every file system (link() is not).
        const taken = await open(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
        await taken.close();
        try {
          await rename(tmp, path);
        } catch (err) {
          await unlink(path).catch(() => {});
          throw err;
        }
      } else await rename(tmp, path);
    } catch (err) {
      await unlink(tmp).catch(() => {});
      throw err;
    }
    if (dirSync === 'sync') await syncDir(dir);
    else if (dirSync === 'best-effort') await syncDir(dir).catch(() => {});
  };
  return { commit };
}

/** fsyncs a directory: makes the names created, renamed or removed in it durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function writeAll(fh: Awaited<ReturnType<typeof open>>, data: readonly Buffer[]): Promise<void> {
  let buffers = data.filter((b) => b.length > 0);
  while (buffers.length > 0) {
    const { bytesWritten } = await fh.writev(buffers);
    buffers = advance(buffers, bytesWritten);
  }
}

/** What writev has not written yet: it may write less than asked. */
function advance(buffers: Buffer[], written: number): Buffer[] {
  const rest: Buffer[] = [];
  for (const b of buffers) {
    if (written >= b.length) {
      written -= b.length;
      continue;
    }
    rest.push(written > 0 ? b.subarray(written) : b);
    written = 0;
  }
  return rest;
}
