/**
 * The hint sanity check through the real CLI: hints that call a region discarded
 * (`"exists":"false"`) while it still holds data must fail the backup before any version is
 * created, with or without -f; correct discard hints keep working and restore byte for byte.
 * Default block size (4 MiB) and hint_check_blocks (10).
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { open } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';

const BS = 4 * 2 ** 20;
const BLOCKS = 10; // 40 MiB

function assertOneLineError(stderr: string, re: RegExp) {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, `expected one ERROR line in:\n${stderr}`);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace without -v');
}

describe('hint check: discarded regions must read as zeros', () => {
  let sb: Sandbox;
  let img: string;
  let base: string;
  const hintFile = async (name: string, extents: unknown) => {
    const p = sb.path(name);
    await writeFile(p, JSON.stringify(extents));
    return p;
  };
  const versions = async () => (await sb.ok(['-m', 'ls'])).stdout;

  before(async () => {
    sb = await Sandbox.create();
    img = sb.path('disk.img');
    await writeImage(img, { blocks: BLOCKS, blockSize: BS, kinds: () => 'random', seed: 'discard' });
    base = await sb.backup([img, 'vm@0']);
    // Block 5 changes after the base: a hint calling it discarded is wrong.
    await scribble(img, 5 * BS, BS, 'new block 5');
  });
  after(() => sb.remove());

  const refused = async (name: string, extents: unknown, withBase: boolean) => {
    const before = await versions();
    const h = await hintFile(name, extents);
    const r = await sb.run(['backup', '-r', h, ...(withBase ? ['-f', base] : []), img, 'vm@1']);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, '');
    assertOneLineError(r.stderr, /hints are wrong: block \d+ .*not zeros.*exists.*false/);
    assert.equal(await versions(), before, 'no new version');
  };

  it('refuses exists:false over one block that holds data (with -f)', async () => {
    await refused('partial.json', [{ offset: 5 * BS, length: BS, exists: 'false' }], true);
  });

  it('refuses one exists:false extent over the whole image (with -f)', async () => {
    await refused('whole.json', [{ offset: 0, length: BLOCKS * BS, exists: 'false' }], true);
  });

  it('refuses a wrong exists:false hint without -f too', async () => {
    await refused('nobase.json', [{ offset: 0, length: BLOCKS * BS, exists: 'false' }], false);
  });

  it('a correct exists:false hint (the region really zeroed) works and restores byte for byte', async () => {
    const zeroed = sb.path('zeroed.img');
    await writeImage(zeroed, { blocks: BLOCKS, blockSize: BS, kinds: () => 'random', seed: 'discard' });
    const b0 = await sb.backup([zeroed, 'z@0']);
    const fh = await open(zeroed, 'r+');
    try {
      await fh.write(Buffer.alloc(2 * BS), 0, 2 * BS, 3 * BS);
    } finally {
      await fh.close();
    }
    await scribble(zeroed, 7 * BS + 100, 1000, 'changed');
    const h = await hintFile('right.json', [
      { offset: 3 * BS, length: 2 * BS, exists: 'false' },
      { offset: 7 * BS + 100, length: 1000, exists: 'true' },
    ]);
    const r = await sb.ok(['-v', 'backup', '-r', h, '-f', b0, zeroed, 'z@1']);
    const uid = r.stdout.trim().split('\n').pop()!;
    assert.match(r.stderr, /hint check: .*2 discarded/);
    await sb.ok(['restore', uid, sb.path('z1.out')]);
    await assertSameBytes(zeroed, sb.path('z1.out'));
  });

  it('accepts extents out of offset order (sorted in memory) and restores byte for byte', async () => {
    const h = await hintFile('unsorted.json', [
      { offset: 8 * BS, length: 10, exists: 'true' },
      { offset: 5 * BS, length: BS, exists: 'true' },
      { offset: 0, length: 100, exists: 'true' },
    ]);
    const uid = await sb.backup(['-r', h, '-f', base, img, 'vm@unsorted']);
    await sb.ok(['restore', uid, sb.path('unsorted.out')]);
    await assertSameBytes(img, sb.path('unsorted.out'));
  });

  it('says so when nothing is left to sample', async () => {
    const h = await hintFile('all-read.json', [{ offset: 0, length: BLOCKS * BS, exists: 'true' }]);
    const r = await sb.ok(['-v', 'backup', '-r', h, '-f', base, img, 'vm@all']);
    assert.match(r.stderr, /hint check: no unhinted or discarded blocks to sample/);
    const uid = r.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid, sb.path('all.out')]);
    await assertSameBytes(img, sb.path('all.out'));
  });
});

describe('a hint file of a million extents', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: 'block_size = 65536' });
  });
  after(() => sb.remove());

  it('is streamed: the backup works with a 48 MB JavaScript heap and restores byte for byte', async () => {
    // 1,000,000 one-byte extents, alternately exists true/false, over a 2,000,000-byte image. Read whole,
    // as before, this took ~0.5 GB; the heap limit turns that into a crash.
    const n = 1_000_000;
    const img = sb.path('small.img');
    // 2,000,000 bytes: the last extent is its last byte.
    await writeImage(img, {
      blocks: 30,
      blockSize: 65536,
      tail: 33_920,
      kinds: () => 'random',
      seed: 'million',
    });
    const h = sb.path('million.json');
    const out = await open(h, 'w');
    try {
      const batch: string[] = [];
      for (let i = 0; i < n; i++) {
        batch.push(`${i ? ',' : '['}{"offset":${i * 2},"length":1,"exists":"${i % 2 ? 'false' : 'true'}"}`);
        if (batch.length === 10_000) {
          await out.write(batch.join(''));
          batch.length = 0;
        }
      }
      await out.write(`${batch.join('')}]`);
    } finally {
      await out.close();
    }
    const r = await sb.ok(['backup', '-r', h, img, 'm@0'], {
      env: { NODE_OPTIONS: '--max-old-space-size=48' },
    });
    const uid = r.stdout.trim().split('\n').pop()!;
    // Every block is touched by an exists:true extent, so all of it is read.
    await sb.ok(['restore', uid, sb.path('m.out')]);
    await assertSameBytes(img, sb.path('m.out'));
  });
});
