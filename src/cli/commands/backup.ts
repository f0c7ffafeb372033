import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { backup } from '../../core/backup.js';
import type { BackupResult, HintSource } from '../../core/backup.js';
import { backupExportDiff } from '../../core/backup-export-diff.js';
import {
  IntegrityError,
  InputError,
  InterruptedError,
  NotFoundError,
  UsageError,
  ioReason,
} from '../../errors.js';
import type { Version } from '../../meta/meta-store.js';
import { RbdDiffParser } from '../../hints/rbd-diff.js';
import { parseThinDelta } from '../../hints/thin-delta.js';
import type { ThinDevices } from '../../hints/thin-delta.js';
import type { HintExtent } from '../../hints/rbd-diff.js';
import { TooLargeError, readChunksLimited } from '../../util/read-limited.js';
import { openSource } from '../../source/source.js';
import { NbdSource } from '../../source/nbd-source.js';
import { isNbdUri } from '../../nbd/client.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatBytes, progressBar, statsJsonFields, versionJsonFields } from '../render.js';
import { changeLabels, parseLabel, setProtected } from '../../meta/catalog.js';

export interface BackupCliOptions {
  rbd?: string;
  from?: string;
  rbdExportDiff?: string;
  snapshotName?: string;
  protect?: boolean;
  label?: string[];
  thinDelta?: string;
  dirtyBitmap?: string;
  forceBase?: boolean;
  verifyUnhinted?: boolean;
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
  labelsOf(opts); // bad labels fail before anything is read
  if (operands.source === undefined) return exportDiffBackup(ctx, opts.rbdExportDiff!, operands.name, opts);
  const sourcePath = operands.source;
  const name = operands.name;
  checkName(name);
  const snapshotName = checkSnapshotName(opts.snapshotName);
  const baseUid = opts.from !== undefined ? parseUid(opts.from) : undefined;
  let hints: HintSource | undefined;
  let hintFile: FileHandle | undefined;
  const hintOptions = [
    opts.rbd !== undefined && '-r',
    opts.thinDelta !== undefined && '--thin-delta',
    opts.dirtyBitmap !== undefined && '--dirty-bitmap',
  ].filter((o) => o !== false);
  if (hintOptions.length > 1) {
    throw new UsageError(`${hintOptions.join(' and ')} exclude each other: give one source of change hints`);
  }
  if (opts.verifyUnhinted && (hintOptions.length === 0 || baseUid === undefined)) {
    throw new UsageError(
      '--verify-unhinted needs change hints (-r, --thin-delta or --dirty-bitmap) and -f UID: it checks what the hints keep from the base',
    );
  }
  if (opts.dirtyBitmap !== undefined) {
    if (!isNbdUri(sourcePath)) {
      throw new UsageError(
        `--dirty-bitmap needs an NBD SOURCE (nbd+unix:///EXPORT?socket=PATH or nbd://HOST/EXPORT), not ${sourcePath}`,
      );
    }
    if (opts.dirtyBitmap === '') throw new UsageError('--dirty-bitmap needs a bitmap name');
    if (baseUid === undefined) {
      throw new UsageError(
        '--dirty-bitmap needs -f UID: the backup taken when the bitmap was started (clean extents are kept from it)',
      );
    }
  }
  if (opts.thinDelta !== undefined) {
    if (sourcePath === '-') throw new UsageError('--thin-delta needs a seekable SOURCE, not stdin');
    if (baseUid === undefined) {
      throw new UsageError(
        '--thin-delta needs -f UID: the backup of the thin snapshot it compares against (--snap1)',
      );
    }
    const path = opts.thinDelta;
    try {
      hintFile = await open(path, 'r');
    } catch (err) {
      throw new InputError(`cannot read thin delta file ${path}: ${ioReason(err)}`);
    }
    const fh = hintFile;
    let devices: ThinDevices | undefined;
    hints = {
      name: `thin delta file ${path}`,
      read: (onExtent) => readThinDeltaFile(fh, path, onExtent, (d) => (devices = d)),
      // This version is the thin device the delta ends at; its base the one it starts from.
      tracking: () =>
        devices ? { kind: 'thin', device_id: devices.right, base_device_id: devices.left } : null,
    };
  }
  if (opts.rbd !== undefined) {
    if (sourcePath === '-') throw new UsageError('-r (hints) needs a seekable SOURCE, not stdin');
    const path = opts.rbd;
    // Opened now, so that a missing file fails before anything else; read once the source's
    // size is known (the hints are planned as they stream in).
    try {
      hintFile = await open(path, 'r');
    } catch (err) {
      throw new InputError(`cannot read hint file ${path}: ${ioReason(err)}`);
    }
    const fh = hintFile;
    hints = {
      name: `hint file ${path}`,
      read: (onExtent) => readHintFile(fh, path, onExtent),
      // rbd diff JSON names no snapshot: what is known is --snapshot-name and the base's.
      tracking: (base) => ({
        kind: 'rbd-diff',
        snapshot: snapshotName ?? null,
        base_snapshot: base && base.snapshotName !== '' ? base.snapshotName : null,
      }),
    };
  }
  try {
    await backupFromSource(ctx, sourcePath, name, snapshotName, baseUid, hints, opts);
  } finally {
    await hintFile?.close().catch(() => {});
  }
}

