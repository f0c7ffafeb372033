/**
 * `npm run bench`: backy side by side with borg and restic (when installed) and with the
 * hardware's limits, on one deterministic mixed image (30% zeros/holes, 30% random, 25%
 * text-like, 15% duplicate 4 MiB blocks, from test/lib/image.ts).
 *
 * Everything runs hot: the images are read once before the first measurement and the page
 * cache is never dropped (that needs root and says little about a VM host whose images are
 * on fast storage anyway). Each tool gets a fresh repository per repetition; tools alternate
 * job by job, and the table shows medians. Wall time is measured here, CPU time (user+sys) and
 * peak RSS come from /usr/bin/time for the child process (worker threads included).
 *
 * backy runs with its default compression ('backy') and with AES-256-GCM on top
 * ('backy+aes'); borg without encryption ('borg', -e none) and with it ('borg+aes',
 * repokey-blake2), both lz4. `--compression none,zstd:1,zstd:3` adds a backy row per setting
 * (how the default was chosen).
 *
 * `--store s3` (npm run bench:s3): backy's blocks and restic's repository go to an S3 gateway
 * (a fresh bucket each per repetition; borg has no S3 backend and is left out): the radosgw of
 * $BACKY_TEST_S3_ENDPOINT (with $BACKY_TEST_S3_ACCESS_KEY, $BACKY_TEST_S3_SECRET_KEY), or one
 * started for the run with ../shared/tools/mini-ceph.sh. Store sizes and the -f metadata cost
 * (a file-store matter) are not measured then, and the goals are relative to restic's S3 backend.
 * `--tls` (with --store s3): over HTTPS instead, the gateway of $BACKY_TEST_S3_TLS_ENDPOINT
 * (with $BACKY_TEST_S3_CA_FILE) or one started with test/lib/rgw-tls.sh; backy trusts it through
 * ca_file, restic through --cacert.
 *
 * Usage: npm run bench -- [--size 2G] [--reps 3] [--tools backy,borg,restic] [--compression LIST]
 *                         [--store file|s3] [--tls] [--dir PARENT] [--keep]
 */
import { copyFile, mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BIN, REPO } from '../test/lib/cli.js';
import { mixedKind, scribble, writeImage } from '../test/lib/image.js';
import { newBucket, rgwServer, rgwTlsServer } from '../test/lib/rgw.js';
import type { Run } from './lib.js';
import { MB, diskUsage, installed, lastLine, median, parseSize, readAll, run, table, timer } from './lib.js';

const BLOCK = 4 << 20;

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string', default: tmpdir() },
    keep: { type: 'boolean', default: false },
    tools: { type: 'string', default: 'backy,borg,restic' },
    compression: { type: 'string', default: '' },
    store: { type: 'string', default: 'file' },
    tls: { type: 'boolean', default: false },
  },
});
if (args.store !== 'file' && args.store !== 's3') throw new Error(`--store: file or s3, got '${args.store}'`);
const onS3 = args.store === 's3';
if (args.tls && !onS3) throw new Error('--tls is for --store s3');

// ---- setup ----

const size = parseSize(args.size!);
const reps = Number(args.reps);
const work = await mkdtemp(join(args.dir!, 'backy-bench-'));
const baseImg = join(work, 'base.img');
const changedImg = join(work, 'changed.img');
const hintsFile = join(work, 'changed.rbd-diff.json');
const blocks = Math.floor(size / BLOCK);
const tail = size - blocks * BLOCK;

const loadAtStart = loadavg()[0];
process.stderr.write(`bench: ${work}, image ${(size / 2 ** 30).toFixed(2)} GiB, ${reps} repetitions\n`);
await writeImage(baseImg, { blocks, blockSize: BLOCK, tail, kinds: mixedKind });
// The incremental source: the same image with ~2% of its blocks rewritten, and the rbd-diff
// hints naming exactly those blocks.
await copyFile(baseImg, changedImg);
const changed: number[] = [];
for (let i = 7; i < blocks; i += 50) changed.push(i);
for (const i of changed) await scribble(changedImg, i * BLOCK, BLOCK, `changed/${i}`);
await writeFile(
  hintsFile,
  JSON.stringify(changed.map((i) => ({ offset: i * BLOCK, length: BLOCK, exists: 'true' }))),
);
await readAll(baseImg); // warm-up: everything below runs with the images in the page cache
await readAll(changedImg);

