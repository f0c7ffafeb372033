/**
 * A source that grew past its -f base, with change hints that name nothing in the new part:
 * the blocks past the base's end are read (a hole the source's allocation map reports is
 * skipped), never assumed zero. 256 MiB base, 1 GiB source with data at 513 MiB and in its
 * last 512 bytes; each hint kind (-r rbd diff, --thin-delta, --dirty-bitmap over qemu-nbd -B).
 * Every restore compared byte for byte with the source.
 */
import assert from 'node:assert/strict';
import { open, truncate, writeFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';
import { mustRun } from '../lib/nbd.js';
import { nbdServersMissing, qemuNbd } from '../lib/nbd-servers.js';
import type { Served } from '../lib/nbd-servers.js';
import { restoreThinPool, thinDelta, thinToolsMissing } from '../lib/thin-pool.js';

const KiB = 1024;
const MiB = 1 << 20;
const GiB = 1 << 30;
const BASE = 256 * MiB;
/** = the thin pool's data block (128 sectors), so pool blocks and backy blocks line up. */
const BS = 64 * KiB;

/** A sparse image of `size` bytes with `pieces` [offset, length, seed] written. */
async function sparseImage(path: string, size: number, pieces: [number, number, string][]): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
  const fh = await open(path, 'r+');
  try {
    for (const [offset, length, seed] of pieces)
      await fh.write(randomBytesSeeded(seed, length), 0, length, offset);
  } finally {
    await fh.close();
  }
}

/** What every grown source holds past the base: data at 513 MiB and in the last 512 bytes. */
const GROWN: [number, number, string][] = [
  [513 * MiB, 64 * KiB, 'at-513M'],
  [GiB - 512, 512, 'last-512'],
];

const uidOf = (stdout: string) => stdout.trim().split('\n').pop()!;

describe('a source grown past its -f base', () => {
  const sandboxes: Sandbox[] = [];
  const servers: Served[] = [];
  after(async () => {
    for (const s of servers) await s.stop('SIGKILL');
    for (const sb of sandboxes) await sb.remove();
  });
  const sandbox = async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    sandboxes.push(sb);
    return sb;
  };

  it('-r (rbd diff) naming nothing past the base: the new part is read, the restore equals the source', async () => {
    const sb = await sandbox();
    // The base's last block is partial (256 MiB - 512): it grows too, and holds data across its old end.
    const base = sb.path('base.img');
    await sparseImage(base, BASE - 512, [
      [0, MiB, 'b0'],
      [100 * MiB, MiB, 'b100'],
      [BASE - 4096, 3584, 'old-tail'],
    ]);
    const baseUid = await sb.backup([base, 'vm@1']);
    const src = sb.path('grown.img');
    await sparseImage(src, GiB, [
      [0, MiB, 'b0'],
      [100 * MiB, MiB, 'b100'],
      [BASE - 4096, 3584, 'old-tail'],
      [BASE - 512, 1024, 'across-old-end'],
      [MiB, 64 * KiB, 'changed'],
      ...GROWN,
    ]);
    const hints = sb.path('hints.json');
    await writeFile(hints, JSON.stringify([{ offset: MiB, length: 64 * KiB, exists: 'true' }]));
    const r = await sb.ok(['backup', '-r', hints, '-f', baseUid, src, 'vm@2']);
    await sb.ok(['restore', uidOf(r.stdout), sb.path('out.img')]);
    await assertSameBytes(src, sb.path('out.img'));
  });

  it(
    '--thin-delta naming nothing past the base: the restore equals the source',
    { skip: thinToolsMissing ?? false },
    async () => {
      const sb = await sandbox();
      const pool = await restoreThinPool(sb.dir);
      const delta = sb.path('delta.xml');
      await writeFile(delta, thinDelta(pool)); // device 1 -> 2: blocks 2, 10, 20-21 (of 64 KiB)
      const snap1 = sb.path('snap1.img');
      await sparseImage(snap1, BASE, [
        [0, BS, 'a'],
        [BS, BS, 'b'],
        [2 * BS, BS, 'c'],
        [10 * BS, BS, 'd'],
      ]);
      const snap2 = sb.path('snap2.img');
      await sparseImage(snap2, GiB, [
        [0, BS, 'a'],
        [BS, BS, 'b'],
        [2 * BS, BS, 'c2'],
        [20 * BS, 2 * BS, 'e'],
        ...GROWN,
      ]);
      const baseUid = await sb.backup([snap1, 'lv@1']);
      const r = await sb.ok(['backup', '--thin-delta', delta, '-f', baseUid, snap2, 'lv@2']);
      await sb.ok(['restore', uidOf(r.stdout), sb.path('out.img')]);
      await assertSameBytes(snap2, sb.path('out.img'));
    },
  );

  it(
    '--dirty-bitmap (qemu-nbd -B) naming nothing past the base: the restore equals the source',
    { skip: nbdServersMissing() ?? false },
    async () => {
      const sb = await sandbox();
      const img = sb.path('vm.qcow2');
      const qemuIo = (...cmds: string[]) =>
        mustRun('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), img]);
      const serve = async (extra: string[] = []) => {
        const s = await qemuNbd(sb.path('s.sock'), img, 'qcow2', extra);
        servers.push(s);
        return s;
      };
      const uri = `nbd+unix:///?socket=${sb.path('s.sock')}`;
      await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', img, '256M']);
      await qemuIo('write -P 0x11 0 4M', 'write -P 0x22 100M 1M');
      let s = await serve();
      const full = await sb.backup([uri, 'vm@full']);
      await s.stop();
      // The disk grows and gets data in the new part; then a bitmap starts, and sees one write.
      await mustRun('qemu-img', ['resize', '-q', '-f', 'qcow2', img, '1G']);
      await qemuIo(`write -P 0x33 ${513 * MiB} 64k`, `write -P 0x44 ${GiB - 512} 512`);
      await mustRun('qemu-img', ['bitmap', '--add', img, 'b1']);
      await qemuIo(`write -P 0x55 ${MiB} 64k`);
      s = await serve(['-B', 'b1']);
      const r = await sb.ok(['-v', 'backup', '--dirty-bitmap', 'b1', '-f', full, uri, 'vm@incr']);
      await s.stop();
      await sb.ok(['restore', uidOf(r.stdout), sb.path('out.img')]);
      await mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, sb.path('vm.raw')]);
      await assertSameBytes(sb.path('vm.raw'), sb.path('out.img'));
      assert.match(r.stderr, /hint check: 10 unhinted/);
    },
  );
});
