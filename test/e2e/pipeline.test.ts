/**
 * End to end: the parallel pipelines with more blocks than buffers in flight (1 MiB blocks:
 * 16 in flight; 48 blocks), so every pooled buffer is reused while other blocks are still being read,
 * hashed on the worker pool or written. Both hash functions; every restore byte for byte.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mixedKind, scribble, writeImage } from '../lib/image.js';

const BS = 1 << 20;
const BLOCKS = 48;

for (const hash of ['blake3', 'sha256'] as const) {
  describe(`parallel pipelines (${hash})`, () => {
    let sb: Sandbox;
    let img: string;
    before(async () => {
      sb = await Sandbox.create({ defaults: `block_size = ${BS}\nhash_function = ${hash}` });
      img = sb.path('disk.img');
      await writeImage(img, { blocks: BLOCKS, blockSize: BS, tail: 777, kinds: mixedKind, seed: hash });
    });
    after(() => sb.remove());

    it('backup, hinted incremental and restores to a file, sparse, and stdout are exact', async () => {
      const full = await sb.backup([img, 'vm@full']);
      await sb.ok(['restore', full, sb.path('full.out')]);
      await assertSameBytes(img, sb.path('full.out'));

      const base = sb.path('base.img');
      await writeFile(base, await readFile(img));
      const changed = [3, 40, 41, 47];
      for (const b of changed) await scribble(img, b * BS, BS, `${hash}-changed-${b}`);
      const hints = sb.path('hints.json');
      await writeFile(
        hints,
        JSON.stringify(changed.map((b) => ({ offset: b * BS, length: BS, exists: 'true' }))),
      );
      const incr = await sb.backup(['-r', hints, '-f', full, img, 'vm@incr']);
      await sb.ok(['restore', '-s', incr, sb.path('incr.out')]);
      await assertSameBytes(img, sb.path('incr.out'));
      const out = await sb.ok(['restore', full, '-']);
      await assertSameBytes(base, out.stdoutBuf);
      const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      assert.deepEqual(
        versions.map((v) => [v.name, v.valid]),
        [
          ['vm@full', true],
          ['vm@incr', true],
        ],
      );
    });

    it('backs up stdin ending on a block boundary and with a short tail', async () => {
      const data = await readFile(img);
      for (const input of hash === 'blake3' ? [data.subarray(0, 40 * BS), data] : [data]) {
        const uid = await sb.backup(['-', `vm@stdin-${input.length}`], { input });
        const out = await sb.ok(['restore', uid, '-']);
        assert.equal(out.stdoutBuf.length, input.length);
        assert.ok(out.stdoutBuf.equals(input), 'stdin backup restores exactly');
      }
    });
  });
}
