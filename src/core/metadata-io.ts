/**
 * Version metadata export and import: everything a restore needs, so a store whose database
 * is lost can be rebuilt from export files plus its data directory.
 * The format is described in export-format.ts.
 *
 * Streaming: export writes page by page; import reads line by line (at most MAX_LINE bytes
 * buffered), validates the whole file with zod before it writes anything (stdin is spooled to
 * a temp file for that), then reads it again and inserts in batches. A lease is held from
 * before the first byte is read until the version is recorded: cleanup deletes no object while
 * an import's lease exists (MetaStore.ANY_OBJECT_LEASE_KINDS) and sweeps no unrecorded file.
 *
 * Import and the data store: the point is rebuilding a lost database, so every object a block
 * names is looked up in the data store (stat). A file without an objects row gets one (its
 * content is verified by the next scrub or restore, like every read). A block whose object
 * file is absent, or whose object is recorded invalid, is imported as invalid and the version
 * as invalid (it restores with zeros there); a recorded object whose file is gone is marked
 * invalid, so that backups store it anew instead of deduplicating against it. Otherwise
 * the version gets the status the file records, after the same check a backup's completion
 * makes. The version never references anything outside the store: checksums are strictly
 * 64 lower-case hex characters, which is all the data store accepts as a key.
 */
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { blockCount } from '../blocks/blocks.js';
import { BackyError, InputError, NotFoundError, VersionRemovedError } from '../errors.js';
import { changeLabels } from '../meta/catalog.js';
import { recordImportedVersions } from '../meta/record-import.js';
import type { ImportedVersion } from '../meta/record-import.js';
import type { BlockRow, MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { abortable, abortableIterable, mapOrdered } from '../util/concurrency.js';
import { EXPORT_FORMAT, ExportParser, headerOf, splitLines, versionOf } from './export-format.js';
import type { CopyFields, ExportHeader } from './export-format.js';
import { labelsOf } from '../meta/catalog.js';
import { hold, keepLeaseAlive } from './lease.js';
import { noProgress } from './progress.js';
import type { ProgressReporter } from './progress.js';

export { EXPORT_FORMAT, EXPORT_VERSION, ExportParser, MAX_LINE, splitLines } from './export-format.js';

/**
 * Block lines per flush (object lookups, adoption, one block-list transaction). Large: each
 * SQLite commit of random checksum-index pages costs a WAL checkpoint, so 262,144 rows written
 * 1,000 a transaction took several times longer than 10,000 at a time.
 */
const BATCH = 10_000;
const STATS_IN_FLIGHT = 16;

// ---- export ----

/**
 * One block line, exactly as JSON.stringify would write it. A checksum that is plain lower-case
 * hex (every one backy writes) goes in as it is; anything else in the database is escaped.
 */
export function blockLine(b: { idx: number; checksum: string | null; size: number; valid: boolean }): string {
  const checksum =
    b.checksum === null ? 'null' : HEX_RE.test(b.checksum) ? `"${b.checksum}"` : JSON.stringify(b.checksum);
  return `{"idx":${b.idx},"checksum":${checksum},"size":${b.size},"valid":${b.valid}}\n`;
}
const HEX_RE = /^[0-9a-f]*$/;

/** Writes version `uid` to `out` in the export format; returns the number of block lines. */
export async function exportVersion(opts: {
  meta: MetaStore;
  uid: string;
  out: Writable;
  /** Stops the export (SIGINT): it rejects with the signal's reason. */
  signal?: AbortSignal;
  /** For the store's own copy: its labels (as already read) and the store id in the header. */
  copy?: (v: Version) => Promise<CopyFields>;
}): Promise<number> {
  const { meta, out, signal } = opts;
  const v = await meta.getVersion(opts.uid);
  if (v.status === 'incomplete') {
    throw new InputError(
      `version ${v.uid} is incomplete (its backup is running or crashed); only valid or invalid versions can be exported`,
    );
  }
  const write = async (s: string) => {
    signal?.throwIfAborted();
    // A pipe nobody reads never drains: the wait is raced with the signal.
    if (!out.write(s)) await abortable(once(out, 'drain'), signal);
  };
  const copy = await opts.copy?.(v);
  // A plain export carries the labels too, so that an import brings them back.
  const labels = copy?.labels ?? (await labelsOf(meta, [v.uid])).get(v.uid) ?? {};
  await write(`${JSON.stringify(headerOf(v, meta.hashFunction, copy, labels))}\n`);
  let n = 0;
  let buf = '';
  const expected = blockCount(v.sizeBytes, v.blockSize);
  const gap = async () =>
    (await meta.findVersion(v.uid))
      ? new InputError(
          `version ${v.uid} lacks block entries (a backup that failed verification); it cannot be exported, only restored or removed`,
        )
      : new VersionRemovedError(
          `version ${v.uid} was removed while being exported; the export is incomplete`,
        );
  for await (const page of meta.blockPages(v.uid)) {
    for (const b of page) {
      if (b.idx !== n || b.idx >= expected) throw await gap();
      buf += blockLine(b);
      n++;
    }
    if (buf.length >= 64 * 1024) {
      await write(buf);
      buf = '';
    }
  }
  if (n !== expected) throw await gap();
  await write(`${buf}${JSON.stringify({ end: EXPORT_FORMAT, blocks: n })}\n`);
  return n;
}

// ---- import ----

export interface ImportResult {
  version: Version;
  blocks: number;
  /** Blocks whose object is absent from the data store or recorded invalid. */
  missing: number;
  /** The file said valid, but the version had to be imported invalid. */
  downgraded: boolean;
}

async function* fileChunks(path: string): AsyncIterable<Buffer> {
  const stream = createReadStream(path, { highWaterMark: 256 * 1024 });
  try {
    for await (const chunk of stream) yield chunk as Buffer;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new NotFoundError(`export file ${path} does not exist`);
    throw new InputError(`cannot read export file ${path}: ${code ?? err}`);
  }
}

/** A buffer in pieces, as a file is read: splitLines then decodes a piece at a time. */
export async function* inPieces(content: Buffer): AsyncIterable<Buffer> {
  for (let i = 0; i < content.length; i += 256 * 1024) yield content.subarray(i, i + 256 * 1024);
}

/** Copies the stream to `spool` while yielding it. */
async function* spooled(input: Readable, spool: FileHandle): AsyncIterable<Buffer> {
  for await (const chunk of input as AsyncIterable<Buffer>) {
    await spool.write(chunk);
    yield chunk;
  }
}

async function validate(
  chunks: AsyncIterable<Buffer>,
  name: string,
): Promise<{ header: ExportHeader; blocks: number }> {
  const parser = new ExportParser(name);
  for await (const line of splitLines(chunks, name)) parser.line(line);
  return parser.finish();
}

/**
 * Imports one version from `path` (or stdin for '-'). Validates the whole file first, then
 * inserts; on any failure after the version row was created, the version is removed again.
 */
export async function importVersion(opts: {
  meta: MetaStore;
  store: BlockStore;
  path: string;
  stdin?: Readable;
  /** The file's content, already in memory (recover's decoded copies); `path` only names it. */
  content?: Buffer;
  progress?: ProgressReporter;
  /** Stops the import (SIGINT): it rejects with the signal's reason and imports nothing. */
  signal?: AbortSignal;
  /** Checks the validated header before anything is written (recover: the copy's uid and store). */
  checkHeader?: (h: ExportHeader) => void;
  /**
   * The caller holds a lease of an ANY_OBJECT_LEASE_KINDS kind for the whole run (recover), so
   * this import takes none of its own. Its commits may then be made durable only by the
   * caller's meta.syncDurable (recover: once for all versions, not once each).
   */
  leased?: boolean;
}): Promise<ImportResult> {
  const { meta, store, signal } = opts;
  const progress = opts.progress ?? noProgress;
  const name = opts.content ? opts.path : opts.path === '-' ? 'export on stdin' : `export file ${opts.path}`;
  // Held from before the first byte is read until the version is recorded: the objects the
  // file names may be files without rows (a rebuilt database), which cleanup sweeps only while
  // no lease exists, or unreferenced rows, which it keeps while an import's lease exists.
  const held = opts.leased ? undefined : await hold(meta, 'import', null);
  let spoolDir: string | undefined;
  try {
    let path = opts.path;
    let checked: { header: ExportHeader; blocks: number };
    let read = () => fileChunks(path);
    if (opts.content) {
      const content = opts.content;
      read = () => inPieces(content);
      checked = await validate(read(), name);
    } else if (opts.path === '-') {
      spoolDir = await mkdtemp(join(tmpdir(), 'backy-import-'));
      path = join(spoolDir, 'export.jsonl');
      const spool = await open(path, 'wx', 0o600);
      try {
        checked = await validate(
          abortableIterable(spooled(opts.stdin ?? process.stdin, spool), signal),
          name,
        );
      } finally {
        await spool.close();
      }
    } else {
      checked = await validate(abortableIterable(fileChunks(path), signal), name);
    }
    const h = checked.header;
    opts.checkHeader?.(h);
    if (h.hash_function !== meta.hashFunction) {
      throw new InputError(
        `${name} uses hash function ${h.hash_function}, this store ${meta.hashFunction}; its checksums do not name objects here`,
      );
    }
    if (await meta.findVersion(h.uid)) {
      throw new InputError(
        `version ${h.uid} exists already; remove it first ('backy rm') to import it again`,
      );
    }
    return await insert(meta, store, read, name, checked, progress, signal, !opts.leased);
  } finally {
    if (spoolDir) await rm(spoolDir, { recursive: true, force: true }).catch(() => {});
    await held?.release();
  }
}

async function insert(
  meta: MetaStore,
  store: BlockStore,
  read: () => AsyncIterable<Buffer>,
  name: string,
  checked: { header: ExportHeader; blocks: number },
  progress: ProgressReporter,
  signal: AbortSignal | undefined,
  durable: boolean,
): Promise<ImportResult> {
  const h = checked.header;
  const version = versionOf(h, 'incomplete');
  progress.start('import', undefined);
  try {
    if (checked.blocks <= BATCH) {
      // Small enough for one transaction: nothing is visible until it is all there.
      const item = await prepared(store, read, name, h, signal);
      const [r] = await recordImportedVersions(meta, [item], { durable, existing: 'throw' });
      progress.advance(checked.blocks);
      return {
        version: await meta.getVersion(version.uid),
        blocks: checked.blocks,
        missing: r.missing,
        downgraded: r.downgraded,
      };
    }
    return await insertInBatches(meta, store, read, name, checked, version, progress, signal, durable);
  } catch (err) {
    if (err instanceof BackyError) throw err;
    throw new BackyError(`import of ${version.uid} failed and was undone: ${(err as Error).message}`, {
      cause: err,
    });
  } finally {
    progress.stop();
  }
}

/** A validated file small enough for one transaction: its rows read again and its objects looked up. */
async function prepared(
  store: BlockStore,
  read: () => AsyncIterable<Buffer>,
  name: string,
  h: ExportHeader,
  signal: AbortSignal | undefined,
): Promise<ImportedVersion> {
  const rows: BlockRow[] = [];
  for await (const row of reparsed(read, name, h)) rows.push(row);
  const sizes = await lookUp(store, rows, signal);
  signal?.throwIfAborted();
  return { version: versionOf(h, h.status), rows, sizes, labels: h.labels ?? {} };
}

/**
 * For recover: a version copy (in memory) validated, its header checked by `checkHeader`, and,
 * when its block list fits one transaction, made ready for recordImportedVersions (several at
 * once); undefined when it does not fit (then importVersion records it in batches). The caller
 * holds an ANY_OBJECT_LEASE_KINDS lease from before the first read until it is recorded.
 */
export async function prepareImport(opts: {
  meta: MetaStore;
  store: BlockStore;
  name: string;
  content: Buffer;
  checkHeader: (h: ExportHeader) => void;
  signal?: AbortSignal;
}): Promise<ImportedVersion | undefined> {
  const read = () => inPieces(opts.content);
  const checked = await validate(read(), opts.name);
  opts.checkHeader(checked.header);
  if (checked.blocks > BATCH) return undefined;
  return prepared(opts.store, read, opts.name, checked.header, opts.signal);
}

/** The block rows of a file already validated, parsed again: a file changed meanwhile still fails cleanly. */
async function* reparsed(
  read: () => AsyncIterable<Buffer>,
  name: string,
  h: ExportHeader,
): AsyncGenerator<BlockRow> {
  const parser = new ExportParser(name);
  for await (const line of splitLines(read(), name)) {
    const rec = parser.line(line);
    if (rec && 'header' in rec && JSON.stringify(rec.header) !== JSON.stringify(h)) {
      throw new InputError(`${name} changed while it was imported`);
    }
    if (rec && 'block' in rec) yield rec.block;
  }
  parser.finish();
}

/**
 * The stored size of each object `rows` name (undefined: not in the data store). In one batch
 * where the backend can (a local directory), else STATS_IN_FLIGHT at a time (one by one, a
 * batch of S3 HEADs costs a round trip each). The import's lease keeps cleanup from deleting
 * any of them from now on.
 */
async function lookUp(
  store: BlockStore,
  rows: readonly BlockRow[],
  signal: AbortSignal | undefined,
): Promise<Map<string, number | undefined>> {
  signal?.throwIfAborted();
  const checksums = [...new Set(rows.flatMap((r) => (r.checksum === null ? [] : [r.checksum])))];
  const sizes = new Map<string, number | undefined>();
  const backend = store.backend;
  if (backend.statMany) {
    const found = await backend.statMany(checksums, signal);
    checksums.forEach((c, i) => sizes.set(c, found[i]?.size));
  } else {
    const stat = async (c: string) => sizes.set(c, (await backend.stat(c))?.size);
    for await (const _ of mapOrdered(checksums, STATS_IN_FLIGHT, stat, signal)) void _;
  }
  return sizes;
}

/** A block list too large for one transaction: BATCH rows at a time, the version leased meanwhile. */
async function insertInBatches(
  meta: MetaStore,
  store: BlockStore,
  read: () => AsyncIterable<Buffer>,
  name: string,
  checked: { header: ExportHeader; blocks: number },
  version: Version,
  progress: ProgressReporter,
  signal: AbortSignal | undefined,
  durable: boolean,
): Promise<ImportResult> {
  const h = checked.header;
  // Incomplete and leased while blocks go in: cleanup keeps every object adopted here.
  const lease = await meta.insertVersionWithLease(version, 'import');
  const stopHeartbeat = keepLeaseAlive(meta, lease.id);
  let missing = 0;
  const damaged = new Set<string>();
  try {
    const flush = async (rows: BlockRow[]) => {
      const ok = await meta.adoptObjects(await lookUp(store, rows, signal));
      for (const r of rows) {
        if (r.checksum !== null && !ok.has(r.checksum)) {
          r.valid = false;
          missing++;
        } else if (r.checksum !== null && !r.valid && !damaged.has(r.checksum)) {
          // Validity follows objects: an entry the file says is damaged names a damaged object.
          damaged.add(r.checksum);
          await meta.markObjectInvalid(r.checksum);
        }
      }
      await meta.putBlocks(version.uid, rows);
      progress.advance(rows.length);
    };
    let rows: BlockRow[] = [];
    for await (const row of reparsed(read, name, h)) {
      rows.push(row);
      if (rows.length >= BATCH) {
        await flush(rows);
        rows = [];
      }
    }
    await flush(rows);
    if (h.labels) await changeLabels(meta, version.uid, { set: h.labels, remove: [] });
    signal?.throwIfAborted();
    let downgraded = false;
    // Completion seals the block list whatever the file says; an invalid version stays so.
    const problem = await meta.completeVersion(version.uid, { durable });
    if (problem || h.status !== 'valid') {
      await meta.setVersionStatus(version.uid, 'invalid');
      downgraded = h.status === 'valid';
    }
    return { version: await meta.getVersion(version.uid), blocks: checked.blocks, missing, downgraded };
  } catch (err) {
    await meta.removeVersion(version.uid, { protectedToo: true }).catch(() => {});
    throw err;
  } finally {
    stopHeartbeat();
    await meta.releaseLease(lease.id).catch(() => {});
  }
}

/** Opens FILE for export; refuses to overwrite. '-' is stdout. */
export async function openExportTarget(
  path: string,
): Promise<{ out: Writable; done: (ok: boolean) => Promise<void> }> {
  if (path === '-') return { out: process.stdout, done: async () => {} };
  let fh: FileHandle;
  try {
    fh = await open(path, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST')
      throw new InputError(`${path} exists already; choose a new file name or remove it`);
    throw new InputError(`cannot create ${path}: ${code ?? err}`);
  }
  const out = fh.createWriteStream();
  return {
    out,
    done: async (ok) => {
      out.end();
      await once(out, 'close').catch(() => {});
      if (ok) {
        const check = await open(path, 'r');
        try {
          await check.sync();
        } finally {
          await check.close();
        }
      } else await unlink(path).catch(() => {});
    },
  };
}
