/**
 * Readers do not hold back cleanup (core/cleanup.ts): a read-only NBD connection held open
 * (a VM booted from a backup for days) keeps its version's objects through the version's
 * block entries, and must not keep objects that became garbage after it connected. A running
 * backup still does. cleanup reports its holders by kind.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import * as P from '../../src/nbd/protocol.js';
import { RawClient, startServer } from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { objectFiles, query, spawnBacky, waitFor } from '../lib/store.js';

const BS = 64 * 1024;

async function cleanup(sb: Sandbox) {
  const r = await sb.ok(['-v', '-m', 'cleanup']);
  return { objects: Number(r.stdout.trim().split('\n')[0].split(' ')[2]), stderr: r.stderr };
}

describe('cleanup while readers and writers run', () => {
  let sb: Sandbox;
  let server: ServerHandle | undefined;
  let client: RawClient | undefined;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => {
    client?.end();
    await server?.stop();
    await sb?.remove();
  });

  it('a read-only NBD connection does not hold the cutoff; a running backup does', async () => {
    const img = sb.path('served.img');
    await writeImage(img, { blocks: 4, blockSize: BS, seed: 'served', kinds: () => 'random' });
    const served = await sb.backup([img, 'vm-served']);
    server = await startServer(sb);
    client = await RawClient.connect(server.socket);
    const { size } = await client.open(served);
    assert.equal(size, 4 * BS);
    client.request(P.CMD.READ, 1n, 0, BS);
    const first = await client.reply(0, BS);
    assert.equal(first.error, 0);
    assert.ok(first.data.equals((await readFile(img)).subarray(0, BS)));
    await waitFor(
      'the connection lease',
      () => query(sb, "SELECT id FROM leases WHERE kind = 'nbd'").length === 1,
    );

    // Garbage made after the reader connected: a version's own objects, removed.
    const later = sb.path('later.img');
    await writeImage(later, { blocks: 3, blockSize: BS, seed: 'later', kinds: () => 'random' });
    const gone = await sb.backup([later, 'vm-later']);
    await sb.ok(['rm', gone]);
    const withGarbage = (await objectFiles(sb)).length;
    const r = await cleanup(sb);
    assert.equal(
      r.objects,
      3,
      `the removed version's 3 objects are freed although a reader connected earlier\n${r.stderr}`,
    );
    assert.match(r.stderr, /Running: 1 NBD connection;/);
    assert.doesNotMatch(r.stderr, /backups? running/);
    assert.equal((await objectFiles(sb)).length, withGarbage - 3);

    // The reader still reads its version whole.
    client.request(P.CMD.READ, 2n, 0, 4 * BS);
    const all = await client.reply(0, 4 * BS);
    assert.equal(all.error, 0);
    assert.ok(all.data.equals(await readFile(img)), 'the served version is intact');

    // A running backup (paused mid-stream) keeps garbage made after it started.
    const run = spawnBacky(sb, ['backup', '-', 'vm-running']);
    try {
      run.child.stdin.write(randomBytesSeeded('running', 2 * BS));
      await waitFor(
        'the running backup',
        () => query(sb, "SELECT id FROM leases WHERE kind = 'backup'").length === 1,
      );
      const more = sb.path('more.img');
      await writeImage(more, { blocks: 2, blockSize: BS, seed: 'more', kinds: () => 'random' });
      const gone2 = await sb.backup([more, 'vm-more']);
      await sb.ok(['rm', gone2]);
      const held = await cleanup(sb);
      assert.equal(held.objects, 0, 'garbage made after the backup started is kept');
      assert.match(held.stderr, /Running: 1 backup, 1 NBD connection;/);
      run.child.stdin.end(randomBytesSeeded('running-end', BS));
      const done = await run.done;
      assert.equal(done.code, 0, done.stderr);
    } finally {
      run.child.kill('SIGKILL');
    }
    assert.equal((await cleanup(sb)).objects, 2, 'freed once the backup is done');

    client.end();
    client = undefined;
    const out = sb.path('served.out');
    await sb.ok(['restore', served, out]);
    await assertSameBytes(img, out);
  });
});
