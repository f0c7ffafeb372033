/**
 * qcow2: sources (an image file not in use). backy owns the image's dirty bitmaps, and a
 * bitmap's name is the uid of the version it started with: `backy-<uid>`. So the pairing of
 * bitmap and base is not a choice anyone makes: a run takes the youngest valid version of the
 * job whose bitmap the image still holds (enabled, and consistent), serves the image with
 * `qemu-nbd -r -B backy-<that uid>`, and backs up with that bitmap's dirty extents as hints
 * against exactly that version. Without such a version the image is read in full.
 * After success, bitmap `backy-<new uid>` is added and every other backy- bitmap dropped. The
 * image is not in use, so nothing is written between the read and the new bitmap: it tracks
 * exactly what changes after the version it names. A crash before that leaves the old bitmap,
 * which still tracks everything since its own (older, valid) version: the next run uses it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { backup } from '../core/backup.js';
import type { HintSource } from '../core/backup.js';
import { errorMessage } from '../errors.js';
import { NbdSource } from '../source/nbd-source.js';
import type { JobSourceHandler, SourceRun } from './job-source.js';
import { youngestValid } from './job-source.js';
import { ToolError, lastLine, runTool } from './tool.js';

const QEMU_TIMEOUT_MS = 120_000;
const BITMAP_PREFIX = 'backy-';

interface Bitmap {
  name: string;
  flags: string[];
}

async function qemuImg(args: string[], signal?: AbortSignal): Promise<string> {
  return (await runTool('qemu-img', args, { timeoutMs: QEMU_TIMEOUT_MS, signal })).stdout;
}

/** The image's bitmaps; fails (qemu's lock) when the image is in use. */
async function bitmaps(path: string, signal?: AbortSignal): Promise<Bitmap[]> {
  const text = await qemuImg(['info', '--output', 'json', path], signal);
  let info: { format?: string; 'format-specific'?: { data?: { bitmaps?: Bitmap[] } } };
  try {
    info = JSON.parse(text) as typeof info;
  } catch {
    throw new ToolError(`qemu-img info ${path} printed no JSON`);
  }
  if (info.format !== 'qcow2')
    throw new ToolError(`${path} is a ${info.format ?? 'unknown'} image, not qcow2`);
  return info['format-specific']?.data?.bitmaps ?? [];
}

/** A bitmap that recorded every write since it was added: enabled ('auto'), not left 'in-use' by a crash. */
function usable(b: Bitmap): boolean {
  return b.flags.includes('auto') && !b.flags.includes('in-use');
}

export const qcow2Job: JobSourceHandler = {
  async backup(run: SourceRun) {
    const src = run.job.source;
    if (src.kind !== 'qcow2') throw new Error(`qcow2Job: ${src.kind} source`);
    const path = src.path;
    const present = await bitmaps(path, run.signal);
    const good = new Set(present.filter(usable).map((b) => b.name));
    const base = youngestValid(run.versions, (v) => good.has(BITMAP_PREFIX + v.uid));
    const bitmap = base ? BITMAP_PREFIX + base.uid : undefined;
    run.log.info(
      base
        ? `[job ${run.job.job}] ${path}: changes since ${base.uid} (bitmap ${bitmap})`
        : `[job ${run.job.job}] ${path}: full read (no bitmap of a valid version)`,
    );
    const dir = await mkdtemp(join(tmpdir(), 'backy-qcow2-'));
    const socket = join(dir, 'nbd.sock');
    const server = await serve(path, socket, bitmap, run.signal);
    let result;
    try {
      const uri = `nbd+unix:///?socket=${encodeURIComponent(socket)}`;
      const source = await NbdSource.open(uri, { dirtyBitmap: bitmap });
      try {
        const hints: HintSource | undefined = bitmap
          ? {
              name: `dirty bitmap ${bitmap} of ${path}`,
              read: async (onExtent) => {
                let index = 0;
                for await (const e of source.dirtyExtents()) onExtent(e, index++);
              },
              tracking: () => ({ kind: 'dirty-bitmap', bitmap }),
            }
          : undefined;
        result = await backup({
          meta: run.meta,
          store: run.store,
          source,
          name: run.job.name,
          blockSize: run.blockSize,
          baseUid: base?.uid,
          hints,
          verifyUnhinted: run.verify && base !== undefined,
          hintCheckBlocks: run.hintCheckBlocks,
          signal: run.signal,
          onInfo: (m) => run.log.debug(m),
          onWarn: (m) => run.log.warn(m),
          onVersion: (v) => run.onVersion(v),
        });
      } finally {
        await source.close().catch(() => {});
      }
    } finally {
      await server.stop(); // its lock on the image must be gone before qemu-img changes bitmaps
      await rm(dir, { recursive: true, force: true });
    }
    await run.captured();
    const uid = result.version.uid;
    return {
      ...result,
      labels: {},
      finish: async () => {
        await qemuImg(['bitmap', '--add', path, BITMAP_PREFIX + uid]);
        for (const b of present) {
          if (!b.name.startsWith(BITMAP_PREFIX)) continue;
          await qemuImg(['bitmap', '--remove', path, b.name]).catch((err: unknown) =>
            run.log.warn(
              `[job ${run.job.job}] old bitmap ${b.name} of ${path} was not removed: ${errorMessage(err)}`,
            ),
          );
        }
      },
    };
  },
};

/** `qemu-nbd -r` on a Unix socket (with bitmap `bitmap` exported), until stop(). */
async function serve(
  path: string,
  socket: string,
  bitmap: string | undefined,
  signal?: AbortSignal,
): Promise<{ stop(): Promise<void> }> {
  const args = ['-r', '--persistent', '-f', 'qcow2', '-k', socket, ...(bitmap ? ['-B', bitmap] : []), path];
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (err.length < 65536) err += b.toString();
  });
  let spawnError: Error | undefined;
  child.on('error', (e: NodeJS.ErrnoException) => {
    spawnError = new ToolError(
      e.code === 'ENOENT' ? 'qemu-nbd is not installed (not on PATH)' : `qemu-nbd: ${e.message}`,
    );
  });
  const exited = new Promise<void>((resolve) => child.on('close', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  const deadline = Date.now() + QEMU_TIMEOUT_MS;
  while (!existsSync(socket)) {
    if (spawnError) throw spawnError;
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline || signal?.aborted) {
      await stop();
      if (signal?.aborted) throw signal.reason as Error;
      throw new ToolError(`qemu-nbd ${args.join(' ')} did not start: ${lastLine(err)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { stop };
}
