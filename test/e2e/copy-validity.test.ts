/**
 * Versions made or changed outside `backup` have correct metadata copies at once (issue 19
 * §4), and validity follows objects: `nbd -w` versions survive a database loss, damage met by
 * an NBD read is in the copy, and a repaired object (put back and verified by a scrub of any
 * version, or stored again by a backup) makes valid again every version whose only problem it
 * was, in the database and in the copies (a recover after a database loss agrees). Real
 * stores, the spawned CLI, real NBD clients (qemu-io, nbdcopy); every restore byte for byte.
 */
import assert from 'node:assert/strict';
import { copyFile, open, readFile, rm, writeFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { mustRun, nbdClientsMissing, run, servedImage, startServer } from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { objectPath } from '../lib/store.js';

const BS = 64 * 1024;

async function lsLines(sb: Sandbox): Promise<string> {
  return (await sb.ok(['-m', 'ls'])).stdout;
}

function validity(ls: string): Record<string, boolean> {
  return Object.fromEntries(parseLsMachine(ls).map((v) => [v.uid, v.valid]));
}

/** The database is lost: SQLite's files deleted, or the config pointed at a new PostgreSQL database. */
async function loseDatabase(sb: Sandbox, engine: string | undefined): Promise<void> {
  if (engine === undefined) {
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
  } else {
    const fresh = await pgDatabase('backy_copyval_new');
    const text = await readFile(sb.config, 'utf8');
    await writeFile(sb.config, text.replace(/^engine = .*$/m, `engine = ${fresh}`));
  }
  assert.equal((await lsLines(sb)).trim(), '', 'the database is empty');
}

/** The checksum of block `idx` of a version, from its export. */
async function checksumOf(sb: Sandbox, uid: string, idx: number): Promise<string> {
  const lines = (await sb.ok(['export', uid, '-'])).stdout.split('\n');
  return JSON.parse(lines[1 + idx]).checksum as string;
}

async function flipLastByte(path: string): Promise<void> {
  const b = await readFile(path);
  b[b.length - 1] ^= 0xff;
  await writeFile(path, b);
}

async function stopClean(srv: ServerHandle): Promise<void> {
  assert.equal(await srv.stop(), 0, srv.stderr());
}

describe('nbd: copies written at once', () => {
  const skip = nbdClientsMissing();
  const boxes: Sandbox[] = [];
  after(async () => {
    for (const sb of boxes) await sb.remove();
  });

  it(
    'an nbd -w version survives a database loss: recover brings it back, it restores byte for byte',
    { skip },
    async () => {
      const {
        sb,
        image,
        uid: base,
      } = await servedImage(undefined, {
        blocks: 12,
        blockSize: BS,
        seed: 'nbdw',
        kinds: (i) => (i % 4 === 3 ? 'zero' : 'random'),
      });
      boxes.push(sb);
      const expected = sb.path('expected.img');
      await copyFile(image, expected);
      const srv = await startServer(sb, ['-w']);
      try {
        await mustRun('qemu-io', [
          '-f',
          'raw',
          srv.uri(base),
          '-c',
          `write -P 0x5a ${2 * BS + 100} 3000`,
          '-c',
          `write -P 0xc3 ${3 * BS} ${BS}`,
          '-c',
          'flush',
        ]);
      } finally {
        await stopClean(srv);
      }
      const fh = await open(expected, 'r+');
      try {
        await fh.write(Buffer.alloc(3000, 0x5a), 0, 3000, 2 * BS + 100);
        await fh.write(Buffer.alloc(BS, 0xc3), 0, BS, 3 * BS);
      } finally {
        await fh.close();
      }
      const m = /new version ([0-9a-f-]{36}) .* is complete and valid/.exec(srv.stderr());
      assert.ok(m, srv.stderr());
      const before = await lsLines(sb);

      await loseDatabase(sb, undefined);
      await sb.ok(['recover']);
      assert.equal(await lsLines(sb), before, 'both versions are back as they were');
      await sb.ok(['restore', m[1], sb.path('new.out')]);
      await assertSameBytes(expected, sb.path('new.out'));
      await sb.ok(['restore', base, sb.path('base.out')]);
      await assertSameBytes(image, sb.path('base.out'));
    },
  );

  it('a version an NBD read found damaged comes back invalid after a database loss', { skip }, async () => {
    const { sb, uid } = await servedImage(undefined, {
      blocks: 6,
      blockSize: BS,
      seed: 'nbdr',
      kinds: () => 'random',
    });
    boxes.push(sb);
    await flipLastByte(objectPath(sb, await checksumOf(sb, uid, 2)));
    const srv = await startServer(sb);
    try {
      const copy = await run('nbdcopy', [srv.uri(uid), sb.path('read.out')]);
      assert.notEqual(copy.code, 0);
      assert.match(copy.stderr, /Input\/output error/);
    } finally {
      await stopClean(srv);
    }
    const before = await lsLines(sb);
    assert.equal(validity(before)[uid], false, 'the read marked it invalid');

    await loseDatabase(sb, undefined);
    const r = await sb.run(['-m', 'recover']);
    assert.ok(r.code === 0 || r.code === 3, r.stderr);
    assert.equal(await lsLines(sb), before, 'recovered invalid, as the database had it');
    assert.equal((await sb.run(['restore', uid, sb.path('bad.out')])).code, 3);
  });
});

describe('restore: damage in the copies', () => {
  let sb: Sandbox;
  after(async () => sb?.remove());

  it('two versions sharing an object a restore found damaged both come back invalid after a database loss', async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    const imgA = sb.path('a.img');
    const imgB = sb.path('b.img');
    await writeImage(imgA, { blocks: 3, blockSize: BS, seed: 'ra', kinds: () => 'random' });
    await writeImage(imgB, { blocks: 3, blockSize: BS, seed: 'rb', kinds: () => 'random' });
    const fh = await open(imgB, 'r+');
    try {
      await fh.write((await readFile(imgA)).subarray(BS, 2 * BS), 0, BS, BS);
    } finally {
      await fh.close();
    }
    const va = await sb.backup([imgA, 'vma']);
    const vb = await sb.backup([imgB, 'vmb']);
    assert.equal(await checksumOf(sb, vb, 1), await checksumOf(sb, va, 1));
    await flipLastByte(objectPath(sb, await checksumOf(sb, va, 1)));
    assert.equal((await sb.run(['restore', va, sb.path('a.out')])).code, 3);
    const before = await lsLines(sb);
    assert.deepEqual(validity(before), { [va]: false, [vb]: false });

    await loseDatabase(sb, undefined);
    const r = await sb.run(['recover']);
    assert.ok(r.code === 0 || r.code === 3, r.stderr);
    assert.equal(await lsLines(sb), before);
  });
});

