/**
 * Everything that uses a version holds it (DESIGN.md §5), on SQLite and PostgreSQL: an import
 * from before it reads its input, restores, scrubs, exports and the -f base of a running
 * backup. rm refuses a held version; rm --force makes the reader fail with one line while
 * cleanup keeps the objects until the reader ends.
 *
 * Readers are kept running deterministically: a restore or export to a pipe the test does not
 * read, an import or backup whose stdin the test feeds piece by piece. A scrub has neither, so
 * it is stopped with SIGSTOP once its lease is seen (tried again if it had already finished).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import SQLite from 'better-sqlite3';
import pg from 'pg';
import { encodeExportDiff } from '../../src/source/rbd-export-diff.js';
import { BIN, Sandbox, assertSameBytes, parseLsMachine, runBacky } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { objectFiles, waitFor } from '../lib/store.js';

const BS = 4096;
/** More block rows than one page (1000) of the block list: a reader pages after rm runs. */
const BLOCKS = 4000;
const pgSkip = pgSkipReason();

/** Mostly one repeated block (few objects, quick backups), every 50th block unique. */
const kinds = (i: number): BlockKind => (i % 50 === 0 ? 'random' : 'dup');

const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkip, engine: () => pgDatabase('backy_holds') },
];

/** Rows from a metadata database: a PostgreSQL URL, or a SQLite file. `?` placeholders. */
async function rows<T = Record<string, unknown>>(
  db: string,
  text: string,
  ...params: unknown[]
): Promise<T[]> {
  if (/^postgres(ql)?:/.test(db)) {
    const client = new pg.Client({ connectionString: db });
    await client.connect();
    try {
      let i = 0;
      return (
        await client.query(
          text.replace(/\?/g, () => `$${++i}`),
          params,
        )
      ).rows as T[];
    } finally {
      await client.end();
    }
  }
  const sqlite = new SQLite(db, { readonly: true, timeout: 10_000 });
  try {
    return sqlite.prepare(text).all(...params) as T[];
  } finally {
    sqlite.close();
  }
}

/** Whether a lease of `kind` exists; false while the database or its tables do not exist yet. */
async function hasLease(db: string, kind: string, versionUid?: string): Promise<boolean> {
  try {
    const r = await rows(db, 'SELECT id, version_uid FROM leases WHERE kind = ?', kind);
    return r.some((l) => versionUid === undefined || l.version_uid === versionUid);
  } catch {
    return false;
  }
}

/** Waits for a lease; the old code took none, so give up after a while and let the test fail later. */
async function leaseOrTimeout(db: string, kind: string, versionUid?: string): Promise<void> {
  await waitFor(`a ${kind} lease`, () => hasLease(db, kind, versionUid), 5000).catch(() => {});
}

interface Running {
  child: ChildProcessWithoutNullStreams;
  /** Starts reading stdout (left unread until then: the child blocks on a full pipe). */
  done(): Promise<{ code: number | null; stdout: Buffer; stderr: string }>;
}

function start(cfg: string, cwd: string, args: string[]): Running {
  const child = spawn(process.execPath, [BIN, '-c', cfg, ...args], { cwd, stdio: 'pipe' });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdin.on('error', () => {});
  const closed = new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve(code));
  });
  return {
    child,
    async done() {
      const out: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      const code = await closed;
      return { code, stdout: Buffer.concat(out), stderr };
    },
  };
}

/** Object files of `before` that are gone now. */
async function deleted(sb: Sandbox, before: string[]): Promise<string[]> {
  const now = new Set(await objectFiles(sb));
  return before.filter((f) => !now.has(f));
}

function errorLines(stderr: string): string[] {
  assert.doesNotMatch(stderr, /\n\s+at /, 'no stack trace');
  return stderr
    .split('\n')
    .filter((l) => l.includes('ERROR'))
    .map((l) => l.trim());
}

