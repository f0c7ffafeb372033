/**
 * Holes of sparse source files are never read: SEEK_DATA/SEEK_HOLE (native/seek) tell backy
 * which blocks lie wholly in a hole, and those are sparse without a read, in initial and -f
 * backups and in deep scrub. Every restore compared byte for byte.
 */
import assert from 'node:assert/strict';
import { open, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';

const MiB = 1 << 20;
const BS = 4 * MiB;

async function sparseImage(
  path: string,
  size: number,
  data: [offset: number, length: number, seed: string][],
) {
  await writeFile(path, '');
  await truncate(path, size);
  const fh = await open(path, 'r+');
  try {
    for (const [off, len, seed] of data) await fh.write(randomBytesSeeded(seed, len), 0, len, off);
  } finally {
    await fh.close();
  }
}

function stats(stderr: string) {
  const m =
    /\((?:[^)]*), (\d+) blocks\): (\d+) read, (\d+) stored .* (\d+) sparse, (\d+) kept from base/.exec(
      stderr,
    );
  assert.ok(m, stderr);
  return { blocks: +m[1], read: +m[2], stored: +m[3], sparse: +m[4], kept: +m[5] };
}

describe('sparse source files', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(() => sb.remove());

  it('a 2 GiB file with three data regions: only the blocks they touch are read', async () => {
    const img = sb.path('sparse.img');
    // Block 3 wholly, one byte at the end of block 100 (so block 100 is read, never assumed zero),
    // and a region straddling blocks 300 and 301.
    await sparseImage(img, 2048 * MiB, [
      [3 * BS, BS, 'a'],
      [101 * BS - 1, 1, 'b'],
      [301 * BS - MiB, 2 * MiB, 'c'],
    ]);
    // -v: the counts are in the summary, an INFO line (on stderr only with -v).
    const r = await sb.ok(['-v', 'backup', img, 'sparse']);
    const s = stats(r.stderr);
    assert.equal(s.blocks, 512);
    assert.equal(s.read, 4, 'blocks 3, 100, 300 and 301 only');
    assert.equal(s.sparse, 508);
    const uid = r.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid, sb.path('out.img')]);
    await assertSameBytes(img, sb.path('out.img'));

    // Deep scrub against the sparse file: holes compared without a read, and clean.
    await sb.ok(['scrub', '-s', img, uid]);

    // -f backup after the data of block 3 was punched out (now a hole) and block 200 written.
    await truncate(img, 0);
    await sparseImage(img, 2048 * MiB, [
      [101 * BS - 1, 1, 'b'],
      [200 * BS, BS, 'd'],
      [301 * BS - MiB, 2 * MiB, 'c'],
    ]);
    const r2 = await sb.ok(['-v', 'backup', '-f', uid, img, 'sparse']);
    const s2 = stats(r2.stderr);
    assert.equal(s2.read, 4, 'blocks 100, 200, 300 and 301');
    const uid2 = r2.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid2, sb.path('out2.img'), '--force']);
    await assertSameBytes(img, sb.path('out2.img'));
    // Deep scrub of the first version against the changed file finds the difference (block 3
    // now a hole, block 200 data), although it read neither hole.
    const d = await sb.run(['-m', 'scrub', '-s', img, uid]);
    assert.equal(d.code, 3, d.stderr);
    assert.match(d.stderr, /differs from .* at offset 12582912/);
  });
});
