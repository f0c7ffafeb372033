/**
 * `mkdir -p` without Node's `recursive: true`, which spins forever on paths under /proc
 * (mkdir there fails with ENOENT although the parent exists, and Node 20 retries without end).
 * Creates missing parents one at a time; a parent that still cannot be created is an error.
 */
import { mkdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

export function mkdirpSync(path: string, mode = 0o700): void {
  try {
    mkdirSync(path, { mode });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    const parent = dirname(path);
    if (code !== 'ENOENT' || parent === path) throw err;
    mkdirpSync(parent, mode);
    try {
      mkdirSync(path, { mode });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
    }
  }
}

/** Like `mkdir(path, { recursive: true })`: returns the first directory created, if any. */
export async function mkdirp(path: string, mode = 0o700): Promise<string | undefined> {
  try {
    await mkdir(path, { mode });
    return path;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return undefined;
    const parent = dirname(path);
    if (code !== 'ENOENT' || parent === path) throw err;
    const first = await mkdirp(parent, mode);
    try {
      await mkdir(path, { mode });
    } catch (again) {
      if ((again as NodeJS.ErrnoException).code !== 'EEXIST') throw again;
      return first;
    }
    return first ?? path;
  }
}
