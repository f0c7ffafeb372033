/**
 * README "Running a fleet": its backy.cfg and systemd unit, taken from README.md and run as
 * written. systemd is not running here, so the unit's ExecStart runs with its Environment, as
 * systemd would start it; the only changes are the paths, moved into a temporary directory
 * (/etc, /var/lib/backy, /srv/images) and the backy binary (this checkout's). The RBD jobs
 * fail (no Ceph cluster here) and must not stop the others: the image-file job runs, its
 * version restores byte for byte, /metrics and /jobs answer, and KillSignal stops the daemon
 * within TimeoutStopSec with exit 0.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO, assertSameBytes, runBacky } from '../lib/cli.js';
import { DaemonProcess, http, parseMetrics } from '../lib/daemon.js';
import { writeImage } from '../lib/image.js';
import { waitFor } from '../lib/store.js';

/** The first fenced block of `lang` in the README's section `heading`. */
function readmeBlock(readme: string, heading: string, lang: string): string {
  const start = readme.indexOf(`\n${heading}\n`);
  assert.ok(start >= 0, `README has no '${heading}'`);
  const end = readme.indexOf('\n## ', start + heading.length + 2);
  const section = readme.slice(start, end < 0 ? undefined : end);
  const m = new RegExp(`\`\`\`${lang}\\n([\\s\\S]*?)\`\`\``).exec(section);
  assert.ok(m, `no \`\`\`${lang} block in '${heading}'`);
  return m[1];
}

/** The [Service] keys of a unit file (repeated keys such as Environment collected). */
function serviceKeys(unit: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const line of unit.split('\n')) {
    const h = /^\[(\w+)\]$/.exec(line.trim());
    if (h) section = h[1];
    const kv = /^(\w+)=(.*)$/.exec(line.trim());
    if (section === 'Service' && kv) out.set(kv[1], [...(out.get(kv[1]) ?? []), kv[2]]);
  }
  return out;
}

describe('README: Running a fleet', () => {
  let dir: string;
  let cfg: string;
  let unit: Map<string, string[]>;
  let d: DaemonProcess | undefined;
  const moved = (text: string) =>
    text
      .replaceAll('/var/lib/backy', join(dir, 'var/lib/backy'))
      .replaceAll('/srv/images', join(dir, 'srv/images'))
      .replaceAll('/etc/', `${join(dir, 'etc')}/`);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-fleet-'));
    const readme = await readFile(join(REPO, 'README.md'), 'utf8');
    const config = readmeBlock(readme, '## Running a fleet', 'ini');
    unit = serviceKeys(readmeBlock(readme, '## Running a fleet', 'systemd'));
    for (const sub of ['etc', 'var/lib/backy', 'srv/images'])
      await mkdir(join(dir, sub), { recursive: true });
    cfg = join(dir, 'etc/backy.cfg');
    await writeFile(cfg, moved(config));
    await writeImage(join(dir, 'srv/images/appliance.raw'), {
      blocks: 3,
      blockSize: 4 << 20,
      seed: 'appliance',
      kinds: (i) => (i === 1 ? 'zero' : 'random'),
    });
  });
  after(async () => {
    d?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it("runs the unit's ExecStart with its Environment: a job runs, /metrics and /jobs answer, SIGTERM stops it", async () => {
    const env: NodeJS.ProcessEnv = {};
    for (const e of unit.get('Environment') ?? []) {
      const [k, ...v] = e.split('=');
      env[k] = moved(v.join('='));
    }
    assert.equal(env.BACKY_CONFIG, cfg);
    const [exec] = unit.get('ExecStart') ?? [];
    const argv = exec.split(/\s+/);
    assert.equal(argv[0], '/usr/local/bin/backy', 'the unit runs the installed backy');
    d = new DaemonProcess(argv.slice(1), { cwd: dir, env });
    const m = await d.line(/Serving \/metrics and \/jobs on (http:\/\/\S+)/);
    const base = m[1];
    assert.equal(base, 'http://127.0.0.1:9750');
    await waitFor(
      'the appliance job',
      async () =>
        parseMetrics((await http(`${base}/metrics`)).body).get(
          'backy_job_last_run_success{job="appliance"}',
        ) === 1,
      40_000,
    );
    const metrics = parseMetrics((await http(`${base}/metrics`)).body);
    assert.equal(metrics.get('backy_versions{job="appliance",status="valid"}'), 1);
    const jobs = JSON.parse((await http(`${base}/jobs`)).body) as { job: string; state: string }[];
    assert.deepEqual(
      jobs.map((j) => j.job),
      ['vm1', 'vm2', 'appliance'],
    );
    // The RBD jobs fail here (no cluster), each in one line, and the daemon goes on.
    await waitFor(
      'the rbd jobs to fail',
      () =>
        /\[job vm1\] (failed|not started)/.test(d!.stderr) &&
        /\[job vm2\] (failed|not started)/.test(d!.stderr),
      40_000,
    );

    assert.equal(unit.get('KillSignal')?.[0], 'SIGTERM');
    const t0 = Date.now();
    d.kill('SIGTERM');
    const { code } = await d.done;
    assert.equal(code, 0, d.stderr);
    assert.ok(Date.now() - t0 < Number(unit.get('TimeoutStopSec')?.[0]) * 1000);
    assert.doesNotMatch(d.stderr, /^\s+at /m);

    // The metrics file as configured, and the version restores byte for byte.
    const file = parseMetrics(await readFile(join(dir, 'var/lib/backy/metrics/backy.prom'), 'utf8'));
    assert.equal(file.get('backy_job_last_run_success{job="appliance"}'), 1);
    const ls = await runBacky(['--json', 'ls', 'appliance'], { env, cwd: dir });
    const [v] = JSON.parse(ls.stdout) as { uid: string }[];
    const out = join(dir, 'restored.raw');
    const r = await runBacky(['restore', v.uid, out], { env, cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    await assertSameBytes(join(dir, 'srv/images/appliance.raw'), out);
  });
});
