/**
 * A full disk, for real: the data directory and a restore target on small tmpfs mounts (needs
 * root; skipped with a message otherwise). A backup that runs out of space fails with one
 * clear line and exit 1, its version stays incomplete, earlier versions restore byte for
 * byte, and once there is space again the next backup works. A restore whose target fills
 * up fails the same way, removes its partial file, and changes nothing in the store.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, rm, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { tryMountTmpfs, umount } from '../lib/tmpfs.js';

const BS = 64 * 1024;

function oneErrorLine(stderr: string): string {
  assert.doesNotMatch(stderr, /^ {4}at /m, `no stack trace:\n${stderr}`);
  const errors = stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, `exactly one ERROR line:\n${stderr}`);
  return errors[0].slice('   ERROR: '.length);
}

describe('full disk (ENOSPC) on a real tmpfs', () => {
  let sb: Sandbox;
  let skip: string | undefined;
  const mounts: string[] = [];

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    await mkdir(sb.dataDir);
    skip = tryMountTmpfs(sb.dataDir, '8m');
    if (!skip) mounts.push(sb.dataDir);
  });

  after(async () => {
    for (const m of mounts) umount(m);
    await sb?.remove();
  });

  it('a backup that fills the data store fails cleanly; earlier versions are intact; then it works', async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    const small = sb.path('small.img');
    await writeImage(small, { blocks: 32, blockSize: BS, kinds: () => 'random' }); // 2 MiB
    const smallUid = await sb.backup([small, 'vm@small']);

    const big = sb.path('big.img');
    await writeImage(big, { blocks: 256, blockSize: BS, seed: 'big', kinds: () => 'random' }); // 16 MiB
    const r = await sb.run(['backup', big, 'vm@big']);
    assert.equal(r.code, 1, r.stderr);
    const message = oneErrorLine(r.stderr);
    assert.match(message, /^cannot store block [0-9a-f]+ in .*: no space left on device \(ENOSPC\)$/);
    t.diagnostic(`backup on a full store -> exit 1: ${message}`);
    assert.equal(r.stdout, '', 'no uid printed');

    const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    const bigV = versions.filter((v) => v.name === 'vm@big');
    assert.equal(bigV.length, 1);
    assert.equal(bigV[0].valid, false, 'the version that ran out of space is not valid');
    const f = await sb.run(['backup', '-f', bigV[0].uid, big, 'vm@x']);
    assert.equal(f.code, 1);
    assert.match(oneErrorLine(f.stderr), /incomplete and cannot be the base/);

    const out = sb.path('small.out');
    await sb.ok(['restore', smallUid, out]);
    await assertSameBytes(small, out);
    await rm(out);

    // The space the failed backup used is reclaimable (once `cleanup` exists).
    const help = (await sb.ok(['--help'])).stdout;
    if (/^ {2}cleanup\b/m.test(help)) {
      const used = async () => {
        const st = await statfs(sb.dataDir);
        return (st.blocks - st.bfree) * st.bsize;
      };
      const full = await used();
      await sb.ok(['cleanup']);
      const after = await used();
      t.diagnostic(`cleanup after ENOSPC: ${full} -> ${after} bytes used on the 8 MiB store`);
      assert.ok(after < 3 * 1024 * 1024, `only the small version's 2 MiB remain (${after} bytes used)`);
    }

    // More space (an operator growing the volume); the next backup of the same name works.
    execFileSync('mount', ['-o', 'remount,size=64m', sb.dataDir]);
    const bigUid = await sb.backup([big, 'vm@big']);
    const bigOut = sb.path('big.out');
    await sb.ok(['restore', bigUid, bigOut]);
    await assertSameBytes(big, bigOut);
    await rm(bigOut);
    await sb.ok(['restore', smallUid, out]);
    await assertSameBytes(small, out);
    await rm(out);
  });

  it('a restore whose target fills up fails cleanly and changes nothing', async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    const tgtDir = sb.path('target');
    await mkdir(tgtDir);
    const why = tryMountTmpfs(tgtDir, '1m');
    if (why) {
      t.skip(why);
      return;
    }
    mounts.push(tgtDir);
    const lsBefore = (await sb.ok(['-m', 'ls'])).stdout;
    const uid = parseLsMachine(lsBefore).find((v) => v.name === 'vm@small' && v.valid)!.uid;
    const r = await sb.run(['restore', uid, `${tgtDir}/out.img`]);
    assert.equal(r.code, 1, r.stderr);
    const message = oneErrorLine(r.stderr);
    assert.match(
      message,
      /^cannot (write|finish writing) .*out\.img.*: no space left on device \(ENOSPC\); restore of .* stopped; the partial file .*out\.img was removed$/,
    );
    t.diagnostic(`restore to a full target -> exit 1: ${message}`);
    // The partial file is gone: the space is free again and a retry is not refused as "exists".
    await assert.rejects(stat(`${tgtDir}/out.img`), { code: 'ENOENT' });
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, lsBefore, 'no version changed');
  });

  it('a full metadata file system fails cleanly; earlier versions are intact; then it works', async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    const metaDir = sb.path('meta');
    await mkdir(metaDir);
    const why = tryMountTmpfs(metaDir, '800k');
    if (why) {
      t.skip(why);
      return;
    }
    mounts.push(metaDir);
    // Its own store: 4 KiB blocks make many objects; the database lives on the small mount
    // (a fresh database's schema and first backup take ~600 KB of write-ahead log).
    const msb = await Sandbox.create({
      defaults: 'block_size = 4096',
      engine: `sqlite:///${join(metaDir, 'backy.sqlite')}`,
    });
    try {
      const small = msb.path('small.img');
      await writeImage(small, { blocks: 50, blockSize: 4096, kinds: () => 'random' });
      const smallUid = await msb.backup([small, 'vm@small']);
      const big = msb.path('big.img');
      await writeImage(big, { blocks: 6000, blockSize: 4096, seed: 'big', kinds: () => 'random' });
      const r = await msb.run(['backup', big, 'vm@big']);
      assert.equal(r.code, 1, r.stderr);
      const message = oneErrorLine(r.stderr);
      assert.match(message, /^metadata database error: database or disk is full \(SQLITE_FULL\); free space/);
      t.diagnostic(`backup with a full metadata file system -> exit 1: ${message}`);
      const versions = parseLsMachine((await msb.ok(['-m', 'ls'])).stdout);
      assert.ok(
        versions.filter((v) => v.name === 'vm@big').every((v) => !v.valid),
        'never valid',
      );
      const out = msb.path('small.out');
      await msb.ok(['restore', smallUid, out]);
      await assertSameBytes(small, out);
      execFileSync('mount', ['-o', 'remount,size=16m', metaDir]);
      const bigUid = await msb.backup([big, 'vm@big']);
      const bigOut = msb.path('big.out');
      await msb.ok(['restore', bigUid, bigOut]);
      await assertSameBytes(big, bigOut);
    } finally {
      await msb.remove();
    }
  });
});
