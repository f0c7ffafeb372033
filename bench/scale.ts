/**
 * Scale of the metadata: a 1 TiB image's block list (262,144 blocks of 4 MiB), synthesised
 * directly through the MetaStore, then copied by `backup -f` (with hints naming two changed
 * blocks of a sparse 1 TiB source) and listed by `ls`, through the real CLI.
 *
 *   npm run build && node --import tsx bench/scale.ts [ENGINE_URL ...]
 *
 * Without arguments it measures SQLite, and PostgreSQL when $BACKY_TEST_PG_URL is set or the
 * server binaries are installed (a throwaway cluster). test/e2e/scale.test.ts runs the same
 * and prints the times; nothing asserts on them.
 */
import { open, truncate, writeFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { Sandbox, parseLsMachine } from '../test/lib/cli.js';
import { randomBytesSeeded } from '../test/lib/image.js';
import { pgDatabase, pgSkipReason } from '../test/lib/pg.js';
import { MetaStore } from '../src/meta/meta-store.js';
import type { BlockRow } from '../src/meta/meta-store.js';

export const TIB = 2 ** 40;
export const BLOCK = 4 * 1024 * 1024;
export const BLOCKS = TIB / BLOCK; // 262,144
/** The blocks the hints name (and the source changes). */
export const CHANGED = [1000, 200_000];

export interface ScaleResult {
  /** Seconds. */
  putBlocks: number;
  completeBase: number;
  backupF: number;
  ls: number;
  lsMachine: number;
  baseUid: string;
  uid: string;
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const r = await fn();
  return [r, (performance.now() - t) / 1000];
}

/** Runs the scale scenario on `engine` (undefined: the sandbox's own SQLite file). */
export async function scale(engine: string | undefined): Promise<ScaleResult & { sb: Sandbox }> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BLOCK}\nhint_check_blocks = 0`, engine });
  const url = engine ?? `sqlite:///${sb.dbPath}`;
  const meta = await MetaStore.open(url);
  let baseUid: string;
  let putBlocks: number;
  let completeBase: number;
  try {
    const base = await meta.createVersion({ name: 'big@base', sizeBytes: TIB, blockSize: BLOCK });
    baseUid = base.uid;
    // An all-sparse base: consistent with a sparse source, and valid without any objects.
    const rows: BlockRow[] = Array.from({ length: BLOCKS }, (_, idx) => ({
      idx,
      checksum: null,
      size: BLOCK,
      valid: true,
    }));
    [, putBlocks] = await timed(() => meta.putBlocks(base.uid, rows));
    let problem: string | undefined;
    [problem, completeBase] = await timed(() => meta.completeVersion(base.uid));
    if (problem) throw new Error(`synthetic base not valid: ${problem}`);
  } finally {
    await meta.close();
  }

  const src = sb.path('big.img');
  await writeFile(src, '');
  await truncate(src, TIB);
  const fh = await open(src, 'r+');
  try {
    for (const idx of CHANGED)
      await fh.write(randomBytesSeeded(`scale/${idx}`, 4096), 0, 4096, idx * BLOCK + 512);
  } finally {
    await fh.close();
  }
  const hints = sb.path('hints.json');
  await writeFile(
    hints,
    JSON.stringify(CHANGED.map((idx) => ({ offset: idx * BLOCK, length: BLOCK, exists: 'true' }))),
  );

  const [uid, backupF] = await timed(() => sb.backup(['-r', hints, '-f', baseUid, src, 'big@inc']));
  const [, ls] = await timed(() => sb.ok(['ls']));
  const [lsM, lsMachine] = await timed(() => sb.ok(['-m', 'ls']));
  const listed = parseLsMachine(lsM.stdout).find((v) => v.uid === uid);
  if (!listed || listed.blocks !== BLOCKS || !listed.valid) throw new Error(`ls -m: ${lsM.stdout}`);
  return { sb, putBlocks, completeBase, backupF, ls, lsMachine, baseUid, uid };
}

export function formatResult(name: string, r: ScaleResult): string {
  const s = (x: number) => `${x.toFixed(2)} s`;
  return (
    `${name}: ${BLOCKS} blocks: putBlocks ${s(r.putBlocks)}, completeVersion ${s(r.completeBase)}, ` +
    `backup -f -r (CLI) ${s(r.backupF)}, ls ${s(r.ls)}, ls -m ${s(r.lsMachine)}`
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const engines: [string, string | undefined][] = process.argv.slice(2).map((u) => [u.split(':')[0], u]);
  if (engines.length === 0) {
    engines.push(['sqlite', undefined]);
    const skip = pgSkipReason();
    if (skip) console.error(`postgres: skipped: ${skip}`);
    else engines.push(['postgres', await pgDatabase('backy_scale')]);
  }
  for (const [name, engine] of engines) {
    const r = await scale(engine);
    console.log(formatResult(name, r));
    await r.sb.remove();
  }
}
