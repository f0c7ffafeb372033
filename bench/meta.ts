/**
 * What metadata costs (issue 22), through the real CLI on real files:
 *   A. a 100 GiB thin image, VERSIONS forward incrementals (-r hints, 26 random changed blocks
 *      of compressible data each): database and metadata copies per version against the data;
 *   B. an unchanged 6 TiB sparse image backed up with empty hints: time and new metadata;
 *   C. a 1 TiB sparse file with 100 × 64 KiB of data: backy against `borg create --sparse`;
 *   D. 10,000 versions (synthesised through MetaStore: a 1 GiB image, 4 changed blocks each):
 *      ls (table, -m, --json), du, enforce --dry-run, rm of one, enforce removing 1,000, cleanup.
 *
 *   npm run bench:meta [-- --engine sqlite|postgres|both] [-- --versions N] [-- --only A,B,C,D]
 *
 * PostgreSQL: a database on $BACKY_TEST_PG_URL's server (or a throwaway cluster).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sandbox } from '../test/lib/cli.js';
import { pgDatabase, pgSkipReason } from '../test/lib/pg.js';
import { MetaStore } from '../src/meta/meta-store.js';
import type { BlockRow } from '../src/meta/meta-store.js';

const MIB = 2 ** 20;
const GIB = 2 ** 30;
const TIB = 2 ** 40;
const BLOCK = 4 * MIB;

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const VERSIONS = Number(opt('versions', '200'));
const ONLY = new Set(opt('only', 'A,B,C,D').split(','));
const ENGINES = opt('engine', 'both');

const fmt = (b: number) => (b >= MIB ? `${(b / MIB).toFixed(1)} MB` : `${(b / 1024).toFixed(1)} KB`);
const secs = (t: number) => `${t.toFixed(2)} s`;

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const r = await fn();
  return [r, (performance.now() - t) / 1000];
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += (await stat(join(e.parentPath, e.name))).size;
  }
  return total;
}

async function dbBytes(sb: Sandbox, engine: string | undefined): Promise<number> {
  if (!engine) {
    let total = 0;
    for (const suffix of ['', '-wal'])
      total += await stat(sb.dbPath + suffix).then(
        (s) => s.size,
        () => 0,
      );
    return total;
  }
  const out = execFileSync('psql', [engine, '-Atc', 'SELECT pg_database_size(current_database())']);
  return Number(String(out).trim());
}

/** A sparse file of `size` bytes. */
async function sparseFile(path: string, size: number): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
}

/** Writes compressible data (16 KiB random, the rest zeros: not sparse) into blocks. */
async function dirty(path: string, blocks: number[]): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    for (const idx of blocks) {
      const buf = Buffer.alloc(BLOCK, 0x61);
      randomBytes(16 * 1024).copy(buf, 0);
      await fh.write(buf, 0, BLOCK, idx * BLOCK);
    }
  } finally {
    await fh.close();
  }
}

async function workloadA(engine: string | undefined, label: string): Promise<void> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BLOCK}\nhint_check_blocks = 0`, engine });
  const img = sb.path('thin.img');
  const size = 100 * GIB;
  const n = size / BLOCK;
  await sparseFile(img, size);
  await dirty(
    img,
    Array.from({ length: 26 }, (_, i) => i * 997),
  );
  let base = await sb.backup([img, 'thin']);
  const db0 = await dbBytes(sb, engine);
  const meta0 = await dirBytes(join(sb.dataDir, 'meta')).catch(() => 0);
  const data0 = (await dirBytes(sb.dataDir)) - meta0;
  const times: number[] = [];
  for (let v = 0; v < VERSIONS; v++) {
    const picked = new Set<number>();
    while (picked.size < 26) picked.add(Math.floor(Math.random() * n));
    const changed = [...picked].sort((a, b) => a - b);
    await dirty(img, changed);
    const hints = sb.path('hints.json');
    await writeFile(
      hints,
      JSON.stringify(changed.map((idx) => ({ offset: idx * BLOCK, length: BLOCK, exists: 'true' }))),
    );
    const [uid, t] = await timed(() => sb.backup(['-r', hints, '-f', base, img, 'thin']));
    times.push(t);
    base = uid;
  }
  const db1 = await dbBytes(sb, engine);
  const meta1 = await dirBytes(join(sb.dataDir, 'meta')).catch(() => 0);
  const data1 = (await dirBytes(sb.dataDir)) - meta1;
  const [, du] = await timed(() => sb.ok(['du']));
  const dbPer = (db1 - db0) / VERSIONS;
  const metaPer = (meta1 - meta0) / VERSIONS;
  const dataPer = (data1 - data0) / VERSIONS;
  console.log(
    `A ${label}: 100 GiB, ${VERSIONS} incrementals of 26 blocks: per version database ${fmt(dbPer)}, ` +
      `store metadata copies ${fmt(metaPer)}, data ${fmt(dataPer)}; metadata/data ${(((dbPer + metaPer) / dataPer) * 100).toFixed(1)} % ` +
      `(database alone ${((dbPer / dataPer) * 100).toFixed(1)} %); database total ${fmt(db1)}, data ${fmt(data1)}; ` +
      `backup -f median ${secs(times.sort((a, b) => a - b)[times.length >> 1])}; du ${secs(du)}`,
  );
  await sb.remove();
}

async function workloadB(engine: string | undefined, label: string): Promise<void> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BLOCK}\nhint_check_blocks = 0`, engine });
  const img = sb.path('big.img');
  await sparseFile(img, 6 * TIB);
  const [base, full] = await timed(() => sb.backup([img, 'big']));
  const db0 = await dbBytes(sb, engine);
  const meta0 = await dirBytes(join(sb.dataDir, 'meta')).catch(() => 0);
  const hints = sb.path('empty.json');
  await writeFile(hints, '[]');
  const [, inc] = await timed(() => sb.backup(['-r', hints, '-f', base, img, 'big']));
  const db1 = await dbBytes(sb, engine);
  const meta1 = await dirBytes(join(sb.dataDir, 'meta')).catch(() => 0);
  console.log(
    `B ${label}: unchanged 6 TiB sparse image: full backup ${secs(full)}; backup -f with empty hints ${secs(inc)} ` +
      `(whole CLI run), new database ${fmt(db1 - db0)}, new store metadata ${fmt(meta1 - meta0)}`,
  );
  await sb.remove();
}

