/**
 * Test helpers that look inside a sandbox's store: its SQLite file (read-only, separate
 * connection) and its object files; and a spawned backy whose stdin the test feeds piece by
 * piece (a backup that is running for as long as the test wants).
 */
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import SQLite from 'better-sqlite3';
import { BIN } from './cli.js';
import type { Sandbox } from './cli.js';

/** Runs a query on the sandbox's database in a separate read-only connection. */
export function query<T = Record<string, unknown>>(sb: Sandbox, sql: string, ...params: unknown[]): T[] {
  const db = new SQLite(sb.dbPath, { readonly: true, timeout: 10_000 });
  try {
    return db.prepare(sql).all(...params) as T[];
  } finally {
    db.close();
  }
}

/** Every row of the metadata tables, for before/after comparisons. */
export function dumpDb(sb: Sandbox): string {
  return JSON.stringify({
    versions: query(sb, 'SELECT * FROM versions ORDER BY uid'),
    blocks: query(sb, 'SELECT * FROM blocks ORDER BY version_uid, idx'),
    objects: query(sb, 'SELECT checksum, stored_size, valid FROM objects ORDER BY checksum'),
    leases: query(sb, 'SELECT * FROM leases ORDER BY id'),
  });
}

/** The block list of a version: checksum (null when sparse) and validity, by index. */
export function blockRows(
  sb: Sandbox,
  uid: string,
): { idx: number; checksum: string | null; valid: number }[] {
  return query(sb, 'SELECT idx, checksum, valid FROM blocks WHERE version_uid = ? ORDER BY idx', uid);
}

export function objectPath(sb: Sandbox, checksum: string): string {
  return join(sb.dataDir, checksum.slice(0, 2), checksum.slice(2, 4), checksum);
}

/** Names of all object files (not temp files) in the data directory. */
export async function objectFiles(sb: Sandbox): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (depth < 2 && e.isDirectory()) await walk(join(dir, e.name), depth + 1);
      else if (depth === 2 && e.isFile() && !e.name.startsWith('.tmp-')) out.push(e.name);
    }
  };
  await walk(sb.dataDir, 0);
  return out.sort();
}

/** `backy -c cfg ...args` with a stdin the caller writes to and ends. */
export function spawnBacky(
  sb: Sandbox,
  args: string[],
): {
  child: ChildProcessWithoutNullStreams;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
} {
  const child = spawn(process.execPath, [BIN, '-c', sb.config, ...args], { cwd: sb.dir, stdio: 'pipe' });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdin.on('error', () => {});
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return { child, done };
}

/** Polls `cond` every 50 ms until it holds; fails after `ms`. */
export async function waitFor(
  what: string,
  cond: () => boolean | Promise<boolean>,
  ms = 20_000,
): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
