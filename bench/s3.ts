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
 * Usage: npm run bench:s3 -- [--size 2G] [--reps 3] [--tools backy,borg,restic] [--dir PARENT] [--keep]
 *        [--store s3]
 *
 * `--store s3`: backy's blocks and restic's repository go to an S3 gateway (a fresh bucket
 * each per repetition; borg has no S3 backend and is left out): the radosgw of
 * $BACKY_TEST_S3_ENDPOINT (with $BACKY_TEST_S3_ACCESS_KEY, $BACKY_TEST_S3_SECRET_KEY), or one
 * started for the run with ../shared/tools/mini-ceph.sh. Store sizes are not shown then.
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BIN, REPO } from '../test/lib/cli.js';
import { mixedKind, scribble, writeImage } from '../test/lib/image.js';
import { newBucket, rgwServer } from '../test/lib/rgw.js';

const BLOCK = 4 << 20;
const MB = 1e6;

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string', default: tmpdir() },
    keep: { type: 'boolean', default: false },
    tools: { type: 'string', default: 'backy,borg,restic' },
    store: { type: 'string', default: 'file' },
  },
});
if (args.store !== 'file' && args.store !== 's3') throw new Error(`--store: file or s3, got '${args.store}'`);
const onS3 = args.store === 's3';

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i.exec(s.trim());
  if (!m) throw new Error(`--size: cannot parse '${s}' (e.g. 2G, 512M, 8G)`);
  const exp = ' KMGT'.indexOf(m[2].toUpperCase() || ' ');
  return Math.round(Number(m[1]) * 1024 ** exp);
}

interface Run {
  wall: number;
  cpu: number;
  rssMB: number;
  stdout: string;
}

