/**
 * The data extents of a regular file, from lseek(2) SEEK_DATA/SEEK_HOLE (the backy-seek addon in
 * native/seek; Node has no lseek). Everything outside them is a hole and reads as zeros, so a
 * backup never needs to read it. Extents come in ascending order, one at a time: a file with
 * millions of extents costs no memory here.
 *
 * Not every file system supports SEEK_DATA; some report the whole file as data (which is
 * correct, just no help). Where lseek fails with EINVAL or the addon is not built, there are
 * no extents to give: the caller reads everything, as before.
 */
import { createRequire } from 'node:module';

export interface Extent {
  offset: number;
  length: number;
}

interface SeekAddon {
  seekData(fd: number, offset: number): number;
  seekHole(fd: number, offset: number): number;
}

let addon: SeekAddon | null | undefined;

/** The addon, or null when it is not built (then `seekSupported()` says why). */
export function seekAddon(): SeekAddon | null {
  if (addon === undefined) {
    try {
      addon = createRequire(import.meta.url)('backy-seek') as SeekAddon;
    } catch {
      addon = null;
    }
  }
  return addon;
}

/**
 * Whether `fd` (a regular file) can tell its holes: false when the addon is missing or the file
 * system refuses SEEK_DATA.
 */
export function seekSupported(fd: number): boolean {
  const a = seekAddon();
  if (!a) return false;
  try {
    a.seekData(fd, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Data extents of the first `size` bytes of `fd`, ascending. Synchronous system calls, each
 * fast (the file system looks up its extent tree); a generator so the caller pulls as it goes.
 */
export function* dataExtents(fd: number, size: number): Generator<Extent> {
  const a = seekAddon();
  if (!a) throw new Error('backy-seek addon is not available');
  let pos = 0;
  while (pos < size) {
    const data = a.seekData(fd, pos);
    if (data < 0 || data >= size) return;
    let hole = a.seekHole(fd, data);
    if (hole < 0 || hole > size) hole = size;
    yield { offset: data, length: hole - data };
    pos = hole;
  }
}
