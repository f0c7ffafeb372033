/**
 * End-to-end helpers: a sandbox (temp dir with its own backy.cfg, SQLite file and data
 * directory) and a runner that spawns the built CLI (bin/backy.js, so run `npm run build`
 * first; `npm test` does).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnCollect } from './spawn.js';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = join(REPO, 'bin', 'backy.js');

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** stdout as bytes (for restore to '-'). */
  stdoutBuf: Buffer;
}

export interface RunOptions {
  input?: Buffer | string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export async function runBacky(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await spawnCollect(process.execPath, [BIN, ...args], opts);
  return {
    code: r.code,
    signal: r.signal,
    stdout: r.stdout.toString('utf8'),
    stderr: r.stderr,
    stdoutBuf: r.stdout,
  };
}

export class Sandbox {
  readonly dir: string;
  readonly config: string;
  readonly dataDir: string;
  readonly dbPath: string;

  private constructor(dir: string, extraConfig: string) {
    this.dir = dir;
    this.config = join(dir, 'backy.cfg');
    this.dataDir = join(dir, 'data');
    this.dbPath = join(dir, 'backy.sqlite');
    this.extraConfig = extraConfig;
  }
  readonly extraConfig: string;

  /**
   * A fresh sandbox. `defaults` lines go under [DEFAULTS]; `engine` overrides the SQLite URL
   * (e.g. a PostgreSQL URL for the PostgreSQL runs).
   */
  static async create(opts: { defaults?: string; engine?: string } = {}): Promise<Sandbox> {
    const dir = await mkdtemp(join(tmpdir(), 'backy-test-'));
    const sb = new Sandbox(dir, opts.defaults ?? '');
    await writeFile(
      sb.config,
      `[DEFAULTS]\n${opts.defaults ?? ''}\n[MetaBackend]\nengine = ${opts.engine ?? `sqlite:///${sb.dbPath}`}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\n`,
    );
    return sb;
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  /** Runs `backy -c <sandbox cfg> ...args`. */
  run(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return runBacky(['-c', this.config, ...args], { cwd: this.dir, ...opts });
  }

  /** Runs and insists on exit 0; returns the result. */
  async ok(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    const r = await this.run(args, opts);
    if (r.code !== 0) throw new Error(`backy ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
    return r;
  }

  /** A backup that must succeed; returns the new uid (the last line of stdout). */
  async backup(args: string[], opts: RunOptions = {}): Promise<string> {
    const r = await this.ok(['backup', ...args], opts);
    const lines = r.stdout.trim().split('\n');
    return lines[lines.length - 1];
  }

  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Parses `ls -m` lines into objects. */
export function parseLsMachine(stdout: string) {
  return stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('version '))
    .map((l) => {
      const f = l.split(' ');
      return {
        date: `${f[1]} ${f[2]}`,
        name: f[3],
        blocks: Number(f[4]),
        sizeBytes: Number(f[5]),
        uid: f[6],
        valid: f[7] === '1',
        snapshotName: f[8] === '-' ? '' : f[8],
        line: l,
      };
    });
}

/**
 * Byte-for-byte comparison of two files (or a file and a buffer); throws naming the first
 * differing offset. Streams in 1 MiB pieces, so it works for images of any size.
 */
export async function assertSameBytes(expectedPath: string, actual: string | Buffer): Promise<void> {
  const { open } = await import('node:fs/promises');
  const a = await open(expectedPath, 'r');
  const b = typeof actual === 'string' ? await open(actual, 'r') : undefined;
  try {
    const sizeA = (await a.stat()).size;
    const sizeB = b ? (await b.stat()).size : (actual as Buffer).length;
    if (sizeA !== sizeB) throw new Error(`size differs: expected ${sizeA} bytes, got ${sizeB}`);
    const piece = 1 << 20;
    const bufA = Buffer.alloc(piece);
    const bufB = Buffer.alloc(piece);
    for (let off = 0; off < sizeA; off += piece) {
      const len = Math.min(piece, sizeA - off);
      await a.read(bufA, 0, len, off);
      let chunkB: Buffer;
      if (b) {
        await b.read(bufB, 0, len, off);
        chunkB = bufB.subarray(0, len);
      } else chunkB = (actual as Buffer).subarray(off, off + len);
      const chunkA = bufA.subarray(0, len);
      if (!chunkA.equals(chunkB)) {
        let i = 0;
        while (chunkA[i] === chunkB[i]) i++;
        throw new Error(`content differs at byte ${off + i}`);
      }
    }
  } finally {
    await a.close();
    await b?.close();
  }
}
