/**
 * `backy copy` between directory stores with SQLite databases, through the built CLI: plain
 * to encrypted and between two keys, a second copy, a copy killed and run again, rm and
 * cleanup on either side while a copy is paused (BACKY_TEST_COPY_PAUSE), a damaged source
 * block. Every copied version is restored from the target alone and compared byte for byte.
 * The other store kinds (S3, PostgreSQL) are in copy-stores.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { access, mkdir, open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Sandbox } from '../lib/cli.js';
import { assertSameBytes } from '../lib/cli.js';
import {
  BLOCKS,
  BS,
  baseAndIncremental,
  copy,
  copyOk,
  copySandbox,
  removeSandboxes,
  restoresAs,
  spawnCopy,
  withKey,
} from '../lib/copy.js';
import { scribble, writeImage } from '../lib/image.js';
import { tryMountTmpfs, umount } from '../lib/tmpfs.js';
import { entryAt } from '../lib/tree-edit.js';
import { blockRows, objectFiles, objectPath, query, waitFor } from '../lib/store.js';

after(removeSandboxes);

const keyed = async () => withKey(await copySandbox());

/** Object names in the database and in the data directory. */
async function names(sb: Sandbox): Promise<Set<string>> {
  const rows = query<{ checksum: string }>(sb, 'SELECT checksum FROM objects');
  return new Set([...rows.map((r) => r.checksum), ...(await objectFiles(sb))]);
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

function versionStatus(sb: Sandbox, uid: string): string | undefined {
  return query<{ status: string }>(sb, 'SELECT status FROM versions WHERE uid = ?', uid)[0]?.status;
}

describe('backy copy between directory stores', () => {
  for (const kind of ['plain → encrypted', 'one key → another key'] as const) {
    it(`${kind}: restores from the target alone, keeps every field, shares no object name; a second copy sends nothing`, async () => {
      const src = kind === 'plain → encrypted' ? await copySandbox() : await keyed();
      const dst = await keyed();
      const { base, child, img1, img2 } = await baseAndIncremental(src);

      const first = await copyOk(src, dst, ['--all']);
      assert.equal(first.copied, 2);
      assert.deepEqual(
        first.versions.map((v) => [v.uid, v.outcome, v.status]),
        [
          [base, 'copied', 'valid'],
          [child, 'copied', 'valid'],
        ],
      );
      assert.ok(first.bytes_sent > 0);
      // The incremental starts from its base's list at the target: only its 3 changed blocks travel.
      const inc = first.versions[1];
      assert.equal(inc.blocks_from_base, BLOCKS - 3);
      assert.equal(inc.blocks_sent, 3);
      assert.equal(inc.bytes_read, 3 * BS);

      // Same uid, name, date, size, validity, snapshot, protection and labels.
      assert.equal((await dst.ok(['-m', 'ls'])).stdout, (await src.ok(['-m', 'ls'])).stdout);
      const json = (sb: Sandbox) => sb.ok(['--json', 'ls']).then((r) => JSON.parse(r.stdout) as unknown);
      assert.deepEqual(await json(dst), await json(src));

      // Different keys: no object name in common, in the databases or the data directories.
      const srcNames = await names(src);
      const dstNames = await names(dst);
      assert.ok(dstNames.size > 0);
      for (const n of dstNames) assert.ok(!srcNames.has(n), `object ${n} is named alike in both stores`);

      const second = await copyOk(src, dst, ['--all']);
      assert.equal(second.copied, 0);
      assert.equal(second.present, 2);
      assert.equal(second.bytes_sent, 0);

      // The target alone: the source store is gone.
      await rm(src.dataDir, { recursive: true });
      await restoresAs(dst, base, img1);
      await restoresAs(dst, child, img2);
      const scrub = await dst.run(['scrub', child]);
      assert.equal(scrub.code, 0, scrub.stderr);
    });
  }

  it('killed (SIGKILL) mid-way leaves an incomplete version that cleanup removes; run again, it sends only what is missing', async () => {
    const src = await copySandbox();
    const dst = await keyed();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'kill' });
    const uid = await src.backup([img, 'vm']);
    const pause = src.path('pause');
    const killAt = async () => {
      const c = spawnCopy(src, dst, [uid], { BACKY_TEST_COPY_PAUSE: `20:${pause}` });
      await waitFor('the copy to pause', () => exists(pause));
      c.child.kill('SIGKILL');
      const r = await c.done;
      assert.equal(r.signal, 'SIGKILL');
      await rm(pause);
    };

    // Interrupted (SIGINT), it removes its incomplete version itself.
    const stopped = spawnCopy(src, dst, [uid], { BACKY_TEST_COPY_PAUSE: `20:${pause}` });
    await waitFor('the copy to pause', () => exists(pause));
    stopped.child.kill('SIGINT');
    const s = await stopped.done;
    assert.equal(s.code, 130, s.stderr);
    assert.match(s.stderr, /interrupted \(SIGINT\).*not at the target/);
    assert.equal(versionStatus(dst, uid), undefined);
    await rm(pause);

    await killAt();
    assert.equal(versionStatus(dst, uid), 'incomplete');
    assert.match((await dst.ok(['-m', 'cleanup'])).stdout, new RegExp(`^removed ${uid}$`, 'm'));
    assert.equal(versionStatus(dst, uid), undefined);

    // Killed again, then run to the end without a cleanup in between.
    await killAt();
    assert.equal(versionStatus(dst, uid), 'incomplete');
    const again = await copyOk(src, dst, [uid]);
    assert.equal(again.versions[0].status, 'valid');
    // At least the 20 blocks settled before the kill were stored then and are not sent again.
    assert.ok(again.versions[0].blocks_sent <= BLOCKS - 20, `sent ${again.versions[0].blocks_sent}`);
    assert.equal((await objectFiles(dst)).length, BLOCKS);
    await rm(src.dataDir, { recursive: true });
    await restoresAs(dst, uid, img);
    assert.equal((await dst.run(['scrub', uid])).code, 0);
  });

  it('rm and cleanup on either side while a copy runs lose nothing', async () => {
    const src = await copySandbox();
    const dst = await copySandbox();
    const img1 = src.path('img1');
    await writeImage(img1, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'rm1' });
    const v1 = await src.backup([img1, 'vm']);
    const img2 = src.path('img2');
    await writeFile(img2, await readFile(img1));
    await scribble(img2, 5 * BS, 3 * BS, 'rm2');
    const v2 = await src.backup(['-f', v1, img2, 'vm']);
    const other = await src.backup([img2, 'other']);
    await copyOk(src, dst, [other]);

    const pause = src.path('pause');
    const c = spawnCopy(src, dst, [v2], { BACKY_TEST_COPY_PAUSE: `10:${pause}` });
    await waitFor('the copy to pause', () => exists(pause));
    // Source: the version being copied is held; its base (not at the target) may go, and a
    // cleanup then frees only what nothing references.
    const rmSrc = await src.run(['rm', v2]);
    assert.equal(rmSrc.code, 1);
    assert.match(rmSrc.stderr, /copy/);
    await src.ok(['rm', v1]);
    await src.ok(['cleanup']);
    // Target: the incomplete copy is held, and cleanup keeps it and what it stored; a version
    // sharing its blocks may go.
    const rmDst = await dst.run(['rm', v2]);
    assert.equal(rmDst.code, 1);
    assert.match(rmDst.stderr, /copy/);
    await dst.ok(['rm', other]);
    await dst.ok(['cleanup']);
    assert.equal(versionStatus(dst, v2), 'incomplete');
    await rm(pause);
    const r = await c.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(versionStatus(dst, v2), 'valid');
    await dst.ok(['cleanup']);
    await rm(src.dataDir, { recursive: true });
    await restoresAs(dst, v2, img2);
    assert.equal((await dst.run(['scrub', v2])).code, 0);
  });

  it('a damaged source block: reported, the target version invalid, exit 3; the rest copies', async () => {
    const src = await copySandbox();
    const dst = await keyed();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'dmg' });
    const uid = await src.backup([img, 'vm']);
    const good = await src.backup([img, 'good']);
    const row = blockRows(src, uid)[7];
    // Damage one object of `uid` only: `good` shares it, so make good first and break after.
    const f = await open(objectPath(src, row.checksum!), 'r+');
    await f.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, 4000);
    await f.close();

    const { r, json } = await copy(src, dst, ['--all']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /block 7: .*damaged/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
    assert.deepEqual(
      json!.versions.map((v) => [v.uid, v.status, v.blocks_damaged]),
      [
        [uid, 'invalid', 1],
        [good, 'invalid', 1],
      ],
    );
    assert.equal(versionStatus(dst, uid), 'invalid');
    // Recorded at the source too, as a restore would.
    assert.equal(versionStatus(src, uid), 'invalid');
    // The target restores the rest; the damaged block is zeros there.
    const out = dst.path('out');
    const restored = await dst.run(['restore', uid, out]);
    assert.equal(restored.code, 3);
    const expected = await readFile(img);
    expected.fill(0, 7 * BS, 8 * BS);
    await assertSameBytes(out, expected);
  });

  it('from a store on read-only media (a read-only tmpfs): copies, and reports damage it cannot record', async (t) => {
    const holder = await copySandbox();
    const mnt = holder.path('mnt');
    await mkdir(mnt);
    const skip = tryMountTmpfs(mnt, '32m');
    if (skip) return t.skip(skip);
    try {
      const dbPath = join(mnt, 'backy.sqlite');
      const dataDir = join(mnt, 'data');
      await writeFile(
        holder.config,
        `[DEFAULTS]\nblock_size = ${BS}\n[MetaBackend]\nengine = sqlite:///${dbPath}\n[DataBackend]\ntype = file\npath = ${dataDir}\n`,
      );
      const { base, child, img1, img2 } = await baseAndIncremental(holder);
      const img3 = holder.path('img3');
      await writeImage(img3, { blockSize: BS, blocks: 8, kinds: () => 'random', seed: 'ro-bad' });
      const bad = await holder.backup([img3, 'bad']);
      const checksum = (await entryAt(dbPath, bad, 2)) as string;
      const fh = await open(join(dataDir, checksum.slice(0, 2), checksum.slice(2, 4), checksum), 'r+');
      await fh.write(Buffer.from('garbage!'), 0, 8, 100);
      await fh.close();
      const lsBefore = (await holder.ok(['-m', 'ls'])).stdout;
      execFileSync('mount', ['-o', 'remount,ro', mnt]);

      const dst = await keyed();
      const { r, json } = await copy(holder, dst, ['--all']);
      assert.equal(r.code, 3, r.stderr);
      assert.deepEqual(
        json!.versions.map((v) => [v.uid, v.status]),
        [
          [base, 'valid'],
          [child, 'valid'],
          [bad, 'invalid'],
        ],
      );
      assert.equal(json!.versions[1].blocks_sent, 3);
      assert.equal((await holder.ok(['-m', 'ls'])).stdout, lsBefore, 'the read-only source is unchanged');
      await restoresAs(dst, base, img1);
      await restoresAs(dst, child, img2);
    } finally {
      umount(mnt);
    }
  });

  it('selection, dry run and bad input', async () => {
    const src = await copySandbox();
    const dst = await copySandbox();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: 4, kinds: () => 'random', seed: 'sel' });
    const a = await src.backup([img, 'a']);
    const b = await src.backup([img, 'b']);

    const usage = async (args: string[]) => {
      const r = await src.run(['copy', '--to', dst.config, ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    };
    await usage([]);
    await usage([a, '--all']);
    await usage(['--all', '--since', 'yesterday']);
    const notUid = await src.run(['copy', '--to', dst.config, 'not-a-uid']);
    assert.equal(notUid.code, 1);
    assert.match(notUid.stderr, /is not a version uid/);
    const self = await src.run(['copy', '--to', src.config, '--all']);
    assert.equal(self.code, 1);
    assert.match(self.stderr, /source's own/);

    const dry = await copyOk(src, dst, ['--all', '--dry-run']);
    assert.deepEqual(
      dry.versions.map((v) => v.outcome),
      ['copied', 'copied'],
    );
    assert.equal(dry.bytes_sent, 0);
    assert.equal((await dst.ok(['-m', 'ls'])).stdout, '');
    assert.equal((await copyOk(src, dst, ['--all', '--since', '0s'])).versions.length, 0);

    const byName = await copyOk(src, dst, ['--name', 'b', '--since', '1h']);
    assert.deepEqual(
      byName.versions.map((v) => v.uid),
      [b],
    );
    const m = await src.run(['-m', 'copy', '--to', dst.config, a, b]);
    assert.equal(m.code, 0, m.stderr);
    const lines = m.stdout.trim().split('\n');
    assert.match(lines[0], new RegExp(`^copy ${a} copied valid \\d+ \\d+ \\d+ 0$`));
    assert.equal(lines[1], `copy ${b} present valid 0 0 0 0`);
    assert.match(lines[2], /^total 1 1 0 \d+$/);
    await restoresAs(dst, a, img);
  });
});
