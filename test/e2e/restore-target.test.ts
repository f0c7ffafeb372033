/**
 * Restore targets and what restore and scrub must never take for damage, through the real CLI:
 * links to the live SQLite -wal, -shm and -journal files (made before restore opens the
 * database, so a check by path alone finds nothing there yet), a dangling symlink, an
 * incomplete version (a stdin backup killed before it recorded its size), and a data
 * directory that is not there. Each is refused with one line and exit 1, writes nothing, and
 * leaves the store as it was: `ls -m` unchanged and a later restore byte for byte.
 */
import assert from 'node:assert/strict';
import { link, lstat, rename, rm, stat, symlink } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import SQLite from 'better-sqlite3';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { query, spawnBacky, waitFor } from '../lib/store.js';
import { invalidObjects } from '../lib/tree-edit.js';

const BS = 64 * 1024;

function oneErrorLine(r: RunResult): string {
  assert.doesNotMatch(r.stderr, /^ {4}at /m, `no stack trace:\n${r.stderr}`);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, `exactly one ERROR line:\n${r.stderr}`);
  return errors[0].slice('   ERROR: '.length);
}

describe('restore targets that are the live database, through links', () => {
  let sb: Sandbox;
  let uid: string;
  let lsBefore: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    await writeImage(sb.path('img'), {
      blocks: 10,
      blockSize: BS,
      tail: 333,
      kinds: (i) => (i % 3 ? 'random' : 'zero'),
    });
    uid = await sb.backup([sb.path('img'), 'vm']);
    lsBefore = (await sb.ok(['-m', 'ls'])).stdout;
  });

  after(async () => {
    await sb?.remove();
  });

  async function assertIntact(what: string) {
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, lsBefore, `${what}: ls -m unchanged`);
    const out = sb.path('check.img');
    await rm(out, { force: true });
    await sb.ok(['restore', uid, out]);
    await assertSameBytes(sb.path('img'), out);
  }

  for (const suffix of ['-wal', '-shm', '-journal']) {
    for (const force of [false, true]) {
      it(`symlink to ${suffix}${force ? ' with --force' : ''}: refused, nothing written`, async () => {
        const lnk = sb.path(`lnk${suffix}`);
        await rm(lnk, { force: true });
        await symlink(sb.dbPath + suffix, lnk);
        const r = await sb.run(['restore', ...(force ? ['--force'] : []), uid, lnk]);
        assert.equal(r.code, 1, r.stderr);
        const line = oneErrorLine(r);
        assert.match(line, /is backy's metadata database|exists; use --force|dangling symlink/, line);
        if (force) assert.doesNotMatch(line, /use --force/);
        const target = await stat(lnk).catch(() => undefined);
        assert.ok(
          !target || target.size < 10 * BS,
          `${suffix} was not written through (${target?.size} bytes)`,
        );
        await assertIntact(`${suffix}${force ? ' --force' : ''}`);
      });
    }
  }

  for (const suffix of ['-wal', '-shm']) {
    it(`hard link to the live ${suffix} (a reader holds it open) with --force: refused`, async () => {
      const reader = new SQLite(sb.dbPath, { readonly: true });
      try {
        reader.prepare('SELECT count(*) FROM versions').get();
        const hl = sb.path(`hl${suffix}`);
        await rm(hl, { force: true });
        await link(sb.dbPath + suffix, hl);
        const sizeBefore = (await stat(hl)).size;
        const r = await sb.run(['restore', '--force', uid, hl]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(oneErrorLine(r), new RegExp(`is backy's metadata database .*backy\\.sqlite${suffix}`));
        assert.equal((await stat(hl)).size, sizeBefore, 'not truncated or written');
      } finally {
        reader.close();
      }
      await assertIntact(suffix);
    });
  }

  it('a dangling symlink: refused with a clear line, nothing created where it points', async () => {
    const lnk = sb.path('dangling');
    await symlink(sb.path('nowhere.img'), lnk);
    for (const force of [false, true]) {
      const r = await sb.run(['restore', ...(force ? ['--force'] : []), uid, lnk]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(
        oneErrorLine(r),
        /is a symlink to .*nowhere\.img, which does not exist; backy does not write through dangling symlinks/,
      );
      assert.equal(await lstat(sb.path('nowhere.img')).catch(() => undefined), undefined);
    }
  });
});

describe('an incomplete version is never restored as if complete', () => {
  let sb: Sandbox;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });

  after(async () => {
    await sb?.remove();
  });

  it('a stdin backup killed before its end (size still 0): restore refuses, exit 1, no file', async () => {
    await writeImage(sb.path('img'), { blocks: 4, blockSize: BS, kinds: () => 'random' });
    const good = await sb.backup([sb.path('img'), 'good']);
    const { child, done } = spawnBacky(sb, ['backup', '-', 'stdin']);
    child.stdin.write(Buffer.alloc(3 * BS, 7));
    await waitFor(
      'the stdin backup to record its version',
      () => query(sb, "SELECT 1 FROM versions WHERE name = 'stdin'").length > 0,
    );
    child.kill('SIGKILL');
    await done;
    const v = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).find((x) => x.name === 'stdin');
    assert.ok(v, 'the killed backup left its version');
    assert.equal(
      query<{ status: string }>(sb, 'SELECT status FROM versions WHERE uid = ?', v.uid)[0].status,
      'incomplete',
    );
    const lsBefore = (await sb.ok(['-m', 'ls'])).stdout;
    for (const target of [sb.path('out.img'), '-']) {
      const r = await sb.run(['restore', v.uid, target]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(
        oneErrorLine(r),
        /is incomplete \(its backup is running or crashed\) and cannot be restored/,
      );
      assert.equal(r.stdoutBuf.length, 0);
    }
    assert.equal(await stat(sb.path('out.img')).catch(() => undefined), undefined, 'no file written');
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, lsBefore);
    await sb.ok(['restore', good, sb.path('good.out')]);
    await assertSameBytes(sb.path('img'), sb.path('good.out'));
  });
});

