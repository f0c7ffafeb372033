/**
 * `npm run bench:nbd`: reading a version over NBD against `backy restore` of the same version.
 * One deterministic mixed image (test/lib/image.ts: 30% zero blocks, 30% random, 25%
 * text-like, 15% duplicates; 4 MiB blocks), backed up once; then, alternating, per repetition:
 *   - backy restore UID FILE, and restore -s (zero blocks not written, like nbdcopy)
 *   - nbdcopy URI FILE (libnbd's defaults: multi-conn, many requests in flight)
 *   - nbdcopy --connections=1 --requests=1 (a strictly sequential reader: one request at a time)
 *   - qemu-img convert -O raw URI FILE
 * Every output is compared byte for byte with the image once. Runs hot (page cache kept), as
 * bench.ts does. Prints medians, throughput, ratios and the server's peak RSS.
 *
 * Usage: npm run bench:nbd -- [--size 2G] [--reps 3] [--dir PARENT]
 */
import { readFile, rm } from 'node:fs/promises';
import { Sandbox, assertSameBytes } from '../test/lib/cli.js';
import { startServer } from '../test/lib/nbd.js';
import { median, wallTime } from './lib.js';
import { benchVersion, nbdBenchArgs } from './nbd-image.js';

const args = nbdBenchArgs('2G');
const { size, reps } = args;

async function peakRss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

const sb = await Sandbox.create();
try {
  const { image, uid } = await benchVersion(sb, args);
  const srv = await startServer(sb);
  const out = sb.path('out.img');
  const cfg = ['-c', sb.config];
  const jobs: [string, string, string[]][] = [
    ['backy restore', process.execPath, [`${process.cwd()}/bin/backy.js`, ...cfg, 'restore', uid, out]],
    [
      'backy restore -s',
      process.execPath,
      [`${process.cwd()}/bin/backy.js`, ...cfg, 'restore', '-s', uid, out],
    ],
    ['nbdcopy', 'nbdcopy', [srv.uri(uid), out]],
    ['nbdcopy, 1 conn, 1 request', 'nbdcopy', ['--connections=1', '--requests=1', srv.uri(uid), out]],
    ['qemu-img convert', 'qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri(uid), out]],
  ];
  const times = new Map<string, number[]>(jobs.map(([name]) => [name, []]));
  for (let r = 0; r < reps; r++) {
    for (const [name, cmd, argv] of jobs) {
      await rm(out, { force: true });
      times.get(name)!.push(await wallTime(cmd, argv));
      // qemu pads the size to whole 512-byte sectors; this image is whole blocks, so no padding.
      if (r === 0) await assertSameBytes(image, out);
    }
  }
  const rss = await peakRss(srv.child.pid!);
  await srv.stop();
  const restore = median(times.get('backy restore')!);
  const restoreS = median(times.get('backy restore -s')!);
  console.log(`image ${args.sizeArg} (${size} bytes), 4 MiB blocks, mixed; ${reps} repetitions, medians`);
  for (const [name, ts] of times) {
    const t = median(ts);
    console.log(
      `${name.padEnd(28)} ${t.toFixed(2).padStart(6)} s  ${(size / t / 1e6).toFixed(0).padStart(5)} MB/s  ` +
        `x${(t / restore).toFixed(2)} of restore, x${(t / restoreS).toFixed(2)} of restore -s`,
    );
  }
  console.log(`server peak RSS ${rss.toFixed(0)} MB`);
} finally {
  await sb.remove();
}
