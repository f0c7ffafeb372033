/**
 * Jobs end to end on a real one-node Ceph cluster: three RBD images (one in a namespace) and a
 * qcow2 file, backed up only through `backy run`. Incrementals read only what changed; a
 * snapshot removed by hand makes a full export-diff; a run killed with SIGKILL in the middle of
 * its export-diff leaves the next run correct (and cleanup reclaims the incomplete version);
 * a second `run` of a job that runs is refused naming the holder; `check` judges fresh,
 * failed and never-run jobs. Every version is restored and compared byte for byte with a copy
 * of its snapshot (or of the qcow2 image) that the test kept when the version was made.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, chmod, mkdir, writeFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { BIN, Sandbox, assertSameBytes } from '../lib/cli.js';
import { Ceph, cephMissing, q, sh } from '../lib/ceph.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

const skip = cephMissing();

interface Result {
  job: string;
  ok: boolean;
  uid: string | null;
  error: string | null;
  bytes_read: number;
  bytes_stored: number;
}

interface LsVersion {
  uid: string;
  name: string;
  snapshot: string | null;
  status: string;
  base: string | null;
  labels: Record<string, string>;
}

describe('jobs on Ceph RBD and qcow2', { skip }, () => {
  let ceph: Ceph;
  let sb: Sandbox;
  /** uid -> a copy of what that version must restore to. */
  const expected = new Map<string, string>();
  let copies = 0;
  /** Bytes the first (full) run of vm1 read. */
  let fullRead = 0;
  let lastStderr = '';

  before(async () => {
    ceph = await Ceph.start();
    sb = await Sandbox.create({ defaults: `block_size = ${MiB}` });
    await appendFile(
      sb.config,
      [
        '[scheduler]',
        'max_parallel = 2',
        '[job vm1]',
        `source = rbd:${ceph.pool}/vm1`,
        'every = 1h',
        '[job vm2]',
        `source = rbd:${ceph.pool}/vm2`,
        'every = 1h',
        '[job vm3]',
        `source = rbd:${ceph.pool}/ns1/vm3`,
        'verify_every = 2',
        'every = 1h',
        '[job q]',
        'source = qcow2:q.qcow2',
        'every = 1h',
        'verify_every = 2',
        '[job gone]',
        `source = rbd:${ceph.pool}/no-such-image`,
        'every = 1h',
        '',
      ].join('\n'),
    );
  });
  after(async () => {
    await ceph?.destroy();
    await sb?.remove();
  });

  const rbd = (args: string) => ceph.sh(`rbd ${args}`);
  const ls = async (): Promise<LsVersion[]> =>
    JSON.parse((await sb.ok(['--json', 'ls'])).stdout) as LsVersion[];
  const run = async (jobs: string[], env?: NodeJS.ProcessEnv) => {
    const r = await sb.run(['-v', '--json', 'run', ...jobs], { env: { ...ceph.env, ...env } });
    const results = (JSON.parse(r.stdout) as { results: Result[] }).results;
    return { code: r.code, stderr: r.stderr, byJob: new Map(results.map((x) => [x.job, x])) };
  };
  const runOk = async (jobs: string[]) => {
    const r = await run(jobs);
    for (const [job, x] of r.byJob) assert.ok(x.ok, `job ${job} failed: ${x.error}\n${r.stderr}`);
    assert.equal(r.code, 0);
    lastStderr = r.stderr;
    return r.byJob;
  };
  const specOf = (job: string) => (job === 'vm3' ? `${ceph.pool}/ns1/vm3` : `${ceph.pool}/${job}`);
  /** Keeps a copy of what version `uid` of `job` was read from: its snapshot, or the qcow2 image. */
  const keep = async (job: string, uid: string) => {
    const file = sb.path(`expected-${copies++}.raw`);
    if (job === 'q') await sh(`qemu-img convert -f qcow2 -O raw ${q(sb.path('q.qcow2'))} ${q(file)}`);
    else {
      const v = (await ls()).find((x) => x.uid === uid)!;
      await rbd(`export --no-progress ${q(`${specOf(job)}@${v.snapshot}`)} ${q(file)}`);
    }
    expected.set(uid, file);
  };
  const keepAll = async (byJob: Map<string, Result>) => {
    for (const [job, r] of byJob) if (r.ok) await keep(job, r.uid!);
  };
  const backySnapshots = async (job: string) =>
    (JSON.parse((await rbd(`snap ls --format json ${q(specOf(job))}`)).stdout) as { name: string }[])
      .map((s) => s.name)
      .filter((n) => n.startsWith('backy-'));
  const qemuIo = (cmd: string) => sh(`qemu-io -f qcow2 -c ${q(cmd)} ${q(sb.path('q.qcow2'))} >/dev/null`);

  test('first runs read everything; incrementals read only changed data', async () => {
    for (const img of ['vm1', 'vm2']) await rbd(`create --size ${SIZE / MiB}M ${q(ceph.spec(img))}`);
    await rbd(`namespace create --pool ${ceph.pool} --namespace ns1`);
    await rbd(`create --size ${SIZE / MiB}M ${q(`${ceph.pool}/ns1/vm3`)}`);
    await ceph.librbd('vm1', [
      { op: 'write', offset: 0, length: 10 * MiB, seed: 11 },
      { op: 'write', offset: 13 * MiB, length: 1 * MiB, seed: 12 },
    ]);
    await ceph.librbd('vm2', [{ op: 'write', offset: 2 * MiB, length: 6 * MiB, seed: 21 }]);
    await rbd(
      `bench --io-type write --io-size 4K --io-total 256K --io-pattern rand ${q(`${ceph.pool}/ns1/vm3`)}`,
    );
    await sh(`qemu-img create -q -f qcow2 ${q(sb.path('q.qcow2'))} ${SIZE}`);
    await qemuIo('write -P 0x11 0 6M');
    await qemuIo('write -P 0x12 10M 1M');

    const first = await runOk(['vm1', 'vm2', 'vm3', 'q']);
    await keepAll(first);
    // rbd reports data per object, from the object's start to its last written byte: the
    // 1 MiB written at 13 MiB comes as 12-14 MiB. The 2 MiB hole before it is never read.
    const full = (fullRead = first.get('vm1')!.bytes_read);
    assert.ok(
      full >= 11 * MiB && full <= 12 * MiB,
      `a first run reads all data and no holes (${full} bytes)`,
    );
    assert.equal(first.get('q')!.bytes_read, 7 * MiB);

    await ceph.librbd('vm1', [
      { op: 'write', offset: MiB + 12345, length: 300_000, seed: 13 },
      { op: 'write', offset: 3 * MiB - 1000, length: 5000, seed: 14 },
    ]);
    await rbd(
      `bench --io-type write --io-size 4K --io-total 32K --io-pattern rand ${q(`${ceph.pool}/ns1/vm3`)}`,
    );
    await qemuIo('write -P 0x13 5M 70k');
    const second = await runOk(['vm1', 'vm2', 'vm3', 'q']);
    await keepAll(second);
    const v1 = second.get('vm1')!;
    assert.ok(v1.bytes_read >= 305_000 && v1.bytes_read <= 2 * 4 * MiB, `vm1 read ${v1.bytes_read} bytes`);
    assert.equal(second.get('vm2')!.bytes_read, 0, 'an unchanged image reads nothing');
    // vm3's second run is a verify run (verify_every = 2): a full read, then every block rbd
    // diff calls unchanged is compared with the first run's version.
    assert.ok(second.get('vm3')!.bytes_read >= first.get('vm3')!.bytes_read);
    const verified = new RegExp(
      `\\[job vm3\\] verify: (\\d+) blocks rbd diff calls unchanged match base ${first.get('vm3')!.uid}`,
    ).exec(lastStderr);
    assert.ok(verified && Number(verified[1]) > 0, lastStderr);
    assert.equal(second.get('q')!.bytes_read, MiB, 'qcow2: only the block the bitmap names');

    const versions = await ls();
    for (const job of ['vm1', 'vm2', 'vm3', 'q']) {
      const v = versions.find((x) => x.uid === second.get(job)!.uid)!;
      assert.equal(
        v.base,
        job === 'vm3' ? null : first.get(job)!.uid,
        `${job}: incremental from the first run`,
      );
      assert.equal(v.labels['backy.job'], job);
      if (job !== 'q')
        assert.deepEqual(await backySnapshots(job), [v.snapshot], `${job}: older snapshot removed`);
    }
    const bitmaps = (await sh(`qemu-img info --output json ${q(sb.path('q.qcow2'))}`)).stdout;
    const names = (JSON.parse(bitmaps) as { 'format-specific': { data: { bitmaps: { name: string }[] } } })[
      'format-specific'
    ].data.bitmaps.map((b) => b.name);
    assert.deepEqual(names, [`backy-${second.get('q')!.uid}`], 'one bitmap, named after the newest version');
  });

  test('a snapshot removed by hand: a full export-diff, still correct', async () => {
    const [snap] = await backySnapshots('vm1');
    await rbd(`snap rm --no-progress ${q(`${ceph.spec('vm1')}@${snap}`)}`);
    await ceph.librbd('vm1', [{ op: 'write', offset: 7 * MiB, length: 4096, seed: 15 }]);
    const r = await runOk(['vm1']);
    await keepAll(r);
    const v = (await ls()).find((x) => x.uid === r.get('vm1')!.uid)!;
    assert.equal(v.base, null, 'no base: its snapshot is gone');
    assert.equal(r.get('vm1')!.bytes_read, fullRead, 'the whole image was exported');
  });

  test('an image replaced by a copy with the same snapshots: never a base from another image', async () => {
    // rbd deep cp copies the snapshots too: same names, another image id.
    const [snap] = await backySnapshots('vm2');
    await rbd(`deep cp --no-progress ${q(ceph.spec('vm2'))} ${q(ceph.spec('vm2-copy'))}`);
    await rbd(`rename ${q(ceph.spec('vm2'))} ${q(ceph.spec('vm2-orig'))}`);
    await rbd(`rename ${q(ceph.spec('vm2-copy'))} ${q(ceph.spec('vm2'))}`);
    assert.deepEqual(await backySnapshots('vm2'), [snap], 'the copy has the snapshot the chain ends at');
    const r = await runOk(['vm2']);
    await keepAll(r);
    const v = (await ls()).find((x) => x.uid === r.get('vm2')!.uid)!;
    assert.equal(v.base, null, 'the snapshot exists, but on another image: a full export-diff');
    assert.ok(r.get('vm2')!.bytes_read >= 6 * MiB);
  });

  test('two runs of one job: one runs; kill -9 mid-run: the next run is correct, cleanup reclaims', async () => {
    // rbd as a wrapper that passes the first 3 MB of an export-diff, then stalls: the run is
    // caught in the middle of its backup.
    const bin = sb.path('slow-bin');
    await mkdir(bin);
    const mark = sb.path('stalled');
    await writeFile(
      `${bin}/rbd`,
      `#!/bin/sh\nif [ "$1" = export-diff ]; then\n  ${q(await realRbd())} "$@" | { head -c 3000000; touch ${q(mark)}; sleep 300; cat; }\nelse\n  exec ${q(await realRbd())} "$@"\nfi\n`,
    );
    await chmod(`${bin}/rbd`, 0o755);
    await ceph.librbd('vm2', [{ op: 'write', offset: 8 * MiB, length: 8 * MiB, seed: 22 }]);
    const before = (await ls()).filter((v) => v.name === 'vm2');
    const base = before.at(-1)!;

    const child = spawn(process.execPath, [BIN, '-c', sb.config, 'run', 'vm2'], {
      cwd: sb.dir,
      env: { ...process.env, ...ceph.env, PATH: `${bin}:${process.env.PATH}` },
      stdio: 'ignore',
      detached: true, // its own process group: the kill takes rbd, the wrapper and sleep along
    });
    try {
      const deadline = Date.now() + 120_000;
      while (!existsSync(mark) || !(await ls()).some((v) => v.name === 'vm2' && v.status === 'incomplete')) {
        assert.ok(Date.now() < deadline, 'the slowed run never got to its backup');
        await new Promise((r) => setTimeout(r, 500));
      }
      const second = await run(['vm2']);
      assert.equal(second.code, 1);
      assert.match(
        second.byJob.get('vm2')!.error!,
        new RegExp(`job vm2 is already running \\(pid ${child.pid} on `),
      );
    } finally {
      process.kill(-child.pid!, 'SIGKILL');
    }
    await new Promise((r) => child.once('exit', r));
    const incomplete = (await ls()).filter((v) => v.name === 'vm2' && v.status === 'incomplete');
    assert.equal(incomplete.length, 1);

    const r = await runOk(['vm2']);
    await keepAll(r);
    const v = (await ls()).find((x) => x.uid === r.get('vm2')!.uid)!;
    assert.equal(v.base, base.uid, 'incremental from the last good version, whose snapshot is still there');
    assert.ok(r.get('vm2')!.bytes_read >= 8 * MiB && r.get('vm2')!.bytes_read < 12 * MiB);
    assert.deepEqual(await backySnapshots('vm2'), [v.snapshot], "the killed run's snapshot is removed too");

    await sb.ok(['cleanup']);
    assert.ok(
      !(await ls()).some((x) => x.uid === incomplete[0].uid),
      'cleanup removed the incomplete version',
    );
  });

  test('check: fresh, failed, never run', async () => {
    const check = async (job: string) => {
      const r = await sb.run(['check', job], { env: ceph.env });
      assert.equal(r.stdout.trim().split('\n').length, 1, r.stdout);
      return { code: r.code, line: r.stdout.trim() };
    };
    const fresh = await check('vm1');
    assert.equal(fresh.code, 0, fresh.line);
    assert.match(fresh.line, /^BACKY OK - .* \| 'vm1_age'=\d+s;;5400;0 'vm1_versions'=3;;;0$/);

    const never = await check('gone');
    assert.equal(never.code, 2);
    assert.match(never.line, /^BACKY CRITICAL - gone critical: never succeeded/);
    const gone = await run(['gone']);
    assert.equal(gone.code, 1);
    assert.match(gone.byJob.get('gone')!.error!, /rbd info .*no-such-image.* failed/);
    assert.equal((await check('gone')).code, 2, 'failed and never succeeded: still critical');

    await rbd(`rename ${q(`${ceph.pool}/ns1/vm3`)} ${q(`${ceph.pool}/ns1/vm3-away`)}`);
    const failed = await run(['vm3']);
    await rbd(`rename ${q(`${ceph.pool}/ns1/vm3-away`)} ${q(`${ceph.pool}/ns1/vm3`)}`);
    assert.equal(failed.code, 1);
    const warn = await check('vm3');
    assert.equal(warn.code, 1, warn.line);
    assert.match(warn.line, /^BACKY WARNING - vm3 warning: last run failed: rbd /);
    const jobs = (await sb.ok(['-m', 'jobs'], { env: ceph.env })).stdout;
    assert.match(jobs, /^job vm3 warning \S+ \d+ failed /m);
    assert.match(jobs, /^job gone critical - - failed /m);
  });

  test('every version restores byte for byte to its snapshot', async () => {
    const valid = (await ls()).filter((v) => v.status === 'valid');
    assert.equal(valid.length, expected.size);
    for (const v of valid) {
      const out = sb.path(`${v.uid}.restored`);
      await sb.ok(['restore', v.uid, out]);
      await assertSameBytes(expected.get(v.uid)!, out);
    }
  });
});

async function realRbd(): Promise<string> {
  return (await sh('command -v rbd')).stdout.trim();
}
