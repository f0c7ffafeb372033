/**
 * Scale of `backy recover`: a lost SQLite database rebuilt from the store's metadata copies,
 * through the real CLI, for (a) 1,000 small versions and (b) one version of 262,144 blocks.
 * The versions are synthesised through the MetaStore (backing up 1,000 images through the CLI
 * would measure backups), their copies written by the same code a backup uses; their blocks
 * name one real object stored by a real backup, so adoption stats it once per batch.
 *
 *   npm run build && node --import tsx bench/recover.ts
 *
 * Prints the times; nothing asserts on them.
 */
import { createHash } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { Sandbox } from '../test/lib/cli.js';
import { randomBytesSeeded } from '../test/lib/image.js';
import { readDescriptor } from '../src/core/store-descriptor.js';
import { writeVersionCopy } from '../src/core/version-copy.js';
import { MetaStore } from '../src/meta/meta-store.js';
import type { BlockRow } from '../src/meta/meta-store.js';
import { BlockStore } from '../src/storage/block-store.js';
import { DirBackend } from '../src/storage/dir-backend.js';

const BS = 64 * 1024;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const r = await fn();
  return [r, (performance.now() - t) / 1000];
}

async function scenario(label: string, versions: number, blocks: number, distinct = false): Promise<void> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  try {
    const img = sb.path('one.img');
    await writeFile(img, randomBytesSeeded('recover-bench', BS));
    const seed = await sb.backup([img, 'seed']);
    const meta = await MetaStore.open(`sqlite:///${sb.dbPath}`);
    const backend = new DirBackend(sb.dataDir);
    const store = new BlockStore(backend, {
      hashFunction: meta.hashFunction,
      compression: { codec: 'zstd', level: 1 },
    });
    const { storeId } = (await readDescriptor(backend))!;
    const checksum = (await meta.blockPage(seed, 0, 1))[0].checksum;
    let copyBytes = 0;
    const [, synth] = await timed(async () => {
      for (let i = 0; i < versions; i++) {
        const v = await meta.createVersion({ name: `vm${i % 10}`, sizeBytes: blocks * BS, blockSize: BS });
        // distinct: a realistic copy size (random checksums compress little), each object absent
        // from the store (recover stats every one and recovers the version as invalid).
        const rows: BlockRow[] = Array.from({ length: blocks }, (_, idx) => ({
          idx,
          checksum: distinct ? createHash('sha256').update(`${i}/${idx}`).digest('hex') : checksum,
          size: BS,
          valid: true,
        }));
        await meta.putBlocks(v.uid, rows);
        if (distinct) await meta.setVersionStatus(v.uid, 'invalid');
        else {
          const problem = await meta.completeVersion(v.uid);
          if (problem) throw new Error(problem);
        }
        await writeVersionCopy(meta, store, storeId, v.uid);
        copyBytes += (await backend.getMeta(`version-${v.uid}`))!.length;
      }
    });
    const [, oneCopy] = await timed(async () => {
      const v = (await meta.listVersions({ name: 'vm0' }))[0];
      await writeVersionCopy(meta, store, storeId, v.uid);
    });
    await meta.close();
    for (const s of ['', '-wal', '-shm']) await rm(sb.dbPath + s, { force: true });
    const [r, secs] = await timed(() => sb.ok(['-m', 'recover']));
    const added = r.stdout.trim().split('\n').length;
    if (added !== versions + 1) throw new Error(`recovered ${added}, expected ${versions + 1}`);
    const [again, secs2] = await timed(() => sb.ok(['-m', 'recover']));
    if (again.stdout !== '') throw new Error('second run added versions');
    console.log(
      `${label}: ${versions} versions x ${blocks} blocks; copies ${(copyBytes / 1e6).toFixed(2)} MB in all ` +
        `(synthesised with copies in ${synth.toFixed(1)} s; one copy rewritten in ${oneCopy.toFixed(3)} s); ` +
        `recover ${secs.toFixed(2)} s, second run (nothing to add) ${secs2.toFixed(2)} s`,
    );
  } finally {
    await sb.remove();
  }
}

if (!process.argv.includes('--only-distinct')) {
  await scenario('1,000 versions', 1000, 16);
  await scenario('one 262,144-block version', 1, 262_144);
}
await scenario('one 262,144-block version, 262,144 distinct objects', 1, 262_144, true);
