/**
 * `backy copy` across store kinds: a directory to S3 (radosgw) and S3 back to a directory,
 * SQLite to PostgreSQL (with a copy killed and run again there, whose lease is a PostgreSQL
 * session). Every copied version restores byte for byte from the target alone: the source's
 * data directory removed, its bucket emptied.
 */
import assert from 'node:assert/strict';
import { access, rm } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { query } from '../lib/store.js';
import type { Sandbox } from '../lib/cli.js';
import {
  BLOCKS,
  BS,
  baseAndIncremental,
  copyOk,
  copySandbox,
  removeSandboxes,
  restoresAs,
  spawnCopy,
  statusOf,
  withKey,
} from '../lib/copy.js';
import { writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import {
  deleteObject,
  listKeys,
  newBucket,
  rgwServer,
  rgwSkipReason,
  s3Client,
  s3ConfigLines,
} from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';
import { waitFor } from '../lib/store.js';

after(removeSandboxes);

/** Object names the database of a SQLite sandbox records. */
function recorded(sb: Sandbox): Set<string> {
  return new Set(query<{ checksum: string }>(sb, 'SELECT checksum FROM objects').map((r) => r.checksum));
}

describe('backy copy: directory → S3 → directory (radosgw)', { skip: rgwSkipReason() }, () => {
  let server: (S3Server & { stop(): Promise<void> }) | undefined;
  after(async () => server?.stop());

  it('every version restores from each target alone; keys differ, so names do; second copies send nothing', async () => {
    server = await rgwServer();
    const bucket = newBucket('copy');
    const dir = await copySandbox();
    const s3 = await withKey(await copySandbox({ data: s3ConfigLines(server, bucket) }));
    const back = await withKey(await copySandbox());
    const { base, child, img1, img2 } = await baseAndIncremental(dir);

    const toS3 = await copyOk(dir, s3, ['--all']);
    assert.equal(toS3.copied, 2);
    assert.equal(toS3.versions[1].blocks_sent, 3);
    assert.equal((await copyOk(dir, s3, ['--all'])).bytes_sent, 0);
    assert.equal((await s3.ok(['-m', 'ls'])).stdout, (await dir.ok(['-m', 'ls'])).stdout);
    const client = s3Client(server);
    const keys = (await listKeys(client, bucket)).map((k) => k.slice(k.lastIndexOf('/') + 1));
    assert.ok(keys.length > 0);
    const plain = recorded(dir);
    for (const k of keys) assert.ok(!plain.has(k), `${k} is named alike in both stores`);

    // The directory store is gone: the S3 copy alone restores, and is the source of the next copy.
    await rm(dir.dataDir, { recursive: true });
    await restoresAs(s3, base, img1);
    await restoresAs(s3, child, img2);

    const toDir = await copyOk(s3, back, [child, base]);
    assert.deepEqual(
      toDir.versions.map((v) => [v.uid, v.status]),
      [
        [base, 'valid'],
        [child, 'valid'],
      ],
    );
    assert.equal(toDir.versions[1].blocks_sent, 3, 'the base goes first, then only the changed blocks');
    assert.equal((await copyOk(s3, back, ['--name', 'vm1'])).bytes_sent, 0);
    const fromS3 = recorded(s3);
    for (const k of recorded(back)) assert.ok(!fromS3.has(k), `${k} is named alike in both stores`);

    // The bucket emptied: the directory copy alone restores.
    for (const k of await listKeys(client, bucket, '', { meta: true })) await deleteObject(client, bucket, k);
    await restoresAs(back, base, img1);
    await restoresAs(back, child, img2);
  });
});

describe('backy copy: SQLite → PostgreSQL', { skip: pgSkipReason() }, () => {
  it('restores from the target alone; a copy killed mid-way and run again; a second copy sends nothing', async () => {
    const src = await withKey(await copySandbox());
    const dst = await withKey(await copySandbox({ engine: await pgDatabase('backy_copy') }));
    const { base, child, img1, img2 } = await baseAndIncremental(src);
    const big = src.path('big');
    await writeImage(big, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'pg-kill' });
    const other = await src.backup([big, 'vm2']);

    const pause = src.path('pause');
    const c = spawnCopy(src, dst, [other], { BACKY_TEST_COPY_PAUSE: `20:${pause}` });
    await waitFor('the copy to pause', () =>
      access(pause).then(
        () => true,
        () => false,
      ),
    );
    c.child.kill('SIGKILL');
    assert.equal((await c.done).signal, 'SIGKILL');
    await rm(pause);
    assert.equal(await statusOf(dst, other), 'incomplete');

    const all = await copyOk(src, dst, ['--all']);
    assert.deepEqual(
      all.versions.map((v) => [v.uid, v.outcome, v.status]),
      [
        [base, 'copied', 'valid'],
        [child, 'copied', 'valid'],
        [other, 'copied', 'valid'],
      ],
    );
    assert.ok(all.versions[2].blocks_sent <= BLOCKS - 20, `sent ${all.versions[2].blocks_sent}`);
    assert.equal(all.versions[1].blocks_sent, 3);
    const again = await copyOk(src, dst, ['--all']);
    assert.equal(again.present, 3);
    assert.equal(again.bytes_sent, 0);
    assert.equal((await dst.ok(['-m', 'ls'])).stdout, (await src.ok(['-m', 'ls'])).stdout);

    await rm(src.dataDir, { recursive: true });
    await rm(src.dbPath);
    await restoresAs(dst, base, img1);
    await restoresAs(dst, child, img2);
    await restoresAs(dst, other, big);
    assert.equal((await dst.run(['scrub', other])).code, 0);
  });
});
