/**
 * Faults against a real S3 gateway (a radosgw of this file's own, since it is paused and
 * killed): a stalled gateway never hangs a backup, and a gateway gone in the middle of a
 * restore is an I/O error, never damage. Once over plain HTTP, once over HTTPS (a second
 * radosgw serving TLS on the same cluster, test/lib/rgw-tls.sh: that is the one paused and
 * killed then).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import {
  Rgw,
  listKeys,
  newBucket,
  rgwSkipReason,
  rgwTlsSkipReason,
  s3Client,
  s3ConfigLines,
} from '../lib/rgw.js';

const BS = 256 * 1024;
const TIMEOUT_S = 3;
/** For the commands around a fault, which must not fail because a loaded gateway is slow. */
const RELAXED_TIMEOUT_S = 60;

function oneErrorLine(stderr: string, re: RegExp): void {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, `expected one ERROR line in:\n${stderr}`);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
}

interface Running {
  /** Resolves once stdout has carried at least `bytes` bytes. */
  stdoutReached(bytes: number): Promise<void>;
  done: Promise<{ code: number | null; stderr: string; stdout: Buffer; ms: number }>;
}

function start(sb: Sandbox, args: string[]): Running {
  const t0 = performance.now();
  const child = spawn(process.execPath, [BIN, '-c', sb.config, ...args], {
    cwd: sb.dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let seen = 0;
  const waiters: { bytes: number; resolve: () => void }[] = [];
  child.stdout.on('data', (b: Buffer) => {
    out.push(b);
    seen += b.length;
    for (const w of waiters.filter((w) => seen >= w.bytes)) w.resolve();
  });
  child.stderr.on('data', (b: Buffer) => err.push(b));
  const done = new Promise<{ code: number | null; stderr: string; stdout: Buffer; ms: number }>((resolve) =>
    child.on('close', (code) =>
      resolve({
        code,
        stderr: Buffer.concat(err).toString(),
        stdout: Buffer.concat(out),
        ms: performance.now() - t0,
      }),
    ),
  );
  return {
    stdoutReached: (bytes) =>
      new Promise((resolve) => {
        if (seen >= bytes) resolve();
        else waiters.push({ bytes, resolve });
      }),
    done,
  };
}

for (const tls of [false, true]) {
  const skip = tls ? rgwTlsSkipReason({ ownGateway: true }) : rgwSkipReason({ ownGateway: true });
  describe(`S3 faults against a real radosgw${tls ? ' serving HTTPS' : ''}`, { skip }, () => faults(tls));
}

function faults(tls: boolean): void {
  let rgw: Rgw;
  let sb: Sandbox;
  let bucket: string;
  let img: string;
  let uid1: string;

  /**
   * The request timeout in the config: short while a fault is provoked, long for the commands
   * that check the recovery (a gateway just thawed or restarted on a loaded machine can take
   * longer than the fault's timeout to answer its first requests).
   */
  const setTimeoutSeconds = (seconds: number) =>
    writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${sb.dbPath}`,
        ...s3ConfigLines(rgw, bucket, [`timeout = ${seconds}`]),
        '',
      ].join('\n'),
    );

  before(async () => {
    rgw = await Rgw.start(undefined, { tls });
    bucket = newBucket('fault');
    sb = await Sandbox.create();
    await setTimeoutSeconds(RELAXED_TIMEOUT_S);
    img = sb.path('disk.img');
    // 48 MiB of incompressible blocks: long enough to stop the gateway in the middle.
    await writeImage(img, { blocks: 192, blockSize: BS, kinds: () => 'random', seed: 'fault' });
    uid1 = await sb.backup([img, 'vm@1']);
  });
  after(async () => {
    if (rgw) {
      try {
        process.kill(rgw.pid(), 'SIGCONT');
      } catch {
        // not running
      }
      await rgw.destroy();
    }
    await sb?.remove();
  });

  it('radosgw stopped (SIGSTOP) mid-backup: one line within the timeout, version incomplete; after SIGCONT the next backup works', async () => {
    const other = sb.path('disk2.img');
    await writeImage(other, { blocks: 192, blockSize: BS, kinds: () => 'random', seed: 'fault-2' });
    const c = s3Client(rgw);
    const before = (await listKeys(c, bucket)).length;
    await setTimeoutSeconds(TIMEOUT_S);
    const run = start(sb, ['backup', other, 'vm@2']);
    // Wait until the backup is storing objects, then freeze the gateway.
    for (;;) {
      if ((await listKeys(c, bucket)).length > before) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    c.destroy();
    const pid = rgw.pid();
    process.kill(pid, 'SIGSTOP');
    const stoppedAt = performance.now();
    let r;
    let lsWhileStopped;
    let lsSeconds = 0;
    let afterStop = 0;
    try {
      r = await run.done;
      afterStop = (performance.now() - stoppedAt) / 1000;
      // ls needs the database only: it answers while the gateway is still frozen, instead of
      // waiting out the request timeout for the store's descriptor.
      await setTimeoutSeconds(RELAXED_TIMEOUT_S);
      const t0 = performance.now();
      lsWhileStopped = await sb.run(['-m', 'ls']);
      lsSeconds = (performance.now() - t0) / 1000;
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(lsWhileStopped.code, 0, lsWhileStopped.stderr);
    assert.ok(
      lsSeconds < RELAXED_TIMEOUT_S / 2,
      `ls took ${lsSeconds.toFixed(1)} s with the gateway stopped`,
    );
    assert.match(lsWhileStopped.stdout, new RegExp(uid1));
    assert.equal(r.code, 1, r.stderr);
    oneErrorLine(
      r.stderr,
      new RegExp(`${bucket}.* at ${rgw.endpoint}: no answer within ${TIMEOUT_S} s \\(timeout\\)`),
    );
    assert.ok(!r.stderr.includes(rgw.secretAccessKey), 'the secret is never printed');
    // The timeout bounds each operation; allow for the metadata work around it.
    assert.ok(afterStop < TIMEOUT_S + 5, `backup ended ${afterStop.toFixed(1)} s after the gateway stopped`);

    const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    const v2 = versions.find((v) => v.name === 'vm@2');
    assert.ok(v2 && !v2.valid, 'the interrupted version is not valid');
    assert.ok(versions.find((v) => v.uid === uid1)?.valid);

    const again = await sb.backup([other, 'vm@2']);
    const out = sb.path('again.img');
    await sb.ok(['restore', again, out]);
    await assertSameBytes(other, out);
    const out1 = sb.path('first.img');
    await sb.ok(['restore', uid1, out1]);
    await assertSameBytes(img, out1);
  });

  it('radosgw stopped mid-restore to a file: one line, exit 1, the partial file removed; the retry works', async () => {
    await setTimeoutSeconds(TIMEOUT_S);
    const out = sb.path('stopped.img');
    const run = start(sb, ['restore', uid1, out]);
    let exited = false;
    void run.done.then(() => (exited = true));
    for (;;) {
      if (exited || ((await stat(out).catch(() => undefined))?.size ?? 0) > 0) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(!exited, 'the restore was still running when the gateway stopped');
    const pid = rgw.pid();
    process.kill(pid, 'SIGSTOP');
    let r;
    try {
      r = await run.done;
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    assert.equal(r.code, 1, r.stderr);
    oneErrorLine(
      r.stderr,
      new RegExp(
        `no answer within ${TIMEOUT_S} s \\(timeout\\); restore of ${uid1} to .*stopped\\.img stopped; the partial file .* was removed`,
      ),
    );
    await assert.rejects(stat(out), { code: 'ENOENT' }, 'no partial file left');
    await setTimeoutSeconds(RELAXED_TIMEOUT_S);
    await sb.ok(['restore', uid1, out]);
    await assertSameBytes(img, out);
  });

  it('radosgw killed mid-restore: one line, exit 1, no block or object marked invalid; restores after a restart', async () => {
    await setTimeoutSeconds(TIMEOUT_S);
    const run = start(sb, ['restore', uid1, '-']);
    await run.stdoutReached(4 * BS);
    process.kill(rgw.pid(), 'SIGKILL');
    const r = await run.done;
    assert.equal(r.code, 1, r.stderr);
    oneErrorLine(
      r.stderr,
      new RegExp(`cannot read block [0-9a-f]+ from s3://${bucket}/ at ${rgw.endpoint}: `),
    );
    assert.doesNotMatch(r.stderr, /damaged|missing|written as zeros/);
    assert.ok(r.ms < 60_000);

    const db = new Database(sb.dbPath, { readonly: true });
    try {
      const badObjects = db.prepare('SELECT COUNT(*) AS n FROM objects WHERE valid = 0').get() as {
        n: number;
      };
      assert.equal(badObjects.n, 0);
    } finally {
      db.close();
    }
    assert.ok(parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).find((v) => v.uid === uid1)?.valid);

    // The same cluster's gateway comes back; the version restores and scrubs clean.
    await rgw.restart();
    await setTimeoutSeconds(RELAXED_TIMEOUT_S);
    const out = sb.path('after-kill.img');
    await sb.ok(['restore', uid1, out]);
    await assertSameBytes(img, out);
    await sb.ok(['scrub', uid1]);
  });
}