const hasScrub = (await run(process.execPath, [BIN, '--help'])).includes('scrub');
const hasKeys = (await run(process.execPath, [BIN, '--help'])).includes('key');
const timed = timer(work);

// Started only when the measurements begin (and stopped when they end, whatever happens), so
// that setup errors leave no gateway running.
let s3: (Awaited<ReturnType<typeof rgwServer>> & { caFile?: string }) | undefined;
const s3Env = () =>
  s3 ? { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey } : {};

type Job = 'full backup' | 'incremental' | 'restore' | 'scrub';
const JOBS: Job[] = ['full backup', 'incremental', 'restore', 'scrub'];

interface Tool {
  name: string;
  reset(): Promise<void>;
  /** The local directory whose size is the store's (file store only). */
  store: string;
  jobs: Partial<Record<Job, () => Promise<Run>>>;
}

const restoreDir = join(work, 'restore');

/** backy with `dataLines` added to [DataBackend] (compression, encryption). */
function backyTool(name: string, dataLines: (dir: string) => Promise<string>): Tool {
  const dir = join(work, name);
  const store = join(dir, 'store');
  const cfg = join(dir, 'backy.cfg');
  const backy = (argv: string[]) =>
    timed(process.execPath, [BIN, '-c', cfg, ...argv], { cwd: work, env: s3Env() });
  let full = '';
  return {
    name,
    store,
    async reset() {
      await rm(dir, { recursive: true, force: true });
      await mkdir(store, { recursive: true });
      const data = s3
        ? `type = s3\nendpoint = ${s3.endpoint}\nbucket = ${newBucket('bench')}${s3.caFile ? `\nca_file = ${s3.caFile}` : ''}`
        : `type = file\npath = ${join(store, 'data')}`;
      await writeFile(
        cfg,
        `[MetaBackend]\nengine = sqlite:///${join(store, 'backy.sqlite')}\n[DataBackend]\n${data}\n${await dataLines(dir)}\n`,
      );
    },
    jobs: {
      'full backup': async () => {
        const r = await backy(['backup', baseImg, 'bench@full']);
        full = lastLine(r.stdout);
        return r;
      },
      incremental: () => backy(['backup', '-r', hintsFile, '-f', full, changedImg, 'bench@incr']),
      restore: () => backy(['restore', full, join(restoreDir, name, 'backy.img')]),
      ...(hasScrub ? { scrub: () => backy(['scrub', full]) } : {}),
    },
  };
}

function borgTool(name: string, encryption: string): Tool {
  const chunker = ['--chunker-params', 'fixed,4194304', '--compression', 'lz4'];
  const repo = join(work, `${name}-repo`);
  const env = {
    BORG_BASE_DIR: join(work, 'borg-home'),
    BORG_PASSPHRASE: 'bench',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
  };
  const borg = (argv: string[], cwd = work) => timed('borg', argv, { cwd, env });
  return {
    name,
    store: repo,
    async reset() {
      await rm(repo, { recursive: true, force: true });
      await rm(env.BORG_BASE_DIR, { recursive: true, force: true });
      await run('borg', ['init', `--encryption=${encryption}`, repo], { env });
    },
    jobs: {
      'full backup': () => borg(['create', ...chunker, `${repo}::full`, 'base.img']),
      incremental: () => borg(['create', ...chunker, `${repo}::incr`, 'changed.img']),
      restore: () => borg(['extract', `${repo}::full`, 'base.img'], join(restoreDir, name)),
      scrub: () => borg(['check', '--verify-data', repo]),
    },
  };
}

