/**
 * `backy daemon` on a real one-node Ceph cluster: two RBD jobs with `every = 3s`. Each job runs
 * at least three times while the test changes the image between runs: a full export-diff first,
 * incrementals after. SIGTERM stops the daemon with exit 0, every version restores byte for
 * byte to the image content it was taken from, and `check` is OK.
 *
 * The test knows what each version must contain without racing the scheduler: a job's pre
 * command takes a per-job lock (a directory) and its post command, which runs once the
 * snapshot is taken, records which generation of test data that snapshot holds and releases
 * the lock. The test changes an image only while holding that image's lock, so no snapshot is
 * ever taken in the middle of a change.
 */
import assert from 'node:assert/strict';
import { readFile, mkdir, rmdir, writeFile, appendFile, chmod } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { Ceph, cephMissing, q } from '../lib/ceph.js';
import { DaemonProcess, freePort } from '../lib/daemon.js';
import { waitFor } from '../lib/store.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
const JOBS = ['vm1', 'vm2'];
/** Generations of test data per image: 0 before the daemon starts, then two changes. */
const GENERATIONS = 3;

const skip = cephMissing();

interface LsVersion {
  uid: string;
  name: string;
  snapshot: string | null;
  status: string;
  base: string | null;
}

describe('backy daemon on Ceph RBD', { skip }, () => {
  let ceph: Ceph;
  let sb: Sandbox;
  let d: DaemonProcess | undefined;
  /** `job/generation` -> a copy of the image as the test left it in that generation. */
  const expected = new Map<string, string>();

  before(async () => {
    ceph = await Ceph.start();
    sb = await Sandbox.create({ defaults: `block_size = ${MiB}` });
  });
  after(async () => {
    d?.kill('SIGKILL');
    if (d) await d.done;
    await ceph?.destroy();
    await sb?.remove();
  });

  const rbd = (args: string) => ceph.sh(`rbd ${args}`);
  const ls = async (): Promise<LsVersion[]> =>
    JSON.parse((await sb.ok(['--json', 'ls'])).stdout) as LsVersion[];
  const lock = (job: string) => sb.path(`lock-${job}`);
  /** snapshot name -> generation, as the post command recorded them. */
  const generations = async (job: string): Promise<Map<string, number>> => {
    const text = await readFile(sb.path(`map-${job}`), 'utf8').catch(() => '');
    const map = new Map<string, number>();
    for (const line of text.split('\n').filter(Boolean)) {
      const [gen, snap] = line.split(' ');
      map.set(snap, Number(gen));
    }
    return map;
  };
  /** Valid versions of `job` whose snapshot holds generation `gen`. */
  const validOf = async (job: string, gen: number) => {
    const map = await generations(job);
    return (await ls()).filter((v) => v.name === job && v.status === 'valid' && map.get(v.snapshot!) === gen);
  };
  /** Writes generation `gen` into `job`'s image (and keeps a copy) while no snapshot can be taken. */
  const change = async (job: string, gen: number) => {
    await waitFor(
      'the job lock',
      async () =>
        mkdir(lock(job)).then(
          () => true,
          () => false,
        ),
      60_000,
    );
    try {
      const seed = (JOBS.indexOf(job) + 1) * 100 + gen;
      // The first generation fills most of the image; later ones change a little, unaligned.
      await ceph.librbd(
        job,
        gen === 0
          ? [{ op: 'write', offset: 0, length: 3 * MiB, seed }]
          : [{ op: 'write', offset: gen * MiB - 777, length: 5000 + gen * 1000, seed }],
      );
      const file = sb.path(`expected-${job}-${gen}.raw`);
      await rbd(`export --no-progress ${q(ceph.spec(job))} ${q(file)}`);
      expected.set(`${job}/${gen}`, file);
      await writeFile(sb.path(`gen-${job}`), `${gen}\n`);
    } finally {
      await rmdir(lock(job));
    }
  };

  test('two RBD jobs every 3s: full, then incrementals; SIGTERM exits 0; every version restores', async () => {
    for (const job of JOBS) {
      await rbd(`create --size ${SIZE / MiB}M ${q(ceph.spec(job))}`);
      await change(job, 0);
    }
    const hook = sb.path('hook.sh');
    await writeFile(
      hook,
      [
        '#!/bin/sh',
        'set -eu',
        `dir=${q(sb.dir)}`,
        'lock="$dir/lock-$BACKY_JOB"',
        'if [ "$1" = pre ]; then',
        '  until mkdir "$lock" 2>/dev/null; do sleep 0.05; done',
        'else',
        // post: the snapshot just taken is the image's newest backy- snapshot.
        '  if [ "$BACKY_STATUS" = ok ]; then',
        `    snap=$(rbd snap ls ${q(ceph.pool)}/"$BACKY_JOB" | awk '$2 ~ /^backy-/ { n = $2 } END { print n }')`,
        '    echo "$(cat "$dir/gen-$BACKY_JOB") $snap" >> "$dir/map-$BACKY_JOB"',
        '  fi',
        '  rmdir "$lock"',
        'fi',
        '',
      ].join('\n'),
    );
    await chmod(hook, 0o755);
    const port = await freePort();
    const jobLines = JOBS.flatMap((job) => [
      `[job ${job}]`,
      `source = rbd:${ceph.pool}/${job}`,
      'every = 3s',
      `pre = ${hook} pre`,
      `post = ${hook} post`,
    ]);
    await appendFile(
      sb.config,
      ['[scheduler]', 'max_parallel = 2', `listen = 127.0.0.1:${port}`, ...jobLines, ''].join('\n'),
    );

    d = new DaemonProcess(['-c', sb.config, 'daemon', '--stop-timeout', '30'], {
      cwd: sb.dir,
      env: ceph.env,
    });
    await d.line(/Serving \/metrics and \/jobs on http:\/\/127\.0\.0\.1:\d+/);
    for (let gen = 1; gen < GENERATIONS; gen++) {
      for (const job of JOBS) {
        await waitFor(
          `${job}: a valid version of generation ${gen - 1}`,
          async () => (await validOf(job, gen - 1)).length > 0,
          45_000,
        );
        await change(job, gen);
      }
    }
    for (const job of JOBS) {
      await waitFor(
        `${job}: a valid version of generation ${GENERATIONS - 1}`,
        async () => (await validOf(job, GENERATIONS - 1)).length > 0,
        45_000,
      );
    }
    d.kill('SIGTERM');
    const { code } = await d.done;
    assert.equal(code, 0, d.stderr);
    assert.match(d.stderr, /backy daemon stopped/);
    assert.doesNotMatch(d.stderr, /^\s+at /m);

    const versions = await ls();
    for (const job of JOBS) {
      const map = await generations(job);
      const mine = versions.filter((v) => v.name === job && v.status === 'valid');
      assert.ok(mine.length >= GENERATIONS, `${job}: ${mine.length} valid versions`);
      assert.equal(mine[0].base, null, `${job}: the first run is a full export-diff`);
      for (const v of mine.slice(1)) assert.ok(v.base !== null, `${job}: ${v.uid} is an incremental`);
      for (const v of mine) {
        const gen = map.get(v.snapshot!);
        assert.ok(gen !== undefined, `${job}: version ${v.uid} (snapshot ${v.snapshot}) has a generation`);
        const out = sb.path(`${v.uid}.restored`);
        await sb.ok(['restore', v.uid, out]);
        await assertSameBytes(expected.get(`${job}/${gen}`)!, out);
      }
    }

    // `check` judges a version's age against `every`; the restores above take longer than
    // 1.5 x 3 s on a loaded machine, so check runs against a config with a longer interval.
    await writeFile(sb.config, (await readFile(sb.config, 'utf8')).replaceAll('every = 3s', 'every = 1h'));
    const check = await sb.run(['check'], { env: ceph.env });
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.match(check.stdout, /^BACKY OK - /);
  });
});
