/**
 * The daemon and an S3 store that cannot be reached (its config pointed at a closed port, the
 * real gateway untouched): each due job fails at once in one line, recorded (metrics, check),
 * without waiting out the S3 timeout; once the config points at the gateway again (SIGHUP),
 * the job's next slot runs it and the version restores byte for byte.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { DaemonProcess, freePort, http, parseMetrics } from '../lib/daemon.js';
import { writeImage } from '../lib/image.js';
import { newBucket, rgwServer, rgwSkipReason, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';
import { waitFor } from '../lib/store.js';

const BS = 64 * 1024;
const skip = rgwSkipReason();

describe('backy daemon with an unreachable S3 store', { skip }, () => {
  let s3: S3Server & { stop(): Promise<void> };
  let sb: Sandbox;
  let d: DaemonProcess | undefined;
  let base: string;
  let port: number;
  let bucket: string;

  const config = (endpoint: string) =>
    writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${sb.dbPath}`,
        ...s3ConfigLines({ ...s3, endpoint }, bucket, ['timeout = 30']),
        '[scheduler]',
        `listen = 127.0.0.1:${port}`,
        '[job vm]',
        'source = file:disk.img',
        'every = 2s',
        '',
      ].join('\n'),
    );

  before(async () => {
    s3 = await rgwServer();
    sb = await Sandbox.create();
    bucket = newBucket('daemon');
    port = await freePort();
    base = `http://127.0.0.1:${port}`;
    await writeImage(sb.path('disk.img'), { blocks: 4, blockSize: BS, seed: 'd', kinds: () => 'random' });
    // The store exists and the database knows it; then the config points at a closed port.
    await config(s3.endpoint);
    await sb.backup([sb.path('disk.img'), 'other']);
    await config(`http://127.0.0.1:${await freePort()}`);
  });
  after(async () => {
    d?.kill('SIGKILL');
    await sb?.remove();
    await s3?.stop();
  });

  it('fails due jobs at once while the store cannot be reached, runs them once it can', async () => {
    const t0 = Date.now();
    d = new DaemonProcess(['-c', sb.config, 'daemon'], { cwd: sb.dir });
    await d.line(/ERROR: \[job vm\] not started: the store cannot be reached: .*/);
    assert.ok(Date.now() - t0 < 20_000, `${Date.now() - t0} ms: the S3 timeout is 30 s`);
    await waitFor('the failure in the metrics', async () => {
      const m = parseMetrics((await http(`${base}/metrics`)).body);
      return m.get('backy_job_last_run_success{job="vm"}') === 0;
    });
    const chk = await sb.run(['check']);
    assert.equal(chk.code, 2, chk.stderr); // never succeeded: critical (and its last run failed)
    assert.match(chk.stdout, /last run failed: the store cannot be reached/);

    await config(s3.endpoint);
    d.kill('SIGHUP');
    await waitFor(
      'a successful run',
      async () =>
        parseMetrics((await http(`${base}/metrics`)).body).get('backy_job_last_run_success{job="vm"}') === 1,
      30_000,
    );
    d.kill('SIGTERM');
    assert.equal((await d.done).code, 0, d.stderr);
    const [v] = JSON.parse((await sb.ok(['--json', 'ls', 'vm'])).stdout) as { uid: string }[];
    await sb.ok(['restore', v.uid, sb.path('out.img')]);
    await assertSameBytes(sb.path('disk.img'), sb.path('out.img'));
  });
});
