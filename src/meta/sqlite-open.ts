/**
 * Opening the SQLite file, read-write (creating it) or, when it exists and cannot be written,
 * read-only: a store on a snapshot or a recovery mount must still be listed and restored from.
 *
 * A WAL database on read-only media: SQLite reads it read-only only if its -wal and -shm files
 * exist (a reader left them, or a writer crashed), or if it is opened as `immutable`. After a
 * clean close they are gone, so then it is opened `file:…?immutable=1` (URI filenames are off
 * in better-sqlite3 unless SQLITE_USE_URI=1 is set when the addon first loads). Immutable skips
 * the -wal file, so it is used only when there is no -wal with content, and only on a read-only
 * file system (EROFS), where nobody can change the file under us; a file that is merely not
 * writable for this user (EACCES) may have a writer, so it is opened read-only without it.
 */
import { accessSync, closeSync, constants, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import SQLite from 'better-sqlite3';
import { BackyError, ioReason } from '../errors.js';
import { mkdirpSync } from '../util/mkdirp.js';

const BUSY_TIMEOUT_MS = 60_000;

/** Why the file cannot be written (EROFS, EACCES...), or undefined when it can or does not exist. */
function notWritable(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') return code;
    return undefined; // absent, or not a file (EISDIR...): creating it says what is wrong
  }
  closeSync(fd);
  // SQLite also creates -wal and -shm beside the file: a read-only directory makes a reader too.
  try {
    accessSync(dirname(path), constants.W_OK);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EACCES';
  }
  return undefined;
}

function fileSize(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch {
    return undefined;
  }
}

function construct(name: string, readonly: boolean): SQLite.Database {
  // Only names starting with 'file:' are URIs; every other name here is an absolute path.
  const before = process.env.SQLITE_USE_URI;
  process.env.SQLITE_USE_URI = '1';
  try {
    return new SQLite(name, { timeout: BUSY_TIMEOUT_MS, readonly, fileMustExist: readonly });
  } finally {
    if (before === undefined) delete process.env.SQLITE_USE_URI;
    else process.env.SQLITE_USE_URI = before;
  }
}

/** SQLite opens lazily: a WAL database it cannot read fails only at the first query. */
function probe(sqlite: SQLite.Database): SQLite.Database {
  try {
    sqlite.prepare('SELECT count(*) FROM sqlite_master').get();
    return sqlite;
  } catch (err) {
    sqlite.close();
    throw err;
  }
}

export function openSqlite(path: string): { sqlite: SQLite.Database; readOnly: boolean } {
  const why = notWritable(path);
  if (why === undefined) {
    try {
      mkdirpSync(dirname(path), 0o700);
      closeSync(openSync(path, 'a', 0o600));
    } catch (err) {
      throw new BackyError(`cannot create metadata database ${path}: ${ioReason(err)}`);
    }
    try {
      const sqlite = construct(path, false);
      sqlite.pragma('journal_mode = WAL');
      // WAL + NORMAL: consistent after any crash; a power loss may drop the last commits, which
      // leaves the running version incomplete (never wrongly valid). Objects are fsynced themselves.
      sqlite.pragma('synchronous = NORMAL');
      sqlite.pragma('foreign_keys = ON');
      return { sqlite, readOnly: false };
    } catch (err) {
      throw new BackyError(`cannot open metadata database ${path}: ${(err as Error).message}`);
    }
  }
  const cause = why === 'EROFS' ? 'read-only file system' : 'no write permission';
  try {
    return { sqlite: probe(construct(path, true)), readOnly: true };
  } catch (err) {
    const walSize = fileSize(`${path}-wal`) ?? 0;
    if (why !== 'EROFS' || walSize > 0) {
      throw new BackyError(
        `cannot open read-only metadata database ${path} (${cause}): ${(err as Error).message}` +
          (walSize > 0 ? `; its write-ahead log ${path}-wal holds commits that need a writable copy` : ''),
      );
    }
  }
  try {
    const uri = `file:${encodeURI(path).replace(/[?#]/g, encodeURIComponent)}?immutable=1`;
    return { sqlite: probe(construct(uri, true)), readOnly: true };
  } catch (err) {
    throw new BackyError(
      `cannot open read-only metadata database ${path} (${cause}): ${(err as Error).message}`,
    );
  }
}
