import { open } from 'node:fs/promises';
import { backup } from '../../core/backup.js';
import type { BackupResult } from '../../core/backup.js';
import { backupExportDiff } from '../../core/backup-export-diff.js';
import { InputError, NotFoundError, UsageError, ioReason } from '../../errors.js';
import { parseRbdDiff } from '../../hints/rbd-diff.js';
import { TooLargeError, readTextLimited } from '../../util/read-limited.js';
import { openSource } from '../../source/source.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatBytes, progressBar } from '../render.js';

export interface BackupCliOptions {
  rbd?: string;
  from?: string;
  rbdExportDiff?: string;
  snapshotName?: string;
}

/**
 * The operands: `SOURCE NAME`, or only `NAME` with --rbd-export-diff (the stream is the source).
 * Checked before the command logs its start, so a usage error is one line.
 */
export function backupOperands(
  first: string | undefined,
  second: string | undefined,
  opts: BackupCliOptions,
): { source: string | undefined; name: string } {
  if (opts.rbdExportDiff !== undefined) {
    if (second !== undefined) {
      throw new UsageError(
        `with --rbd-export-diff give only NAME (the export-diff stream is the source), not '${first}' and '${second}'`,
      );
    }
    if (first === undefined) throw new UsageError("missing required argument 'name'");
    return { source: undefined, name: first };
  }
  if (first === undefined) throw new UsageError("missing required argument 'source'");
  if (second === undefined) throw new UsageError("missing required argument 'name'");
  return { source: first, name: second };
}

export async function backupCommand(
  ctx: Context,
  first: string | undefined,
  second: string | undefined,
  opts: BackupCliOptions,
) {
  const operands = backupOperands(first, second, opts);
  if (operands.source === undefined) return exportDiffBackup(ctx, opts.rbdExportDiff!, operands.name, opts);
  const sourcePath = operands.source;
  const name = operands.name;
  checkName(name);
  const snapshotName = checkSnapshotName(opts.snapshotName);
  const baseUid = opts.from !== undefined ? parseUid(opts.from) : undefined;
  let hints;
  if (opts.rbd !== undefined) {
    if (sourcePath === '-') throw new UsageError('-r (hints) needs a seekable SOURCE, not stdin');
    let text: string;
    try {
      text = await readTextLimited(opts.rbd, MAX_HINT_FILE);
    } catch (err) {
      if (err instanceof TooLargeError) {
        throw new InputError(
          `hint file ${opts.rbd} is larger than ${MAX_HINT_FILE / 2 ** 20} MiB; is it rbd diff --format=json output?`,
        );
      }
      throw new InputError(`cannot read hint file ${opts.rbd}: ${ioReason(err)}`);
    }
    hints = parseRbdDiff(text, `hint file ${opts.rbd}`);
  }
  const meta = await ctx.meta({ write: 'backup' });
  const store = await ctx.store({ root: 'create' });
  const source = await openSource(sourcePath);
  try {
    const { version, stats } = await backup({
      meta,
      store,
      source,
      name,
      snapshotName,
      blockSize: ctx.config.blockSize,
      hints,
      hintsName: opts.rbd !== undefined ? `hint file ${opts.rbd}` : undefined,
      baseUid,
      hintCheckBlocks: ctx.config.hintCheckBlocks,
      progress: progressBar(ctx.log),
      onVersion: (v) => ctx.log.debug(`new version ${v.uid}`),
    });
    report(ctx, source.name, version, stats);
    ctx.out(version.uid);
  } finally {
    await source.close().catch(() => {});
  }
}

/** rbd diff JSON is ~60 bytes per extent: 256 MiB is millions of extents, far beyond real use. */
const MAX_HINT_FILE = 256 * 2 ** 20;

/** Longest NAME or snapshot name: what an export file accepts, so every version round-trips. */
const MAX_NAME = 255;

function checkName(name: string): void {
  if (name.trim() === '' || /[\n\r]/.test(name)) throw new UsageError('NAME must be a non-empty single line');
  if (/\s/.test(name))
    throw new UsageError(
      `NAME must not contain whitespace (${shown(name)}); 'ls -m' output is space-separated`,
    );
  checkPrintable(name, 'NAME');
}

/** A snapshot name is one field of 'ls -m' lines, where '-' stands for "none". */
function checkSnapshotName(snap: string | undefined): string | undefined {
  if (snap === undefined) return undefined;
  if (snap === '' || snap === '-' || /\s/.test(snap)) {
    throw new UsageError(
      `--snapshot-name must be non-empty, not '-', and without whitespace (${shown(snap)})`,
    );
  }
  checkPrintable(snap, '--snapshot-name');
  return snap;
}

/** Names end up in tables on terminals and in export files: no control characters, bounded. */
function checkPrintable(value: string, what: string): void {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) {
    throw new UsageError(`${what} must not contain control characters (${shown(value)})`);
  }
  if (value.length > MAX_NAME) {
    throw new UsageError(`${what} is ${value.length} characters long; at most ${MAX_NAME} are allowed`);
  }
}

/** A user-given value in a message: quoted, control characters escaped, cut short. */
function shown(value: string): string {
  const q = JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
  return q.replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

function report(
  ctx: Context,
  sourceName: string,
  version: BackupResult['version'],
  stats: BackupResult['stats'],
) {
  ctx.log.info(
    `Backed up ${sourceName} as ${version.name} (${formatBytes(version.sizeBytes)}, ${stats.blocks} blocks): ` +
      `${stats.read} read, ${stats.stored} stored (${formatBytes(stats.bytesStored)}), ${stats.deduplicated} deduplicated, ` +
      `${stats.sparse} sparse, ${stats.kept} kept from base`,
  );
}

async function exportDiffBackup(ctx: Context, file: string, name: string, opts: BackupCliOptions) {
  checkName(name);
  if (opts.rbd !== undefined) {
    throw new UsageError(
      '-r (hints) and --rbd-export-diff exclude each other: the export-diff names the changes itself',
    );
  }
  const snapshotName = checkSnapshotName(opts.snapshotName);
  const baseUid = opts.from !== undefined ? parseUid(opts.from) : undefined;
  let input: AsyncIterable<Buffer> & { destroy(): void };
  let inputName: string;
  if (file === '-') {
    if (process.stdin.isTTY) {
      throw new UsageError(
        '--rbd-export-diff -: stdin is a terminal; pipe `rbd export-diff ... -` into backy',
      );
    }
    input = process.stdin;
    inputName = 'stdin';
  } else {
    // Open first, so a missing file is one clear error rather than a stream error later.
    let fh;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new NotFoundError(`export-diff file ${file} does not exist`);
      throw new InputError(`cannot open export-diff file ${file}: ${code ?? err}`);
    }
    if ((await fh.stat()).isDirectory()) {
      await fh.close();
      throw new InputError(`export-diff file ${file} is a directory`);
    }
    input = fh.createReadStream({ highWaterMark: 1 << 20 }); // closes fh at the end or on destroy()
    inputName = file;
  }
  try {
    const meta = await ctx.meta({ write: 'backup' });
    const store = await ctx.store({ root: 'create' });
    const { version, stats } = await backupExportDiff({
      meta,
      store,
      input,
      inputName,
      name,
      blockSize: ctx.config.blockSize,
      baseUid,
      snapshotName,
      progress: progressBar(ctx.log),
      onVersion: (v) => ctx.log.debug(`new version ${v.uid}`),
    });
    report(ctx, `export-diff ${inputName}`, version, stats);
    ctx.out(version.uid);
  } finally {
    input.destroy();
  }
}
