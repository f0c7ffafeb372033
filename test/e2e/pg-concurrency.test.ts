/**
 * Many writers on one PostgreSQL metadata database: backup processes that store the same
 * blocks into one store at once, each version restoring byte for byte; and the lease of a
 * running backup, which is a PostgreSQL advisory lock: held while the process lives, gone the
 * moment it dies (no pid or heartbeat involved, so it works across hosts).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mixedKind, randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { MetaStore } from '../../src/meta/meta-store.js';

const BS = 64 * 1024;
const WRITERS = 4;

describe('PostgreSQL: concurrent writers', { skip: pgSkipReason() }, () => {
  let sb: Sandbox;
  let engine: string;
  before(async () => {
    engine = await pgDatabase('backy_conc');
    sb = await Sandbox.create({ defaults: `block_size = ${BS}\nhint_check_blocks = 2`, engine });
  });
  after(async () => sb?.remove());

  it('several backup processes store the same blocks at once; every version restores exactly', async () => {
    // Images that share most blocks (same seed), each with a few blocks of its own.
    const images: string[] = [];
    for (let w = 0; w < WRITERS; w++) {
      const img = sb.path(`w${w}.img`);
      await writeImage(img, { blocks: 48, blockSize: BS, tail: 512, kinds: mixedKind });
      await scribble(img, (5 + w * 7) * BS, BS, `own-${w}`);
      images.push(img);
    }
    // The database is empty: these processes also race to create the schema (migrations).
    const round1 = await Promise.all(images.map((img, w) => sb.backup([img, `vm${w}@r1`])));

    // Round 2, again all at once: incremental with hints against each writer's round-1 version,
    // every writer changing the same block to the same content (a shared new object).
    const expected: string[] = [];
    const round2 = await Promise.all(
      images.map(async (img, w) => {
        await scribble(img, 30 * BS, BS, 'shared-change');
        await scribble(img, (6 + w * 7) * BS, 100, `own2-${w}`);
        const copy = sb.path(`w${w}.r2.img`);
        await copyFile(img, copy);
        expected[w] = copy;
        const hints = sb.path(`w${w}.json`);
        await writeFile(
          hints,
          JSON.stringify([
            { offset: 30 * BS, length: BS, exists: 'true' },
            { offset: (6 + w * 7) * BS, length: BS, exists: 'true' },
          ]),
        );
        return sb.backup(['-r', hints, '-f', round1[w], img, `vm${w}@r2`]);
      }),
    );

    const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    assert.equal(ls.length, 2 * WRITERS);
    assert.ok(ls.every((v) => v.valid));
    for (let w = 0; w < WRITERS; w++) {
      const out = sb.path(`r2-${w}.out`);
      await sb.ok(['restore', round2[w], out]);
      await assertSameBytes(expected[w], out);
    }
    // Round-1 versions are unchanged by everything that followed.
    const first = sb.path('r1-0.out');
    await sb.ok(['restore', round1[0], first]);
    const orig = sb.path('w0.orig.img');
    await writeImage(orig, { blocks: 48, blockSize: BS, tail: 512, kinds: mixedKind });
    await scribble(orig, 5 * BS, BS, 'own-0');
    await assertSameBytes(orig, first);
  });

  it('a running backup holds its lease; when its process dies the lease is free at once', async () => {
    // A backup from stdin that we feed by hand, so it is certainly running while we look.
    const child = spawn(process.execPath, [BIN, '-c', sb.config, 'backup', '-', 'slow@1'], {
      cwd: sb.dir,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    child.stdin.write(randomBytesSeeded('slow', 3 * BS));

    const meta = await MetaStore.open(engine);
    try {
      let uid: string | undefined;
      for (let i = 0; i < 200 && !uid; i++) {
        uid = (await meta.listVersions({ name: 'slow@1' }))[0]?.uid;
        if (!uid || !(await meta.leases()).some((l) => l.versionUid === uid)) {
          uid = undefined;
          await sleep(50);
        }
      }
      assert.ok(uid, `the backup never started:\n${stderr}`);
      const lease = (await meta.leases()).find((l) => l.versionUid === uid)!;
      assert.equal(await meta.isLeaseAlive(lease), true);
      const refused = await sb.run(['rm', uid]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /still being written by pid \d+/);

      child.kill('SIGKILL');
      assert.equal(await exited, null);
      // The server sees the connection drop and ends the session, which frees the lock.
      let alive = true;
      for (let i = 0; i < 100 && alive; i++) {
        alive = await meta.isLeaseAlive(lease);
        if (alive) await sleep(50);
      }
      assert.equal(alive, false, 'the lease of a killed backup is released by the server');
      assert.equal((await meta.getVersion(uid)).status, 'incomplete');
      await sb.ok(['rm', uid]);
      assert.equal(await meta.findVersion(uid), undefined);
    } finally {
      child.kill('SIGKILL');
      await meta.close();
    }
  });
});
