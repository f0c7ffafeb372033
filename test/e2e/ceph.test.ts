/**
 * Ceph RBD end to end against a real one-node cluster (test/lib/ceph.ts): the seed's workflow
 * (snapshots, `rbd diff` hints, `rbd export`), `rbd export-diff` streams as a source (pipe and
 * file, v1, and v2 as `rbd export --export-format 2` embeds it), and a restore piped into
 * `rbd import`. Every restore is compared byte for byte with `rbd export` of its snapshot.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { Ceph, cephMissing, q } from '../lib/ceph.js';
import { mixedKind, writeImage } from '../lib/image.js';

const MiB = 1024 * 1024;
const OBJ = 4 * MiB; // rbd's default object size
const BS = MiB; // backy's block size here: rbd objects span several blocks

const skip = cephMissing();

describe('Ceph RBD', { skip }, () => {
  let ceph: Ceph;
  let sb: Sandbox;
  before(async () => {
    ceph = await Ceph.start();
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => {
    await ceph?.destroy();
    await sb?.remove();
  });

  /** `rbd export` of a snapshot (or image) to a sandbox file; returns its path. */
  const rbdExport = async (spec: string, file: string) => {
    await ceph.sh(`rbd export --no-progress ${q(ceph.spec(spec))} ${q(sb.path(file))}`);
    return sb.path(file);
  };
  let restores = 0;
  const restoreAndCompare = async (uid: string, expected: string) => {
    const out = sb.path(`${uid}.${restores++}.restored`);
    await sb.ok(['restore', uid, out]);
    await assertSameBytes(expected, out);
  };
  const backyCmd = (args: string[]) => [process.execPath, BIN, '-c', sb.config, ...args].map(q).join(' ');
  const lastLine = (s: string) => s.trim().split('\n').pop()!;

  /** The changes between two snapshots: partial writes, a whole object discarded, more writes. */
  const change = (image: string) =>
    ceph.librbd(image, [
      { op: 'write', offset: MiB + 12345, length: 300_000, seed: 1 }, // inside a block
      { op: 'write', offset: 3 * MiB - 1000, length: 5000, seed: 2 }, // across a block boundary
      { op: 'discard', offset: 2 * OBJ, length: OBJ }, // a whole rbd object
      { op: 'write', offset: 4 * OBJ + 7, length: 100, seed: 3 }, // again, after the discard
    ]);

  test('the seed workflow: rbd diff hints, rbd export, incremental backup, restore into a new image', async (t) => {
    t.diagnostic(`mini-ceph cluster started in ${ceph.startSeconds.toFixed(1)} s`);
    const img = sb.path('vm1.img');
    await writeImage(img, { blocks: 20, blockSize: MiB, seed: 'vm1', kinds: mixedKind });
    await ceph.sh(`rbd import --no-progress ${q(img)} ${q(ceph.spec('vm1'))}`);
    await ceph.sh(`rbd snap create ${q(ceph.spec('vm1@backup1'))}`);
    const diff1 = (await ceph.sh(`rbd diff ${q(ceph.spec('vm1@backup1'))} --format=json`)).stdout;
    await writeFile(sb.path('vm1.diff1'), diff1);
    const snap1 = await rbdExport('vm1@backup1', 'vm1@backup1.img');
    await assertSameBytes(img, snap1);
    const uid1 = await sb.backup(['-r', sb.path('vm1.diff1'), '--snapshot-name', 'backup1', snap1, 'vm1']);
    await restoreAndCompare(uid1, snap1);

    await change('vm1');
    await ceph.sh(`rbd snap create ${q(ceph.spec('vm1@backup2'))}`);
    const diff2 = (await ceph.sh(`rbd diff --from-snap backup1 ${q(ceph.spec('vm1@backup2'))} --format=json`))
      .stdout;
    assert.match(diff2, /"exists":"false"/, 'the discarded object shows as exists:false');
    await writeFile(sb.path('vm1.diff2'), diff2);
    const snap2 = await rbdExport('vm1@backup2', 'vm1@backup2.img');
    const uid2 = await sb.backup([
      '-r',
      sb.path('vm1.diff2'),
      '-f',
      uid1,
      '--snapshot-name',
      'backup2',
      snap2,
      'vm1',
    ]);
    await restoreAndCompare(uid2, snap2);
    await restoreAndCompare(uid1, snap1); // the base is untouched

    // Restore into a new RBD image through a pipe, read it back with rbd export.
    await ceph.sh(
      `${backyCmd(['restore', uid2, '-'])} | rbd import --no-progress - ${q(ceph.spec('vm1-restored'))}`,
    );
    await assertSameBytes(snap2, await rbdExport('vm1-restored', 'vm1-restored.img'));

    const ls = parseLsMachine((await sb.ok(['-m', 'ls', 'vm1'])).stdout);
    assert.deepEqual(
      ls.map((v) => [v.uid, v.snapshotName, v.valid]),
      [
        [uid1, 'backup1', true],
        [uid2, 'backup2', true],
      ],
    );
  });

  test('rbd export-diff as a source: full, incremental through a pipe and from a file, resize', async () => {
    const img = sb.path('vm2.img');
    await writeImage(img, { blocks: 20, blockSize: MiB, tail: 4096, seed: 'vm2', kinds: mixedKind });
    await ceph.sh(`rbd import --no-progress ${q(img)} ${q(ceph.spec('vm2'))}`);
    await ceph.sh(`rbd snap create ${q(ceph.spec('vm2@backup1'))}`);

    // Full export-diff through a pipe: an initial backup.
    const full = await ceph.sh(
      `rbd export-diff --no-progress ${q(ceph.spec('vm2@backup1'))} - | ${backyCmd(['backup', '--rbd-export-diff', '-', 'vm2@backup1'])}`,
    );
    const uid1 = lastLine(full.stdout);
    await restoreAndCompare(uid1, await rbdExport('vm2@backup1', 'vm2@backup1.img'));

    // The README's pipe: incremental export-diff onto the backup of backup1.
    await change('vm2');
    await ceph.sh(`rbd snap create ${q(ceph.spec('vm2@backup2'))}`);
    const inc = await ceph.sh(
      `rbd export-diff --no-progress --from-snap backup1 ${q(ceph.spec('vm2@backup2'))} - | ` +
        backyCmd(['backup', '--rbd-export-diff', '-', '-f', uid1, 'vm2@backup2']),
    );
    const uid2 = lastLine(inc.stdout);
    await restoreAndCompare(uid2, await rbdExport('vm2@backup2', 'vm2@backup2.img'));

    // Grown to a size that is no multiple of the block size, written near the new end; from a file.
    await ceph.librbd('vm2', [
      { op: 'resize', size: 22 * MiB + 777 },
      { op: 'write', offset: 21 * MiB + 5, length: MiB, seed: 4 },
      { op: 'discard', offset: 0, length: OBJ },
    ]);
    await ceph.sh(`rbd snap create ${q(ceph.spec('vm2@backup3'))}`);
    await ceph.sh(
      `rbd export-diff --no-progress --from-snap backup2 ${q(ceph.spec('vm2@backup3'))} ${q(sb.path('vm2.diff3'))}`,
    );
    const uid3 = await sb.backup(['--rbd-export-diff', sb.path('vm2.diff3'), '-f', uid2, 'vm2@backup3']);
    await restoreAndCompare(uid3, await rbdExport('vm2@backup3', 'vm2@backup3.img'));

    // A diff from the wrong snapshot is refused and stores nothing.
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    const wrong = await sb.run([
      'backup',
      '--rbd-export-diff',
      sb.path('vm2.diff3'),
      '-f',
      uid1,
      'vm2@backup3',
    ]);
    assert.equal(wrong.code, 1, wrong.stderr);
    assert.match(
      wrong.stderr,
      /starts from snapshot 'backup2' but base .* is a backup of snapshot 'backup1'/,
    );
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);

    const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).filter((v) => v.name.startsWith('vm2'));
    assert.deepEqual(
      ls.map((v) => [v.uid, v.snapshotName, v.sizeBytes]),
      [
        [uid1, 'backup1', 20 * MiB + 4096],
        [uid2, 'backup2', 20 * MiB + 4096],
        [uid3, 'backup3', 22 * MiB + 777],
      ],
    );
  });

  test('a v2 diff, as rbd export --export-format 2 embeds it', async () => {
    const img = sb.path('vm3.img');
    await writeImage(img, { blocks: 6, blockSize: MiB, tail: 100, seed: 'vm3', kinds: mixedKind });
    await ceph.sh(`rbd import --no-progress ${q(img)} ${q(ceph.spec('vm3'))}`);
    const exported = sb.path('vm3.export2');
    await ceph.sh(`rbd export --no-progress --export-format 2 ${q(ceph.spec('vm3'))} ${q(exported)}`);
    // "rbd image v2\n", tagged metadata records (tag, le64 length, data) up to 'E', then
    // "rbd image diffs v2\n", an le64 count of diffs and the diffs: with no snapshots, one
    // full v2 diff of the head.
    const buf = await readFile(exported);
    assert.equal(buf.subarray(0, 13).toString('latin1'), 'rbd image v2\n');
    let pos = 13;
    while (buf[pos] !== 0x45 /* 'E' */) pos += 1 + 8 + Number(buf.readBigUInt64LE(pos + 1));
    pos += 1;
    const diffsHeader = 'rbd image diffs v2\n';
    assert.equal(buf.subarray(pos, pos + diffsHeader.length).toString('latin1'), diffsHeader);
    pos += diffsHeader.length;
    assert.equal(buf.readBigUInt64LE(pos), 1n);
    const diff = buf.subarray(pos + 8);
    assert.equal(diff.subarray(0, 12).toString('latin1'), 'rbd diff v2\n');
    await writeFile(sb.path('vm3.diff'), diff);
    const uid = await sb.backup(['--rbd-export-diff', sb.path('vm3.diff'), '--snapshot-name', 'head', 'vm3']);
    await restoreAndCompare(uid, await rbdExport('vm3', 'vm3.head.img'));
  });
});
