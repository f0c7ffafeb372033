/**
 * Several processes on one SQLite store at once, over and over: in every round two backups
 * (which dedup against objects the previous round's removal just made garbage) run at the
 * same time as two cleanups. Afterwards every valid version restores byte for byte and
 * scrubs clean, and a final cleanup leaves exactly the referenced objects.
 */
import assert from 'node:assert/strict';
import { copyFile, readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine, runBacky } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import { objectFiles, query, spawnBacky } from '../lib/store.js';
import { referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const BLOCKS = 24;
const ROUNDS = 3;

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `backup - NAME` with IMG fed through stdin one block every 20 ms. */
async function feedSlowly(sb: Sandbox, img: string, name: string) {
  const run = spawnBacky(sb, ['backup', '-', name]);
  const data = await readFile(img);
  for (let off = 0; off < data.length; off += BS) {
    run.child.stdin.write(data.subarray(off, off + BS));
    await delay(20);
  }
  run.child.stdin.end();
  return run.done;
}

describe('cleanup concurrent with backups (SQLite, several processes)', () => {
  let sb: Sandbox;
  let base: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    base = sb.path('base.img');
    await writeImage(base, {
      blocks: BLOCKS,
      blockSize: BS,
      seed: 'conc',
      kinds: (i) => (i % 7 === 6 ? 'zero' : 'random'),
    });
  });
  after(() => sb.remove());

  it(`${ROUNDS} rounds of 2 backups + 2 cleanups: nothing a backup needs is lost`, async () => {
    const images = new Map<string, string>(); // uid -> image it was made from
    let previous: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // The previous round's versions go: their objects are garbage that this round's
      // backups dedup against while the cleanups try to delete them.
      for (const uid of previous) await sb.ok(['rm', uid]);
      const imgs: string[] = [];
      for (let k = 0; k < 2; k++) {
        const img = sb.path(`r${round}-${k}.img`);
        await copyFile(base, img);
        await scribble(img, ((round * 5 + k * 11) % BLOCKS) * BS, BS, `r${round}k${k}`);
        imgs.push(img);
      }
      // Backups read stdin fed block by block with pauses, so each runs for a while with
      // objects deduplicated (touched) but not yet referenced by committed block rows;
      // meanwhile two loops run cleanup after cleanup until both backups are done.
      const backups = imgs.map((img, k) => feedSlowly(sb, img, `vm@r${round}k${k}`));
      let finished = false;
      const all = Promise.all(backups).finally(() => (finished = true));
      const cleanups = [0, 1].map(async (k) => {
        await delay(k * 100);
        let n = 0;
        do {
          const r = await sb.run(['cleanup']);
          assert.equal(r.code, 0, r.stderr);
          n++;
        } while (!finished);
        return n;
      });
      const results = await all;
      await Promise.all(cleanups);
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      previous = results.map((r) => r.stdout.trim().split('\n').pop()!);
      previous.forEach((uid, k) => images.set(uid, imgs[k]));

      const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      assert.deepEqual(versions.map((v) => v.uid).sort(), [...previous].sort());
      for (const v of versions) {
        assert.ok(v.valid, `${v.uid} is valid`);
        const out = sb.path(`${v.uid}.out`);
        await sb.ok(['restore', v.uid, out]);
        await assertSameBytes(images.get(v.uid)!, out);
        const s = await runBacky(['-c', sb.config, 'scrub', v.uid]);
        assert.equal(s.code, 0, s.stderr);
      }
    }
    await sb.ok(['cleanup']);
    const referenced = await referencedChecksums(sb.dbPath);
    assert.deepEqual(await objectFiles(sb), referenced);
    assert.deepEqual(query(sb, 'SELECT * FROM leases'), []);
  });
});
