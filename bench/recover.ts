/**
 * Scale of `backy recover`: a lost SQLite database rebuilt from the store's metadata copies,
 * through the real CLI, for (a) 1,000 small versions and (b) one version of 262,144 blocks.
 * The versions are synthesised (test/lib/synth-versions.ts); their blocks name one real object
 * stored by a real backup, so adoption stats it once per batch.
 *
 *   npm run build && node --import tsx bench/recover.ts
 *
 * Prints the times; nothing asserts on them.
 */
import { rm } from 'node:fs/promises';
import { Sandbox } from '../test/lib/cli.js';
import { seedStore, synthesiseVersions } from '../test/lib/synth-versions.js';
import { writeVersionCopy } from '../src/core/version-copy.js';

const BS = 64 * 1024;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const r = await fn();
  return [r, (performance.now() - t) / 1000];
}

async function scenario(label: string, versions: number, blocks: number, distinct = false): Promise<void> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  try {
    const synth = await seedStore(sb, BS, 'recover-bench');
    const { meta, store, storeId } = synth;
    const [{ copyBytes }, synthSecs] = await timed(() =>
      synthesiseVersions(synth, { versions, blocks, blockSize: BS, distinct }),
    );
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
        `(synthesised with copies in ${synthSecs.toFixed(1)} s; one copy rewritten in ${oneCopy.toFixed(3)} s); ` +
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