/** The bitmap's dirty extents as hints (exists: read); clean extents are kept from the base. */
function dirtyBitmapHints(source: NbdSource, bitmap: string): HintSource {
  return {
    name: `dirty bitmap ${bitmap} of ${source.name}`,
    read: async (onExtent) => {
      let index = 0;
      for await (const e of source.dirtyExtents()) onExtent(e, index++);
    },
    tracking: () => ({ kind: 'dirty-bitmap', bitmap }),
  };
}

async function readThinDeltaFile(
  fh: FileHandle,
  path: string,
  onExtent: (extent: HintExtent, index: number) => void,
  onDiff: (devices: ThinDevices) => void,
): Promise<void> {
  let index = 0;
  try {
    for await (const e of parseThinDelta(
      fh.createReadStream({ highWaterMark: 1 << 20, autoClose: false }),
      `thin delta file ${path}`,
      onDiff,
    )) {
      onExtent(e, index++);
    }
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`cannot read thin delta file ${path}: ${ioReason(err)}`);
  }
}

async function readHintFile(
  fh: FileHandle,
  path: string,
  onExtent: (extent: HintExtent, index: number) => void,
): Promise<void> {
  const parser = new RbdDiffParser(`hint file ${path}`, onExtent);
  try {
    for await (const chunk of readChunksLimited(fh, MAX_HINT_FILE)) parser.push(chunk);
  } catch (err) {
    if (err instanceof InputError) throw err;
    if (err instanceof TooLargeError) {
      throw new InputError(
        `hint file ${path} is larger than ${MAX_HINT_FILE / 2 ** 20} MiB; is it rbd diff --format=json output?`,
      );
    }
    throw new InputError(`cannot read hint file ${path}: ${ioReason(err)}`);
  }
  parser.end();
}

async function backupFromSource(
  ctx: Context,
  sourcePath: string,
  name: string,
  snapshotName: string | undefined,
  baseUid: string | undefined,
  hints: HintSource | undefined,
  opts: BackupCliOptions,
) {
  const meta = await ctx.meta({ write: 'backup' });
  const store = await ctx.store({ root: 'create' });
  const source =
    opts.dirtyBitmap !== undefined
      ? await NbdSource.open(sourcePath, { dirtyBitmap: opts.dirtyBitmap })
      : await openSource(sourcePath);
  if (source instanceof NbdSource && opts.dirtyBitmap !== undefined)
    hints = dirtyBitmapHints(source, opts.dirtyBitmap);
  let created: Version | undefined;
  try {
    const { version, stats } = await backup({
      meta,
      store,
      source,
      name,
      snapshotName,
      blockSize: ctx.config.blockSize,
      hints,
      baseUid,
      hintCheckBlocks: ctx.config.hintCheckBlocks,
      verifyUnhinted: opts.verifyUnhinted ?? false,
      forceBase: opts.forceBase ?? false,
      progress: progressBar(ctx.log),
      onInfo: (m) => ctx.log.info(m),
      onWarn: (m) => ctx.log.warn(m),
      signal: ctx.signal,
      onVersion: (v) => {
        created = v;
        ctx.log.debug(`new version ${v.uid}`);
      },
    });
    await markVersion(ctx, version, opts);
    report(ctx, source.name, version, stats);
    printResult(ctx, version, stats, opts.verifyUnhinted);
  } catch (err) {
    // Invalid at completion: recorded as such, and so is its copy.
    if (err instanceof IntegrityError && created) await ctx.updateCopies([created.uid]);
    throw leftBehind(ctx, err, created);
  } finally {
    await source.close().catch(() => {});
  }
}

