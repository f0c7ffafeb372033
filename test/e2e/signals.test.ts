/**
 * SIGINT and SIGTERM, sent for real (child.kill) to the real CLI: it stops within moments,
 * releases its lease, names in one line what it leaves behind (the incomplete version, the
 * partial target) and exits 130 or 143. The moment of the signal is fixed by the test, not by
 * a sleep: a backup reads stdin that the test feeds piece by piece, a restore to stdout writes
 * into a pipe that the test does not read, and a restore to a file is signalled once the file
 * has grown (its image is far larger than what is written by then).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import { objectFiles, query, spawnBacky, waitFor } from '../lib/store.js';

const BS = 64 * 1024;
/** A signal must be acted on within this (the machine is shared and loaded: generous). */
const PROMPT_MS = 10_000;

/** The uid of the version NAME once it exists ('' before; the database may not exist yet). */
function versionUid(sb: Sandbox, name: string): string {
  try {
    return query<{ uid: string }>(sb, 'SELECT uid FROM versions WHERE name = ?', name)[0]?.uid ?? '';
  } catch {
    return '';
  }
}

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

function assertNoStack(stderr: string) {
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
}

/** Sends `sig` and returns how long the process took to exit. */
async function signalAndTime(
  child: { kill(sig: NodeJS.Signals): boolean },
  done: Promise<unknown>,
  sig: NodeJS.Signals,
): Promise<number> {
  const t0 = performance.now();
  assert.ok(child.kill(sig), 'the process was still running when signalled');
  await done;
  return performance.now() - t0;
}

