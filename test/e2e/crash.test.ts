/**
 * kill -9 at random moments: the real CLI on a 32 MiB image with 64 KiB blocks (512 blocks,
 * a few seconds per backup) is SIGKILLed after a random delay, round after round. After every
 * kill: the database is not locked (ls and a write work at once), the interrupted version is
 * never valid and is refused as a base, a later backup with the same name works, and every
 * earlier version restores byte for byte (and scrubs clean, once `scrub` exists). Restore and,
 * once they exist, scrub and cleanup runs are killed too. At the end `cleanup` (when it exists)
 * reclaims what the crashed runs left: no temp file and no object file that no version uses.
 *
 * The random delays come from a seeded generator; the seed is printed so a failure can be
 * replayed with BACKY_CRASH_SEED=<seed>. Rounds are bounded by count and by a time budget.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { copyFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import { referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const BLOCKS = 512; // 32 MiB
const BACKUP_ROUNDS = 8;
const RESTORE_ROUNDS = 4;
const OTHER_ROUNDS = 3; // per scrub / cleanup, when they exist
/**
 * Past the first MIN_ROUNDS of a loop, no new round starts after this long (on a loaded
 * machine start-up alone takes a second); the suite must stay well under its budget.
 */
const BUDGET_MS = 40_000;
const MIN_ROUNDS = 2;

function more(round: number, max: number, started: number): boolean {
  return round < MIN_ROUNDS || (round < max && Date.now() - started < BUDGET_MS);
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Starts the CLI. `ready` resolves when it logged its start line (start-up is over: config
 * read, about to work); `kill()` sends SIGKILL.
 */
function start(sb: Sandbox, args: string[], stdinFile?: string) {
  // -v: the start line (INFO, shown only with -v) says start-up is over.
  const child = spawn(process.execPath, [BIN, '-v', '-c', sb.config, ...args], {
    cwd: sb.dir,
    stdio: [stdinFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  if (stdinFile) {
    child.stdin!.on('error', () => {}); // EPIPE once the child is killed
    createReadStream(stdinFile).pipe(child.stdin!);
  }
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => {
    err.push(b);
    if (Buffer.concat(err).includes('INFO: $ backy')) onReady();
  });
  const done = new Promise<RunResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      onReady();
      const stdoutBuf = Buffer.concat(out);
      resolve({
        code,
        signal,
        stdout: stdoutBuf.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        stdoutBuf,
      });
    });
  });
  return { ready, done, kill: () => child.kill('SIGKILL') };
}

/** Runs args and SIGKILLs `delayMs` after start-up unless it finished first. */
async function runAndKill(
  sb: Sandbox,
  args: string[],
  delayMs: number,
  stdinFile?: string,
): Promise<RunResult> {
  const p = start(sb, args, stdinFile);
  await p.ready;
  const timer = setTimeout(p.kill, delayMs);
  const r = await p.done;
  clearTimeout(timer);
  return r;
}