/**
 * A failed backup names the version it leaves incomplete (a failed verification has named it
 * invalid already), so the user knows what `ls` shows and that cleanup reclaims it. Interrupted:
 * that is the error's one line; otherwise a warning beside the error, which stays as it is.
 */
function leftBehind(ctx: Context, err: unknown, created: Version | undefined): unknown {
  if (!created || err instanceof IntegrityError) return err;
  const what = `backup ${created.uid} of ${created.name} is incomplete`;
  if (err instanceof InterruptedError)
    return err.leaving(`${what}; run the backup again (cleanup reclaims it)`);
  ctx.log.warn(`${what} (cleanup reclaims it)`);
  return err;
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

function labelsOf(opts: BackupCliOptions): Record<string, string> {
  return Object.fromEntries((opts.label ?? []).map(parseLabel));
}

/** --protect and -l, once the version is valid (a crashed backup leaves neither). */
async function markVersion(ctx: Context, version: BackupResult['version'], opts: BackupCliOptions) {
  const meta = await ctx.meta();
  const labels = labelsOf(opts);
  if (Object.keys(labels).length > 0) await changeLabels(meta, version.uid, { set: labels, remove: [] });
  if (opts.protect) {
    await setProtected(meta, [version.uid], true);
    version.protected = true;
  }
  await ctx.updateCopies([version.uid]);
}

/**
 * The uid as the last line of stdout; with --json one object with the statistics. With -m and
 * --verify-unhinted, a `verified N` line (blocks read and found as the hints say) before it.
 */
function printResult(
  ctx: Context,
  version: BackupResult['version'],
  stats: BackupResult['stats'],
  verifyUnhinted = false,
) {
  if (ctx.json) ctx.out(JSON.stringify({ ...versionJsonFields(version), stats: statsJsonFields(stats) }));
  else {
    if (ctx.machine && verifyUnhinted) ctx.out(`verified ${stats.verified}`);
    ctx.out(version.uid);
  }
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
      `${stats.sparse} sparse, ${stats.kept} kept from base` +
      (stats.verified > 0 ? `, ${stats.verified} verified against the base` : ''),
  );
}

async function exportDiffBackup(ctx: Context, file: string, name: string, opts: BackupCliOptions) {
  checkName(name);
  if (opts.verifyUnhinted) {
    throw new UsageError(
      '--verify-unhinted and --rbd-export-diff exclude each other: the export-diff carries the changed data itself, there is no source to read',
    );
  }
  if (opts.rbd !== undefined || opts.thinDelta !== undefined || opts.dirtyBitmap !== undefined) {
    const other =
      opts.rbd !== undefined
        ? '-r (hints)'
        : opts.thinDelta !== undefined
          ? '--thin-delta'
          : '--dirty-bitmap';
    throw new UsageError(
      `${other} and --rbd-export-diff exclude each other: the export-diff names the changes itself`,
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
      signal: ctx.signal,
      forceBase: opts.forceBase ?? false,
      onWarn: (m) => ctx.log.warn(m),
      onVersion: (v) => ctx.log.debug(`new version ${v.uid}`),
    });
    await markVersion(ctx, version, opts);
    report(ctx, `export-diff ${inputName}`, version, stats);
    printResult(ctx, version, stats);
  } catch (err) {
    // An export-diff backup that fails half-way removes its version again (backupExportDiff).
    if (err instanceof InterruptedError) {
      throw err.leaving(`backup of ${name} from export-diff ${inputName} stopped; no version was recorded`);
    }
    throw err;
  } finally {
    input.destroy();
  }
}
