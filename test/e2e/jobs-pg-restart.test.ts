/**
 * PostgreSQL restarted while `backy run` is in progress (issue 21's must-show): two file jobs
 * whose `pre` hooks wait for the test, so both are certainly mid-run when the server is stopped
 * as in a crash (pg_ctl stop -m immediate). The jobs then go on without it: the run ends with
 * exit 1 and one line per job (no stack trace, no password; it could not release its leases
 * nor record its results). The server is started again; the next run succeeds, and every
 * version restores byte for byte. Needs a cluster of its own (it is stopped), so it starts one
 * even when $BACKY_TEST_PG_URL is set.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mixedKind, writeImage } from '../lib/image.js';
import { createDatabase, pgSkipReason, startCluster } from '../lib/pg.js';
import type { PgCluster } from '../lib/pg.js';

const BS = 64 * 1024;
const JOBS = ['ja', 'jb'];

describe('PostgreSQL restarted during backy run', { skip: pgSkipReason({ ownCluster: true }) }, () => {
  let cluster: PgCluster;
  let sb: Sandbox;
  before(async () => {
    cluster = await startCluster();
    const engine = await createDatabase(cluster.url, 'backy_runpg');
    sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
    for (const [i, j] of JOBS.entries()) {
      await writeImage(sb.path(`${j}.img`), { blocks: 12 + i, blockSize: BS, tail: 100, kinds: mixedKind });
    }
    await appendFile(
      sb.config,
      [
        '[scheduler]',
        'max_parallel = 2',
        ...JOBS.flatMap((j) => [
          `[job ${j}]`,
          `source = file:${j}.img`,
          'every = 1h',
          // Holds the job in progress until the test has restarted the server.
          `pre = "touch ${j}.started; while [ ! -e go ]; do sleep 0.1; done"`,
        ]),
        '',
      ].join('\n'),
    );
  });
  after(async () => {
    await sb?.remove();
    await cluster?.stop();
  });

  it('the run fails in one line per job; the next run succeeds; every version restores', async () => {
    // A first version of each job, so the failed run has a base and the next one is incremental.
    await appendFile(sb.path('go'), '');
    const first = await sb.run(['-m', 'run']);
    assert.equal(first.code, 0, first.stderr);
    await rm(sb.path('go'));

    const child = spawn(process.execPath, [BIN, '-c', sb.config, '-m', 'run'], {
      cwd: sb.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const guard = setTimeout(() => child.kill('SIGKILL'), 45_000);
    try {
      for (let i = 0; i < 300 && !JOBS.every((j) => existsSync(sb.path(`${j}.started`))); i++)
        await sleep(100);
      assert.ok(
        JOBS.every((j) => existsSync(sb.path(`${j}.started`))),
        `the jobs never started:\n${stderr}`,
      );
      // The server crashes while both jobs are in their hooks; they go on while it is down (a
      // server just restarted may already accept them: then there would be nothing to fail).
      await cluster.kill();
      await appendFile(sb.path('go'), '');
      const code = await exited;
      await cluster.restart();
      assert.equal(code, 1, `${stdout}${stderr}`);
      const lines = stdout.trim().split('\n').sort();
      assert.equal(lines.length, JOBS.length, stdout);
      for (const [i, j] of JOBS.entries())
        assert.match(lines[i], new RegExp(`^job ${j} failed - [\\d.]+ \\S`));
      assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
      assert.doesNotMatch(stderr, /ERROR:/, 'the lines above say it all');
      assert.ok(!`${stdout}${stderr}`.includes(new URL(cluster.url).password), 'no password');
    } finally {
      clearTimeout(guard);
      child.kill('SIGKILL');
    }

    const next = await sb.run(['-m', 'run']);
    assert.equal(next.code, 0, `${next.stdout}${next.stderr}`);
    assert.deepEqual(
      next.stdout
        .trim()
        .split('\n')
        .map((l) => l.split(' ').slice(1, 3))
        .sort(),
      JOBS.map((j) => [j, 'ok']),
    );

    // Every valid version (two per job, the images unchanged) restores byte for byte.
    const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).filter((v) => v.valid);
    assert.deepEqual(ls.map((v) => v.name).sort(), ['ja', 'ja', 'jb', 'jb']);
    for (const v of ls) {
      const out = sb.path(`${v.uid}.out`);
      await sb.ok(['restore', v.uid, out]);
      await assertSameBytes(sb.path(`${v.name}.img`), out);
    }
  });
});