describe('signals', () => {
  let sb: Sandbox;
  let img: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    // 64 MiB of random blocks: far more than a pipe holds or a restore writes in a moment.
    await writeImage(img, { blocks: 1024, blockSize: BS, seed: 'sig', kinds: () => 'random' });
  });
  after(() => sb.remove());

  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    it(`${sig} stops a backup from stdin: exit ${code}, the incomplete version named, lease released`, async (t) => {
      const name = `vm-${sig}`;
      const { child, done } = spawnBacky(sb, ['backup', '-', name]);
      t.after(() => child.kill('SIGKILL'));
      // Three blocks, then stdin stays open: the backup waits for more, mid-way.
      child.stdin.write(randomBytesSeeded(`stdin-${sig}`, 3 * BS));
      let uid = '';
      await waitFor('the backup to store what it was given', async () => {
        uid = versionUid(sb, name);
        return uid !== '' && (await objectFiles(sb)).length >= 3;
      });
      const ms = await signalAndTime(child, done, sig);
      const r = await done;
      t.diagnostic(`backup exited ${ms.toFixed(0)} ms after ${sig}`);
      assert.equal(r.code, code, r.stderr);
      assert.ok(ms < PROMPT_MS, `exited ${ms} ms after the signal`);
      assertNoStack(r.stderr);
      const errors = errorLines(r.stderr);
      assert.equal(errors.length, 1, r.stderr);
      assert.match(
        errors[0],
        new RegExp(`interrupted \\(${sig}\\): backup ${uid} of ${name} is incomplete; run the backup again`),
      );
      assert.equal(r.stdout, '', 'no uid on stdout: the backup did not finish');

      const ls = parseLsMachine((await sb.ok(['-m', 'ls', name])).stdout);
      assert.deepEqual(
        ls.map((v) => [v.uid, v.valid]),
        [[uid, false]],
      );
      assert.deepEqual(query(sb, 'SELECT * FROM leases'), [], 'the lease is released');
      const c = await sb.ok(['-m', 'cleanup']);
      assert.match(c.stdout, new RegExp(`^removed ${uid}$`, 'm'), 'cleanup reclaims the incomplete version');
      assert.equal((await objectFiles(sb)).length, 0, 'and the blocks it stored');
    });
  }

  it('a backup whose source shrinks mid-way names the incomplete version', async (t) => {
    const shrinking = sb.path('shrinking.img');
    await writeImage(shrinking, { blocks: 2048, blockSize: BS, seed: 'shrink', kinds: () => 'random' });
    const { child, done } = spawnBacky(sb, ['backup', shrinking, 'vm-shrink']);
    t.after(() => child.kill('SIGKILL'));
    child.stdin.end();
    let uid = '';
    let exited = false;
    void done.then(() => (exited = true));
    await waitFor('the backup to create its version', () => {
      uid = versionUid(sb, 'vm-shrink');
      return uid !== '' || exited;
    });
    await truncate(shrinking, 4 * BS);
    const r = await done;
    assert.equal(r.code, 1, `the backup finished before the source shrank?\n${r.stderr}`);
    assertNoStack(r.stderr);
    const errors = errorLines(r.stderr);
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0], /ended at offset \d+, expected \d+ bytes; did it shrink during the backup\?/);
    assert.match(
      r.stderr,
      new RegExp(`WARNING: backup ${uid} of vm-shrink is incomplete \\(cleanup reclaims it\\)`),
    );
    const ls = parseLsMachine((await sb.ok(['-m', 'ls', 'vm-shrink'])).stdout);
    assert.deepEqual(
      ls.map((v) => [v.uid, v.valid]),
      [[uid, false]],
    );
  });

  describe('restore', () => {
    let uid: string;
    before(async () => {
      uid = await sb.backup([img, 'vm-restore']);
      // The backup itself restores byte for byte (the interrupted ones below must not pass for it).
      const r = await sb.run(['restore', uid, sb.path('whole.img')]);
      assert.equal(r.code, 0, r.stderr);
      await assertSameBytes(img, sb.path('whole.img'));
    });

    /** Starts a restore to `target` and signals it once the target has grown past 0 bytes. */
    async function interruptedRestore(target: string, args: string[] = []) {
      const { child, done } = spawnBacky(sb, ['restore', ...args, uid, target]);
      child.stdin.end();
      let exited = false;
      void done.then(() => (exited = true));
      await waitFor(
        'the restore to write',
        async () => exited || ((await stat(target).catch(() => undefined))?.size ?? 0) > 0,
        20_000,
      );
      assert.ok(!exited, 'the restore was still running');
      const ms = await signalAndTime(child, done, 'SIGINT');
      return { r: await done, ms };
    }

    it('SIGINT during a restore to a new file removes the file', async (t) => {
      const target = sb.path('new.img');
      const { r, ms } = await interruptedRestore(target);
      t.diagnostic(`restore exited ${ms.toFixed(0)} ms after SIGINT`);
      assert.equal(r.code, 130, r.stderr);
      assert.ok(ms < PROMPT_MS, `exited ${ms} ms after the signal`);
      assertNoStack(r.stderr);
      const errors = errorLines(r.stderr);
      assert.equal(errors.length, 1, r.stderr);
      assert.match(
        errors[0],
        new RegExp(
          `interrupted \\(SIGINT\\): restore of ${uid} to .*new\\.img stopped; the partial file .* was removed`,
        ),
      );
      await assert.rejects(stat(target), { code: 'ENOENT' });
      assert.deepEqual(query(sb, 'SELECT * FROM leases'), []);
    });

    it('SIGINT during a restore --force into an existing file says the file is incomplete', async () => {
      const target = sb.path('existing.img');
      await writeFile(target, '');
      const { r } = await interruptedRestore(target, ['--force']);
      assert.equal(r.code, 130, r.stderr);
      const errors = errorLines(r.stderr);
      assert.equal(errors.length, 1, r.stderr);
      assert.match(errors[0], /existing\.img is now incomplete \(partly overwritten\): restore again/);
      const size = (await stat(target)).size;
      assert.ok(size > 0 && size < 1024 * BS, `a partial file is left: ${size} bytes`);
    });

    it('SIGINT during a restore to stdout that nobody reads exits at once', async (t) => {
      const child = spawn(process.execPath, [BIN, '-c', sb.config, 'restore', uid, '-'], {
        cwd: sb.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      // stdout is not read: once the pipe and our buffer are full, the restore waits to write.
      await waitFor('the restore to write to stdout', () => child.stdout.readableLength > 0);
      const ms = await signalAndTime(child, done, 'SIGINT');
      const code = await done;
      t.diagnostic(`restore to a stalled stdout exited ${ms.toFixed(0)} ms after SIGINT`);
      assert.equal(code, 130, stderr);
      assert.ok(ms < PROMPT_MS, `exited ${ms} ms after the signal`);
      const errors = errorLines(stderr);
      assert.equal(errors.length, 1, stderr);
      assert.match(
        errors[0],
        new RegExp(`interrupted \\(SIGINT\\): restore of ${uid} to stdout stopped; the output is incomplete`),
      );
      child.stdout.destroy();
    });

    it('SIGINT during an export to stdout that nobody reads: exit 130, one line', async () => {
      const sparse = sb.path('sparse.img');
      await writeImage(sparse, { blocks: 16384, blockSize: BS, kinds: () => 'zero' }); // 1 GiB of holes
      const big = await sb.backup([sparse, 'vm-sparse']); // ~900 KB of block lines: more than a pipe holds
      const child = spawn(process.execPath, [BIN, '-c', sb.config, 'export', big, '-'], {
        cwd: sb.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      await waitFor('the export to write to stdout', () => child.stdout.readableLength > 0);
      const ms = await signalAndTime(child, done, 'SIGINT');
      const code = await done;
      assert.equal(code, 130, stderr);
      assert.ok(ms < PROMPT_MS, `exited ${ms} ms after the signal`);
      const errors = errorLines(stderr);
      assert.equal(errors.length, 1, stderr);
      assert.match(errors[0], new RegExp(`interrupted \\(SIGINT\\): export of ${big} to stdout stopped`));
      child.stdout.destroy();
    });

    it('SIGTERM during an import from stdin: exit 143, nothing imported', async (t) => {
      const exported = (await sb.ok(['export', uid, '-'])).stdoutBuf;
      await sb.ok(['rm', '--force', uid]);
      t.after(() => sb.run(['import', '-'], { input: exported })); // the restore tests' version back
      // -v for the start line that says the import is running.
      const { child, done } = spawnBacky(sb, ['-v', 'import', '-']);
      t.after(() => child.kill('SIGKILL'));
      child.stdin.write(exported.subarray(0, exported.length >> 1)); // half, and stdin stays open
      let started = false;
      child.stderr.on('data', (b: Buffer) => (started ||= b.toString().includes('INFO: $ backy')));
      await waitFor('the import to start', () => started);
      const ms = await signalAndTime(child, done, 'SIGTERM');
      const r = await done;
      assert.equal(r.code, 143, r.stderr);
      assert.ok(ms < PROMPT_MS, `exited ${ms} ms after the signal`);
      const errors = errorLines(r.stderr);
      assert.equal(errors.length, 1, r.stderr);
      assert.match(errors[0], /interrupted \(SIGTERM\): import of stdin stopped; nothing was imported/);
      assert.equal(versionUid(sb, 'vm-restore'), '', 'no version was imported');
      assert.deepEqual(query(sb, 'SELECT * FROM leases'), []);
    });

    it('after all that, the version still restores byte for byte', async () => {
      const out = sb.path('again.img');
      const r = await sb.run(['restore', uid, out]);
      assert.equal(r.code, 0, r.stderr);
      await assertSameBytes(img, out);
      assert.ok((await readFile(out)).length === 1024 * BS);
    });
  });
});
