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
import { FANOUT, LEAF } from '../../src/meta/page-tree.js';
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
    pages: query(sb, 'SELECT * FROM pages ORDER BY id'),
    puts: query(sb, 'SELECT * FROM block_puts ORDER BY version_uid, idx'),
    objects: query(sb, 'SELECT checksum, stored_size, valid, refs FROM objects ORDER BY checksum'),
    leases: query(sb, 'SELECT * FROM leases ORDER BY id'),
  });
}

/**
 * The block list of a version: checksum (null when sparse) and validity (its object's), by
 * index; blocks with no entry are left out. Read from the tree of pages (src/meta/page-tree.ts)
 * and an incomplete version's pending entries.
 */
export function blockRows(
  sb: Sandbox,
  uid: string,
): { idx: number; checksum: string | null; valid: number }[] {
  const [v] = query<{ root: string | null; listed: number; size_bytes: number; block_size: number }>(
    sb,
    'SELECT root, listed, size_bytes, block_size FROM versions WHERE uid = ?',
    uid,
  );
  if (!v) return [];
  const n = Math.ceil(v.size_bytes / v.block_size);
  const entries = (id: number): number[] =>
    JSON.parse(
      query<{ entries: string }>(sb, 'SELECT entries FROM pages WHERE id = ?', id)[0].entries,
    ) as number[];
  const ids: number[] = new Array<number>(n).fill(-1);
  const root = JSON.parse(v.root ?? '[]') as number[];
  for (let idx = 0; idx < Math.min(n, v.listed); idx++) {
    const k = Math.floor(idx / LEAF);
    const interior = root[Math.floor(k / FANOUT)] ?? -1;
    const leaf = interior > 0 ? (entries(interior)[k % FANOUT] ?? -1) : interior;
    ids[idx] = leaf > 0 ? (entries(leaf)[idx % LEAF] ?? -1) : leaf;
  }
  for (const r of query<{ leaf: number; page_id: number }>(
    sb,
    'SELECT leaf, page_id FROM leaf_puts WHERE version_uid = ?',
    uid,
  )) {
    const e = r.page_id > 0 ? entries(r.page_id) : new Array<number>(LEAF).fill(0);
    e.forEach((id, j) => {
      if (r.leaf * LEAF + j < n) ids[r.leaf * LEAF + j] = id;
    });
  }
  for (const r of query<{ idx: number; object_id: number }>(
    sb,
    'SELECT idx, object_id FROM block_puts WHERE version_uid = ?',
    uid,
  )) {
    if (r.idx < n) ids[r.idx] = r.object_id;
  }
  const out: { idx: number; checksum: string | null; valid: number }[] = [];
  ids.forEach((id, idx) => {
    if (id === 0) out.push({ idx, checksum: null, valid: 1 });
    else if (id > 0) {
      const [o] = query<{ checksum: string; valid: number }>(
        sb,
        'SELECT checksum, valid FROM objects WHERE id = ?',
        id,
      );
      if (o) out.push({ idx, checksum: o.checksum, valid: o.valid });
    }
  });
  return out;
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
