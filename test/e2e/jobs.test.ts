/**
 * Jobs end to end with file: sources (no Ceph needed): `run` output and exit codes, hooks and
 * their environment, labels, protect_every, retention, holes skipped, --due, one run of a job
 * at a time, `jobs`, and `check`'s exit codes for fresh, stale, failed and never-run jobs.
 * Every version made is restored and compared byte for byte with the image it was read from.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, copyFile, readFile, rename, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { BIN, Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { nextRunAt } from '../../src/jobs/schedule.js';

const MiB = 1024 * 1024;

interface LsVersion {
  uid: string;
  name: string;
  status: string;
  protected: boolean;
  base: string | null;
  labels: Record<string, string>;
}

// SQLite, and PostgreSQL (the database several hosts share: leases and job records live there).
const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkipReason(), engine: () => pgDatabase('backy_jobs') },
];

for (const e of engines)
  describe(`jobs with file sources on ${e.name}`, { skip: e.skip }, () => {
    let sb: Sandbox;
    const expected = new Map<string, string>();
    let copies = 0;

    before(async () => {
      sb = await Sandbox.create({ defaults: `block_size = ${MiB}`, engine: await e.engine() });
      await appendFile(
        sb.config,
        [
          '[job web]',
          'source = file:web.img',
          'every = 1h',
          'retention = latest1',
          'labels = env=prod,tier=web',
          'protect_every = 2',
          `pre = "echo \\"pre $BACKY_JOB $BACKY_SOURCE $BACKY_STATUS\\" >> hooks.log"`,
          `post = "echo \\"post $BACKY_JOB $BACKY_STATUS $BACKY_UID\\" >> hooks.log"`,
          `on_failure = "echo \\"failure $BACKY_JOB $BACKY_STATUS\\" >> hooks.log"`,
          '[job slow]',
          'source = file:slow.img',
          'every = 1h',
          'pre = "touch slow.started; sleep 4"',
          '[job stale]',
          'source = file:stale.img',
          'every = 1s',
          '[job hook]',
          'source = file:stale.img',
          // The inner shell outlives the outer one unless the whole process group is stopped.
          `pre = "touch hook.started; sh -c 'sleep 3; touch hook.late'"`,
          '[job never]',
          'source = file:never.img',
          'every = 1d',
          'name = never-vm',
          '',
        ].join('\n'),
      );
      // 64 MiB with 3 MiB of data: holes are not read.
      await writeFile(sb.path('web.img'), '');
      await truncate(sb.path('web.img'), 64 * MiB);
      await write('web.img', 0, randomBytesSeeded('web-a', 2 * MiB));
      await write('web.img', 40 * MiB, randomBytesSeeded('web-b', MiB));
      for (const f of ['slow.img', 'stale.img']) await writeFile(sb.path(f), randomBytesSeeded(f, 2 * MiB));
    });
    after(async () => {
      await sb?.remove();
    });

    const write = async (file: string, offset: number, data: Buffer) => {
      const { open } = await import('node:fs/promises');
      const fh = await open(sb.path(file), 'r+');
      await fh.write(data, 0, data.length, offset);
      await fh.close();
    };
    const ls = async () => JSON.parse((await sb.ok(['--json', 'ls'])).stdout) as LsVersion[];
    const keep = async (file: string, uid: string) => {
      const copy = sb.path(`expected-${copies++}`);
      await copyFile(sb.path(file), copy);
      expected.set(uid, copy);
    };
    const check = async (...jobs: string[]) => {
      const r = await sb.run(['check', ...jobs]);
      assert.equal(r.stdout.split('\n').filter((l) => l !== '').length, 1, r.stdout);
      return { code: r.code, line: r.stdout.trim(), stderr: r.stderr };
    };

    test('run: one line per job, hooks, labels, protect_every, retention, holes skipped', async () => {
      const uids: string[] = [];
      for (let i = 0; i < 3; i++) {
        if (i > 0) await write('web.img', MiB + 4096 * i, randomBytesSeeded(`web-${i}`, 4096));
        const r = await sb.ok(['-m', 'run', 'web']);
        const m = /^job web ok ([0-9a-f-]{36}) (\d+) (\d+) [\d.]+\n$/.exec(r.stdout);
        assert.ok(m, r.stdout);
        assert.equal(Number(m[2]), 3 * MiB, 'only the 3 MiB of data are read, not the 61 MiB of holes');
        uids.push(m[1]);
        await keep('web.img', m[1]);
      }
      const web = (await ls()).filter((v) => v.name === 'web');
      // latest1 keeps the youngest; the 2nd run's version is protected, so retention spares it.
      assert.deepEqual(
        web.map((v) => [v.uid, v.protected]),
        [
          [uids[1], true],
          [uids[2], false],
        ],
      );
      for (const v of web) assert.deepEqual(v.labels, { 'backy.job': 'web', env: 'prod', tier: 'web' });
      assert.equal(web[1].base, uids[1], 'the base is the youngest valid version of the job');
      const hooks = (await readFile(sb.path('hooks.log'), 'utf8')).trim().split('\n');
      assert.deepEqual(hooks.slice(0, 2), [
        `pre web file:${sb.path('web.img')} running`,
        `post web ok ${uids[0]}`,
      ]);
      assert.equal(hooks.length, 6);

      // A failure: on_failure runs, one line, exit 1; the last good version stays.
      await rename(sb.path('web.img'), sb.path('web.away'));
      const failed = await sb.run(['run', 'web']);
      await rename(sb.path('web.away'), sb.path('web.img'));
      assert.equal(failed.code, 1);
      assert.match(failed.stdout, /^web: FAILED after [\d.]+ s: source \S+web\.img does not exist\n$/);
      assert.match(await readFile(sb.path('hooks.log'), 'utf8'), /failure web failed\n$/);
    });

    test('--due runs only what is due; --json is one document', async () => {
      const r = await sb.run(['--json', 'run', '--due', 'web', 'stale']);
      const doc = JSON.parse(r.stdout) as { results: { job: string; ok: boolean; bytes_read: number }[] };
      // web's last run (failed) started within the hour: not due before its next slot, as in
      // the daemon. stale never ran: due.
      assert.deepEqual(
        doc.results.map((x) => [x.job, x.ok]),
        [['stale', true]],
      );
      assert.equal(r.code, 0);
      await keep('stale.img', (await ls()).find((v) => v.name === 'stale')!.uid);
    });

    test('a job runs once at a time: the second run names the first', async () => {
      const a = spawn(process.execPath, [BIN, '-c', sb.config, '-m', 'run', 'slow'], {
        cwd: sb.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      a.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<number | null>((r) => a.on('exit', (code) => r(code)));
      const deadline = Date.now() + 60_000;
      while (!existsSync(sb.path('slow.started'))) {
        assert.ok(Date.now() < deadline, 'the first run never started its pre hook');
        await new Promise((r) => setTimeout(r, 100));
      }
      const b = await sb.run(['-m', 'run', 'slow']);
      assert.equal(b.code, 1);
      assert.match(
        b.stdout,
        new RegExp(`^job slow failed - [\\d.]+ job slow is already running \\(pid ${a.pid} on `),
      );
      assert.equal(await exited, 0, out);
      assert.match(out, /^job slow ok /);
      const slow = (await ls()).filter((v) => v.name === 'slow');
      assert.equal(slow.length, 1);
      await keep('slow.img', slow[0].uid);
      // The refused run did not overwrite the running one's result.
      assert.match((await sb.ok(['-m', 'jobs'])).stdout, /^job slow ok \S+ \d+ ok /m);
    });

    test('SIGINT: the run stops, its hook with it; exit 130', async () => {
      const a = spawn(process.execPath, [BIN, '-c', sb.config, 'run', 'hook'], {
        cwd: sb.dir,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      a.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const exited = new Promise<number | null>((r) => a.on('exit', (code) => r(code)));
      const deadline = Date.now() + 60_000;
      while (!existsSync(sb.path('hook.started'))) {
        assert.ok(Date.now() < deadline, 'the run never started its pre hook');
        await new Promise((r) => setTimeout(r, 50));
      }
      a.kill('SIGINT');
      assert.equal(await exited, 130);
      assert.match(out, /^hook: FAILED after [\d.]+ s: interrupted \(SIGINT\)\n$/);
      await new Promise((r) => setTimeout(r, 3500));
      assert.ok(!existsSync(sb.path('hook.late')), "the hook's own children were stopped too");
    });

    test('check: fresh, stale, failed, never run, unknown', async () => {
      const fresh = await check('slow');
      assert.equal(fresh.code, 0, fresh.line);
      assert.match(fresh.line, /^BACKY OK - 1 job\(s\) ok \| 'slow_age'=\d+s;;5400;0 'slow_versions'=1;;;0$/);

      await new Promise((r) => setTimeout(r, 2000)); // stale: every = 1s
      const stale = await check('stale');
      assert.equal(stale.code, 2, stale.line);
      assert.match(
        stale.line,
        /^BACKY CRITICAL - stale critical: newest valid version is \d+s old \(limit 2s\)/,
      );

      const failed = await check('web');
      assert.equal(failed.code, 1, failed.line);
      assert.match(
        failed.line,
        /^BACKY WARNING - web warning: last run failed: source \S+ does not exist \| /,
      );

      const never = await check('never');
      assert.equal(never.code, 2);
      assert.match(
        never.line,
        /^BACKY CRITICAL - never critical: never succeeded \| 'never_age'=U;;129600;0/,
      );

      const all = await check();
      assert.equal(all.code, 2);
      assert.match(
        all.line,
        /^BACKY CRITICAL - web warning: .*, stale critical: .*, hook critical: .*, never critical: never succeeded; 1 ok \| /,
      );

      const unknown = await check('nope');
      assert.equal(unknown.code, 3);
      assert.match(unknown.line, /^BACKY UNKNOWN - no job 'nope' in /);

      const jobs = JSON.parse((await sb.ok(['--json', 'jobs'])).stdout) as {
        job: string;
        state: string;
        versions: { valid: number };
        every_s: number | null;
        last_result: { started_us: number } | null;
        next_due_us: number | null;
      }[];
      // next due is when the daemon runs the job: its next slot after the last run started
      // (web's last run failed: its slot after that, not an hour after its last success).
      for (const j of jobs) {
        const lastStarted = j.last_result?.started_us;
        if (j.every_s === null) assert.equal(j.next_due_us, null, j.job);
        else if (lastStarted === undefined) assert.ok(j.next_due_us! <= Date.now() * 1000, j.job);
        else assert.equal(j.next_due_us, nextRunAt({ job: j.job, every: j.every_s, lastStarted }, 0), j.job);
      }
      assert.deepEqual(
        jobs.map((j) => [j.job, j.state, j.versions.valid]),
        [
          ['web', 'warning', 2],
          ['slow', 'ok', 1],
          ['stale', 'critical', 1],
          ['hook', 'critical', 0],
          ['never', 'critical', 0],
        ],
      );
    });

    test('a bad job section: one line naming it, exit 1, nothing run', async () => {
      const good = await readFile(sb.config, 'utf8');
      await appendFile(sb.config, '[job broken]\nsource = file:x\nevry = 1d\n');
      for (const args of [['run'], ['jobs']]) {
        const r = await sb.run(args);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /unknown key 'evry' in \[job broken\]/);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      }
      const c = await check();
      assert.equal(c.code, 3, 'a config the check cannot read is UNKNOWN');
      assert.match(c.line, /^BACKY UNKNOWN - .*unknown key 'evry'/);
      await writeFile(sb.config, good);
    });

    test('every version restores byte for byte', async () => {
      const valid = (await ls()).filter((v) => v.status === 'valid' && expected.has(v.uid));
      assert.equal(valid.length, 4);
      for (const v of valid) {
        const out = sb.path(`${v.uid}.restored`);
        await sb.ok(['restore', v.uid, out]);
        await assertSameBytes(expected.get(v.uid)!, out);
      }
    });
  });
