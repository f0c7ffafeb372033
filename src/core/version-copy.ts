/**
 * One metadata copy per version in the store's meta namespace, `version-<uid>`: the version's
 * export (metadata-io.ts, with its labels and the store id in the header), encoded like a block
 * (meta-codec.ts: compressed; encrypted and authenticated under the copy's name when the store
 * is). Written when the version becomes valid and whenever its recorded state changes; so the
 * data store alone is enough for `backy recover` to rebuild the database.
 *
 * The copy is built in memory (~110 bytes a block before compression: 28 MB for a 1 TiB image
 * of 4 MiB blocks) and written in one put, so no reader ever sees a partial copy.
 */
import { Writable } from 'node:stream';
import { labelsOf } from '../meta/catalog.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { decodeMetaObject, encodeMetaObject } from '../storage/meta-codec.js';
import type { MetaCodecSpec } from '../storage/meta-codec.js';
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
 * when the version is gone. An incomplete version has no copy (nothing to recover).
 */
export async function writeVersionCopy(
  meta: MetaStore,
  store: BlockStore,
  storeId: string,
  uid: string,
): Promise<'written' | 'removed' | 'skipped'> {
  const v = await meta.findVersion(uid);
  if (!v) {
    await store.backend.deleteMeta(copyName(uid));
    return 'removed';
  }
  if (v.status === 'incomplete') return 'skipped';
  const chunks: Buffer[] = [];
  const out = new Writable({
    highWaterMark: 1 << 30,
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
      cb();
    },
  });
  await exportVersion({
    meta,
    uid,
    out,
    copy: async () => ({ labels: (await labelsOf(meta, [uid])).get(uid) ?? {}, storeId }),
  });
  const name = copyName(uid);
  await store.backend.putMeta(name, encodeMetaObject(name, Buffer.concat(chunks), codecSpec(store)));
  return 'written';
}

export async function removeVersionCopy(store: BlockStore, uid: string): Promise<void> {
  await store.backend.deleteMeta(copyName(uid));
}

/**
 * The decoded copy of `uid`: undefined when there is none; throws DamagedCopyError when it
 * cannot be decoded (truncated, tampered, moved from another name, another store's key).
 */
export async function readVersionCopy(store: BlockStore, uid: string): Promise<Buffer | undefined> {
  const name = copyName(uid);
  const obj = await store.backend.getMeta(name);
  return obj && decodeMetaObject(name, obj, codecSpec(store));
}
