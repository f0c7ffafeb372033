/**
 * The CLI contract as the README documents it: usage exit codes, the `ls -m` field layout
 * (read by position, as `cut -d' ' -f7` or awk would), the table's empty-snapshot cell, and
 * quiet by default: INFO lines on stderr only with -v.
 */
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, runBacky } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { objectPath } from '../lib/store.js';
import { versionChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;

describe('CLI contract', () => {
  let sb: Sandbox;
  let img: string;
  let uid: string;
  let snapUid: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 5, blockSize: BS, tail: 100, kinds: () => 'random', seed: 'contract' });
    uid = await sb.backup([img, 'vm1']);
    snapUid = await sb.backup(['--snapshot-name', 'snap1', img, 'vm2']);
  });
  after(() => sb.remove());

  it('no command is a usage error: exit 2, help on stderr, nothing on stdout', async () => {
    const r = await runBacky([]);
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /Usage: backy/);
  });

  it('asking for help is not an error', async () => {
    for (const args of [['--help'], ['help'], ['ls', '--help']]) {
      const r = await runBacky(args);
      assert.equal(r.code, 0, `backy ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stdout, /Usage: backy/);
    }
  });

  it('an unknown command or option is a usage error (exit 2)', async () => {
    assert.equal((await runBacky(['frobnicate'])).code, 2);
    assert.equal((await sb.run(['ls', '--frobnicate'])).code, 2);
  });

  it('ls -m: fields by position as the README numbers them', async () => {
    const r = await sb.ok(['-m', 'ls']);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    for (const line of lines) {
      const f = line.split(' ');
      assert.equal(f.length, 11, line);
      assert.equal(f[0], 'version'); // field 1
      assert.match(f[1], /^\d{4}-\d{2}-\d{2}$/); // field 2: DATE (UTC)
      assert.match(f[2], /^\d{2}:\d{2}:\d{2}\.\d{6}$/); // field 3: TIME (UTC, microseconds)
      assert.equal(f[4], '6', 'field 5: SIZE in blocks (5 blocks and a 100-byte tail)');
      assert.equal(f[5], String(5 * BS + 100), 'field 6: SIZE_BYTES');
      assert.ok([uid, snapUid].includes(f[6]), 'field 7: UID');
      assert.equal(f[7], '1', 'field 8: VALID');
      const when = Date.parse(`${f[1]}T${f[2].slice(0, 12)}Z`);
      assert.ok(Math.abs(Date.now() - when) < 10 * 60_000, `the date is UTC: ${f[1]} ${f[2]}`);
    }
    const byUid = new Map(lines.map((l) => [l.split(' ')[6], l.split(' ')]));
    assert.equal(byUid.get(uid)![3], 'vm1', 'field 4: NAME');
    assert.equal(byUid.get(uid)![8], '-', 'field 9: SNAPSHOT, - when none');
    assert.equal(byUid.get(snapUid)![8], 'snap1');
    assert.equal(byUid.get(uid)![9], '0', 'field 10: PROTECTED');
    assert.equal(byUid.get(uid)![10], '-', 'field 11: LABELS, - when none');
  });

  it('ls (table) shows - for a version without a snapshot, like ls -m', async () => {
    const r = await sb.ok(['ls', 'vm1']);
    const row = r.stdout.split('\n').find((l) => l.includes(uid));
    assert.ok(row, r.stdout);
    const cells = row.split('│').map((c) => c.trim());
    assert.equal(cells[3], '-', row); // date, name, snapshot, ...
    await sb.ok(['restore', uid, sb.path('out.img')]);
    await assertSameBytes(img, sb.path('out.img'));
  });
});

describe('quiet by default (cron mails carry only warnings and errors)', () => {
  let sb: Sandbox;
  let img: string;
  let logfile: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    logfile = sb.path('backy.log');
    const cfg = await readFile(sb.config, 'utf8');
    await writeFile(sb.config, cfg.replace('[DEFAULTS]\n', `[DEFAULTS]\nlogfile = ${logfile}\n`));
    img = sb.path('disk.img');
    await writeImage(img, {
      blocks: 6,
      blockSize: BS,
      kinds: (i) => (i % 3 ? 'random' : 'zero'),
      seed: 'quiet',
    });
  });
  after(() => sb.remove());

  it('backup, ls and restore print nothing on stderr without -v; the log file has their lines', async () => {
    const b = await sb.ok(['backup', img, 'vm']);
    const uid = b.stdout.trim().split('\n').pop()!;
    const out = sb.path('quiet.img');
    for (const r of [b, await sb.ok(['ls']), await sb.ok(['restore', uid, out])]) {
      assert.equal(r.stderr, '', 'nothing on stderr');
    }
    await assertSameBytes(img, out);
    const log = await readFile(logfile, 'utf8');
    assert.match(log, /INFO: \$ backy .*backup/);
    assert.match(log, /INFO: Backy complete\./);
  });

  it('with -v they print the start line, their summary and "Backy complete." last', async () => {
    const b = await sb.ok(['-v', 'backup', img, 'vm']);
    const uid = b.stdout.trim().split('\n').pop()!;
    const out = sb.path('verbose.img');
    const runs = [b, await sb.ok(['-v', 'ls']), await sb.ok(['-v', 'restore', uid, out])];
    for (const r of runs) {
      assert.match(r.stderr, /^ {4}INFO: \$ backy /m);
      assert.match(r.stderr, / {4}INFO: Backy complete\.\n$/);
    }
    assert.match(runs[0].stderr, /INFO: Backed up /);
    assert.match(runs[2].stderr, /INFO: Restored /);
    await assertSameBytes(img, out);
  });

  it('cleanup is quiet too; its --dry-run shows its summary without -v (that is what was asked)', async () => {
    const dry = await sb.ok(['cleanup', '--dry-run']);
    assert.match(dry.stderr, /^ {4}INFO: Cleanup \(dry run\): \d+ objects .* would be freed/m);
    assert.doesNotMatch(dry.stderr, /\$ backy|Backy complete/);
    assert.equal((await sb.ok(['cleanup'])).stderr, '');
  });

  it('errors still reach stderr without -v', async () => {
    const uid = (await sb.ok(['-m', 'ls'])).stdout.split('\n')[0].split(' ')[6];
    const [checksum] = await versionChecksums(sb.dbPath, uid);
    await rm(objectPath(sb, checksum));
    const r = await sb.run(['restore', uid, sb.path('damaged.img')]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /^ {3}ERROR: block \d+: .*missing.*; written as zeros$/m);
    assert.doesNotMatch(r.stderr, /INFO:/);
  });
});