const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkipReason(), engine: () => pgDatabase('backy_copyval') },
];

for (const e of engines) {
  describe(`validity follows objects on ${e.name}`, { skip: e.skip }, () => {
    let sb: Sandbox;
    after(async () => sb?.remove());

    it('a shared object damaged, then repaired: scrub of one version (even -p) or a backup storing it again makes every version valid, copies included', async () => {
      const engine = await e.engine();
      sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
      // Three images whose block 0 is the same: one object shared by three versions.
      const imgA = sb.path('a.img');
      const imgB = sb.path('b.img');
      const imgC = sb.path('c.img');
      await writeImage(imgA, { blocks: 4, blockSize: BS, seed: 'a', kinds: () => 'random' });
      await writeImage(imgB, { blocks: 5, blockSize: BS, seed: 'b', kinds: () => 'random' });
      await writeFile(imgC, (await readFile(imgA)).subarray(0, BS));
      const fh = await open(imgB, 'r+');
      try {
        await fh.write((await readFile(imgA)).subarray(0, BS), 0, BS, 0);
      } finally {
        await fh.close();
      }
      const va = await sb.backup([imgA, 'vma']);
      const vb = await sb.backup([imgB, 'vmb']);
      const vc = await sb.backup([imgC, 'vmc']);
      const shared = await checksumOf(sb, va, 0);
      assert.equal(await checksumOf(sb, vb, 0), shared);
      assert.equal(await checksumOf(sb, vc, 0), shared);
      const obj = objectPath(sb, shared);
      const good = await readFile(obj);

      // Damage: one scrub marks all three invalid.
      await flipLastByte(obj);
      assert.equal((await sb.run(['scrub', va])).code, 3);
      assert.deepEqual(validity(await lsLines(sb)), { [va]: false, [vb]: false, [vc]: false });

      // Repaired by hand, confirmed by a partial scrub of another version: all valid again.
      await writeFile(obj, good);
      const s = await sb.run(['--json', 'scrub', '-p', '1', vc]);
      assert.equal(s.code, 0, s.stderr);
      assert.deepEqual(JSON.parse(s.stdout).versions_revalidated.sort(), [va, vb, vc].sort());
      const healed = await lsLines(sb);
      assert.deepEqual(validity(healed), { [va]: true, [vb]: true, [vc]: true });

      // Damaged again, then a backup meets the checksum and stores the object again.
      await flipLastByte(obj);
      assert.equal((await sb.run(['scrub', vb])).code, 3);
      assert.deepEqual(validity(await lsLines(sb)), { [va]: false, [vb]: false, [vc]: false });
      const vd = await sb.backup([imgA, 'vma']);
      const after = await lsLines(sb);
      assert.deepEqual(validity(after), { [va]: true, [vb]: true, [vc]: true, [vd]: true });
      assert.deepEqual(await readFile(obj), good, 'the object was stored again');

      // The copies say so: a recover after a database loss brings every version back valid.
      await loseDatabase(sb, engine);
      await sb.ok(['recover']);
      assert.equal(await lsLines(sb), after);
      for (const [uid, img] of [
        [va, imgA],
        [vb, imgB],
        [vc, imgC],
      ]) {
        await sb.ok(['restore', uid, sb.path(`${uid}.out`)]);
        await assertSameBytes(img, sb.path(`${uid}.out`));
      }
    });
  });
}
