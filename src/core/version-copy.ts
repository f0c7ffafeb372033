/**
 * One metadata copy per version in the store's meta namespace, `version-<uid>`: the version's
 * export (metadata-io.ts, with its labels and the store id in the header), encoded like a block
 * (meta-codec.ts: compressed; encrypted and authenticated under the copy's name when the store
 * is, else with a SHA-256 trailer: every byte checked). Written when the version is completed
 * and whenever its recorded state changes (copy-keeper.ts); so the data store alone is enough
 * for `backy recover` to rebuild the database.
 *
 * The copy is streamed (~110 bytes a block before compression: 28 MB for a 1 TiB image of
 * 4 MiB blocks, never all in memory): a first pass over the block list counts its bytes (the
 * copy's header, authenticated before any data, holds its length), a second encodes and writes
 * it through one atomic put, so no reader ever sees a partial copy. Should the version change
 * between the passes (a scrub marking a block invalid), the lengths differ, the put fails
 * before the copy replaces anything, and the copy is built again.
 */
import { PassThrough, Writable } from 'node:stream';
import { labelsOf } from '../meta/catalog.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { CopyLengthError, decodeMetaCopy, encodeMetaStream } from '../storage/meta-codec.js';
import type { DecodedCopy, MetaCodecSpec } from '../storage/meta-codec.js';
import { exportVersion } from './metadata-io.js';

const PREFIX = 'version-';
const COPY_RE = /^version-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/;

export function copyName(uid: string): string {
  return `${PREFIX}${uid}`;
}

/** The uid a meta name is the copy of; undefined for other meta objects. */
export function copyUid(name: string): string | undefined {
  return COPY_RE.exec(name)?.[1];
}

function codecSpec(store: BlockStore): MetaCodecSpec {
  return { compression: store.spec.compression, key: store.spec.keys?.encryption };
}

/**
 * Writes (or replaces) the copy of version `uid` as the database records it now; removes it
 * when the version is gone (unless `ifGone` is 'keep': the caller only knows the version
 * changed, not that it was removed here). An incomplete version has no copy (nothing to recover).
 */
export async function writeVersionCopy(
  meta: MetaStore,
  store: BlockStore,
  storeId: string,
  uid: string,
  opts: { ifGone?: 'remove' | 'keep' } = {},
): Promise<'written' | 'removed' | 'skipped'> {
  const v = await meta.findVersion(uid);
  if (!v) {
    if (opts.ifGone === 'keep') return 'skipped';
    await store.backend.deleteMeta(copyName(uid));
    return 'removed';
  }
  if (v.status === 'incomplete') return 'skipped';
  const copy = async () => ({ labels: (await labelsOf(meta, [uid])).get(uid) ?? {}, storeId });
  const name = copyName(uid);
  for (let attempt = 1; ; attempt++) {
    let length = 0;
    const counter = new Writable({
      write(chunk: Buffer | string, _enc, cb) {
        length += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
        cb();
      },
    });
    await exportVersion({ meta, uid, out: counter, copy });
    // The second pass feeds the encoder through a pipe; if the put fails, the abort stops the
    // export (which may be waiting for the pipe to drain).
    const text = new PassThrough();
    const stop = new AbortController();
    let exportError: unknown;
    const exported = exportVersion({ meta, uid, out: text, copy, signal: stop.signal }).then(
      () => void text.end(),
      (err: unknown) => {
        exportError = err;
        text.destroy(err as Error);
      },
    );
    try {
      await store.backend.putMeta(name, encodeMetaStream(name, length, text, codecSpec(store)));
      await exported;
      return 'written';
    } catch (err) {
      stop.abort(err);
      await exported;
      const changed = err instanceof CopyLengthError || (err as Error)?.cause instanceof CopyLengthError;
      // Changed between the passes: count again (a version does not change for long). A put
      // that failed because the export did (e.g. the version was removed) reports the export's
      // error; otherwise the put's own (the export then only saw its pipe torn down).
      const fromExport =
        exportError !== undefined && (err === exportError || (err as Error)?.cause === exportError);
      if (!changed || attempt >= 3) throw fromExport ? exportError : err;
    }
  }
}

export async function removeVersionCopy(store: BlockStore, uid: string): Promise<void> {
  await store.backend.deleteMeta(copyName(uid));
}

/**
 * The decoded copy of `uid`: undefined when there is none; throws DamagedCopyError when it
 * cannot be decoded or fails its checksum or authentication (damaged, truncated, tampered,
 * moved from another name, another store's key).
 */
export async function readVersionCopy(store: BlockStore, uid: string): Promise<Buffer | undefined> {
  return (await readVersionCopyChecked(store, uid))?.plain;
}

/** readVersionCopy, saying too whether the copy carried a check (format 1 plaintext did not). */
export async function readVersionCopyChecked(
  store: BlockStore,
  uid: string,
): Promise<DecodedCopy | undefined> {
  const name = copyName(uid);
  const obj = await store.backend.getMeta(name);
  return obj && decodeMetaCopy(name, obj, codecSpec(store));
}
