/**
 * `npm run bench:nbd-hostile`: what stalled clients cost the others, and what forty writers
 * cost in memory (issue 20).
 *   1. nbdcopy of a version (mixed image, 4 MiB blocks) from a `backy nbd -w` server, alone,
 *      and with a stalled reader (two 32 MiB READs whose replies it never reads) and a stalled
 *      writer (a 32 MiB WRITE of which it sent 1 KiB) connected; alternating, medians.
 *   2. Forty clients writing 4 KiB into each of 8 blocks (read-modify-write), then leaving
 *      with NBD_CMD_DISC: the server's RSS idle, at its peak (VmHWM), and after they left.
 *   3. Eight nbdcopy writing 128 MiB each at once: the server's peak RSS.
 * Every nbdcopy output is compared byte for byte with the image once.
 *
 * Usage: npm run bench:nbd-hostile -- [--size 1G] [--reps 3]
 */
import { rm } from 'node:fs/promises';
import * as P from '../src/nbd/protocol.js';
import { Sandbox, assertSameBytes } from '../test/lib/cli.js';
import { writeImage } from '../test/lib/image.js';
import { RawClient, startServer } from '../test/lib/nbd.js';
import { memoryOf, stalledReader, stalledWriter } from '../test/lib/nbd-hostile.js';
import { median, wallTime } from './lib.js';
import { BLOCK, benchVersion, nbdBenchArgs } from './nbd-image.js';

const args = nbdBenchArgs('1G');
const { reps } = args;

const sb = await Sandbox.create();
try {
  const { image, uid } = await benchVersion(sb, args);
  const out = sb.path('out.img');

  const srv = await startServer(sb, ['-w']);
  const idle: number[] = [];
  const stalled: number[] = [];
  try {
    for (let r = 0; r < reps; r++) {
      await rm(out, { force: true });
      idle.push(await wallTime('nbdcopy', [srv.uri(uid), out]));
      if (r === 0) await assertSameBytes(image, out);
      const reader = await stalledReader(srv, uid, [
        [0, 32 << 20],
        [32 << 20, 32 << 20],
      ]);
      const writer = await stalledWriter(srv, uid, 32 << 20, 1024);
      await new Promise((res) => setTimeout(res, 1000));
      await rm(out, { force: true });
      stalled.push(await wallTime('nbdcopy', [srv.uri(uid), out]));
      if (r === 0) await assertSameBytes(image, out);
      reader.end();
      writer.end();
    }
  } finally {
    await srv.stop();
  }
  const ti = median(idle);
  const ts = median(stalled);
  console.log(
    `image ${args.sizeArg}, 4 MiB blocks, mixed; ${reps} repetitions, medians; backy nbd -w on a Unix socket`,
  );
  console.log(
    `nbdcopy, idle server                          ${ti.toFixed(2)} s  (${idle.map((t) => t.toFixed(2)).join(', ')})`,
  );
  console.log(
    `nbdcopy, a stalled reader and writer connected ${ts.toFixed(2)} s  (${stalled.map((t) => t.toFixed(2)).join(', ')})  x${(ts / ti).toFixed(2)}`,
  );

  const BS = BLOCK;
  const w = await startServer(sb, ['-w']);
  try {
    const pid = w.child.pid!;
    const before = await memoryOf(pid);
    const clients: RawClient[] = [];
    for (let k = 0; k < 40; k++) {
      const c = await RawClient.connect(w.socket);
      await c.open(uid);
      clients.push(c);
    }
    await Promise.all(
      clients.map(async (c, k) => {
        for (let b = 0; b < 8; b++) {
          c.request(P.CMD.WRITE, BigInt(b + 1), b * BS + 1000 + k * 8192, 4096);
          c.send(Buffer.alloc(4096, k + 1));
        }
        for (let b = 0; b < 8; b++) if ((await c.reply()).error !== 0) throw new Error('write failed');
      }),
    );
    for (const c of clients) c.request(P.CMD.DISC, 99n, 0, 0);
    await Promise.all(clients.map((c) => c.closed()));
    while ((w.stderr().match(/is complete and valid/g)?.length ?? 0) < 40)
      await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 2000));
    const after = await memoryOf(pid);
    console.log(
      `40 writers x 8 blocks: server RSS idle ${before.rss.toFixed(0)} MB, peak ${after.peak.toFixed(0)} MB, after they left ${after.rss.toFixed(0)} MB`,
    );
  } finally {
    await w.stop();
  }

  // Eight nbdcopy writers of 128 MiB at once, each into a version of its own.
  const src = sb.path('src.img');
  await writeImage(src, { blocks: 32, blockSize: BLOCK, seed: 'writers', kinds: () => 'random' });
  const w8 = await startServer(sb, ['-w']);
  try {
    const t = performance.now();
    await Promise.all(Array.from({ length: 8 }, () => wallTime('nbdcopy', [src, w8.uri(uid)])));
    const secs = (performance.now() - t) / 1000;
    const m = await memoryOf(w8.child.pid!);
    console.log(`8 nbdcopy writers x 128 MiB: ${secs.toFixed(2)} s, server peak RSS ${m.peak.toFixed(0)} MB`);
  } finally {
    await w8.stop();
  }
} finally {
  await sb.remove();
}
