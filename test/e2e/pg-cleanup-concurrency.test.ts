/**
 * Cleanup racing backups and rm across processes on one PostgreSQL metadata database, over
 * and over (the SQLite version is cleanup-concurrency.test.ts). In every round two slow
 * backups (fed through stdin, deduplicating against objects that the concurrent rm of the
 * previous round's versions makes garbage) run while two loops run cleanup after cleanup.
 * Afterwards every valid version restores byte for byte and scrubs clean, and a final cleanup
 * leaves exactly the referenced objects. Then a backup is killed mid-run: its lease (an
 * advisory lock) dies with it, and the next cleanup reclaims what it wrote.
 */
import assert from 'node:assert/strict';
import { copyFile, readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { objectFiles, spawnBacky, waitFor } from '../lib/store.js';
import { referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const BLOCKS = 24;
const ROUNDS = 3;

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function query<T>(url: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows as T[];
  } finally {
    await client.end();
  }
}

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

describe(
  'PostgreSQL: cleanup concurrent with backups and rm (several processes)',
  { skip: pgSkipReason() },
  () => {
    let sb: Sandbox;
    let engine: string;
    let base: string;
    before(async () => {
      engine = await pgDatabase('backy_gc');
      sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
      base = sb.path('base.img');
      await writeImage(base, {
        blocks: BLOCKS,
        blockSize: BS,
        seed: 'conc',
        kinds: (i) => (i % 7 === 6 ? 'zero' : 'random'),
      });
    });
    after(async () => sb?.remove());

    const referenced = async () => referencedChecksums(engine);

    it(`${ROUNDS} rounds of 2 backups + rm + 2 cleanup loops: nothing a backup needs is lost`, async () => {
      const images = new Map<string, string>(); // uid -> image it was made from
      let previous: string[] = [];
      for (let round = 0; round < ROUNDS; round++) {
        const imgs: string[] = [];
        for (let k = 0; k < 2; k++) {
          const img = sb.path(`r${round}-${k}.img`);
          await copyFile(base, img);
          await scribble(img, ((round * 5 + k * 11) % BLOCKS) * BS, BS, `r${round}k${k}`);
          imgs.push(img);
        }
        const backups = imgs.map((img, k) => feedSlowly(sb, img, `vm@r${round}k${k}`));
        // While the backups run and dedup against them, the previous round's versions go.
        const removals = (async () => {
          await delay(150);
          for (const uid of previous) await sb.ok(['rm', uid]);
        })();
        let finished = false;
        const all = Promise.all(backups).finally(() => (finished = true));
        const cleanups = [0, 1].map(async (k) => {
          await delay(k * 100);
          do {
            const r = await sb.run(['cleanup']);
            assert.equal(r.code, 0, r.stderr);
          } while (!finished);
        });
        const results = await all;
        await Promise.all([...cleanups, removals]);
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
          const s = await sb.run(['scrub', v.uid]);
          assert.equal(s.code, 0, s.stderr);
        }
      }
      await sb.ok(['cleanup']);
      assert.deepEqual(await objectFiles(sb), await referenced());
      assert.deepEqual(await query(engine, 'SELECT * FROM leases'), []);
    });

    it('a killed backup: its lease dies with it, and the next cleanup reclaims what it wrote', async () => {
      const before = await objectFiles(sb);
      const run = spawnBacky(sb, ['backup', '-', 'vm@killed']);
      run.child.stdin.write(randomBytesSeeded('killed', 6 * BS));
      // Its new objects are stored (and recorded with the first row batch or not at all).
      await waitFor(
        'the killed backup to store objects',
        async () => (await objectFiles(sb)).length >= before.length + 6,
      );
      run.child.kill('SIGKILL');
      await run.done;
      const leases = await query<{ id: string }>(engine, 'SELECT id FROM leases');
      assert.equal(leases.length, 1, 'the killed backup left its lease row');
      // The server ends the dead session; until it has, cleanup still sees the lease as live.
      await waitFor('cleanup to reclaim the killed backup', async () => {
        const r = await sb.run(['cleanup']);
        assert.equal(r.code, 0, r.stderr);
        return (await query(engine, 'SELECT * FROM leases')).length === 0;
      });
      await sb.ok(['cleanup']);
      assert.deepEqual(await objectFiles(sb), await referenced());
      assert.deepEqual(await objectFiles(sb), before);
      assert.ok(!parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).some((v) => v.name === 'vm@killed'));
    });
  },
);