/** restic with its defaults (it always encrypts), on a local repository or a fresh bucket. */
function resticTool(): Tool {
  const local = join(work, 'restic-repo');
  const cache = join(work, 'restic-cache');
  let repo = local;
  let fullId = '';
  const env = () => ({ RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: cache, ...s3Env() });
  const tlsArgs = () => (s3?.caFile ? ['--cacert', s3.caFile] : []);
  const restic = (argv: string[]) =>
    timed('restic', ['-r', repo, ...tlsArgs(), ...argv], { cwd: work, env: env() });
  return {
    name: 'restic',
    store: local,
    async reset() {
      if (s3) repo = `s3:${s3.endpoint}/${newBucket('restic')}`;
      else await rm(local, { recursive: true, force: true });
      await rm(cache, { recursive: true, force: true });
      await run('restic', ['-r', repo, ...tlsArgs(), 'init'], { env: env() });
    },
    jobs: {
      'full backup': async () => {
        const r = await restic(['backup', '--json', 'base.img']);
        fullId = JSON.parse(lastLine(r.stdout)).snapshot_id;
        return r;
      },
      incremental: () => restic(['backup', 'changed.img']),
      restore: () => restic(['restore', fullId, '--target', join(restoreDir, 'restic')]),
      scrub: () => restic(['check', '--read-data']),
    },
  };
}

const tools: Tool[] = [backyTool('backy', async () => '')];
if (hasKeys) {
  tools.push(
    backyTool('backy+aes', async (dir) => {
      const key = join(dir, 'bench.key');
      await run(process.execPath, [BIN, 'key', 'create', key]);
      return `encryption = aes-256-gcm\nkey_file = ${key}`;
    }),
  );
}
for (const c of args.compression!.split(',').filter(Boolean)) {
  tools.push(backyTool(`backy[${c}]`, async () => `compression = ${c}`));
}
const wanted = new Set(args.tools!.split(','));
if (wanted.has('borg') && onS3) process.stderr.write('bench: borg has no S3 backend, left out\n');
else if (wanted.has('borg') && (await installed('borg'))) {
  tools.push(borgTool('borg', 'none'), borgTool('borg+aes', 'repokey-blake2'));
}
if (wanted.has('restic') && (await installed('restic'))) tools.push(resticTool());

// The hardware's limits on the same image.
const readHash = join(REPO, 'bench', 'read-hash.mjs');
const limits: { name: string; job: () => Promise<Run> }[] = [
  {
    name: 'cp + fsync',
    job: () => timed('sh', ['-c', `cp "$0" "$1" && sync "$1"`, baseImg, join(restoreDir, 'cp.img')]),
  },
  { name: 'read + sha256', job: () => timed(process.execPath, [readHash, baseImg, 'sha256']) },
  { name: 'read + blake3', job: () => timed(process.execPath, [readHash, baseImg, 'blake3']) },
  {
    name: 'read + zero check + sha256',
    job: () => timed(process.execPath, [readHash, baseImg, 'sha256', 'zero-check']),
  },
];

// ---- measure ----

interface Sample extends Run {
  store?: number;
}
const samples = new Map<string, Sample[]>();
const add = (key: string, s: Sample) => samples.set(key, [...(samples.get(key) ?? []), s]);

// Deleting GiBs right before a measurement would bill its cost (on a file system mounted with
// `discard`, the discards run for seconds after the delete) to whoever runs next: deletions
// happen only between repetitions, followed by a sync and a pause.
async function settle(...paths: string[]) {
  for (const p of paths) await rm(p, { recursive: true, force: true });
  await run('sync', []);
  await new Promise((r) => setTimeout(r, 3000));
}