/** Runs a command under /usr/bin/time; rejects on a non-zero exit with its stderr. */
async function timed(
  cmd: string,
  argv: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Run> {
  const timeFile = join(work, `.time-${process.pid}`);
  const start = performance.now();
  const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
    (resolve, reject) => {
      const child = spawn('/usr/bin/time', ['-f', '%U %S %M', '-o', timeFile, cmd, ...argv], {
        cwd: opts.cwd,
        env: { ...process.env, ...opts.env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.on('error', reject);
      child.on('close', (c) =>
        resolve({ code: c, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }),
      );
    },
  );
  const wall = (performance.now() - start) / 1000;
  if (code !== 0) throw new Error(`${cmd} ${argv.join(' ')} exited ${code}:\n${stderr.slice(-2000)}`);
  const last = (await readFile(timeFile, 'utf8')).trim().split('\n').pop()!;
  const [user, sys, rssKiB] = last.split(' ').map(Number);
  return { wall, cpu: user + sys, rssMB: (rssKiB * 1024) / MB, stdout };
}

/** An untimed command (setup, sync). */
async function run(cmd: string, argv: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(cmd, argv, {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (c) =>
      c === 0
        ? resolve(Buffer.concat(out).toString())
        : reject(new Error(`${cmd} ${argv.join(' ')} exited ${c}:\n${Buffer.concat(err).toString()}`)),
    );
  });
}

async function installed(cmd: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

/** Bytes on disk under a path (allocated blocks, like du). */
async function diskUsage(path: string): Promise<number> {
  const out = await run('du', ['-s', '-B1', path]);
  return Number(out.split('\t')[0]);
}

async function readAll(path: string): Promise<void> {
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) void chunk;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

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

const s3 = onS3 ? await rgwServer() : undefined;
const s3Env = s3 ? { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey } : {};
const backyCfg = join(work, 'backy.cfg');
const backyStore = join(work, 'backy-store');
const writeBackyCfg = async () => {
  const data = s3
    ? `type = s3\nendpoint = ${s3.endpoint}\nbucket = ${newBucket('bench')}\n`
    : `type = file\npath = ${join(backyStore, 'data')}\n`;
  await writeFile(
    backyCfg,
    `[MetaBackend]\nengine = sqlite:///${join(backyStore, 'backy.sqlite')}\n[DataBackend]\n${data}`,
  );
};
await writeBackyCfg();
const backy = (argv: string[]) =>
  timed(process.execPath, [BIN, '-c', backyCfg, ...argv], { cwd: work, env: s3Env });
const lastLine = (s: string) => s.trim().split('\n').pop()!;
const hasScrub = (await run(process.execPath, [BIN, '--help'])).includes('scrub');

const borgRepo = join(work, 'borg-repo');
const borgEnv = {
  BORG_BASE_DIR: join(work, 'borg-home'),
  BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
  BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
};
let resticRepo = join(work, 'restic-repo');
const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: join(work, 'restic-cache'), ...s3Env };
const borg = (argv: string[], cwd = work) => timed('borg', argv, { cwd, env: borgEnv });
const restic = (argv: string[]) =>
  timed('restic', ['-r', resticRepo, ...argv], { cwd: work, env: resticEnv });

type Job = 'full backup' | 'incremental' | 'restore' | 'scrub';
const JOBS: Job[] = ['full backup', 'incremental', 'restore', 'scrub'];

interface Tool {
  name: string;
  reset(): Promise<void>;
  store: string;
  jobs: Partial<Record<Job, () => Promise<Run>>>;
}

const restoreDir = join(work, 'restore');
let backyFull = '';
const tools: Tool[] = [
  {
    name: 'backy',
    store: backyStore,
    async reset() {
      await rm(backyStore, { recursive: true, force: true });
      await writeBackyCfg();
    },
    jobs: {
      'full backup': async () => {
        const r = await backy(['backup', baseImg, 'bench@full']);
        backyFull = lastLine(r.stdout);
        return r;
      },
      incremental: () => backy(['backup', '-r', hintsFile, '-f', backyFull, changedImg, 'bench@incr']),
      restore: () => backy(['restore', backyFull, join(restoreDir, 'backy.img')]),
      ...(hasScrub ? { scrub: () => backy(['scrub', backyFull]) } : {}),
    },
  },
];
const wanted = new Set(args.tools!.split(','));
if (wanted.has('borg') && !onS3 && (await installed('borg'))) {
  const chunker = ['--chunker-params', 'fixed,4194304', '--compression', 'lz4'];
  tools.push({
    name: 'borg',
    store: borgRepo,
    async reset() {
      await rm(borgRepo, { recursive: true, force: true });
      await rm(borgEnv.BORG_BASE_DIR, { recursive: true, force: true });
      await run('borg', ['init', '--encryption=none', borgRepo], { env: borgEnv });
    },
    jobs: {
      'full backup': () => borg(['create', ...chunker, `${borgRepo}::full`, 'base.img']),
      incremental: () => borg(['create', ...chunker, `${borgRepo}::incr`, 'changed.img']),
      restore: () => borg(['extract', `${borgRepo}::full`, 'base.img'], join(restoreDir, 'borg')),
      scrub: () => borg(['check', '--verify-data', borgRepo]),
    },
  });
}
if (wanted.has('restic') && (await installed('restic'))) {
  let fullId = '';
  tools.push({
    name: 'restic',
    store: resticRepo,
    async reset() {
      if (s3) resticRepo = `s3:${s3.endpoint}/${newBucket('restic')}`;
      else await rm(resticRepo, { recursive: true, force: true });
      await rm(resticEnv.RESTIC_CACHE_DIR, { recursive: true, force: true });
      await run('restic', ['-r', resticRepo, 'init'], { env: resticEnv });
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
  });
}

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
for (const job of JOBS) {
  for (const t of tools) {
    const m = med(`${job}\0${t.name}`);
    if (!m) {
      rows.push([job, t.name, 'n/a', '', '', '', '']);
      continue;
    }
    rows.push([
      job,
      t.name,
      m.wall.toFixed(2),
      m.cpu.toFixed(2),
      m.rssMB.toFixed(0),
      mb(size / m.wall),
      m.store === undefined ? '' : mb(m.store),
    ]);
  }
}
for (const l of limits) {
  const m = med(`limit\0${l.name}`)!;
  rows.push([
    'limit',
    l.name,
    m.wall.toFixed(2),
    m.cpu.toFixed(2),
    m.rssMB.toFixed(0),
    mb(size / m.wall),
    '',
  ]);
}
const header = ['job', 'tool', 'wall s', 'CPU s', 'peak RSS MB', 'MB/s', 'store MB'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]) =>
  `| ${r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
const out: string[] = [];
out.push(
  `backy bench: ${(size / 2 ** 30).toFixed(2)} GiB mixed image (${blocks} x 4 MiB blocks; ` +
    `${changed.length} changed for the incremental), ${reps} repetitions, medians (peak RSS: max), page cache hot`,
);
out.push(
  `${availableParallelism()} cores; 1-minute load average ${loadAtStart.toFixed(1)} at the start, ` +
    `${loadavg()[0].toFixed(1)} at the end (other work on the machine slows every tool)`,
);
out.push(line(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line));

const ratio = (a: string, b: string, goal: number, what: string) => {
  const x = med(a);
  const y = med(b);
  if (!x || !y) return `- ${what}: n/a`;
  const r = x.wall / y.wall;
  return `- ${what}: ${r.toFixed(2)}x (goal <= ${goal}x) ${r <= goal ? 'met' : 'MISSED'}`;
};
out.push('', 'Goals:');
if (onS3) {
  out.splice(
    1,
    0,
    `store: S3 (radosgw ${s3!.endpoint}), backy and restic each in a fresh bucket per repetition`,
  );
  out.push(ratio('full backup\0backy', 'full backup\0restic', 0.5, 'full backup vs restic (S3)'));
  out.push(ratio('incremental\0backy', 'incremental\0restic', 0.2, 'hinted incremental vs restic (S3)'));
  out.push(ratio('restore\0backy', 'restore\0restic', 0.8, 'restore vs restic (S3)'));
}
out.push(ratio('full backup\0backy', 'full backup\0borg', 0.5, 'full backup vs borg'));
out.push(ratio('incremental\0backy', 'incremental\0borg', 0.2, 'hinted incremental vs borg'));
out.push(ratio('restore\0backy', 'restore\0borg', 0.6, 'restore vs borg extract'));
out.push(
  hasScrub
    ? ratio('scrub\0backy', 'limit\0read + sha256', 1.3, 'full scrub vs read + sha256')
    : '- full scrub vs read + sha256: n/a (no backy scrub in this build)',
);
const rss = Math.max(...JOBS.map((j) => med(`${j}\0backy`)?.rssMB ?? 0));
out.push(`- backy peak RSS: ${rss.toFixed(0)} MB (goal <= 150 MB) ${rss <= 150 ? 'met' : 'MISSED'}`);
const big = median(fromRuns.map((r) => r.big.incr));
const small = median(fromRuns.map((r) => r.small.incr));
if (fromRuns.length > 0)
  out.push(
    `- -f on a 262,144-block base: ${big.toFixed(2)} s vs ${small.toFixed(2)} s on a 1-block base: ` +
      `${(big - small).toFixed(2)} s of metadata work (goal <= ~2 s) ${big - small <= 2 ? 'met' : 'MISSED'}` +
      ` (writing that base: ${median(fromRuns.map((r) => r.big.base)).toFixed(2)} s)`,
  );
process.stdout.write(`${out.join('\n')}\n`);

await s3?.stop();
if (args.keep) process.stderr.write(`bench: kept ${work}\n`);
else await rm(work, { recursive: true, force: true });
