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
 * Usage: npm run bench -- [--size 2G] [--reps 3] [--tools backy,borg,restic] [--compression LIST]
 *                         [--dir PARENT] [--keep]
 */
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BIN, REPO } from '../test/lib/cli.js';
import { mixedKind, scribble, writeImage } from '../test/lib/image.js';

const BLOCK = 4 << 20;
const MB = 1e6;

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string', default: tmpdir() },
    keep: { type: 'boolean', default: false },
    tools: { type: 'string', default: 'backy,borg,restic' },
    compression: { type: 'string', default: '' },
  },
});

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

const lastLine = (s: string) => s.trim().split('\n').pop()!;
const hasScrub = (await run(process.execPath, [BIN, '--help'])).includes('scrub');
const hasKeys = (await run(process.execPath, [BIN, '--help'])).includes('key');

const borgEnv = {
  BORG_BASE_DIR: join(work, 'borg-home'),
  BORG_PASSPHRASE: 'bench',
  BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
  BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
};
const resticRepo = join(work, 'restic-repo');
const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: join(work, 'restic-cache') };
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

/** backy with `dataLines` added to [DataBackend] (compression, encryption). */
function backyTool(name: string, dataLines: (dir: string) => Promise<string>): Tool {
  const dir = join(work, name);
  const store = join(dir, 'store');
  const cfg = join(dir, 'backy.cfg');
  const backy = (argv: string[]) => timed(process.execPath, [BIN, '-c', cfg, ...argv], { cwd: work });
  let full = '';
  return {
    name,
    store,
    async reset() {
      await rm(dir, { recursive: true, force: true });
      await mkdir(store, { recursive: true });
      await writeFile(
        cfg,
        `[MetaBackend]\nengine = sqlite:///${join(store, 'backy.sqlite')}\n[DataBackend]\ntype = file\npath = ${join(store, 'data')}\n${await dataLines(dir)}\n`,
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
function borgTool(name: string, encryption: string): Tool {
  const chunker = ['--chunker-params', 'fixed,4194304', '--compression', 'lz4'];
  const repo = join(work, `${name}-repo`);
  return {
    name,
    store: repo,
    async reset() {
      await rm(repo, { recursive: true, force: true });
      await rm(borgEnv.BORG_BASE_DIR, { recursive: true, force: true });
      await run('borg', ['init', `--encryption=${encryption}`, repo], { env: borgEnv });
    },
    jobs: {
      'full backup': () => borg(['create', ...chunker, `${repo}::full`, 'base.img']),
      incremental: () => borg(['create', ...chunker, `${repo}::incr`, 'changed.img']),
      restore: () => borg(['extract', `${repo}::full`, 'base.img'], join(restoreDir, name)),
      scrub: () => borg(['check', '--verify-data', repo]),
    },
  };
}
if (wanted.has('borg') && (await installed('borg'))) {
  tools.push(borgTool('borg', 'none'), borgTool('borg+aes', 'repokey-blake2'));
}
if (wanted.has('restic') && (await installed('restic'))) {
  let fullId = '';
  tools.push({
    name: 'restic',
    store: resticRepo,
    async reset() {
      await rm(resticRepo, { recursive: true, force: true });
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
      const store = job === 'full backup' || job === 'incremental' ? await diskUsage(t.store) : undefined;
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
for (let rep = 0; rep < reps; rep++) {
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
out.push(ratio('restore\0backy', 'restore\0borg', 0.6, 'restore vs borg extract'));
out.push(
  hasScrub
    ? ratio('scrub\0backy', 'limit\0read + sha256', 1.3, 'full scrub vs read + sha256')
    : '- full scrub vs read + sha256: n/a (no backy scrub in this build)',
);
const storeOf = (t: string) => med(`incremental\0${t}`)?.store;
const [bs, gs] = [storeOf('backy'), storeOf('borg')];
out.push(
  bs && gs
    ? `- store size after both backups vs borg's repository: ${mb(bs)} MB vs ${mb(gs)} MB (goal <=) ${bs <= gs ? 'met' : 'MISSED'}`
    : '- store size vs borg: n/a',
);
const rss = Math.max(
  ...tools
    .filter((t) => t.name.startsWith('backy'))
    .flatMap((t) => JOBS.map((j) => med(`${j}\0${t.name}`)?.rssMB ?? 0)),
);
out.push(`- backy peak RSS: ${rss.toFixed(0)} MB (goal <= 150 MB) ${rss <= 150 ? 'met' : 'MISSED'}`);
const big = median(fromRuns.map((r) => r.big.incr));
const small = median(fromRuns.map((r) => r.small.incr));
out.push(
  `- -f on a 262,144-block base: ${big.toFixed(2)} s vs ${small.toFixed(2)} s on a 1-block base: ` +
    `${(big - small).toFixed(2)} s of metadata work (goal <= ~2 s) ${big - small <= 2 ? 'met' : 'MISSED'}` +
    ` (writing that base: ${median(fromRuns.map((r) => r.big.base)).toFixed(2)} s)`,
);
process.stdout.write(`${out.join('\n')}\n`);

if (args.keep) process.stderr.write(`bench: kept ${work}\n`);
else await rm(work, { recursive: true, force: true });