/** Runs args to the end; returns the result and how long it worked after start-up. */
async function runTimed(sb: Sandbox, args: string[]): Promise<{ r: RunResult; workMs: number }> {
  const p = start(sb, args);
  await p.ready;
  const t0 = Date.now();
  const r = await p.done;
  if (r.code !== 0) throw new Error(`backy ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  return { r, workMs: Date.now() - t0 };
}

async function listFiles(dir: string): Promise<{ objects: string[]; temps: string[] }> {
  const objects: string[] = [];
  const temps: string[] = [];
  for (const a of await readdir(dir).catch(() => [] as string[])) {
    for (const b of await readdir(join(dir, a)).catch(() => [] as string[])) {
      for (const f of await readdir(join(dir, a, b)).catch(() => [] as string[])) {
        (f.startsWith('.tmp-') ? temps : objects).push(f);
      }
    }
  }
  return { objects: objects.sort(), temps };
}

describe('kill -9 at random moments', () => {
  let sb: Sandbox;
  let img: string;
  let commands: Set<string>;
  const seed = Number(process.env.BACKY_CRASH_SEED ?? Date.now() % 1_000_000);
  const random = mulberry32(seed);
  const counts = {
    rounds: 0,
    kills: 0,
    finishedBeforeKill: 0,
    incompleteSeen: 0,
    kinds: { file: 0, 'from-base': 0, stdin: 0 },
  };
  /** uid -> image copy it must restore to. */
  const valid = new Map<string, string>();
  const started = Date.now();
  let backupMs = 3000;
  let restoreMs = 2000;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, {
      blocks: BLOCKS,
      blockSize: BS,
      tail: 12345,
      kinds: (i) => (i % 5 === 0 ? 'zero' : i % 7 === 0 ? 'dup' : 'random'),
    });
    const help = await sb.ok(['--help']);
    commands = new Set([...help.stdout.matchAll(/^ {2}([a-z]+)\b/gm)].map((m) => m[1]));
    const { r, workMs } = await runTimed(sb, ['backup', img, 'vm@base']);
    const uid = r.stdout.trim().split('\n').pop()!;
    backupMs = workMs;
    const copy = sb.path(`v-${valid.size}.img`);
    await copyFile(img, copy);
    valid.set(uid, copy);
  });

  after(async () => {
    await sb?.remove();
  });

  async function ls() {
    const r = await sb.run(['-m', 'ls']);
    assert.equal(r.code, 0, `ls right after a kill must work (database not left locked):\n${r.stderr}`);
    return parseLsMachine(r.stdout);
  }

  /** Every valid version restores byte for byte (and scrubs clean); `only` limits the set. */
  async function checkValid(only?: string[], opts: { scrub?: boolean } = {}) {
    const versions = await ls();
    for (const [uid, copy] of valid) {
      if (only && !only.includes(uid)) continue;
      const v = versions.find((x) => x.uid === uid);
      assert.ok(v, `version ${uid} disappeared`);
      assert.equal(v.valid, true, `version ${uid} is no longer valid`);
      const out = sb.path('check.img');
      await rm(out, { force: true });
      restoreMs = (await runTimed(sb, ['restore', uid, out])).workMs;
      await assertSameBytes(copy, out);
      await rm(out);
      if (opts.scrub && commands.has('scrub')) await sb.ok(['scrub', uid]);
    }
  }

  function delay(expectedMs: number): number {
    // From the end of start-up to a little past the expected end (measured on this machine,
    // in the round before): most kills land in the pipeline, a few after completion.
    return Math.floor(random() * expectedMs * 1.1);
  }

  it('backups killed at random moments never damage earlier versions', async () => {
    let versionsBefore: Awaited<ReturnType<typeof ls>> | undefined;
    for (let round = 0; more(round, BACKUP_ROUNDS, started); round++) {
      counts.rounds++;
      // New data in many places (about a sixth of the image), so the killed backup is writing
      // objects when it dies, not only hashing.
      for (let k = 0; k < 12; k++) {
        const off = Math.floor(random() * (BLOCKS - 8)) * BS;
        await scribble(img, off, 7 * BS, `round-${round}-${k}`);
      }
      const name = `vm@r${round}`;
      const before = versionsBefore ?? (await ls());
      const ms = delay(backupMs);
      // Three kinds of run in turn: a full read of the file, an incremental one from the newest
      // valid version (-f: its block list copied first), and a stream from stdin.
      const kind = (['file', 'from-base', 'stdin'] as const)[round % 3];
      const newest = [...valid.keys()].pop()!;
      const args =
        kind === 'file'
          ? ['backup', img, name]
          : kind === 'from-base'
            ? ['backup', '-f', newest, img, name]
            : ['backup', '-', name];
      const r = await runAndKill(sb, args, ms, kind === 'stdin' ? img : undefined);
      counts.kinds[kind]++;
      const versions = await ls();
      const fresh = versions.filter((v) => !before.some((b) => b.uid === v.uid));
      assert.ok(fresh.length <= 1, 'one backup run creates at most one version');
      if (r.signal === 'SIGKILL') counts.kills++;
      else {
        assert.equal(r.code, 0, r.stderr);
        counts.finishedBeforeKill++;
      }
      const v = fresh[0];
      if (v && !v.valid) {
        counts.incompleteSeen++;
        assert.equal(r.signal, 'SIGKILL', 'only a killed backup leaves a version that is not valid');
        // Never a base.
        const f = await sb.run(['backup', '-f', v.uid, img, `${name}-from-crashed`]);
        assert.equal(f.code, 1, f.stderr);
        assert.match(f.stderr, /incomplete and cannot be the base/);
        // A killed backup's lease names a dead process: rm works without --force on odd rounds
        // (a write transaction: the database is not locked); even rounds leave it for cleanup.
        if (round % 2 === 1) await sb.ok(['rm', v.uid]);
      } else if (v) {
        // Killed after the version became valid (or it finished): it must be whole.
        const copy = sb.path(`v-${valid.size}.img`);
        await copyFile(img, copy);
        valid.set(v.uid, copy);
      }
      // A later backup with the same name works and restores byte for byte.
      const { r: later, workMs } = await runTimed(sb, ['backup', img, name]);
      const uid = later.stdout.trim().split('\n').pop()!;
      backupMs = workMs; // the next round's backup is as incremental as this one
      const copy = sb.path(`v-${valid.size}.img`);
      await copyFile(img, copy);
      valid.set(uid, copy);
      // The newest every round, the first (base) version every third; all of them at the end.
      await checkValid(round % 3 === 2 ? [[...valid.keys()][0], uid] : [uid]);
      versionsBefore = await ls();
      const removed = v && !v.valid && round % 2 === 1 ? v.uid : undefined;
      const expected = versions.map((x) => x.uid).filter((u) => u !== removed);
      assert.deepEqual(
        versionsBefore.map((x) => x.uid),
        [...expected, uid],
        'a refused backup creates no version; rm removed the crashed one',
      );
    }
    await checkValid();
  });

  it('restores killed at random moments change nothing', async () => {
    const uids = [...valid.keys()];
    for (let round = 0; more(round, RESTORE_ROUNDS, started); round++) {
      counts.rounds++;
      const uid = uids[Math.floor(random() * uids.length)];
      const target = sb.path('killed-restore.img');
      await rm(target, { force: true });
      const r = await runAndKill(sb, ['restore', uid, target], delay(restoreMs));
      if (r.signal === 'SIGKILL') counts.kills++;
      else {
        assert.equal(r.code, 0, r.stderr);
        counts.finishedBeforeKill++;
      }
      // The half-written target is simply overwritten by the next restore.
      const again = await sb.run(['restore', '--force', uid, target]);
      assert.equal(again.code, 0, again.stderr);
      await assertSameBytes(valid.get(uid)!, target);
      const versions = await ls();
      assert.ok(
        versions.filter((v) => valid.has(v.uid)).every((v) => v.valid),
        'a killed restore invalidates nothing',
      );
    }
    await checkValid([uids[0]]);
  });

  it('scrub and cleanup killed at random moments (when they exist)', async (t) => {
    const verbs = ['scrub', 'cleanup'].filter((c) => commands.has(c));
    if (verbs.length === 0) {
      t.skip('scrub and cleanup are not part of this build yet');
      return;
    }
    const uids = [...valid.keys()];
    for (const verb of verbs) {
      for (let round = 0; more(round, OTHER_ROUNDS, started); round++) {
        counts.rounds++;
        const args = verb === 'scrub' ? ['scrub', uids[Math.floor(random() * uids.length)]] : ['cleanup'];
        const r = await runAndKill(sb, args, delay(verb === 'scrub' ? restoreMs : 300));
        if (r.signal === 'SIGKILL') counts.kills++;
        else {
          assert.equal(r.code, 0, r.stderr);
          counts.finishedBeforeKill++;
        }
        await ls();
      }
    }
    // Every version scrubs clean after the killed scrubs and cleanups; the first and the
    // newest also restore byte for byte (all of them do after the final cleanup below).
    if (commands.has('scrub')) for (const uid of valid.keys()) await sb.ok(['scrub', uid]);
    await checkValid([...valid.keys()].filter((_, i, all) => i === 0 || i === all.length - 1));
  });

  it('imports killed at random moments (when import exists)', async (t) => {
    if (!commands.has('import') || !commands.has('export')) {
      t.skip('export and import are not part of this build yet');
      return;
    }
    const uid = [...valid.keys()].pop()!;
    const file = sb.path('newest.export');
    await rm(file, { force: true });
    await sb.ok(['export', uid, file]);
    for (let round = 0; more(round, OTHER_ROUNDS, started); round++) {
      counts.rounds++;
      await sb.ok(['rm', uid]); // import restores the uid exactly, so it must be gone first
      const r = await runAndKill(sb, ['import', file], delay(restoreMs));
      if (r.signal === 'SIGKILL') counts.kills++;
      else {
        assert.equal(r.code, 0, r.stderr);
        counts.finishedBeforeKill++;
      }
      const v = (await ls()).find((x) => x.uid === uid);
      if (v && !v.valid) {
        counts.incompleteSeen++;
        const f = await sb.run(['backup', '-f', uid, img, 'vm@from-killed-import']);
        assert.equal(f.code, 1, f.stderr);
        assert.match(f.stderr, /incomplete and cannot be the base/);
      }
      // Whatever the kill left (nothing, an incomplete or a whole version): rm, import again.
      if (v) await sb.ok(['rm', uid]);
      await sb.ok(['import', file]);
      await checkValid([uid]);
    }
  });

  it('cleanup reclaims what the crashed runs left (when it exists)', async (t) => {
    if (!commands.has('cleanup')) {
      t.skip('cleanup is not part of this build yet');
      return;
    }
    await sb.ok(['cleanup']);
    const versions = await ls();
    assert.ok(
      versions.every((v) => v.valid),
      'no incomplete version of a crashed backup is left',
    );
    const referenced = await referencedChecksums(sb.dbPath);
    const files = await listFiles(sb.dataDir);
    assert.deepEqual(files.temps, [], 'no temp file of a killed writer is left');
    assert.deepEqual(files.objects, referenced, 'exactly the referenced objects are left');
    await checkValid();
  });

  it('reports', (t) => {
    t.diagnostic(
      `crash loop seed ${seed}: ${counts.rounds} rounds, ${counts.kills} kill -9, ` +
        `${counts.finishedBeforeKill} finished before the kill, ${counts.incompleteSeen} incomplete versions left by kills, ` +
        `${valid.size} valid versions verified byte for byte; backup runs: ${counts.kinds.file} file, ` +
        `${counts.kinds['from-base']} with -f, ${counts.kinds.stdin} stdin; last backup worked ${backupMs} ms after start-up`,
    );
    assert.ok(counts.kills > 0, 'at least one run was killed');
  });
});