if (onS3) s3 = args.tls ? await rgwTlsServer() : await rgwServer();
const s3Endpoint = s3?.endpoint;
try {
  for (let rep = 0; rep < reps; rep++) {
    const order = tools.map((_, i) => tools[(i + rep) % tools.length]);
    for (const t of order) await t.reset();
    await settle(restoreDir);
    for (const t of tools) await mkdir(join(restoreDir, t.name), { recursive: true });
    for (const job of JOBS) {
      for (const t of order) {
        const fn = t.jobs[job];
        if (!fn) continue;
        await run('sync', []); // start each run without the previous one's dirty pages
        process.stderr.write(`bench: rep ${rep + 1}/${reps} ${t.name} ${job}\n`);
        const r = await fn();
        const store =
          !onS3 && (job === 'full backup' || job === 'incremental') ? await diskUsage(t.store) : undefined;
        add(`${job}\0${t.name}`, { ...r, store });
      }
    }
    await settle(restoreDir);
    await mkdir(restoreDir, { recursive: true });
    for (const l of limits) {
      await run('sync', []);
      add(`limit\0${l.name}`, await l.job());
    }
  }
} finally {
  await s3?.stop();
}
await rm(restoreDir, { recursive: true, force: true });

// -f on a 262,144-block base (a 1 TiB sparse image, 4 MiB blocks): the base is written from
// one hinted block (the rest sparse), then a backup with -f copies its block list and
// completes it. Against the same on a one-block image, the difference is metadata work.
async function fromCost(imgSize: number): Promise<{ base: number; incr: number }> {
  const dir = join(work, `from-${imgSize}`);
  await mkdir(dir);
  const img = join(dir, 'sparse.img');
  await writeFile(img, '');
  await truncate(img, imgSize);
  const hints = join(dir, 'one.json');
  await writeFile(hints, JSON.stringify([{ offset: 0, length: BLOCK, exists: 'true' }]));
  const cfg = join(dir, 'backy.cfg');
  await writeFile(
    cfg,
    `[MetaBackend]\nengine = sqlite:///${join(dir, 'backy.sqlite')}\n[DataBackend]\ntype = file\npath = ${join(dir, 'data')}\n`,
  );
  const b = (argv: string[]) => timed(process.execPath, [BIN, '-c', cfg, ...argv], { cwd: dir });
  const base = await b(['backup', '-r', hints, img, 'from@base']);
  const incr = await b(['backup', '-r', hints, '-f', lastLine(base.stdout), img, 'from@incr']);
  await rm(dir, { recursive: true, force: true });
  return { base: base.wall, incr: incr.wall };
}
const fromRuns: { big: { base: number; incr: number }; small: { base: number; incr: number } }[] = [];
// On S3 too the block list is SQLite's: the file-store run measures it.
for (let rep = 0; rep < (onS3 ? 0 : reps); rep++) {
  process.stderr.write(`bench: rep ${rep + 1}/${reps} -f on a 262,144-block base\n`);
  fromRuns.push({ big: await fromCost(262_144 * BLOCK), small: await fromCost(BLOCK) });
}

// ---- report ----

const mb = (x: number) => (x / MB).toFixed(0);
const rows: string[][] = [];
const med = (key: string) => {
  const s = samples.get(key);
  if (!s) return undefined;
  return {
    wall: median(s.map((x) => x.wall)),
    cpu: median(s.map((x) => x.cpu)),
    rssMB: Math.max(...s.map((x) => x.rssMB)),
    store: s[0].store === undefined ? undefined : median(s.map((x) => x.store!)),
  };
};
const storeCol = !onS3; // S3 buckets have no du, and the gateway's overhead is not the tool's
const row = (job: string, tool: string, m: ReturnType<typeof med>) => {
  const cells = m
    ? [m.wall.toFixed(2), m.cpu.toFixed(2), m.rssMB.toFixed(0), mb(size / m.wall)]
    : ['n/a', '', '', ''];
  const store = m?.store === undefined ? '' : mb(m.store);
  rows.push([job, tool, ...cells, ...(storeCol ? [store] : [])]);
};
for (const job of JOBS) for (const t of tools) row(job, t.name, med(`${job}\0${t.name}`));
for (const l of limits) row('limit', l.name, med(`limit\0${l.name}`));
const header = ['job', 'tool', 'wall s', 'CPU s', 'peak RSS MB', 'MB/s', ...(storeCol ? ['store MB'] : [])];
const out: string[] = [];
out.push(
  `backy bench: ${(size / 2 ** 30).toFixed(2)} GiB mixed image (${blocks} x 4 MiB blocks; ` +
    `${changed.length} changed for the incremental), ${reps} repetitions, medians (peak RSS: max), page cache hot`,
);
if (onS3) {
  out.push(`store: S3 (radosgw ${s3Endpoint}), backy and restic each in a fresh bucket per repetition`);
}
out.push(
  `${availableParallelism()} cores; 1-minute load average ${loadAtStart.toFixed(1)} at the start, ` +
    `${loadavg()[0].toFixed(1)} at the end (other work on the machine slows every tool)`,
);
out.push(...table(header, rows));

