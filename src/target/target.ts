/**
 * Where a restore writes: a regular file, a block device (written in place, never truncated),
 * or stdout ('-', sequential, zeros written out since a pipe cannot be sparse).
 */
import { constants } from 'node:fs';
import { open, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve, sep } from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { BackyError, InputError, ioReason } from '../errors.js';
import { blockDeviceSize } from '../source/source.js';

export interface Target {
  readonly name: string;
  /** Positional targets accept writes in any order and can leave holes; stdout cannot. */
  readonly positional: boolean;
  /** A new file this restore made (a restore that fails or is interrupted removes it again). */
  readonly created: boolean;
  write(offset: number, data: Buffer): Promise<void>;
  /** Extends a file to its full size (sparse tail) and makes everything durable. */
  finish(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Refuses a restore TARGET (or export FILE) that is backy's own metadata database (or its
 * -wal, -shm or -journal file), the data directory or anything inside it: writing there would
 * destroy the store it reads from. Symlinks and hard links are seen through (realpath,
 * device+inode).
 */
export async function checkTargetOutsideStore(
  path: string,
  store: { dataDir?: string; dbPath?: string },
  what = 'restore target',
): Promise<void> {
  if (path === '-') return;
  const target = await canonical(path);
  // No data directory: the blocks are remote (S3).
  const dataDir = store.dataDir === undefined ? undefined : await canonical(store.dataDir);
  if (
    dataDir !== undefined &&
    (target === dataDir || target.startsWith(dataDir.endsWith(sep) ? dataDir : dataDir + sep))
  ) {
    throw new InputError(
      `${what} ${path} is inside backy's data directory ${store.dataDir}; choose a file outside the store`,
    );
  }
  if (store.dbPath === undefined) return;
  const dbFiles = ['', '-wal', '-shm', '-journal'].map((s) => store.dbPath + s);
  const targetStat = await stat(target).catch(() => undefined);
  for (const db of dbFiles) {
    const same =
      target === (await canonical(db)) ||
      (targetStat !== undefined &&
        (await stat(db).then(
          (st) => st.dev === targetStat.dev && st.ino === targetStat.ino,
          () => false,
        )));
    if (same) {
      throw new InputError(
        `${what} ${path} is backy's metadata database ${db}; choose a file outside the store`,
      );
    }
  }
}

/** The absolute path with symlinks resolved as far as the path exists. */
async function canonical(path: string): Promise<string> {
  const abs = resolve(path);
  try {
    return await realpath(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(await canonical(parent), basename(abs));
  }
}

export async function openTarget(
  path: string,
  size: number,
  opts: { force: boolean; store?: { dataDir?: string; dbPath?: string } },
): Promise<Target> {
  if (path === '-') return new StdoutTarget();
  let st: Stats | undefined;
  try {
    st = await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new InputError(`cannot use restore target ${path}: ${ioReason(err)}`);
    }
  }
  let flags: number;
  let kind: 'file' | 'device';
  if (!st) {
    const link = await readlink(path).catch(() => undefined);
    if (link !== undefined) {
      // GNU cp's choice: creating a file wherever a dangling link points is how a restore
      // would land somewhere unexpected (or in a file that appears there later).
      throw new InputError(
        `restore target ${path} is a symlink to ${link}, which does not exist; backy does not write through dangling symlinks: name the file itself`,
      );
    }
    flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL;
    kind = 'file';
  } else if (st.isDirectory()) {
    throw new InputError(`restore target ${path} is a directory; name a file or block device`);
  } else if (st.isBlockDevice()) {
    const devSize = await blockDeviceSize(path, st.rdev);
    if (devSize < size) {
      throw new InputError(`block device ${path} holds ${devSize} bytes, the version needs ${size}`);
    }
    flags = constants.O_WRONLY;
    kind = 'device';
  } else if (st.isFile()) {
    if (!opts.force) throw new InputError(`restore target ${path} exists; use --force to overwrite it`);
    // Truncated only after the opened file is checked below: never a store file, even briefly.
    flags = constants.O_WRONLY;
    kind = 'file';
  } else {
    throw new InputError(`restore target ${path} is neither a regular file nor a block device`);
  }
  let fh: FileHandle;
  try {
    fh = await open(path, flags, 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      throw new InputError(
        `restore target ${path} appeared while backy was opening it; run the restore again`,
      );
    }
    throw new InputError(`cannot open restore target ${path}: ${ioReason(err)}`);
  }
  try {
    if (opts.store) await checkOpenedOutsideStore(fh, path, opts.store);
    if (st?.isFile()) await fh.truncate(0);
  } catch (err) {
    await fh.close().catch(() => {});
    if (err instanceof BackyError) throw err;
    throw new InputError(`cannot use restore target ${path}: ${ioReason(err)}`);
  }
  return new FileTarget(path, fh, size, kind, !st);
}

/**
 * The same check as checkTargetOutsideStore, on the file actually opened: its device and
 * inode against whatever database files exist now (SQLite creates -wal and -shm when the
 * database is opened, after a check by path could run), and its real path (as the kernel
 * names the open file) against the data directory.
 */
async function checkOpenedOutsideStore(
  fh: FileHandle,
  path: string,
  store: { dataDir?: string; dbPath?: string },
): Promise<void> {
  const st = await fh.stat();
  for (const suffix of store.dbPath === undefined ? [] : ['', '-wal', '-shm', '-journal']) {
    const db = store.dbPath + suffix;
    const dbSt = await stat(db).catch(() => undefined);
    if (dbSt && dbSt.dev === st.dev && dbSt.ino === st.ino) {
      throw new InputError(
        `restore target ${path} is backy's metadata database ${db}; choose a file outside the store`,
      );
    }
  }
  const real = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => undefined);
  if (store.dataDir !== undefined && real !== undefined && real.startsWith('/')) {
    const dataDir = await canonical(store.dataDir);
    if (real === dataDir || real.startsWith(dataDir.endsWith(sep) ? dataDir : dataDir + sep)) {
      throw new InputError(
        `restore target ${path} is inside backy's data directory ${store.dataDir}; choose a file outside the store`,
      );
    }
  }
}

