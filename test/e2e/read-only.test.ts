/**
 * A store on read-only media, for real: the SQLite file and the data directory on a tmpfs
 * that is remounted read-only after the backups (needs root; skipped with a message
 * otherwise). Readers work (ls, ls -m, restore byte for byte, export, scrub, which reports
 * damage it cannot record); writers (backup, rm, cleanup, import) fail with one line that
 * names the read-only store. Also: a database left with a pending -wal by a killed writer.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO, Sandbox, assertSameBytes, parseLsMachine, runBacky } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { tryMountTmpfs, umount } from '../lib/tmpfs.js';
import { entryAt } from '../lib/tree-edit.js';

const BS = 64 * 1024;

function oneErrorLine(r: RunResult): string {
  assert.doesNotMatch(r.stderr, /^ {4}at /m, `no stack trace:\n${r.stderr}`);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, `exactly one ERROR line:\n${r.stderr}`);
  return errors[0].slice('   ERROR: '.length);
}

/** The final ERROR line (scrub and restore first list each bad block on a line of its own). */
function finalErrorLine(r: RunResult): string {
  assert.doesNotMatch(r.stderr, /^ {4}at /m, `no stack trace:\n${r.stderr}`);
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.ok(errors.length > 0, r.stderr);
  return errors[errors.length - 1].slice('   ERROR: '.length);
}

