/**
 * Small real file systems for faults that need one: a full disk (ENOSPC), a read-only mount
 * (EROFS). Mounting needs root; without it, tryMountTmpfs says why, for the test to skip.
 */
import { execFileSync } from 'node:child_process';

/** Mounts a tmpfs of `size` (e.g. '64k') on `dir`; undefined on success, else why not. */
export function tryMountTmpfs(
  dir: string,
  size: string,
  opts: { readOnly?: boolean } = {},
): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: tmpfs mounts need root';
  const o = `size=${size},mode=0700${opts.readOnly ? ',ro' : ''}`;
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', o, 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (err) {
    return `cannot mount a tmpfs here: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`;
  }
}

export function umount(dir: string): void {
  try {
    execFileSync('umount', [dir], { stdio: 'pipe' });
  } catch {
    // not mounted
  }
}
