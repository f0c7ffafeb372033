/**
 * The metadata database going away in the middle of a backup: PostgreSQL is stopped as in a
 * crash (pg_ctl stop -m immediate) while a backup runs. The backup must fail with one clear
 * line (no password), leave its version incomplete and every earlier version intact; once the
 * server is back, the next backup works. Needs a cluster of its own (it is stopped), so it
 * starts one even when $BACKY_TEST_PG_URL is set.
 *
 * The backup reads from stdin, fed by the test, so that it is certainly mid-run when the
 * server stops (a file source would make this a race with the backup's speed).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mixedKind, randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import { createDatabase, pgSkipReason, startCluster } from '../lib/pg.js';
import type { PgCluster } from '../lib/pg.js';
import { MetaStore } from '../../src/meta/meta-store.js';

const BS = 64 * 1024;

describe('PostgreSQL goes away during a backup', { skip: pgSkipReason({ ownCluster: true }) }, () => {
  let cluster: PgCluster;
  let engine: string;
  let sb: Sandbox;
  before(async () => {
    cluster = await startCluster();
    engine = await createDatabase(cluster.url, 'backy_fault');
    sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
  });
  after(async () => {
    await sb?.remove();
    await cluster?.stop();
  });

  it('fails in one line, leaves the version incomplete, keeps earlier versions; works again after a restart', async () => {
    const img = sb.path('disk.img');
    await writeImage(img, { blocks: 24, blockSize: BS, tail: 300, kinds: mixedKind });
    const v1img = sb.path('v1.img');
    await copyFile(img, v1img);
    const uid1 = await sb.backup([img, 'vm@1']);

    const child = spawn(process.execPath, [BIN, '-c', sb.config, 'backup', '-', 'vm@crash'], {
      cwd: sb.dir,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.stdin.on('error', () => {});
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    try {
      child.stdin.write(randomBytesSeeded('crash-a', 4 * BS));
      const meta = await MetaStore.open(engine);
      let crashUid: string | undefined;
      try {
        for (let i = 0; i < 200 && !crashUid; i++) {
          const v = (await meta.listVersions({ name: 'vm@crash' }))[0];
          if (v && (await meta.leases()).some((l) => l.versionUid === v.uid)) crashUid = v.uid;
          else await sleep(50);
        }
      } finally {
        await meta.close();
      }
      assert.ok(crashUid, `the backup never started:\n${stderr}`);

      await cluster.kill();
      // More data: the backup needs the database for it (dedup lookup, block rows) and finds it gone.
      child.stdin.end(randomBytesSeeded('crash-b', 6 * BS));
      const code = await exited;
      assert.equal(code, 1, stderr);
      const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
      assert.equal(errors.length, 1, stderr);
      assert.match(
        errors[0],
        /metadata database postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/backy_fault_\w+: /,
      );
      assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
      assert.ok(!stderr.includes(new URL(cluster.url).password), 'no password');

      await cluster.restart();
      const after = await MetaStore.open(engine);
      try {
        assert.equal((await after.getVersion(crashUid)).status, 'incomplete');
        assert.equal((await after.getVersion(uid1)).status, 'valid');
      } finally {
        await after.close();
      }
      const out1 = sb.path('v1.out');
      await sb.ok(['restore', uid1, out1]);
      await assertSameBytes(v1img, out1);

      await scribble(img, 7 * BS, 3 * BS, 'after-restart');
      const uid3 = await sb.backup(['-f', uid1, img, 'vm@3']);
      const out3 = sb.path('v3.out');
      await sb.ok(['restore', uid3, out3]);
      await assertSameBytes(img, out3);
      const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      assert.deepEqual(
        ls.map((v) => [v.uid, v.valid]),
        [
          [uid1, true],
          [crashUid, false],
          [uid3, true],
        ],
      );
    } finally {
      clearTimeout(guard);
      child.kill('SIGKILL');
    }
  });
});

/** The postmaster and every backend of a cluster: SIGSTOP on all of them freezes the server. */
function serverPids(cluster: PgCluster): number[] {
  const postmaster = Number(readFileSync(`${cluster.dir}/data/postmaster.pid`, 'utf8').split('\n')[0]);
  const children = execFileSync('ps', ['-o', 'pid=', '--ppid', String(postmaster)], { encoding: 'utf8' })
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => n > 0);
  return [postmaster, ...children];
}