async function workloadC(engine: string | undefined, label: string): Promise<void> {
  const sb = await Sandbox.create({ engine });
  const img = sb.path('sparse.img');
  await sparseFile(img, TIB);
  const fh = await open(img, 'r+');
  for (let i = 0; i < 100; i++)
    await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, Math.floor((i * TIB) / 100));
  await fh.close();
  const [, backy] = await timed(() => sb.backup([img, 'sparse']));
  let borg = 'borg not installed';
  if (spawnSync('borg', ['--version']).status === 0) {
    const repo = sb.path('borg');
    const env = { ...process.env, BORG_PASSPHRASE: '', BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes' };
    execFileSync('borg', ['init', '-e', 'none', repo], { env });
    const t = performance.now();
    execFileSync(
      'borg',
      [
        'create',
        '--sparse',
        '--chunker-params',
        'fixed,4194304',
        '--files-cache=disabled',
        `${repo}::a`,
        img,
      ],
      {
        env,
        cwd: sb.path('.'),
      },
    );
    const b = (performance.now() - t) / 1000;
    borg = `borg create --sparse (fixed 4 MiB chunker: its sparse detection) ${secs(b)} (backy/borg ${(backy / b).toFixed(2)}x)`;
  }
  console.log(`C ${label}: 1 TiB sparse file, 100 x 64 KiB data: backy ${secs(backy)}; ${borg}`);
  await sb.remove();
}

async function workloadD(engine: string | undefined, label: string): Promise<void> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BLOCK}`, engine });
  const url = engine ?? `sqlite:///${sb.dbPath}`;
  const meta = await MetaStore.open(url);
  const n = GIB / BLOCK;
  const total = 10_000;
  const [, synth] = await timed(async () => {
    const checksum = (i: number) => i.toString(16).padStart(64, '0');
    await meta.recordObjects(
      Array.from({ length: n + 4 * total }, (_, i) => ({ checksum: checksum(i + 1), storedSize: 1000 })),
      1,
    );
    let base = await meta.createVersion({ name: 'vm', sizeBytes: GIB, blockSize: BLOCK });
    const rows: BlockRow[] = Array.from({ length: n }, (_, idx) => ({
      idx,
      checksum: checksum(idx + 1),
      size: BLOCK,
      valid: true,
    }));
    await meta.putBlocks(base.uid, rows);
    await meta.completeVersion(base.uid, { durable: false });
    for (let v = 1; v < total; v++) {
      const next = await meta.createVersion({
        name: `vm${v % 10}`,
        sizeBytes: GIB,
        blockSize: BLOCK,
        baseUid: base.uid,
      });
      await meta.copyBlocks(base.uid, next.uid, n);
      await meta.putBlocks(
        next.uid,
        Array.from({ length: 4 }, (_, j) => ({
          idx: (v * 7 + j * 61) % n,
          checksum: checksum(n + v * 4 + j + 1),
          size: BLOCK,
          valid: true,
        })),
      );
      await meta.completeVersion(next.uid, { durable: false });
      base = next;
    }
  });
  await meta.close();
  const t = async (argv: string[]) => (await timed(() => sb.ok(argv)))[1];
  const ls = await t(['ls']);
  const lsM = await t(['-m', 'ls']);
  const lsJ = await t(['--json', 'ls']);
  const du = await t(['-m', 'du']);
  const dry = await t(['enforce', '--dry-run', 'latest9000', 'vm1']);
  const list = (await sb.ok(['-m', 'ls'])).stdout.trim().split('\n');
  const victim = list[list.length - 1].split(' ')[6];
  const rm = await t(['rm', victim]);
  const enforce = await t(['enforce', 'latest1', 'vm1', 'vm2']);
  console.log(
    `D ${label}: 10,000 versions of 1 GiB (synthesised in ${secs(synth)}): ls ${secs(ls)}, ls -m ${secs(lsM)}, ` +
      `ls --json ${secs(lsJ)}, du ${secs(du)}, enforce --dry-run ${secs(dry)}, rm ${secs(rm)} (whole CLI run), ` +
      `enforce removing ~2,000 ${secs(enforce)}`,
  );
  await sb.remove();
}

const engines: [string, string | undefined][] = [];
if (ENGINES !== 'postgres') engines.push(['sqlite', undefined]);
if (ENGINES !== 'sqlite') {
  const skip = pgSkipReason();
  if (skip) console.error(`postgres: skipped: ${skip}`);
  else engines.push(['postgres', undefined]);
}
for (const [label, engineDefault] of engines) {
  const db = async (name: string) => (label === 'postgres' ? await pgDatabase(name) : engineDefault);
  if (ONLY.has('A')) await workloadA(await db('backy_meta_a'), label);
  if (ONLY.has('B')) await workloadB(await db('backy_meta_b'), label);
  if (ONLY.has('C') && label === 'sqlite') await workloadC(undefined, label);
  if (ONLY.has('D')) await workloadD(await db('backy_meta_d'), label);
}