describe('a data directory that is not there is an I/O error, never damage', () => {
  let sb: Sandbox;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });

  after(async () => {
    await sb?.remove();
  });

  it('scrub and restore fail with one line, exit 1, and mark nothing; with the directory back all is well', async () => {
    await writeImage(sb.path('img'), { blocks: 6, blockSize: BS, kinds: (i) => (i % 2 ? 'text' : 'random') });
    const a = await sb.backup([sb.path('img'), 'a']);
    const b = await sb.backup([sb.path('img'), 'b']);
    const lsBefore = (await sb.ok(['-m', 'ls'])).stdout;
    await rename(sb.dataDir, sb.path('data.unmounted'));
    try {
      for (const args of [
        ['scrub', a],
        ['-m', 'scrub', b],
        ['restore', a, sb.path('out.img')],
      ]) {
        const r = await sb.run(args);
        assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
        assert.match(
          oneErrorLine(r),
          /data directory .*data does not exist \(not mounted, or moved\?\); nothing was marked invalid/,
        );
      }
      assert.equal(await stat(sb.path('out.img')).catch(() => undefined), undefined, 'no file written');
      assert.equal((await sb.ok(['-m', 'ls'])).stdout, lsBefore, 'nothing marked invalid');
      assert.deepEqual(query(sb, 'SELECT checksum FROM objects WHERE valid = 0'), []);
      assert.deepEqual(await invalidObjects(sb.dbPath), []);
    } finally {
      await rename(sb.path('data.unmounted'), sb.dataDir);
    }
    await sb.ok(['scrub', a]);
    await sb.ok(['restore', b, sb.path('b.out')]);
    await assertSameBytes(sb.path('img'), sb.path('b.out'));
  });
});
