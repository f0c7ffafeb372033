/**
 * The CLI contract as the README documents it: usage exit codes, the `ls -m` field layout
 * (read by position, as `cut -d' ' -f7` or awk would), and the table's empty-snapshot cell.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, runBacky } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

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
