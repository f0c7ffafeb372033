/**
 * `backup --rbd-export-diff` end to end with streams built by the encoder (no Ceph needed):
 * full and incremental diffs, partial blocks patched onto the base, zeros, resizes, pipes and
 * files, and strict rejection of bad streams. ceph.test.ts runs the same against real rbd output.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { encodeExportDiff } from '../../src/source/rbd-export-diff.js';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';

const BS = 64 * 1024;

type Rec = Parameters<typeof encodeExportDiff>[1][number];

/** Applies records to a model image, as rbd import-diff would. */
function applyModel(image: Buffer, size: number, recs: Rec[]): Buffer {
  const out = Buffer.alloc(size);
  image.copy(out, 0, 0, Math.min(size, image.length));
  for (const r of recs) {
    if (r.tag === 'w') r.data.copy(out, r.offset);
    else if (r.tag === 'z') out.fill(0, r.offset, r.offset + r.length);
  }
  return out;
}

describe('backup --rbd-export-diff', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => {
    await sb.remove();
  });

  const restoreAndCompare = async (uid: string, expected: Buffer, name: string) => {
    const path = sb.path(`${name}.expected`);
    await writeFile(path, expected);
    await sb.ok(['restore', uid, sb.path(`${name}.restored`)]);
    await assertSameBytes(path, sb.path(`${name}.restored`));
  };

  test('full diff, then incremental diffs with partial blocks, zeros and resizes (v1 and v2)', async () => {
    // Full diff of a 10.5-block image: data with holes, a write ending mid-block.
    const size0 = 10 * BS + 1000;
    const full: Rec[] = [
      { tag: 't', name: 'snap1' },
      { tag: 's', size: size0 },
      { tag: 'w', offset: 0, data: randomBytesSeeded('a', 3 * BS + 100) },
      { tag: 'w', offset: 5 * BS, data: randomBytesSeeded('b', 2 * BS) },
      { tag: 'w', offset: 9 * BS + 17, data: randomBytesSeeded('c', BS + 983) },
      { tag: 'e' },
    ];
    const img0 = applyModel(Buffer.alloc(0), size0, full);
    const uid0 = await sb.backup(['--rbd-export-diff', '-', 'vm1@snap1'], {
      input: encodeExportDiff(1, full),
    });
    await restoreAndCompare(uid0, img0, 'v0');

    // Incremental (v1, from a file): partial writes inside and across blocks, a whole-block
    // zero, a partial zero, a write that fully covers a block from two records.
    const inc1: Rec[] = [
      { tag: 'f', name: 'snap1' },
      { tag: 't', name: 'snap2' },
      { tag: 's', size: size0 },
      { tag: 'w', offset: 100, data: randomBytesSeeded('d', 50) },
      { tag: 'w', offset: 2 * BS - 10, data: randomBytesSeeded('e', 20) },
      { tag: 'z', offset: 3 * BS, length: BS },
      { tag: 'z', offset: 5 * BS + 5, length: 10 },
      { tag: 'w', offset: 6 * BS, data: randomBytesSeeded('f', 100) },
      { tag: 'w', offset: 6 * BS + 100, data: randomBytesSeeded('g', BS - 100) },
      { tag: 'w', offset: 10 * BS, data: randomBytesSeeded('h', 1000) },
      { tag: 'e' },
    ];
    const img1 = applyModel(img0, size0, inc1);
    await writeFile(sb.path('inc1.diff'), encodeExportDiff(1, inc1));
    const uid1 = await sb.backup(['--rbd-export-diff', sb.path('inc1.diff'), '-f', uid0, 'vm1@snap2']);
    await restoreAndCompare(uid1, img1, 'v1');

    // v2, the image grew to a size that is not a multiple of the block size: the old short
    // last block is extended with zeros, new blocks start as zeros.
    const size2 = 13 * BS + 7;
    const inc2: Rec[] = [
      { tag: 'f', name: 'snap2' },
      { tag: 't', name: 'snap3' },
      { tag: 'p', status: 0 },
      { tag: 's', size: size2 },
      { tag: 'w', offset: 12 * BS + 3, data: randomBytesSeeded('i', BS + 4) },
      { tag: 'e' },
    ];
    const img2 = applyModel(img1, size2, inc2);
    const uid2 = await sb.backup(['--rbd-export-diff', '-', '-f', uid1, 'vm1@snap3'], {
      input: encodeExportDiff(2, inc2),
    });
    await restoreAndCompare(uid2, img2, 'v2');

    // Shrunk mid-block, with no records at all.
    const size3 = 4 * BS + 5;
    const inc3: Rec[] = [
      { tag: 'f', name: 'snap3' },
      { tag: 't', name: 'snap4' },
      { tag: 's', size: size3 },
      { tag: 'e' },
    ];
    const uid3 = await sb.backup(['--rbd-export-diff', '-', '-f', uid2, 'vm1@snap4'], {
      input: encodeExportDiff(1, inc3),
    });
    await restoreAndCompare(uid3, applyModel(img2, size3, inc3), 'v3');

    const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    assert.deepEqual(
      ls.map((v) => [v.uid, v.snapshotName, v.sizeBytes, v.valid]),
      [
        [uid0, 'snap1', size0, true],
        [uid1, 'snap2', size0, true],
        [uid2, 'snap3', size2, true],
        [uid3, 'snap4', size3, true],
      ],
    );
    // What each version's change tracking is relative to: the stream's snapshots.
    const tracking = new Map(
      (JSON.parse((await sb.ok(['--json', 'ls'])).stdout) as { uid: string; tracking: unknown }[]).map(
        (v) => [v.uid, v.tracking],
      ),
    );
    assert.deepEqual(tracking.get(uid0), { kind: 'rbd-export-diff', snapshot: 'snap1', base_snapshot: null });
    assert.deepEqual(tracking.get(uid2), {
      kind: 'rbd-export-diff',
      snapshot: 'snap3',
      base_snapshot: 'snap2',
    });
    // A base of another image is refused here too (one line, nothing recorded).
    const other = await sb.run(['--json', 'backup', '--rbd-export-diff', '-', '-f', uid3, 'vm2@snap5'], {
      input: encodeExportDiff(1, [
        { tag: 'f', name: 'snap4' },
        { tag: 't', name: 'snap5' },
        { tag: 's', size: size3 },
        { tag: 'e' },
      ]),
    });
    assert.equal(other.code, 1, other.stderr);
    assert.match(other.stderr, /ERROR: base .* is a backup of 'vm1@snap4', another image than 'vm2@snap5'/);
    assert.equal(parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).length, 4);
    assert.match((await sb.ok(['ls'])).stdout, /snapshot[\s\S]*snap3/);
  });

  test('bad streams and wrong bases are refused and leave the store unchanged', async () => {
    const base = await sb.backup(['--rbd-export-diff', '-', 'vm2@s1'], {
      input: encodeExportDiff(1, [{ tag: 't', name: 's1' }, { tag: 's', size: BS }, { tag: 'e' }]),
    });
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    const inc = (from: string, extra: Rec[] = [{ tag: 'e' }]) =>
      encodeExportDiff(1, [
        { tag: 'f', name: from },
        { tag: 't', name: 's2' },
        { tag: 's', size: BS },
        ...extra,
      ]);
    const cases: [string[], Buffer, number, RegExp][] = [
      [[], inc('s1'), 2, /incremental \(from snapshot 's1'\): give -f UID/],
      [
        ['-f', base],
        encodeExportDiff(1, [{ tag: 's', size: BS }, { tag: 'e' }]),
        2,
        /full export-diff .* without -f/,
      ],
      [
        ['-f', base],
        inc('other'),
        1,
        /starts from snapshot 'other' but base .* is a backup of snapshot 's1'/,
      ],
      [['-f', base], inc('s1').subarray(0, 30), 1, /truncated/],
      [
        ['-f', base],
        inc('s1', [{ tag: 'w', offset: 10, data: Buffer.alloc(BS) }, { tag: 'e' }]),
        1,
        /past the end/,
      ],
      [
        ['-f', base],
        inc('s1', [{ tag: 'w', offset: 0, data: Buffer.alloc(10, 1) }]), // no end record: truncated mid-stream
        1,
        /truncated/,
      ],
      [['-f', base], Buffer.from('not a diff at all'), 1, /not an rbd export-diff stream/],
      [['-f', base, '--snapshot-name', 'x'], inc('s1'), 2, /differs from the export-diff's snapshot 's2'/],
      [['-r', 'hints.json'], inc('s1'), 2, /exclude each other/],
    ];
    for (const [args, input, code, pattern] of cases) {
      const r = await sb.run(['backup', '--rbd-export-diff', '-', ...args, 'vm2@s2'], { input });
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      const errors = r.stderr.split('\n').filter((l) => l.includes('ERROR'));
      assert.equal(errors.length, 1, r.stderr);
      assert.match(errors[0], pattern);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace without -v');
    }
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
  });

  test('a partial write onto a damaged base block fails; a whole-block overwrite needs no base', async () => {
    const own = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const size = 2 * BS;
      const full: Rec[] = [
        { tag: 't', name: 's1' },
        { tag: 's', size },
        { tag: 'w', offset: 0, data: randomBytesSeeded('dmg', size) },
        { tag: 'e' },
      ];
      const base = await own.backup(['--rbd-export-diff', '-', 'd@s1'], { input: encodeExportDiff(1, full) });
      // Damage every stored object (flip its last byte): the store verifies on read.
      const { readdir, readFile: read, writeFile: write } = await import('node:fs/promises');
      // Objects only: meta/ holds the store's descriptor and metadata copies.
      const objects = (await readdir(own.dataDir, { recursive: true, withFileTypes: true })).filter(
        (e) => e.isFile() && /^[0-9a-f]{64}$/.test(e.name),
      );
      assert.equal(objects.length, 2);
      for (const o of objects) {
        const p = `${o.parentPath}/${o.name}`;
        const b = await read(p);
        b[b.length - 1] ^= 0xff;
        await write(p, b);
      }
      const before = (await own.ok(['-m', 'ls'])).stdout;
      const partial: Rec[] = [
        { tag: 'f', name: 's1' },
        { tag: 't', name: 's2' },
        { tag: 's', size },
        { tag: 'w', offset: 10, data: randomBytesSeeded('p', 10) },
        { tag: 'e' },
      ];
      const r = await own.run(['backup', '--rbd-export-diff', '-', '-f', base, 'd@s2'], {
        input: encodeExportDiff(1, partial),
      });
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /block 0 is damaged .* cannot be patched/);
      assert.equal((await own.ok(['-m', 'ls'])).stdout, before);

      // Overwriting both blocks wholly never reads the base.
      const whole: Rec[] = [
        ...partial.slice(0, 3),
        { tag: 'w', offset: 0, data: randomBytesSeeded('q', size) },
        { tag: 'e' },
      ];
      const uid = await own.backup(['--rbd-export-diff', '-', '-f', base, 'd@s2'], {
        input: encodeExportDiff(1, whole),
      });
      await writeFile(own.path('expected'), applyModel(Buffer.alloc(size), size, whole));
      await own.ok(['restore', uid, own.path('restored')]);
      await assertSameBytes(own.path('expected'), own.path('restored'));
    } finally {
      await own.remove();
    }
  });

  test('command line forms: SOURCE NAME still works, operands are checked', async () => {
    await writeFile(sb.path('plain.img'), randomBytesSeeded('plain', 2 * BS));
    const uid = await sb.backup(['--snapshot-name', 'mysnap', sb.path('plain.img'), 'plain']);
    const v = parseLsMachine((await sb.ok(['-m', 'ls', 'plain'])).stdout);
    assert.deepEqual(
      v.map((x) => [x.uid, x.snapshotName]),
      [[uid, 'mysnap']],
    );
    assert.match(v[0].line, / 1 mysnap( \S+)*$/, 'the snapshot comes after VALID');
    const usage: [string[], RegExp][] = [
      [['backup', sb.path('plain.img')], /missing required argument 'name'/],
      [['backup'], /missing required argument 'source'/],
      [['backup', '--rbd-export-diff', '-', sb.path('plain.img'), 'x'], /give only NAME/],
      [['backup', '--rbd-export-diff', '-'], /missing required argument 'name'/],
      [['backup', '--snapshot-name', 'a b', sb.path('plain.img'), 'x'], /without whitespace/],
    ];
    for (const [args, pattern] of usage) {
      const r = await sb.run(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, pattern);
    }
    const missing = await sb.run(['backup', '--rbd-export-diff', sb.path('nope.diff'), 'x']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /export-diff file .*nope\.diff does not exist/);
  });
});
