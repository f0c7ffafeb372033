import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../config/config.js';
import { ConfigError } from '../errors.js';
import { formatDuration, parseDurationSeconds } from './duration.js';

const FILE = '/etc/backy/backy.cfg';
const parse = (text: string) => parseConfig(text, FILE, {});
const bad = (text: string, re: RegExp) =>
  assert.throws(
    () => parse(text),
    (e: unknown) => e instanceof ConfigError && re.test(e.message),
  );

describe('job config', () => {
  it('parses every key of a job, and [scheduler]', () => {
    const c = parse(
      [
        '[scheduler]',
        'max_parallel = 3',
        'cleanup_every = 1d',
        'metrics_file = metrics/backy.prom',
        'listen = 127.0.0.1:9100',
        '[job vm1]',
        'source = rbd:rbd/vm1',
        'every = 1d',
        'retention = latest3,days7,weeks4,months6',
        'labels = env=prod,owner=ops',
        'protect_every = 7',
        'verify_every = 10',
        'scrub_percent = 2.5',
        'scrub_every = 1w',
        'pre = virsh domfsfreeze vm1',
        'post = virsh domfsthaw vm1',
        'on_failure = "logger -t backy failed; exit 0"',
        'name = vm1-disk',
        '[job web.2]',
        'source = rbd:rbd/ns/web2',
        '[job q]',
        'source = qcow2:images/q.qcow2',
        '[job f]',
        'source = file:/srv/f.img',
        '[job n]',
        'source = nbd:nbd+unix:///x?socket=/run/x.sock',
      ].join('\n'),
    );
    assert.deepEqual(c.scheduler, {
      maxParallel: 3,
      cleanupEvery: 86400,
      metricsFile: '/etc/backy/metrics/backy.prom',
      listen: { host: '127.0.0.1', port: 9100 },
    });
    assert.deepEqual(
      c.jobs.map((j) => j.job),
      ['vm1', 'web.2', 'q', 'f', 'n'],
    );
    const [vm1, web, q, f, n] = c.jobs;
    assert.deepEqual(vm1, {
      job: 'vm1',
      name: 'vm1-disk',
      source: { kind: 'rbd', pool: 'rbd', image: 'vm1' },
      sourceText: 'rbd:rbd/vm1',
      every: 86400,
      retention: { latest: 3, days: 7, weeks: 4, months: 6 },
      retentionText: 'latest3,days7,weeks4,months6',
      labels: { env: 'prod', owner: 'ops' },
      protectEvery: 7,
      verifyEvery: 10,
      scrubPercent: 2.5,
      scrubEvery: 604800,
      pre: 'virsh domfsfreeze vm1',
      post: 'virsh domfsthaw vm1',
      onFailure: 'logger -t backy failed; exit 0',
    });
    assert.deepEqual(web.source, { kind: 'rbd', pool: 'rbd', namespace: 'ns', image: 'web2' });
    assert.equal(web.name, 'web.2');
    assert.deepEqual(q.source, { kind: 'qcow2', path: '/etc/backy/images/q.qcow2' });
    assert.deepEqual(f.source, { kind: 'file', path: '/srv/f.img' });
    assert.deepEqual(n.source, { kind: 'nbd', uri: 'nbd+unix:///x?socket=/run/x.sock' });
    assert.equal(n.every, undefined);
  });

  it('defaults: no jobs, 2 in parallel, listen on loopback', () => {
    const c = parse('[DEFAULTS]\nblock_size = 4096\n');
    assert.deepEqual(c.jobs, []);
    assert.deepEqual(c.scheduler, { maxParallel: 2, listen: { host: '127.0.0.1', port: 9750 } });
    assert.deepEqual(parse('[scheduler]\nlisten = 9101\n').scheduler.listen, {
      host: '127.0.0.1',
      port: 9101,
    });
    assert.deepEqual(parse('[scheduler]\nlisten = [::1]:9101\n').scheduler.listen, {
      host: '::1',
      port: 9101,
    });
    assert.deepEqual(parse('[scheduler]\nlisten = unix:/run/backy.sock\n').scheduler.listen, {
      socket: '/run/backy.sock',
    });
    assert.equal(parse('[scheduler]\nlisten = none\n').scheduler.listen, null);
  });

  it('refuses unknown keys, bad values and bad names, naming them', () => {
    bad('[job a]\nsource = rbd:p/i\nevry = 1d\n', /unknown key 'evry' in \[job a\]/);
    bad('[scheduler]\nworkers = 2\n', /unknown key 'workers' in \[scheduler\]/);
    bad('[job a]\nevery = 1d\n', /\[job a\] source is missing/);
    bad('[job a]\nsource = rbd:p\n', /\[job a\] source must be rbd:POOL\/IMAGE/);
    bad('[job a]\nsource = rbd:p/i@snap\n', /source must be rbd:POOL/);
    bad('[job a]\nsource = ceph:p/i\n', /source must be rbd:/);
    bad('[job a]\nsource = nbd:/dev/nbd0\n', /source must be nbd:URI/);
    bad('[job a]\nsource = file:\n', /needs a path/);
    bad('[job a]\nsource = rbd:p/i\nevery = 1month\n', /\[job a\] every must be a duration/);
    bad('[job a]\nsource = rbd:p/i\nevery = 0h\n', /every must be a duration/);
    bad(
      '[job a]\nsource = rbd:p/i\nretention = latest3,days\n',
      /\[job a\] retention: retention rule "days"/,
    );
    bad('[job a]\nsource = rbd:p/i\nlabels = env\n', /\[job a\] labels: label "env" is not KEY=VALUE/);
    bad(
      '[job a]\nsource = rbd:p/i\nprotect_every = 0\n',
      /protect_every must be a whole number of at least 1/,
    );
    bad('[job a]\nsource = rbd:p/i\nverify_every = x\n', /verify_every must be a whole number/);
    bad(
      '[job a]\nsource = rbd:p/i\nscrub_percent = 101\nscrub_every = 1d\n',
      /scrub_percent must be a number above 0/,
    );
    bad('[job a]\nsource = rbd:p/i\nscrub_percent = 5\n', /scrub_percent needs scrub_every/);
    bad('[job a]\nsource = rbd:p/i\npre =\n', /\[job a\] pre is empty/);
    bad('[job a]\nsource = rbd:p/i\nname = two words\n', /\[job a\] name must be/);
    bad('[job a b]\nsource = rbd:p/i\n', /a job name may hold only/);
    bad('[job a]\nsource = rbd:p/i\n[job a]\nsource = rbd:p/j\n', /\[job a\] is given twice/);
    bad('[scheduler]\nmax_parallel = 0\n', /max_parallel must be a whole number from 1 to 256/);
    bad('[scheduler]\nlisten = localhost\n', /listen must be PORT/);
    bad('[scheduler]\nlisten = 70000\n', /listen must be PORT/);
    bad('[jobs]\nx = 1\n', /unknown section \[jobs\].*\[job NAME\]/);
  });

  it('durations', () => {
    assert.equal(parseDurationSeconds('30m'), 1800);
    assert.equal(parseDurationSeconds('6h'), 21600);
    assert.equal(parseDurationSeconds('1d'), 86400);
    assert.equal(parseDurationSeconds('1w'), 604800);
    assert.equal(parseDurationSeconds('1h30m'), 5400);
    assert.equal(parseDurationSeconds('20s'), 20);
    for (const t of ['', '1', 'h', '1.5h', '1 h', '-1h', '1y', '0s'])
      assert.equal(parseDurationSeconds(t), undefined, t);
    assert.equal(formatDuration(5400), '1h30m');
    assert.equal(formatDuration(86400 * 8), '1w1d');
  });
});
