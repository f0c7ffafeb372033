/**
 * An object file deleted behind backy's back (an operator's mistake, a damaged file system)
 * while its row still says valid: the next backup of the same data must not dedup against
 * it, or it would record a valid version that cannot be restored.
 */
import assert from 'node:assert/strict';
import { readFile, rm, stat } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { blockRows, objectPath, query } from '../lib/store.js';

const BS = 64 * 1024;
const BLOCKS = 12;

describe('a dedup hit whose object file is gone', () => {
  let sb: Sandbox;
  let img: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: BLOCKS, blockSize: BS, seed: 'gone', kinds: () => 'random' });
  });
  after(() => sb.remove());

  it('is stored again: the new version is valid and restores byte for byte', async () => {
    const first = await sb.backup([img, 'vm']);
    const victim = blockRows(sb, first)[5].checksum!;
    const path = objectPath(sb, victim);
    const storedSize = (await stat(path)).size;
    await rm(path);

    const second = await sb.backup([img, 'vm']);
    const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    assert.equal(ls.find((v) => v.uid === second)?.valid, true, 'the new version is valid');
    assert.equal((await stat(path)).size, storedSize, 'the object file is back, whole');
    assert.deepEqual(query(sb, 'SELECT stored_size, valid FROM objects WHERE checksum = ?', victim), [
      { stored_size: storedSize, valid: 1 },
    ]);

    const out = sb.path('second.img');
    const r = await sb.run(['restore', second, out]);
    assert.equal(r.code, 0, r.stderr);
    await assertSameBytes(img, out);

    // The first version names the same object, which is whole again: it restores and scrubs clean.
    const outFirst = sb.path('first.img');
    const r1 = await sb.run(['restore', first, outFirst]);
    assert.equal(r1.code, 0, r1.stderr);
    await assertSameBytes(img, outFirst);
    const s = await sb.run(['-m', 'scrub', first]);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stdout.trim(), `scrub ${first} ${BLOCKS} 0 0 0 0`);
  });

  it('the stats count the re-stored block as stored, not deduplicated', async () => {
    const uid = await sb.backup([img, 'vm']);
    const victim = blockRows(sb, uid)[0].checksum!;
    await rm(objectPath(sb, victim));
    const r = await sb.ok(['-v', 'backup', img, 'vm']);
    assert.match(r.stderr, /1 stored \(.*\), 11 deduplicated/, r.stderr);
    assert.ok((await readFile(objectPath(sb, victim))).length > BS, 'object file present');
  });
});
