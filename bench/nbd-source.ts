/**
 * `npm run bench:nbd-source`: backing up over NBD against backing up the same local file.
 * One deterministic mixed image (test/lib/image.ts: 30% zero blocks as holes, 30% random, 25%
 * text-like, 15% duplicates; 4 MiB blocks) as a raw file and as a qcow2 copy with a dirty
 * bitmap. Per repetition, each job into a fresh store:
 *   - full backup of the raw file, and of the same file served by qemu-nbd (Unix socket)
 *   - ~2% of the blocks rewritten (the same qemu-io writes on both images), then the
 *     incremental: `-r` rbd-diff hints on the file, against `--dirty-bitmap` over qemu-nbd
 *     serving the qcow2 (`-B b1`)
 * The first repetition's incrementals are restored and compared byte for byte with the file.
 * Runs hot (page cache kept). Prints medians and the ratios the issue sets (NBD full <= 1.3x the
 * file's, bitmap incremental <= 1.5x the rbd-diff one).
 *
 * Usage: npm run bench:nbd-source -- [--size 1G] [--reps 3]
 */
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { Sandbox, assertSameBytes } from '../test/lib/cli.js';
import { mixedKind, writeImage } from '../test/lib/image.js';
import { mustRun } from '../test/lib/nbd.js';
import { qemuNbd } from '../test/lib/nbd-servers.js';

const BLOCK = 4 << 20;
const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '1G' },
    reps: { type: 'string', default: '3' },
  },
});
const size = Math.round(Number(/^(\d+)G$/i.exec(args.size)?.[1] ?? NaN) * 2 ** 30);
if (!Number.isFinite(size)) throw new Error('--size: whole GiB, e.g. 1G');
const reps = Number(args.reps);
const blocks = size / BLOCK;

/** Runs `backy -c CFG ...argv`; returns seconds and the uid (last stdout line). */
function backy(sb: Sandbox, argv: string[]): Promise<{ s: number; uid: string; log: string }> {
  const start = performance.now();
  return new Promise((resolve, reject) => {
    // -v: the summary line printed below is INFO, on stderr only with -v.
    const child = spawn(process.execPath, [`${process.cwd()}/bin/backy.js`, '-v', '-c', sb.config, ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0
        ? resolve({ s: (performance.now() - start) / 1000, uid: out.trim().split('\n').pop()!, log: err })
        : reject(new Error(`backy ${argv.join(' ')} exited ${code}: ${err}`)),
    );
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const work = await Sandbox.create();
const times = new Map<string, number[]>();
const record = (name: string, s: number) => times.set(name, [...(times.get(name) ?? []), s]);
try {
  const raw = work.path('disk.img');
  const qcow2 = work.path('disk.qcow2');
  console.error(`writing a ${args.size} image...`);
  await writeImage(raw, { blocks, blockSize: BLOCK, kinds: mixedKind });
  await mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  await mustRun('qemu-img', ['bitmap', '--add', qcow2, 'b1']);
  await mustRun('dd', [`if=${raw}`, 'of=/dev/null', 'bs=4M']); // page cache
  for (let r = 0; r < reps; r++) {
    const file = await Sandbox.create({ defaults: `block_size = ${BLOCK}` });
    const nbd = await Sandbox.create({ defaults: `block_size = ${BLOCK}` });
    try {
      const fullFile = await backy(file, ['backup', raw, 'file']);
      record('full, local file', fullFile.s);
      const sock = work.path(`raw-${r}.sock`);
      let srv = await qemuNbd(sock, raw, 'raw');
      const fullNbd = await backy(nbd, ['backup', `nbd+unix:///?socket=${sock}`, 'nbd']);
      await srv.stop();
      record('full, qemu-nbd raw', fullNbd.s);

      await mustRun('qemu-img', ['bitmap', '--clear', qcow2, 'b1']);
      const changed = Math.max(1, Math.round(blocks * 0.02));
      const writes: string[] = [];
      const hints: { offset: number; length: number; exists: string }[] = [];
      for (let i = 0; i < changed; i++) {
        const idx = (i * 37 + r * 11 + 3) % blocks;
        writes.push('-c', `write -P ${0x40 + r} ${idx * BLOCK} ${BLOCK}`);
        hints.push({ offset: idx * BLOCK, length: BLOCK, exists: 'true' });
      }
      hints.sort((a, b) => a.offset - b.offset);
      await mustRun('qemu-io', ['-f', 'raw', ...writes, raw]);
      await mustRun('qemu-io', ['-f', 'qcow2', ...writes, qcow2]);
      await writeFile(work.path('hints.json'), JSON.stringify(hints));

      const incFile = await backy(file, [
        'backup',
        '-r',
        work.path('hints.json'),
        '-f',
        fullFile.uid,
        raw,
        'file',
      ]);
      record('incremental, -r hints, local file', incFile.s);
      const qsock = work.path(`qcow2-${r}.sock`);
      srv = await qemuNbd(qsock, qcow2, 'qcow2', ['-B', 'b1']);
      const incNbd = await backy(nbd, [
        'backup',
        '--dirty-bitmap',
        'b1',
        '-f',
        fullNbd.uid,
        `nbd+unix:///?socket=${qsock}`,
        'nbd',
      ]);
      await srv.stop();
      record('incremental, --dirty-bitmap, qemu-nbd qcow2', incNbd.s);
      if (r === 0) {
        console.error(incNbd.log.split('\n').find((l) => l.includes('Backed up')));
        await backy(file, ['restore', incFile.uid, work.path('out-file.img')]);
        await assertSameBytes(raw, work.path('out-file.img'));
        await backy(nbd, ['restore', incNbd.uid, work.path('out-nbd.img')]);
        await assertSameBytes(raw, work.path('out-nbd.img'));
      }
    } finally {
      await file.remove();
      await nbd.remove();
    }
  }
  const mb = size / 1e6;
  console.log(`| job (${args.size}, 4 MiB blocks, median of ${reps}) | time | MB/s of image |`);
  console.log('|---|---|---|');
  for (const [name, xs] of times) {
    const m = median(xs);
    console.log(`| ${name} | ${m.toFixed(2)} s | ${(mb / m).toFixed(0)} |`);
  }
  const m = (k: string) => median(times.get(k)!);
  console.log(
    `\nfull over NBD / from the file: ${(m('full, qemu-nbd raw') / m('full, local file')).toFixed(2)}x`,
  );
  console.log(
    `bitmap incremental / rbd-diff incremental: ${(m('incremental, --dirty-bitmap, qemu-nbd qcow2') / m('incremental, -r hints, local file')).toFixed(2)}x`,
  );
  console.log(
    `load average: ${(await import('node:os'))
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
} finally {
  await work.remove();
}