for (const e of engines) {
  describe(`holds on ${e.name}`, { skip: e.skip }, () => {
    let sb: Sandbox;
    let db: string;
    let img: string;
    let uid: string;
    before(async () => {
      const engine = await e.engine();
      sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
      db = engine ?? sb.dbPath;
      img = sb.path('big.img');
      await writeImage(img, { blocks: BLOCKS, blockSize: BS, seed: 'big', kinds });
      uid = await sb.backup([img, 'vm-big']);
    });
    after(async () => sb?.remove());

    it('import holds its lease from before it reads its input: a cleanup meanwhile deletes nothing it needs', async () => {
      const small = sb.path('small.img');
      await writeImage(small, { blocks: 60, blockSize: BS, seed: 'imp', kinds: () => 'random' });
      const smallUid = await sb.backup([small, 'vm-import']);
      const exported = (await sb.ok(['export', smallUid, '-'])).stdoutBuf;
      const files = await objectFiles(sb);
      assert.ok(files.length >= 60);

      // The database is lost; a fresh one over the same data directory is rebuilt by import.
      const db2 = e.name === 'sqlite' ? sb.path('rebuilt.sqlite') : await e.engine();
      const cfg2 = sb.path('rebuilt.cfg');
      await writeFile(
        cfg2,
        `[DEFAULTS]\nblock_size = ${BS}\n[MetaBackend]\nengine = ${e.name === 'sqlite' ? `sqlite:///${db2}` : db2}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\n`,
      );
      // A store without descriptor and metadata copies (as written before `recover` existed):
      // a fresh database over it adopts nothing, and only the import's lease keeps cleanup off
      // the objects. (With copies, cleanup refuses to run before `recover`: recover.test.ts.)
      const metaDir = join(sb.dataDir, 'meta');
      await rename(metaDir, `${metaDir}.saved`);
      const imp = start(cfg2, sb.dir, ['import', '-']);
      imp.child.stdin.write(exported.subarray(0, 3000));
      await leaseOrTimeout(db2!, 'import');
      const gc = await runBacky(['-c', cfg2, '-m', 'cleanup'], { cwd: sb.dir });
      assert.equal(gc.code, 0, gc.stderr);
      assert.deepEqual(await deleted(sb, files), [], 'cleanup deleted no object file');
      imp.child.stdin.end(exported.subarray(3000));
      const r = await imp.done();
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.toString().trim(), smallUid);
      const [v] = parseLsMachine((await runBacky(['-c', cfg2, '-m', 'ls'], { cwd: sb.dir })).stdout);
      assert.equal(v.valid, true, 'every block found its object');
      const out = sb.path('import.restored');
      const rr = await runBacky(['-c', cfg2, 'restore', smallUid, out], { cwd: sb.dir });
      assert.equal(rr.code, 0, rr.stderr);
      await assertSameBytes(small, out);
      assert.deepEqual(await deleted(sb, files), []);
      // Back to the original database's own store description.
      await rm(metaDir, { recursive: true, force: true });
      await rename(`${metaDir}.saved`, metaDir);
    });

    it('rm refuses a version being restored; the restore completes byte for byte', async () => {
      const restore = start(sb.config, sb.dir, ['restore', uid, '-']);
      await leaseOrTimeout(db, 'restore', uid);
      const r = await sb.run(['rm', uid]);
      assert.equal(r.code, 1);
      const [line, ...more] = errorLines(r.stderr);
      assert.deepEqual(more, []);
      assert.match(
        line,
        new RegExp(`version ${uid} is in use by a restore \\(pid ${restore.child.pid} on .+\\).*--force`),
      );
      const done = await restore.done();
      assert.equal(done.code, 0, done.stderr);
      await assertSameBytes(img, done.stdout);
      assert.equal(await hasLease(db, 'restore'), false, 'the lease is released');
    });

    it('rm refuses a version being exported; the export is whole', async () => {
      const exp = start(sb.config, sb.dir, ['export', uid, '-']);
      await leaseOrTimeout(db, 'export', uid);
      const r = await sb.run(['rm', uid]);
      assert.equal(r.code, 1);
      assert.match(
        errorLines(r.stderr).join('\n'),
        /is in use by an export or a copy to another store \(pid \d+ on .+\)/,
      );
      const done = await exp.done();
      assert.equal(done.code, 0, done.stderr);
      const again = await sb.ok(['export', uid, '-']);
      assert.ok(done.stdout.equals(again.stdoutBuf), 'the same export as one nobody interfered with');
    });

    it('rm refuses a version being scrubbed; the scrub completes', async () => {
      for (let attempt = 0; ; attempt++) {
        const scrub = start(sb.config, sb.dir, ['scrub', uid]);
        await waitFor(
          'a scrub lease or the scrub ending',
          async () => {
            return scrub.child.exitCode !== null || (await hasLease(db, 'scrub', uid));
          },
          5000,
        ).catch(() => {});
        scrub.child.kill('SIGSTOP');
        const caught = scrub.child.exitCode === null && (await hasLease(db, 'scrub', uid));
        if (caught || attempt >= 5) {
          const r = await sb.run(['rm', uid]);
          scrub.child.kill('SIGCONT');
          assert.equal(r.code, 1, 'rm refused');
          assert.match(errorLines(r.stderr).join('\n'), /is in use by a scrub \(pid \d+ on .+\)/);
          const done = await scrub.done();
          assert.equal(done.code, 0, done.stderr);
          return;
        }
        scrub.child.kill('SIGCONT');
        await scrub.done(); // it had finished before it could be stopped: once more
      }
    });

    it('rm --force during a restore: the restore fails with one line; cleanup keeps the objects until it ends', async () => {
      const img2 = sb.path('forced.img');
      await writeImage(img2, { blocks: BLOCKS, blockSize: BS, seed: 'forced', kinds });
      const uid2 = await sb.backup([img2, 'vm-forced']);
      const files = await objectFiles(sb);
      const restore = start(sb.config, sb.dir, ['restore', uid2, '-']);
      await leaseOrTimeout(db, 'restore', uid2);
      await sb.ok(['rm', '--force', uid2]);
      const gc = await sb.ok(['-m', 'cleanup']);
      assert.match(gc.stdout, /^cleanup 0 0 0 /m, 'no object freed while the restore runs');
      assert.deepEqual(await deleted(sb, files), []);
      const done = await restore.done();
      assert.equal(done.code, 1, done.stderr);
      assert.deepEqual(errorLines(done.stderr), [
        `ERROR: version ${uid2} was removed while being restored; restore of ${uid2} to stdout stopped; the output is incomplete`,
      ]);
      assert.doesNotMatch(done.stderr, /marked invalid/);
      // The restore ended: now its objects (those only the removed version used) go.
      const later = await sb.ok(['-m', 'cleanup']);
      const freed = Number(/^cleanup 0 (\d+) /m.exec(later.stdout)?.[1]);
      assert.ok(freed >= BLOCKS / 50, later.stdout);
      // The kept version is untouched by all this.
      const out = sb.path('big.restored');
      await sb.ok(['restore', uid, out]);
      await assertSameBytes(img, out);
    });

    it('rm refuses the base of a running -f backup (stdin); the backup completes byte for byte', async () => {
      const data = randomBytesSeeded('child', 8 * BS);
      const run = start(sb.config, sb.dir, ['backup', '-f', uid, '-', 'vm-big@child']);
      run.child.stdin.write(data.subarray(0, 2 * BS));
      await leaseOrTimeout(db, 'base', uid);
      const r = await sb.run(['rm', uid]);
      assert.equal(r.code, 1);
      assert.match(errorLines(r.stderr).join('\n'), /is in use by a backup as its base \(pid \d+ on .+\)/);
      run.child.stdin.end(data.subarray(2 * BS));
      const done = await run.done();
      assert.equal(done.code, 0, done.stderr);
      const child = done.stdout.toString().trim().split('\n').pop()!;
      const out = sb.path('child.restored');
      await writeFile(sb.path('child.expected'), data);
      await sb.ok(['restore', child, out]);
      await assertSameBytes(sb.path('child.expected'), out);
    });

    it('rm refuses the base of a running --rbd-export-diff -f backup; it completes byte for byte', async () => {
      const size = 40 * BS;
      const base = randomBytesSeeded('ed-base', size);
      const full = encodeExportDiff(1, [
        { tag: 't', name: 's1' },
        { tag: 's', size },
        { tag: 'w', offset: 0, data: base },
        { tag: 'e' },
      ]);
      const baseUid = await sb.backup(['--rbd-export-diff', '-', 'vm-ed@s1'], { input: full });
      const patch = randomBytesSeeded('ed-patch', 100);
      const inc = encodeExportDiff(1, [
        { tag: 'f', name: 's1' },
        { tag: 't', name: 's2' },
        { tag: 's', size },
        { tag: 'w', offset: 3 * BS + 10, data: patch },
        { tag: 'w', offset: 30 * BS, data: randomBytesSeeded('ed-whole', BS) },
        { tag: 'e' },
      ]);
      const expected = Buffer.from(base);
      patch.copy(expected, 3 * BS + 10);
      randomBytesSeeded('ed-whole', BS).copy(expected, 30 * BS);

      const run = start(sb.config, sb.dir, ['backup', '--rbd-export-diff', '-', '-f', baseUid, 'vm-ed@s2']);
      run.child.stdin.write(inc.subarray(0, 40));
      await leaseOrTimeout(db, 'base', baseUid);
      const r = await sb.run(['rm', baseUid]);
      assert.equal(r.code, 1);
      assert.match(errorLines(r.stderr).join('\n'), /is in use by a backup as its base/);
      run.child.stdin.end(inc.subarray(40));
      const done = await run.done();
      assert.equal(done.code, 0, done.stderr);
      const child = done.stdout.toString().trim().split('\n').pop()!;
      await writeFile(sb.path('ed.expected'), expected);
      await sb.ok(['restore', child, sb.path('ed.restored')]);
      await assertSameBytes(sb.path('ed.expected'), sb.path('ed.restored'));
      assert.ok((await readFile(sb.path('ed.restored'))).equals(expected));
    });

    it('a reader killed with SIGKILL holds nothing: rm works without --force, cleanup drops its lease', async () => {
      const exp = start(sb.config, sb.dir, ['export', uid, '-']);
      await waitFor('the export lease', () => hasLease(db, 'export', uid));
      exp.child.kill('SIGKILL');
      await exp.done();
      assert.equal(await hasLease(db, 'export', uid), true, 'its row is left behind');
      await sb.ok(['rm', uid]);
      await sb.ok(['cleanup']);
      assert.equal(await hasLease(db, 'export'), false);
    });
  });
}