describe('a store on a read-only file system', () => {
  let sb: Sandbox;
  let skip: string | undefined;
  let mnt: string;
  let cfg: string;
  let dbPath: string;
  let dataDir: string;
  let mounted = false;
  let good: string;
  let damaged: string;
  let lsBefore: string;
  let exportBefore: string;

  const run = (args: string[], input?: string) => runBacky(['-c', cfg, ...args], { cwd: sb.dir, input });
  const remount = (mode: 'ro' | 'rw') => execFileSync('mount', ['-o', `remount,${mode}`, mnt]);

  before(async () => {
    sb = await Sandbox.create();
    mnt = sb.path('mnt');
    await mkdir(mnt);
    skip = tryMountTmpfs(mnt, '16m');
    mounted = skip === undefined;
    dbPath = join(mnt, 'backy.sqlite');
    dataDir = join(mnt, 'data');
    cfg = sb.path('ro.cfg');
    await writeFile(
      cfg,
      `[DEFAULTS]\nblock_size = ${BS}\n[MetaBackend]\nengine = sqlite:///${dbPath}\n[DataBackend]\ntype = file\npath = ${dataDir}\n`,
    );
    if (skip) return;
    const kinds = (i: number) =>
      i % 4 === 0 ? 'zero' : i % 4 === 1 ? 'random' : i % 4 === 2 ? 'text' : 'dup';
    await writeImage(sb.path('good.img'), { blocks: 12, blockSize: BS, tail: 1000, seed: 'good', kinds });
    await writeImage(sb.path('bad.img'), { blocks: 6, blockSize: BS, seed: 'bad', kinds: () => 'random' });
    const backup = async (img: string, name: string) => {
      const r = await run(['backup', sb.path(img), name]);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.trim().split('\n').pop()!;
    };
    good = await backup('good.img', 'good');
    damaged = await backup('bad.img', 'bad');
    // Damage one object only the second version uses, while the store is still writable.
    const checksum = (await entryAt(dbPath, damaged, 2)) as string;
    const fh = await open(join(dataDir, checksum.slice(0, 2), checksum.slice(2, 4), checksum), 'r+');
    await fh.write(Buffer.from('garbage!'), 0, 8, 100);
    await fh.close();
    lsBefore = (await run(['-m', 'ls'])).stdout;
    const e = await run(['export', good, '-']);
    assert.equal(e.code, 0, e.stderr);
    exportBefore = e.stdout;
    remount('ro');
  });

  after(async () => {
    if (mounted) umount(mnt);
    await sb?.remove();
  });

  it('lists, exports and restores byte for byte', async (t) => {
    if (skip) return t.skip(skip);
    const ls = await run(['ls']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /good/);
    const lsm = await run(['-m', 'ls']);
    assert.equal(lsm.code, 0, lsm.stderr);
    assert.equal(lsm.stdout, lsBefore);
    assert.equal(parseLsMachine(lsm.stdout).length, 2);

    const r = await run(['restore', good, sb.path('good.out')]);
    assert.equal(r.code, 0, r.stderr);
    await assertSameBytes(sb.path('good.img'), sb.path('good.out'));
    const piped = await runBacky(['-c', cfg, 'restore', good, '-'], { cwd: sb.dir });
    assert.equal(piped.code, 0, piped.stderr);
    await assertSameBytes(sb.path('good.img'), piped.stdoutBuf);

    const e = await run(['export', good, sb.path('good.export')]);
    assert.equal(e.code, 0, e.stderr);
    assert.equal(await readFile(sb.path('good.export'), 'utf8'), exportBefore);
  });

  it('scrubs: clean is clean; damage is reported (exit 3) and said to be unrecorded', async (t) => {
    if (skip) return t.skip(skip);
    const clean = await run(['scrub', good]);
    assert.equal(clean.code, 0, clean.stderr);

    const bad = await run(['-m', 'scrub', damaged]);
    assert.equal(bad.code, 3, bad.stderr);
    assert.match(
      finalErrorLine(bad),
      /1 damaged or missing blocks; the metadata database is read-only, so nothing could be marked invalid/,
    );
    assert.match(bad.stdout, new RegExp(`^scrub ${damaged} 6 1 0 0 0$`, 'm'));

    const restore = await run(['restore', damaged, sb.path('bad.out')]);
    assert.equal(restore.code, 3, restore.stderr);
    assert.match(
      finalErrorLine(restore),
      /1 missing or damaged blocks written as zeros; the metadata database is read-only, so this could not be recorded/,
    );
    assert.equal((await run(['-m', 'ls'])).stdout, lsBefore, 'nothing recorded');
  });

  it('backup, rm, cleanup and import fail with one line naming the read-only store', async (t) => {
    if (skip) return t.skip(skip);
    for (const [what, args] of [
      ['backup', ['backup', sb.path('good.img'), 'again']],
      ['rm', ['rm', good]],
      ['cleanup', ['cleanup']],
      ['import', ['import', sb.path('good.export')]],
    ] as const) {
      const r = await run([...args]);
      assert.equal(r.code, 1, `${what}: ${r.stderr}`);
      const line = oneErrorLine(r);
      assert.ok(
        line.startsWith(`${what} needs to write to the metadata database ${dbPath}, which is read-only`),
        `${what}: ${line}`,
      );
      assert.doesNotMatch(line, /cannot create/);
    }
    assert.equal((await run(['-m', 'ls'])).stdout, lsBefore);
  });

  it('a database whose killed writer left a pending -wal is read with it', async (t) => {
    if (skip) return t.skip(skip);
    remount('rw');
    try {
      // The damage was real: on the writable store the same scrub records it.
      const rw = await run(['scrub', damaged]);
      assert.equal(rw.code, 3, rw.stderr);
      assert.match(finalErrorLine(rw), /1 versions marked invalid/);
      // A writer killed after a commit: the commit is only in the -wal.
      execFileSync(
        process.execPath,
        [
          '-e',
          `const D = require('better-sqlite3'); const d = new D(${JSON.stringify(dbPath)});
         d.pragma('wal_autocheckpoint = 0');
         d.prepare("UPDATE versions SET name = 'renamed' WHERE uid = ?").run(${JSON.stringify(good)});
         process.kill(process.pid, 'SIGKILL');`,
        ],
        { cwd: REPO, stdio: 'pipe' },
      ).toString();
    } catch (err) {
      if ((err as { signal?: string }).signal !== 'SIGKILL') throw err;
    } finally {
      remount('ro');
    }
    const ls = await run(['-m', 'ls']);
    assert.equal(ls.code, 0, ls.stderr);
    const versions = parseLsMachine(ls.stdout);
    assert.equal(versions.find((v) => v.uid === good)?.name, 'renamed');
    assert.equal(versions.find((v) => v.uid === damaged)?.valid, false);
    const r = await run(['restore', good, sb.path('good2.out')]);
    assert.equal(r.code, 0, r.stderr);
    await assertSameBytes(sb.path('good.img'), sb.path('good2.out'));
  });
});
