/**
 * scrub end to end: real object files damaged on disk (a flipped byte, a truncated file, a
 * deleted file), found by the real CLI, recorded in the real SQLite file.
 */
import assert from 'node:assert/strict';
import { copyFile, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import { blockRows, objectPath, query } from '../lib/store.js';

const BS = 64 * 1024;
const BLOCKS = 16;

async function valid(sb: Sandbox): Promise<Map<string, boolean>> {
  const r = await sb.ok(['-m', 'ls']);
  return new Map(parseLsMachine(r.stdout).map((v) => [v.uid, v.valid]));
}

function invalidIdx(sb: Sandbox, uid: string): number[] {
  return blockRows(sb, uid)
    .filter((r) => r.valid === 0)
    .map((r) => r.idx);
}

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

describe('scrub', () => {
  let sb: Sandbox;
  let a: string, b: string, c: string;
  let imgA: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    imgA = sb.path('a.img');
    await writeImage(imgA, {
      blocks: BLOCKS,
      blockSize: BS,
      seed: 'a',
      kinds: (i) => (i % 5 === 4 ? 'zero' : 'random'),
    });
    // B shares every block with A except 0..2.
    await copyFile(imgA, sb.path('b.img'));
    await scribble(sb.path('b.img'), 0, 3 * BS, 'b');
    await writeImage(sb.path('c.img'), { blocks: 4, blockSize: BS, seed: 'c', kinds: () => 'random' });
    a = await sb.backup([imgA, 'vm-a']);
    b = await sb.backup([sb.path('b.img'), 'vm-b']);
    c = await sb.backup([sb.path('c.img'), 'vm-c']);
  });
  after(() => sb.remove());

  it('a clean store scrubs clean, fully, partially and deep', async () => {
    const r = await sb.run(['-m', 'scrub', a]);
    assert.equal(r.code, 0, r.stderr);
    // scrub UID CHECKED BAD DIFFERING VERSIONS_AFFECTED REVALIDATED
    assert.equal(r.stdout.trim(), `scrub ${a} ${BLOCKS} 0 0 0 0`);
    const p = await sb.run(['-m', 'scrub', '-p', '1', a]);
    assert.equal(p.code, 0, p.stderr);
    const checked = Number(p.stdout.trim().split(' ')[2]);
    assert.ok(checked >= 1 && checked <= BLOCKS, `a partial scrub checks at least one block, got ${checked}`);
    assert.equal((await sb.run(['scrub', '-s', imgA, a])).code, 0);
  });

  it('rejects bad PERCENT, unknown uids and a source of another size, with one line', async () => {
    for (const p of ['0', '101', 'abc', '-5', '']) {
      const r = await sb.run(['scrub', '-p', p, a]);
      assert.equal(r.code, 2, `-p '${p}': ${r.stderr}`);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
    }
    const missing = await sb.run(['scrub', '00000000-0000-4000-8000-000000000000']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /not found/);
    const wrongSize = await sb.run(['scrub', '-s', sb.path('c.img'), a]);
    assert.equal(wrongSize.code, 1);
    assert.equal(errorLines(wrongSize.stderr).length, 1);
    assert.doesNotMatch(wrongSize.stderr, /\n\s+at /);
  });

  it('deep scrub reports a differing source (sparse blocks included) without invalidating', async () => {
    const changed = sb.path('a-changed.img');
    await copyFile(imgA, changed);
    await scribble(changed, 2 * BS + 100, 10, 'x'); // a stored block
    await scribble(changed, 4 * BS + 7, 3, 'y'); // block 4 is sparse in A
    const r = await sb.run(['-m', 'scrub', '-s', changed, a]);
    assert.equal(r.code, 3, r.stderr);
    assert.equal(r.stdout.trim(), `scrub ${a} ${BLOCKS} 0 2 0 0`);
    assert.match(r.stderr, /block 2: differs/);
    assert.match(r.stderr, /block 4: differs/);
    assert.equal((await valid(sb)).get(a), true);
    assert.deepEqual(invalidIdx(sb, a), []);
  });

  it('finds flipped, truncated and deleted objects and marks exactly those blocks and versions', async () => {
    const rowsA = blockRows(sb, a);
    const rowsB = blockRows(sb, b);
    const flipped = rowsA[0].checksum!; // only in A
    const truncated = rowsA[5].checksum!; // in A and B
    const deleted = rowsB[1].checksum!; // only in B
    assert.equal(rowsB[5].checksum, truncated);
    assert.ok(!rowsB.some((r) => r.checksum === flipped));
    assert.ok(!rowsA.some((r) => r.checksum === deleted));

    const fh = await open(objectPath(sb, flipped), 'r+');
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, 1000);
    one[0] ^= 0x40;
    await fh.write(one, 0, 1, 1000);
    await fh.close();
    await truncate(objectPath(sb, truncated), 1000);
    await rm(objectPath(sb, deleted));

    const ra = await sb.run(['-m', 'scrub', a]);
    assert.equal(ra.code, 3, ra.stderr);
    assert.equal(ra.stdout.trim(), `scrub ${a} ${BLOCKS} 2 0 2 0`);
    assert.match(ra.stderr, /block 0: .*checksum mismatch/);
    assert.match(ra.stderr, /block 5: .*holds 984 bytes/);
    assert.deepEqual(invalidIdx(sb, a), [0, 5]);
    assert.deepEqual(invalidIdx(sb, b), [5]); // shares the truncated object
    let v = await valid(sb);
    assert.deepEqual([v.get(a), v.get(b), v.get(c)], [false, false, true]);

    const rb = await sb.run(['-m', 'scrub', b]);
    assert.equal(rb.code, 3, rb.stderr);
    assert.equal(rb.stdout.trim(), `scrub ${b} ${BLOCKS} 2 0 2 0`); // block 5 is A's too
    assert.match(rb.stderr, /block 1: .*missing/);
    assert.deepEqual(invalidIdx(sb, b), [1, 5]);
    assert.deepEqual(invalidIdx(sb, a), [0, 5]);
    const objs = query<{ checksum: string; valid: number }>(
      sb,
      'SELECT checksum, valid FROM objects WHERE valid = 0',
    );
    assert.deepEqual(objs.map((o) => o.checksum).sort(), [deleted, flipped, truncated].sort());

    assert.equal((await sb.run(['scrub', c])).code, 0);
    v = await valid(sb);
    assert.deepEqual([v.get(a), v.get(b), v.get(c)], [false, false, true]);

    // An invalid version is no base.
    const fromA = await sb.run(['backup', '-f', a, imgA, 'vm-a2']);
    assert.equal(fromA.code, 1);
    assert.match(fromA.stderr, /invalid and cannot be the base/);

    // Restore still writes the whole image: bad blocks as zeros, the rest exact.
    const out = sb.path('a-restored.img');
    const rr = await sb.run(['restore', a, out]);
    assert.equal(rr.code, 3, rr.stderr);
    const expected = await readFile(imgA);
    expected.fill(0, 0, BS);
    expected.fill(0, 5 * BS, 6 * BS);
    await writeFile(sb.path('a-expected.img'), expected);
    await assertSameBytes(sb.path('a-expected.img'), out);
  });

  it('a backup storing the damaged objects again makes the version valid again (validity follows objects)', async () => {
    // Backing up the same image again stores the damaged objects anew (invalid objects are
    // never dedup targets); A's only problem was those objects, so A is valid again at once,
    // without a scrub of its own.
    await sb.backup([imgA, 'vm-a-again']);
    assert.deepEqual(invalidIdx(sb, a), []);
    assert.equal((await valid(sb)).get(a), true);

    // A full scrub finds it clean and has nothing left to revalidate.
    const full = await sb.run(['-m', 'scrub', a]);
    assert.equal(full.code, 0, full.stderr);
    assert.equal(full.stdout.trim(), `scrub ${a} ${BLOCKS} 0 0 0 0`);
    const out = sb.path('a-restored-2.img');
    await sb.ok(['restore', a, out]);
    await assertSameBytes(imgA, out);

    // B still misses its own object: it stays invalid.
    assert.equal((await sb.run(['scrub', b])).code, 3);
    assert.equal((await valid(sb)).get(b), false);
  });
});
