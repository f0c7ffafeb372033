/**
 * `npm run bench:copy`: `backy copy` from a directory store to S3 (radosgw), against
 * `restic copy` between the same kinds of repositories (a local one to a fresh bucket), on the
 * bench's 2 GiB mixed image (test/lib/image.ts) and its hinted incremental (11 of 512 blocks).
 *
 * Both tools re-encrypt: backy's source and target stores have different keys (so every block
 * is decoded, verified, renamed and encoded anew), restic's repositories different passwords
 * (the target initialised with --copy-chunker-params, as restic advises for copies). Per
 * repetition: fresh source stores are filled untimed (full backup, then the hinted
 * incremental), then each tool copies the full version to a fresh bucket, then the
 * incremental, both timed. Medians; peak RSS the max.
 *
 * S3: the radosgw of $BACKY_TEST_S3_ENDPOINT (with $BACKY_TEST_S3_ACCESS_KEY,
 * $BACKY_TEST_S3_SECRET_KEY), or one started for the run with ../shared/tools/mini-ceph.sh.
 *
 * Usage: npm run bench:copy -- [--size 2G] [--reps 3] [--dir PARENT] [--keep]
 */
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BIN } from '../test/lib/cli.js';
import { mixedKind, scribble, writeImage } from '../test/lib/image.js';
import { newBucket, rgwServer } from '../test/lib/rgw.js';
import type { Run } from './lib.js';
import { MB, installed, lastLine, median, parseSize, readAll, run, table, timer } from './lib.js';

const BLOCK = 4 << 20;

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '2G' },
    reps: { type: 'string', default: '3' },
    dir: { type: 'string', default: tmpdir() },
    keep: { type: 'boolean', default: false },
  },
});

const size = parseSize(args.size!);
const reps = Number(args.reps);
const work = await mkdtemp(join(args.dir!, 'backy-bench-copy-'));
const baseImg = join(work, 'base.img');
const changedImg = join(work, 'changed.img');
const hintsFile = join(work, 'changed.rbd-diff.json');
const blocks = Math.floor(size / BLOCK);
const tail = size - blocks * BLOCK;
const loadAtStart = loadavg()[0];

process.stderr.write(`bench:copy: ${work}, image ${(size / 2 ** 30).toFixed(2)} GiB, ${reps} repetitions\n`);
await writeImage(baseImg, { blocks, blockSize: BLOCK, tail, kinds: mixedKind });
await copyFile(baseImg, changedImg);
const changed: number[] = [];
for (let i = 7; i < blocks; i += 50) changed.push(i);
for (const i of changed) await scribble(changedImg, i * BLOCK, BLOCK, `changed/${i}`);
await writeFile(
  hintsFile,
  JSON.stringify(changed.map((i) => ({ offset: i * BLOCK, length: BLOCK, exists: 'true' }))),
);
await readAll(baseImg);
await readAll(changedImg);

const timed = timer(work);
const s3 = await rgwServer();
const s3Env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };

type Job = 'copy full' | 'copy incremental';
const JOBS: Job[] = ['copy full', 'copy incremental'];

interface Tool {
  name: string;
  /** Fresh source (filled, untimed) and target. */
  reset(): Promise<void>;
  jobs: Record<Job, () => Promise<Run>>;
}

function backyTool(): Tool {
  const dir = join(work, 'backy');
  const src = join(dir, 'src.cfg');
  const dst = join(dir, 'dst.cfg');
  const backy = (cfg: string, argv: string[]) =>
    timed(process.execPath, [BIN, '-c', cfg, ...argv], { cwd: work, env: s3Env });
  let full = '';
  let incr = '';
  return {
    name: 'backy',
    async reset() {
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      for (const k of ['src.key', 'dst.key'])
        await run(process.execPath, [BIN, 'key', 'create', join(dir, k)]);
      const enc = (k: string) => `encryption = aes-256-gcm\nkey_file = ${join(dir, k)}`;
      await writeFile(
        src,
        `[MetaBackend]\nengine = sqlite:///${join(dir, 'src.sqlite')}\n[DataBackend]\ntype = file\npath = ${join(dir, 'src-data')}\n${enc('src.key')}\n`,
      );
      await writeFile(
        dst,
        `[MetaBackend]\nengine = sqlite:///${join(dir, 'dst.sqlite')}\n[DataBackend]\ntype = s3\nendpoint = ${s3.endpoint}\nbucket = ${newBucket('bench-copy')}\n${enc('dst.key')}\n`,
      );
      full = lastLine((await backy(src, ['backup', baseImg, 'bench@full'])).stdout);
      incr = lastLine(
        (await backy(src, ['backup', '-r', hintsFile, '-f', full, changedImg, 'bench@incr'])).stdout,
      );
    },
    jobs: {
      'copy full': () => backy(src, ['copy', '--to', dst, full]),
      'copy incremental': () => backy(src, ['copy', '--to', dst, incr]),
    },
  };
}

