/**
 * Operating during a gateway outage, against a real radosgw of this file's own, frozen with
 * SIGSTOP (it accepts connections and never answers, the worst case for a client): the
 * commands that change only the database (protect, unprotect, label, rm, enforce) work
 * within the store probe's few seconds, not after the 30 s S3 timeout; cleanup fails fast
 * in one line; ls and du work, even with no S3 credentials. Once the gateway is back, cleanup
 * writes the tombstones and copies the outage left pending, and a database recovered from the
 * store alone holds exactly what the database said. `backy run` fails each job at once, in
 * one line, and the run after the outage makes versions that restore byte for byte.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, runBacky } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { Rgw, listKeys, newBucket, rgwSkipReason, s3Client, s3ConfigLines } from '../lib/rgw.js';

const BS = 64 * 1024;
const skip = rgwSkipReason({ ownGateway: true });

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

interface LsEntry {
  uid: string;
  protected: boolean;
  labels: Record<string, string>;
}

describe('a frozen S3 gateway', { skip }, () => {
  let rgw: Rgw;
  let sb: Sandbox;
  let bucket: string;
  let img: string;
  let v1: string, v2: string, v3: string;
  let frozen = false;

  const config = (path: string, db: string, timeout: number, creds = true) =>
    writeFile(
      path,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${db}`,
        ...s3ConfigLines(rgw, bucket, [`timeout = ${timeout}`]).filter(
          (l) => creds || !/^(access_key_id|secret_access_key)/.test(l),
        ),
        '',
      ].join('\n'),
    );
  const freeze = (on: boolean) => {
    process.kill(rgw.pid(), on ? 'SIGSTOP' : 'SIGCONT');
    frozen = on;
  };
  /** A command during the outage: exit 0, and well before the 30 s S3 timeout. */
  const quick = async (args: string[]) => {
    const t0 = performance.now();
    const r = await sb.run(args);
    const s = (performance.now() - t0) / 1000;
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    assert.ok(s < 20, `${args.join(' ')} took ${s.toFixed(1)} s`);
    assert.equal(errorLines(r.stderr).length, 0, r.stderr);
    return r;
  };
  const ls = async () => JSON.parse((await quick(['--json', 'ls'])).stdout) as LsEntry[];

  before(async () => {
    rgw = await Rgw.start();
    bucket = newBucket('outage');
    sb = await Sandbox.create();
    await config(sb.config, sb.dbPath, 60);
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 8, blockSize: BS, kinds: () => 'random', seed: 'outage' });
    v1 = await sb.backup([img, 'vm']);
    v2 = await sb.backup(['-f', v1, img, 'vm']);
    v3 = await sb.backup(['-f', v2, img, 'vm']);
  });
  after(async () => {
    if (rgw) {
      if (frozen) freeze(false);
      await rgw.destroy();
    }
    await sb?.remove();
  });

  it('database-only commands work, cleanup fails fast in one line, ls and du need no credentials', async () => {
    // The default S3 timeout: what each command waited before, retries included; the probe
    // gives the store 5 s.
    await config(sb.config, sb.dbPath, 30);
    freeze(true);
    const l = await quick(['label', v3, 'tier=gold']);
    assert.match(l.stderr, /WARN.*cannot be reached.*changing the database only/);
    assert.equal(l.stderr.split('\n').filter((x) => x.includes('WARN')).length, 1, l.stderr);
    // The rest with a 1 s timeout (the probe waits no longer than the configured timeout), to
    // keep this file short; a command that still needed the store would fail.
    await config(sb.config, sb.dbPath, 1);
    await quick(['rm', v1]);
    const e = await quick(['-m', 'enforce', 'latest1', 'vm']);
    assert.match(e.stdout, new RegExp(`^removed ${v2} vm `));
    await quick(['unprotect', v3]);
    await quick(['protect', v3]);

    const c = await sb.run(['cleanup']);
    assert.equal(c.code, 1, c.stderr);
    assert.equal(errorLines(c.stderr).length, 1, c.stderr);
    assert.match(c.stderr, /cannot be reached.*'cleanup' needs it; nothing was changed/);

    const listed = await ls();
    assert.deepEqual(
      listed.map((v) => v.uid),
      [v3],
    );
    assert.equal(listed[0].protected, true);
    assert.deepEqual(listed[0].labels, { tier: 'gold' });

    // No S3 credentials at all (a monitoring host): ls and du still answer from the database.
    const bare = sb.path('bare.cfg');
    await config(bare, sb.dbPath, 30, false);
    const env = { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' };
    await writeFile(bare, `${await readFile(bare, 'utf8')}[job vm]\nsource = file:disk.img\nevery = 1d\n`);
    for (const args of [['-m', 'ls'], ['du'], ['jobs']]) {
      const r = await runBacky(['-c', bare, ...args], { env, cwd: sb.dir });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(errorLines(r.stderr).length, 0, r.stderr);
    }
    // check too (the job never ran: CRITICAL, exit 2, rather than a config error).
    const chk = await runBacky(['-c', bare, 'check'], { env, cwd: sb.dir });
    assert.equal(chk.code, 2, chk.stderr);
    assert.match(chk.stdout, /^BACKY CRITICAL - vm critical: never succeeded/);
  });

  it('back online: cleanup writes what was pending; a database recovered from the store agrees', async () => {
    freeze(false);
    await config(sb.config, sb.dbPath, 60);
    await sb.ok(['cleanup']);
    const keys = await listKeys(s3Client(rgw), bucket, '', { meta: true });
    const copies = keys
      .filter((k) => k.startsWith('meta/version-'))
      .map((k) => k.slice('meta/version-'.length));
    assert.deepEqual(copies, [v3]);

    const fresh = sb.path('fresh.cfg');
    await config(fresh, sb.path('fresh.sqlite'), 60);
    const rec = await runBacky(['-c', fresh, 'recover'], { cwd: sb.dir });
    assert.equal(rec.code, 0, rec.stderr);
    const r = await runBacky(['-c', fresh, '--json', 'ls'], { cwd: sb.dir });
    const back = JSON.parse(r.stdout) as LsEntry[];
    assert.deepEqual(
      back.map((v) => [v.uid, v.protected, v.labels]),
      [[v3, true, { tier: 'gold' }]],
    );
    const out = sb.path('restored.img');
    const rs = await runBacky(['-c', fresh, 'restore', v3, out], { cwd: sb.dir });
    assert.equal(rs.code, 0, rs.stderr);
    await assertSameBytes(img, out);
  });

  it('backy run fails each job fast in one line while the gateway is frozen; the next run is correct', async () => {
    // The default S3 timeout: without the probe each job waited it out, retries included.
    // The database recovered above owns the store now (recover made it so): the jobs run on it.
    const cfg = sb.path('fresh.cfg');
    const run = (args: string[]) => runBacky(['-c', cfg, ...args], { cwd: sb.dir });
    await config(cfg, sb.path('fresh.sqlite'), 30);
    const img2 = sb.path('disk2.img');
    await writeImage(img2, { blocks: 5, blockSize: BS, kinds: () => 'random', seed: 'outage-2' });
    const jobs = { ja: img, jb: img2 };
    await writeFile(
      cfg,
      `${await readFile(cfg, 'utf8')}${Object.entries(jobs)
        .map(([name, path]) => `[job ${name}]\nsource = file:${path}\nevery = 1d\n`)
        .join('')}`,
    );
    freeze(true);
    const t0 = performance.now();
    const r = await run(['-m', 'run']);
    const s = (performance.now() - t0) / 1000;
    freeze(false);
    assert.equal(r.code, 1, r.stderr);
    assert.ok(s < 15, `run took ${s.toFixed(1)} s`);
    const lines = r.stdout.trim().split('\n').sort();
    assert.equal(lines.length, 2, r.stdout);
    for (const [i, name] of ['ja', 'jb'].entries()) {
      assert.match(lines[i], new RegExp(`^job ${name} failed - [0-9.]+ the store at .* cannot be reached`));
    }
    assert.doesNotMatch(r.stderr, /\n\s+at /, r.stderr);

    // Back online: the next run makes both versions, and each restores byte for byte.
    const ok = await run(['-m', 'run']);
    assert.equal(ok.code, 0, `${ok.stdout}${ok.stderr}`);
    const made = ok.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(' '));
    assert.deepEqual(made.map((f) => [f[1], f[2]]).sort(), [
      ['ja', 'ok'],
      ['jb', 'ok'],
    ]);
    for (const f of made) {
      const out = sb.path(`${f[1]}.restored`);
      const rs = await run(['restore', f[3], out]);
      assert.equal(rs.code, 0, rs.stderr);
      await assertSameBytes(jobs[f[1] as keyof typeof jobs], out);
    }
  });
});
