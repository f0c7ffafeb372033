/**
 * `backy daemon` end to end, with intervals of seconds: jobs run when due, one at a time
 * (max_parallel 1), scrubs and cleanup happen, /metrics and /jobs answer, SIGHUP reloads (a
 * bad config is refused and the old one kept), SIGTERM stops a running job after the stop
 * timeout and exits 0, and the metrics it leaves agree with `ls` and `du`.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { DaemonProcess, freePort, http, parseMetrics } from '../lib/daemon.js';
import { writeImage } from '../lib/image.js';
import { query, waitFor } from '../lib/store.js';

const BS = 64 * 1024;

interface JobJson {
  job: string;
  state: string;
  last_result: { ok: boolean; error: string | null } | null;
  versions: { valid: number; invalid: number; incomplete: number };
}

describe('backy daemon', () => {
  let sb: Sandbox;
  let d: DaemonProcess;
  let base: string;
  let port: number;

  const config = (jobs: string) =>
    writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${sb.dbPath}`,
        '[DataBackend]',
        'type = file',
        `path = ${sb.dataDir}`,
        '[scheduler]',
        'max_parallel = 1',
        'cleanup_every = 2s',
        'metrics_file = metrics/backy.prom',
        `listen = 127.0.0.1:${port}`,
        jobs,
        '',
      ].join('\n'),
    );
  const jobsA = [
    '[job a]',
    'source = file:a.img',
    'every = 2s',
    'retention = latest3',
    '[job b]',
    'source = file:b.img',
    'every = 3s',
    'scrub_percent = 100',
    'scrub_every = 1s',
  ].join('\n');
  const jobs = async () => JSON.parse((await http(`${base}/jobs`)).body) as JobJson[];
  const valid = async (job: string) => (await jobs()).find((j) => j.job === job)?.versions.valid ?? 0;

  before(async () => {
    sb = await Sandbox.create();
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    for (const n of ['a', 'b', 'c']) {
      await writeImage(sb.path(`${n}.img`), { blocks: 8, blockSize: BS, seed: n, kinds: () => 'random' });
    }
    await config(jobsA);
    d = new DaemonProcess(['-c', sb.config, 'daemon', '--stop-timeout', '1'], { cwd: sb.dir });
    await d.line(/Serving \/metrics and \/jobs on http:\/\/127\.0\.0\.1:\d+/);
  });
  after(async () => {
    d?.kill('SIGKILL');
    await sb?.remove();
  });

  it('runs the jobs when due, scrubs and cleans up; serves /metrics and /jobs, nothing else', async () => {
    await waitFor(
      'two versions of each job',
      async () => (await valid('a')) >= 2 && (await valid('b')) >= 2,
      30_000,
    );
    const m = await http(`${base}/metrics`);
    assert.equal(m.status, 200);
    assert.match(m.type ?? '', /^text\/plain; version=0\.0\.4/);
    await waitFor('a cleanup and a scrub', async () => {
      const t = parseMetrics((await http(`${base}/metrics`)).body);
      return (
        t.has('backy_cleanup_last_success_timestamp_seconds') && t.has('backy_scrub_last_timestamp_seconds')
      );
    });
    const metrics = parseMetrics((await http(`${base}/metrics`)).body);
    assert.equal(metrics.get('backy_job_last_run_success{job="a"}'), 1);
    assert.equal(metrics.get('backy_job_last_run_bytes_read{job="a"}'), 8 * BS);
    assert.ok(metrics.get('backy_job_last_success_timestamp_seconds{job="b"}')! > Date.now() / 1000 - 60);
    // Scrub times recorded for b's versions (and only b asks for scrubs).
    const scrubbed = query<{ key: string }>(sb, "SELECT key FROM settings WHERE key LIKE 'scrubbed:%'");
    assert.ok(scrubbed.length >= 1);
    const bUids = (await jobsLs(sb, 'b')).map((v) => v.uid);
    for (const r of scrubbed) assert.ok(bUids.includes(r.key.slice('scrubbed:'.length)), r.key);
    // A second daemon on the same address: one line, exit 1.
    const second = await sb.run(['daemon']);
    assert.equal(second.code, 1, second.stderr);
    assert.match(
      second.stderr,
      /ERROR: cannot listen on 127\.0\.0\.1:\d+ \(\[scheduler\] listen\): the address is in use/,
    );
    assert.doesNotMatch(second.stderr, /^\s+at /m);
    // Garbage, and a client that connects and says nothing, stall nobody.
    const garbage = connect(port, '127.0.0.1');
    garbage.on('error', () => {});
    garbage.write(Buffer.from('\x00\xffGET /metrics HTTP/9.9\r\nHost: \x01\r\n\r\n'.repeat(50), 'latin1'));
    const silent = connect(port, '127.0.0.1');
    silent.on('error', () => {});
    assert.equal((await http(`${base}/metrics`)).status, 200);
    garbage.destroy();
    silent.destroy();
    assert.equal((await http(`${base}/nope`)).status, 404);
    assert.equal((await http(`${base}/metrics`, 'POST')).status, 405);
    // What a job stored restores byte for byte.
    const latest = (await jobsLs(sb, 'a')).at(-1)!;
    await sb.ok(['restore', latest.uid, sb.path('a.out')]);
    await assertSameBytes(sb.path('a.img'), sb.path('a.out'));
  });

  it('SIGHUP reloads the config; a bad one is refused and the old one kept', async () => {
    await config(`${jobsA}\n[job c]\nsource = file:c.img\nevery = 1h`);
    d.kill('SIGHUP');
    await d.line(/Reloaded .*: 3 job\(s\)/);
    await waitFor('a version of c', async () => (await valid('c')) >= 1);
    await writeFile(sb.config, `${await readFile(sb.config, 'utf8')}\n[job broken]\nbogus = 1\n`);
    d.kill('SIGHUP');
    await d.line(/ERROR: config not reloaded, the old one stays in force: .*unknown key 'bogus'/);
    assert.deepEqual(
      (await jobs()).map((j) => j.job),
      ['a', 'b', 'c'],
    );
  });

  it('SIGTERM: a running job gets the stop timeout, is then stopped, and the daemon exits 0; its metrics match ls and du', async () => {
    await config(`${jobsA}\n[job slow]\nsource = file:c.img\nevery = 1h\npre = sleep 30`);
    d.kill('SIGHUP');
    await waitFor(
      'slow running',
      async () => (await jobs()).some((j) => j.job === 'slow' && j.state === 'running'),
      30_000,
    );
    const t0 = Date.now();
    d.kill('SIGTERM');
    const { code } = await d.done;
    assert.equal(code, 0, d.stderr);
    assert.ok(Date.now() - t0 < 20_000, `stopped after ${Date.now() - t0} ms`);
    assert.match(d.stderr, /Stopping the running work now: slow/);
    assert.match(d.stderr, /backy daemon stopped/);
    assert.doesNotMatch(d.stderr, /^\s+at /m);

    // The metrics file it left describes the database as ls and du see it.
    const metrics = parseMetrics(await readFile(sb.path('metrics/backy.prom'), 'utf8'));
    assert.equal(metrics.get('backy_job_last_run_success{job="slow"}'), 0);
    for (const job of ['a', 'b', 'slow']) {
      const ls = await jobsLs(sb, job);
      for (const status of ['valid', 'invalid', 'incomplete']) {
        assert.equal(
          metrics.get(`backy_versions{job="${job}",status="${status}"}`),
          ls.filter((v) => v.status === status).length,
          `${job} ${status}`,
        );
      }
    }
    const du = JSON.parse((await sb.ok(['--json', 'du'])).stdout) as {
      store: { recorded_objects: number; recorded_bytes: number };
    };
    assert.equal(metrics.get('backy_store_objects'), du.store.recorded_objects);
    assert.equal(metrics.get('backy_store_stored_bytes'), du.store.recorded_bytes);
  });
});

async function jobsLs(sb: Sandbox, job: string): Promise<{ uid: string; status: string }[]> {
  const r = await sb.ok(['--json', 'ls', '--label', `backy.job=${job}`]);
  return JSON.parse(r.stdout) as { uid: string; status: string }[];
}