const ratio = (a: string, b: string, goal: number, what: string) => {
  const x = med(a);
  const y = med(b);
  if (!x || !y) return `- ${what}: n/a`;
  const r = x.wall / y.wall;
  return `- ${what}: ${r.toFixed(2)}x (goal <= ${goal}x) ${r <= goal ? 'met' : 'MISSED'}`;
};
out.push('', 'Goals:');
if (onS3) {
  out.push(ratio('full backup\0backy', 'full backup\0restic', 0.5, 'full backup vs restic (S3)'));
  out.push(ratio('incremental\0backy', 'incremental\0restic', 0.2, 'hinted incremental vs restic (S3)'));
  out.push(ratio('restore\0backy', 'restore\0restic', 0.8, 'restore vs restic (S3)'));
} else {
  out.push(ratio('full backup\0backy', 'full backup\0borg', 0.5, 'full backup vs borg'));
  out.push(
    ratio(
      'full backup\0backy+aes',
      'full backup\0borg+aes',
      0.5,
      'encrypted full backup vs borg repokey-blake2',
    ),
  );
  out.push(ratio('incremental\0backy', 'incremental\0borg', 0.2, 'hinted incremental vs borg'));
  out.push(ratio('restore\0backy', 'restore\0borg', 0.5, 'restore vs borg extract'));
}
out.push(
  hasScrub
    ? ratio('scrub\0backy', 'limit\0read + sha256', 1.3, 'full scrub vs read + sha256')
    : '- full scrub vs read + sha256: n/a (no backy scrub in this build)',
);
if (!onS3) {
  const storeOf = (t: string) => med(`incremental\0${t}`)?.store;
  const [bs, gs] = [storeOf('backy'), storeOf('borg')];
  out.push(
    bs && gs
      ? `- store size after both backups vs borg's repository: ${mb(bs)} MB vs ${mb(gs)} MB (goal <=) ${bs <= gs ? 'met' : 'MISSED'}`
      : '- store size vs borg: n/a',
  );
}
const rss = Math.max(
  ...tools
    .filter((t) => t.name.startsWith('backy'))
    .flatMap((t) => JOBS.map((j) => med(`${j}\0${t.name}`)?.rssMB ?? 0)),
);
out.push(`- backy peak RSS: ${rss.toFixed(0)} MB (goal <= 150 MB) ${rss <= 150 ? 'met' : 'MISSED'}`);
if (fromRuns.length > 0) {
  const big = median(fromRuns.map((r) => r.big.incr));
  const small = median(fromRuns.map((r) => r.small.incr));
  out.push(
    `- -f on a 262,144-block base: ${big.toFixed(2)} s vs ${small.toFixed(2)} s on a 1-block base: ` +
      `${(big - small).toFixed(2)} s of metadata work (goal <= ~2 s) ${big - small <= 2 ? 'met' : 'MISSED'}` +
      ` (writing that base: ${median(fromRuns.map((r) => r.big.base)).toFixed(2)} s)`,
  );
}
process.stdout.write(`${out.join('\n')}\n`);

if (args.keep) process.stderr.write(`bench: kept ${work}\n`);
else await rm(work, { recursive: true, force: true });
