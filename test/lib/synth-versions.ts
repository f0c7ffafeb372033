/**
 * Many versions without backing up many images: a real one-block backup stores one object,
 * then versions are synthesised through the MetaStore, each with its metadata copy written
 * by the same code a backup uses. Recover's tests and bench/recover.ts rebuild a database
 * from these copies; backing up hundreds of images through the CLI would measure backups.
 */
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { readDescriptor } from '../../src/core/store-descriptor.js';
import { writeVersionCopy } from '../../src/core/version-copy.js';
import { MetaStore } from '../../src/meta/meta-store.js';
import type { BlockRow } from '../../src/meta/meta-store.js';
import { BlockStore } from '../../src/storage/block-store.js';
import { DirBackend } from '../../src/storage/dir-backend.js';
import type { Sandbox } from './cli.js';
import { randomBytesSeeded } from './image.js';

export interface SynthStore {
  /** The one-block image backed up as `seed`, and its block. */
  img: string;
  block: Buffer;
  seed: string;
  meta: MetaStore;
  backend: DirBackend;
  store: BlockStore;
  storeId: string;
  /** The checksum of the one stored object. */
  checksum: BlockRow['checksum'];
}

/** Backs up one block (random from `label`) into `sb` as version `seed`, then opens its store. */
export async function seedStore(sb: Sandbox, blockSize: number, label: string): Promise<SynthStore> {
  const img = sb.path('one.img');
  const block = randomBytesSeeded(label, blockSize);
  await writeFile(img, block);
  const seed = await sb.backup([img, 'seed']);
  const meta = await MetaStore.open(`sqlite:///${sb.dbPath}`);
  const backend = new DirBackend(sb.dataDir);
  const store = new BlockStore(backend, {
    hashFunction: meta.hashFunction,
    compression: { codec: 'zstd', level: 1 },
  });
  const { storeId } = (await readDescriptor(backend))!;
  const checksum = (await meta.blockPage(seed, 0, 1))[0].checksum;
  return { img, block, seed, meta, backend, store, storeId, checksum };
}

/**
 * Adds `versions` versions (named vm0..vm9 in turn) of `blocks` blocks each, with their
 * metadata copies. Every block names the seed's object, and the versions are valid; with
 * `distinct`, every block names an object of its own that the store lacks (a realistic copy
 * size: random checksums compress little) and the versions are invalid.
 */
export async function synthesiseVersions(
  s: SynthStore,
  o: { versions: number; blocks: number; blockSize: number; distinct?: boolean },
): Promise<{ uids: string[]; copyBytes: number }> {
  const uids: string[] = [];
  let copyBytes = 0;
  for (let i = 0; i < o.versions; i++) {
    const v = await s.meta.createVersion({
      name: `vm${i % 10}`,
      sizeBytes: o.blocks * o.blockSize,
      blockSize: o.blockSize,
    });
    const rows: BlockRow[] = Array.from({ length: o.blocks }, (_, idx) => ({
      idx,
      checksum: o.distinct ? createHash('sha256').update(`${i}/${idx}`).digest('hex') : s.checksum,
      size: o.blockSize,
      valid: true,
    }));
    await s.meta.putBlocks(v.uid, rows);
    if (o.distinct) await s.meta.setVersionStatus(v.uid, 'invalid');
    else {
      const problem = await s.meta.completeVersion(v.uid);
      if (problem !== undefined) throw new Error(`version ${v.uid} cannot be completed: ${problem}`);
    }
    await writeVersionCopy(s.meta, s.store, s.storeId, v.uid);
    copyBytes += (await s.backend.getMeta(`version-${v.uid}`))!.length;
    uids.push(v.uid);
  }
  return { uids, copyBytes };
}