/**
 * Bytes written between background flushes. With plenty of RAM the kernel starts writing back
 * only at the end (dirty_background_ratio), and finish()'s fsync would then wait for the whole
 * image while the disk idled during the restore; flushing as we go overlaps the two.
 */
const FLUSH_BYTES = 256 << 20;

class FileTarget implements Target {
  readonly positional = true;
  readonly name: string;
  readonly created: boolean;
  readonly #fh: FileHandle;
  readonly #size: number;
  readonly #kind: 'file' | 'device';
  #unflushed = 0;
  #flushing: Promise<void> | undefined;
  #flushError: unknown;

  constructor(name: string, fh: FileHandle, size: number, kind: 'file' | 'device', created: boolean) {
    this.name = name;
    this.created = created;
    this.#fh = fh;
    this.#size = size;
    this.#kind = kind;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      try {
        const { bytesWritten } = await this.#fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      } catch (err) {
        throw new BackyError(`cannot write ${this.name} at offset ${offset + done}: ${ioReason(err)}`);
      }
    }
    this.#unflushed += data.length;
    if (this.#unflushed >= FLUSH_BYTES && !this.#flushing) {
      this.#unflushed = 0;
      this.#flushing = this.#fh
        .datasync()
        .catch((err: unknown) => {
          this.#flushError ??= err;
        })
        .finally(() => {
          this.#flushing = undefined;
        });
    }
  }

  async finish(): Promise<void> {
    try {
      await this.#flushing;
      if (this.#flushError) throw this.#flushError;
      if (this.#kind === 'file') await this.#fh.truncate(this.#size);
      await this.#fh.sync();
    } catch (err) {
      throw new BackyError(`cannot finish writing ${this.name}: ${ioReason(err)}`);
    }
  }

  async close(): Promise<void> {
    await this.#fh.close();
  }
}

class StdoutTarget implements Target {
  readonly name = 'stdout';
  readonly positional = false;
  readonly created = false;
  #offset = 0;

  async write(offset: number, data: Buffer): Promise<void> {
    if (offset !== this.#offset)
      throw new Error(`stdout target written out of order (${offset} != ${this.#offset})`);
    this.#offset += data.length;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new BackyError(`cannot write to stdout: ${ioReason(err)}`));
      process.stdout.once('error', onError);
      process.stdout.write(data, (err) => {
        process.stdout.off('error', onError);
        if (err) onError(err);
        else resolve();
      });
    });
  }

  async finish(): Promise<void> {}
  async close(): Promise<void> {}
}
