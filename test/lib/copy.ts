/** Helpers for the `backy copy` tests (test/e2e/copy*.test.ts): sandboxes, runs, checks. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { BIN, Sandbox, assertSameBytes, runBacky } from './cli.js';
import { scribble, writeImage } from './image.js';

export const BS = 64 * 1024;
export const BLOCKS = 48;

const sandboxes: Sandbox[] = [];

/** Removes every sandbox made here (call in after()). */
export async function removeSandboxes(): Promise<void> {
  for (const sb of sandboxes.splice(0)) await sb.remove();
}

/**
 * A sandbox with 64 KiB blocks: SQLite (or `engine`) and a data directory, or the
 * [DataBackend] section `data` (e.g. s3ConfigLines).
 */
export async function copySandbox(opts: { engine?: string; data?: string[] } = {}): Promise<Sandbox> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine: opts.engine });
  sandboxes.push(sb);
  if (opts.data) {
    const engine = opts.engine ?? `sqlite:///${sb.dbPath}`;
    const lines = [
      '[DEFAULTS]',
      `block_size = ${BS}`,
      '[MetaBackend]',
      `engine = ${engine}`,
      ...opts.data,
      '',
    ];
    await writeFile(sb.config, lines.join('\n'));
  }
  return sb;
}

/** Encrypts `sb`'s store under a new key of its own ([DataBackend] is the config's last section). */
export async function withKey(sb: Sandbox): Promise<Sandbox> {
  const key = sb.path('store.key');
  const r = await runBacky(['key', 'create', key]);
  assert.equal(r.code, 0, r.stderr);
  await writeFile(
    sb.config,
    `${await readFile(sb.config, 'utf8')}\nencryption = aes-256-gcm\nkey_file = ${key}\n`,
  );
  return sb;
}

export interface CopyJson {
  dry_run: boolean;
  copied: number;
  present: number;
  skipped: number;
  bytes_sent: number;
  versions: {
    uid: string;
    outcome: string;
    status: string;
    blocks: number;
    blocks_from_base: number;
    blocks_sent: number;
    bytes_sent: number;
    bytes_read: number;
    blocks_damaged: number;
  }[];
}

export async function copy(src: Sandbox, dst: Sandbox, args: string[], env?: NodeJS.ProcessEnv) {
  const r = await src.run(['--json', 'copy', '--to', dst.config, ...args], { env });
  return { r, json: r.code === 0 || r.code === 3 ? (JSON.parse(r.stdout) as CopyJson) : undefined };
}

export async function copyOk(src: Sandbox, dst: Sandbox, args: string[]): Promise<CopyJson> {
  const { r, json } = await copy(src, dst, args);
  assert.equal(r.code, 0, r.stderr);
  return json!;
}

/** `backy copy` running in the background (with BACKY_TEST_COPY_PAUSE in `env`, say). */
export function spawnCopy(src: Sandbox, dst: Sandbox, args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(
    process.execPath,
    [BIN, '-c', src.config, '--json', 'copy', '--to', dst.config, ...args],
    { cwd: src.dir, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

/** Restores `uid` from `sb` and compares it with `image`. */
export async function restoresAs(sb: Sandbox, uid: string, image: string): Promise<void> {
  const out = sb.path(`restored-${uid}`);
  await rm(out, { force: true });
  await sb.ok(['restore', uid, out]);
  await assertSameBytes(image, out);
  await rm(out);
}

/** A version's status from `ls --json` (undefined when absent): any engine. */
export async function statusOf(sb: Sandbox, uid: string): Promise<string | undefined> {
  const r = await sb.ok(['--json', 'ls']);
  const list = JSON.parse(r.stdout) as { uid: string; status: string }[];
  return list.find((v) => v.uid === uid)?.status;
}

/**
 * In `src`: a base of BLOCKS blocks (zero and text blocks among them; snapshot name, label,
 * protected) and a hinted incremental that changes blocks 3, 17 and 30.
 */
export async function baseAndIncremental(
  src: Sandbox,
): Promise<{ base: string; child: string; img1: string; img2: string }> {
  const img1 = src.path('img1');
  await writeImage(img1, {
    blockSize: BS,
    blocks: BLOCKS,
    kinds: (i) => (i % 7 === 6 ? 'zero' : i % 5 === 4 ? 'text' : 'random'),
    seed: 'copy',
  });
  const base = await src.backup(['--snapshot-name', 'snap1', '-l', 'tier=gold', '--protect', img1, 'vm1']);
  const img2 = src.path('img2');
  await writeFile(img2, await readFile(img1));
  const hints = [];
  for (const b of [3, 17, 30]) {
    await scribble(img2, b * BS + 100, 5000, `change-${b}`);
    hints.push({ offset: b * BS, length: BS, exists: 'true' });
  }
  await writeFile(src.path('hints.json'), JSON.stringify(hints));
  const child = await src.backup(['-f', base, '-r', src.path('hints.json'), img2, 'vm1']);
  return { base, child, img1, img2 };
}