/** Signals a process that may have exited since it was listed (a closing backend). */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

function thaw(pids: number[]): void {
  for (const pid of pids) signal(pid, 'SIGCONT');
}

describe(
  'a frozen PostgreSQL server (SIGSTOP) during a backup',
  { skip: pgSkipReason({ ownCluster: true }) },
  () => {
    let cluster: PgCluster;
    let engine: string;
    let sb: Sandbox;
    let frozen: number[] = [];
    before(async () => {
      cluster = await startCluster();
      engine = await createDatabase(cluster.url, 'backy_frozen');
      sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
    });
    after(async () => {
      thaw(frozen);
      await sb?.remove();
      await cluster?.stop();
    });

    it('fails within the query timeout with one line naming the server; works again once it thaws', async () => {
      const img = sb.path('disk.img');
      await writeImage(img, { blocks: 12, blockSize: BS, kinds: mixedKind });
      const uid1 = await sb.backup([img, 'vm@1']);
      // A short timeout for this test, through the engine URL as a user would set it.
      const cfg = sb.path('frozen.cfg');
      const shortEngine = `${engine}${engine.includes('?') ? '&' : '?'}query_timeout=1500`;
      await writeFile(
        cfg,
        `[DEFAULTS]\nblock_size = ${BS}\n[MetaBackend]\nengine = ${shortEngine}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\n`,
      );
      const child = spawn(process.execPath, [BIN, '-c', cfg, 'backup', '-', 'vm@frozen'], {
        cwd: sb.dir,
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.stdin.on('error', () => {});
      const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
      try {
        child.stdin.write(randomBytesSeeded('frozen-a', 4 * BS));
        const meta = await MetaStore.open(engine);
        try {
          let started = false;
          for (let i = 0; i < 200 && !started; i++) {
            const v = (await meta.listVersions({ name: 'vm@frozen' }))[0];
            if (v && (await meta.leases()).some((l) => l.versionUid === v.uid)) started = true;
            else await sleep(50);
          }
          assert.ok(started, `the backup never started:\n${stderr}`);
        } finally {
          await meta.close();
        }
        frozen = serverPids(cluster);
        for (const pid of frozen) signal(pid, 'SIGSTOP');
        const t0 = Date.now();
        child.stdin.end(randomBytesSeeded('frozen-b', 6 * BS));
        const code = await exited;
        const seconds = (Date.now() - t0) / 1000;
        assert.equal(code, 1, stderr);
        assert.ok(seconds < 20, `failed after ${seconds} s, not within the query timeout`);
        const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
        assert.equal(errors.length, 1, stderr);
        assert.match(
          errors[0],
          /metadata database postgresql:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/backy_frozen_\w+\?query_timeout=1500 did not answer within 1\.5 s/,
        );
        assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
        assert.ok(!stderr.includes(new URL(cluster.url).password), 'no password');
        console.log(`# frozen server: backup failed after ${seconds.toFixed(1)} s: ${errors[0].trim()}`);
      } finally {
        clearTimeout(guard);
        child.kill('SIGKILL');
        thaw(frozen);
        frozen = [];
      }
      const out1 = sb.path('v1.out');
      await sb.ok(['restore', uid1, out1]);
      await assertSameBytes(img, out1);
      const uid2 = await sb.backup([img, 'vm@2']);
      const out2 = sb.path('v2.out');
      await sb.ok(['restore', uid2, out2]);
      await assertSameBytes(img, out2);
    });
  },
);
