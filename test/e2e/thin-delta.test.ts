/**
 * LVM thin change tracking end to end: real pool metadata made by thin_restore, the delta
 * printed by the real thin_delta, images whose contents match that mapping, and backy reading
 * only what the delta names. Every restore compared byte for byte.
 */
import assert from 'node:assert/strict';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';
import { restoreThinPool, thinDelta, thinToolsMissing } from '../lib/thin-pool.js';

const BS = 64 * 1024; // = the pool's data block (128 sectors), so pool blocks and backy blocks line up
const BLOCKS = 32;

async function image(path: string, blocks: Record<number, string>) {
  await writeFile(path, '');
  await truncate(path, BLOCKS * BS);
  const fh = await open(path, 'r+');
  try {
    for (const [idx, seed] of Object.entries(blocks))
      await fh.write(randomBytesSeeded(seed, BS), 0, BS, Number(idx) * BS);
  } finally {
    await fh.close();
  }
}

describe(
  'backup --thin-delta',
  {
    skip: thinToolsMissing ?? false,
  },
  () => {
    let sb: Sandbox;
    let delta: string;
    let pool: string;
    before(async () => {
      sb = await Sandbox.create({ defaults: `block_size = ${BS}\nhint_check_blocks = 100` });
      delta = sb.path('delta.xml');
      pool = await restoreThinPool(sb.dir);
      await writeFile(delta, thinDelta(pool));
      // snap1: pool blocks 0-2 and 10 hold data; snap2 shares 0-1, rewrote 2, dropped 10, added 20-21.
      await image(sb.path('snap1.img'), { 0: 'a', 1: 'b', 2: 'c', 10: 'd' });
      await image(sb.path('snap2.img'), { 0: 'a', 1: 'b', 2: 'c2', 20: 'e', 21: 'f' });
    });
    after(() => sb.remove());

    it('reads only the changed blocks and restores the new snapshot exactly', async () => {
      const base = await sb.backup([sb.path('snap1.img'), 'lv@1']);
      const r = await sb.ok([
        '-v',
        'backup',
        '--thin-delta',
        delta,
        '-f',
        base,
        sb.path('snap2.img'),
        'lv@2',
      ]);
      const uid = r.stdout.trim().split('\n').pop()!;
      // 32 blocks: 3 read (2, 20, 21), 1 discarded (10), 28 kept from the base.
      assert.match(r.stderr, /3 read, .* 1 sparse, 28 kept from base/);
      await sb.ok(['restore', uid, sb.path('out2.img')]);
      await assertSameBytes(sb.path('snap2.img'), sb.path('out2.img'));
      await sb.ok(['restore', base, sb.path('out1.img')]);
      await assertSameBytes(sb.path('snap1.img'), sb.path('out1.img'));
    });

    it('a delta that does not match the images is refused before anything is stored', async () => {
      const base = await sb.backup([sb.path('snap1.img'), 'lv@1']);
      const before = (await sb.ok(['-m', 'ls'])).stdout;
      // The delta run the wrong way round (snap2 -> snap1) against these images.
      const wrong = sb.path('wrong.xml');
      await writeFile(wrong, thinDelta(pool, { from: 2, to: 1 }));
      const r = await sb.run(['backup', '--thin-delta', wrong, '-f', base, sb.path('snap2.img'), 'lv@x']);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /hints are wrong/);
      assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
    });

    it('bad input: one line each', async () => {
      const base = await sb.backup([sb.path('snap1.img'), 'lv@1']);
      await writeFile(sb.path('bad.xml'), (await readFile(delta, 'utf8')).replace('<different', '<differnt'));
      const cases: [string[], number, RegExp][] = [
        [
          ['--thin-delta', sb.path('bad.xml'), '-f', base],
          1,
          /not valid thin_delta output: unexpected element <differnt>/,
        ],
        [['--thin-delta', sb.path('missing.xml'), '-f', base], 1, /cannot read thin delta file/],
        [['--thin-delta', delta], 2, /needs -f UID/],
        [['--thin-delta', delta, '-r', delta, '-f', base], 2, /exclude each other/],
      ];
      for (const [args, code, re] of cases) {
        const r = await sb.run(['backup', ...args, sb.path('snap2.img'), 'lv@bad']);
        assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
        const errors = r.stderr.split('\n').filter((l) => l.includes('ERROR:'));
        assert.equal(errors.length, 1, r.stderr);
        assert.match(errors[0], re);
      }
    });
  },
);