function resticTool(): Tool {
  const local = join(work, 'restic-repo');
  const cache = join(work, 'restic-cache');
  let bucket = '';
  let full = '';
  let incr = '';
  const env = {
    RESTIC_PASSWORD: 'bench-target',
    RESTIC_FROM_PASSWORD: 'bench',
    RESTIC_CACHE_DIR: cache,
    ...s3Env,
  };
  const restic = (argv: string[]) => timed('restic', argv, { cwd: work, env });
  const snapshot = (r: Run) => JSON.parse(lastLine(r.stdout)).snapshot_id as string;
  return {
    name: 'restic',
    async reset() {
      await rm(local, { recursive: true, force: true });
      await rm(cache, { recursive: true, force: true });
      const srcEnv = { ...env, RESTIC_PASSWORD: 'bench' };
      await run('restic', ['-r', local, 'init'], { env: srcEnv });
      const b = (img: string) =>
        timed('restic', ['-r', local, 'backup', '--json', img], { cwd: work, env: srcEnv });
      full = snapshot(await b('base.img'));
      incr = snapshot(await b('changed.img'));
      bucket = `s3:${s3.endpoint}/${newBucket('restic-copy')}`;
      await run('restic', ['-r', bucket, 'init', '--from-repo', local, '--copy-chunker-params'], { env });
    },
    jobs: {
      'copy full': () => restic(['-r', bucket, 'copy', '--from-repo', local, full]),
      'copy incremental': () => restic(['-r', bucket, 'copy', '--from-repo', local, incr]),
    },
  };
}

const tools: Tool[] = [backyTool()];
if (await installed('restic')) tools.push(resticTool());
else process.stderr.write('bench:copy: restic is not installed; backy alone\n');

const samples = new Map<string, Run[]>();
try {
  for (let rep = 0; rep < reps; rep++) {
    const order = tools.map((_, i) => tools[(i + rep) % tools.length]);
    for (const t of order) await t.reset();
    for (const job of JOBS) {
      for (const t of order) {
        await run('sync', []);
        process.stderr.write(`bench:copy: rep ${rep + 1}/${reps} ${t.name} ${job}\n`);
        const key = `${job}\0${t.name}`;
        samples.set(key, [...(samples.get(key) ?? []), await t.jobs[job]()]);
      }
    }
  }
} finally {
  await s3.stop();
}

const med = (key: string) => {
  const s = samples.get(key);
  if (!s) return undefined;
  return {
    wall: median(s.map((x) => x.wall)),
    cpu: median(s.map((x) => x.cpu)),
    rssMB: Math.max(...s.map((x) => x.rssMB)),
  };
};
const rows: string[][] = [];
for (const job of JOBS) {
  for (const t of tools) {
    const m = med(`${job}\0${t.name}`);
    rows.push([
      job,
      t.name,
      ...(m ? [m.wall.toFixed(2), m.cpu.toFixed(2), m.rssMB.toFixed(0)] : ['n/a', '', '']),
    ]);
  }
}
const out: string[] = [];
out.push(
  `backy bench:copy: ${(size / 2 ** 30).toFixed(2)} GiB mixed image (${blocks} x 4 MiB blocks; ${changed.length} ` +
    `changed in the incremental), directory store -> S3 (radosgw ${s3.endpoint}), both re-encrypting, ${reps} repetitions, medians (peak RSS: max)`,
);
out.push(
  `${availableParallelism()} cores; 1-minute load average ${loadAtStart.toFixed(1)} at the start, ` +
    `${loadavg()[0].toFixed(1)} at the end (other work on the machine slows every tool)`,
);
out.push(...table(['job', 'tool', 'wall s', 'CPU s', 'peak RSS MB'], rows));
const ratio = (job: Job, goal: number) => {
  const x = med(`${job}\0backy`);
  const y = med(`${job}\0restic`);
  if (!x || !y) return `- ${job} vs restic copy: n/a`;
  const r = x.wall / y.wall;
  return `- ${job} vs restic copy: ${r.toFixed(2)}x (goal <= ${goal}x) ${r <= goal ? 'met' : 'MISSED'}`;
};
out.push('', 'Goals:', ratio('copy full', 0.5), ratio('copy incremental', 0.2));
const rss = Math.max(...JOBS.map((j) => med(`${j}\0backy`)?.rssMB ?? 0));
out.push(`- backy peak RSS: ${rss.toFixed(0)} MB (goal <= 150 MB) ${rss <= 150 ? 'met' : 'MISSED'}`);
out.push(
  `- full copy throughput: ${(size / MB / (med('copy full\0backy')?.wall ?? NaN)).toFixed(0)} MB/s of image`,
);
process.stdout.write(`${out.join('\n')}\n`);

if (args.keep) process.stderr.write(`bench:copy: kept ${work}\n`);
else await rm(work, { recursive: true, force: true });
