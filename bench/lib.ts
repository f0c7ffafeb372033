/**
 * What the benchmarks share: running commands timed under /usr/bin/time, medians, sizes and
 * Markdown tables.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnCollect } from '../test/lib/spawn.js';

export const MB = 1e6;

export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new Error(`--size: cannot parse '${s}' (e.g. 2G, 512M, 8G)`);
  const exp = ' KMGT'.indexOf(m[2].toUpperCase() || ' ');
  return Math.round(Number(m[1]) * 1024 ** exp);
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export const lastLine = (s: string) => s.trim().split('\n').pop()!;

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

/** An untimed command (setup, sync); rejects on a non-zero exit with its stderr. */
export async function run(cmd: string, argv: string[], opts: RunOptions = {}): Promise<string> {
  const r = await spawnCollect(cmd, argv, opts);
  if (r.code !== 0) throw new Error(`${cmd} ${argv.join(' ')} exited ${r.code}:\n${r.stderr.slice(-2000)}`);
  return r.stdout.toString();
}

/** A command whose output is dropped, timed here; resolves to its wall time in seconds, rejects on a non-zero exit with its stderr. */
export function wallTime(cmd: string, argv: string[]): Promise<number> {
  const start = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve((performance.now() - start) / 1000)
        : reject(new Error(`${cmd} exited ${code}: ${err}`)),
    );
  });
}

export interface Run {
  wall: number;
  cpu: number;
  rssMB: number;
  stdout: string;
}

/**
 * Returns a function running a command under /usr/bin/time (its report goes to a file in
 * `dir`): wall time measured here, CPU time (user+sys) and peak RSS of the child, worker
 * threads included. Rejects on a non-zero exit with its stderr.
 */
export function timer(dir: string) {
  const timeFile = join(dir, `.time-${process.pid}`);
  return async (cmd: string, argv: string[], opts: RunOptions = {}): Promise<Run> => {
    const start = performance.now();
    const stdout = await run('/usr/bin/time', ['-f', '%U %S %M', '-o', timeFile, cmd, ...argv], opts);
    const wall = (performance.now() - start) / 1000;
    const [user, sys, rssKiB] = lastLine(await readFile(timeFile, 'utf8'))
      .split(' ')
      .map(Number);
    return { wall, cpu: user + sys, rssMB: (rssKiB * 1024) / MB, stdout };
  };
}

export async function installed(cmd: string): Promise<boolean> {
  try {
    await run('sh', ['-c', 'command -v "$0"', cmd]);
    return true;
  } catch {
    return false;
  }
}

/** Bytes on disk under a path (allocated blocks, like du). */
export async function diskUsage(path: string): Promise<number> {
  const out = await run('du', ['-s', '-B1', path]);
  return Number(out.split('\t')[0]);
}

export async function readAll(path: string): Promise<void> {
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) void chunk;
}

/** A Markdown table: the first `left` columns aligned left, the rest (numbers) right. */
export function table(header: string[], rows: string[][], left = 2): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    `| ${r.map((c, i) => (i < left ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)];
}
