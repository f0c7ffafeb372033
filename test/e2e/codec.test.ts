/**
 * Compression and encryption end to end, through the real CLI on real files: key files,
 * encrypted stores (nothing of the image readable in any file of the store, names keyed per
 * store), tampering of every part of an encrypted object found by scrub and restore, wrong and
 * missing keys refused with nothing written, and stores whose objects mix codecs.
 */
import assert from 'node:assert/strict';
import { copyFile, open, readFile, readdir, rename, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encodeExportDiff } from '../../src/source/rbd-export-diff.js';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { blockRows, dumpDb, objectFiles, objectPath } from '../lib/store.js';

const BS = 64 * 1024;
const MARKER = 'BACKY-SECRET-MARKER-7f3a9c';

/** A sandbox whose [DataBackend] also holds `extra` lines (compression, encryption, key_file). */
async function sandbox(extra: string): Promise<Sandbox> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  await setData(sb, extra);
  return sb;
}

async function setData(sb: Sandbox, extra: string): Promise<void> {
  const text = await readFile(sb.config, 'utf8');
  await writeFile(
    sb.config,
    `${text.replace(/\n\[DataBackend\][^]*$/, '')}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\n${extra}\n`,
  );
}

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

/** An image of random and text blocks with MARKER planted in every block. */
async function markedImage(path: string, blocks: number, seed: string): Promise<void> {
  await writeImage(path, { blocks, blockSize: BS, seed, kinds: (i) => (i % 3 === 2 ? 'text' : 'random') });
  const fh = await open(path, 'r+');
  try {
    for (let i = 0; i < blocks; i++) await fh.write(Buffer.from(MARKER), 0, MARKER.length, i * BS + 100 + i);
  } finally {
    await fh.close();
  }
}

/** Every regular file under `dir`, recursively. */
async function allFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

async function filesContaining(files: string[], needle: string): Promise<string[]> {
  const hits = [];
  for (const f of files) if ((await readFile(f)).includes(Buffer.from(needle))) hits.push(f);
  return hits;
}

describe('backy key create', () => {
  let sb: Sandbox;
  before(async () => (sb = await Sandbox.create()));
  after(() => sb.remove());

  it('writes a 0600 key file, whatever the umask, and never overwrites one', async () => {
    const key = sb.path('k1.key');
    const r = await sb.run(['key', 'create', key]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await stat(key)).mode & 0o777, 0o600);
    const text = await readFile(key, 'utf8');
    const k = JSON.parse(text) as { key: string };
    assert.ok(!r.stderr.includes(k.key) && !r.stdout.includes(k.key), 'the key is never printed');
    const again = await sb.run(['key', 'create', key]);
    assert.equal(again.code, 1);
    assert.equal(errorLines(again.stderr).length, 1, again.stderr);
    assert.match(again.stderr, /exists/);
    assert.equal(await readFile(key, 'utf8'), text, 'unchanged');
  });
});

describe('encrypted store', () => {
  let sb: Sandbox;
  let key: string;
  let img: string;
  let uid: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    key = sb.path('store.key');
    await sb.ok(['key', 'create', key]);
    await setData(sb, `compression = zstd\nencryption = aes-256-gcm\nkey_file = ${key}`);
    img = sb.path('img');
    await markedImage(img, 12, 'enc');
    uid = await sb.backup([img, 'vm1']);
  });
  after(() => sb.remove());

  it('restores byte for byte, and no file of the store holds the marker or the key', async () => {
    await sb.ok(['restore', uid, sb.path('out')]);
    await assertSameBytes(img, sb.path('out'));
    const files = [
      ...(await allFiles(sb.dataDir)),
      ...(await allFiles(sb.dir)).filter((f) => f.includes('backy.sqlite')),
    ];
    assert.ok(files.some((f) => f.endsWith('backy.sqlite')));
    assert.ok(files.length > 12);
    assert.deepEqual(await filesContaining(files, MARKER), []);
    const k = (JSON.parse(await readFile(key, 'utf8')) as { key: string }).key;
    const raw = Buffer.from(k, 'base64');
    assert.deepEqual(await filesContaining(files, k), []);
    assert.deepEqual(await filesContaining(files, raw.toString('hex')), []);
    for (const f of files) assert.ok(!(await readFile(f)).includes(raw), `${f} holds the raw key`);
  });

  it('(the marker check can fail: a plaintext store without compression holds it)', async () => {
    const plain = await sandbox('compression = none');
    try {
      await plain.backup([img, 'vm1']);
      assert.ok((await filesContaining(await allFiles(plain.dataDir), MARKER)).length > 0);
    } finally {
      await plain.remove();
    }
  });

  it('a wrong key and a missing key file are refused with one line, nothing written', async () => {
    const other = sb.path('other.key');
    await sb.ok(['key', 'create', other]);
    const before = dumpDb(sb);
    const objects = (await objectFiles(sb)).sort();
    for (const [what, keyFile, msg] of [
      ['wrong key', other, /not this store's key/],
      ['missing key file', sb.path('nope.key'), /cannot read key file .*nope\.key/],
    ] as const) {
      await setData(sb, `encryption = aes-256-gcm\nkey_file = ${keyFile}`);
      for (const args of [
        ['backup', img, 'vm1'],
        ['restore', uid, sb.path(`out-${what}`)],
        ['scrub', uid],
        ['ls'],
      ]) {
        const r = await sb.run(args);
        assert.equal(r.code, 1, `${what}: ${args[0]}: ${r.stderr}`);
        assert.equal(errorLines(r.stderr).length, 1, r.stderr);
        assert.match(r.stderr, msg);
        assert.ok(!r.stderr.includes('    at '), 'no stack trace');
      }
      await assert.rejects(stat(sb.path(`out-${what}`)), /ENOENT/);
    }
    assert.equal(dumpDb(sb), before);
    assert.deepEqual((await objectFiles(sb)).sort(), objects);
    // A config without encryption on this store, and the key back.
    await setData(sb, '');
    const r = await sb.run(['ls']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /this store is encrypted: set encryption = aes-256-gcm/);
    await setData(sb, `encryption = aes-256-gcm\nkey_file = ${key}`);
    await sb.ok(['scrub', uid]);
  });

  it('encryption cannot be turned on for a plaintext store', async () => {
    const plain = await sandbox('');
    try {
      await plain.backup([img, 'vm1']);
      const before = dumpDb(plain);
      await setData(plain, `encryption = aes-256-gcm\nkey_file = ${key}`);
      const r = await plain.run(['backup', img, 'vm1']);
      assert.equal(r.code, 1);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, /created without encryption/);
      assert.equal(dumpDb(plain), before);
    } finally {
      await plain.remove();
    }
  });

  it('two stores with different keys share no object names (nor with a plaintext store)', async () => {
    const other = await Sandbox.create({ defaults: `block_size = ${BS}` });
    const plain = await sandbox('');
    try {
      await other.ok(['key', 'create', other.path('k')]);
      await setData(other, `encryption = aes-256-gcm\nkey_file = ${other.path('k')}`);
      await other.backup([img, 'vm1']);
      await plain.backup([img, 'vm1']);
      const mine = new Set(await objectFiles(sb));
      const theirs = await objectFiles(other);
      const plainNames = await objectFiles(plain);
      assert.equal(theirs.length, mine.size);
      assert.deepEqual(
        theirs.filter((n) => mine.has(n)),
        [],
      );
      assert.deepEqual(
        plainNames.filter((n) => mine.has(n)),
        [],
      );
    } finally {
      await other.remove();
      await plain.remove();
    }
  });
});

describe('tampered encrypted objects', () => {
  let sb: Sandbox;
  let img: string;
  let uid: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    await sb.ok(['key', 'create', sb.path('k')]);
    await setData(sb, `encryption = aes-256-gcm\nkey_file = ${sb.path('k')}`);
    img = sb.path('img');
    await writeImage(img, {
      blocks: 10,
      blockSize: BS,
      seed: 'tamper',
      kinds: (i) => (i === 9 ? 'zero' : 'random'),
    });
    uid = await sb.backup([img, 'vm1']);
  });
  after(() => sb.remove());

  it('a flipped byte in ciphertext, tag, nonce and header, a truncation and a copy over another object: scrub and restore exit 3, the rest byte for byte', async () => {
    const rows = blockRows(sb, uid);
    const path = (idx: number) => objectPath(sb, rows[idx].checksum!);
    const flip = async (idx: number, at: (len: number) => number) => {
      const raw = await readFile(path(idx));
      raw[at(raw.length)] ^= 0x01;
      await writeFile(path(idx), raw);
    };
    await flip(0, (n) => n >> 1); // ciphertext
    await flip(1, (n) => n - 1); // tag
    await flip(2, () => 16); // nonce
    await flip(3, () => 5); // header: compression codec id (authenticated data)
    await flip(4, () => 9); // header: plaintext length
    await truncate(path(5), 1000);
    await copyFile(path(7), path(6)); // a valid object of another block under this name
    const damaged = [0, 1, 2, 3, 4, 5, 6];

    const s = await sb.run(['-m', 'scrub', uid]);
    assert.equal(s.code, 3, s.stderr);
    assert.match(s.stdout, new RegExp(`^scrub ${uid} 10 ${damaged.length} 0 1 0$`, 'm'));
    assert.deepEqual(
      blockRows(sb, uid)
        .filter((r) => r.valid === 0)
        .map((r) => r.idx),
      damaged,
    );

    const out = sb.path('out');
    const r = await sb.run(['restore', uid, out]);
    assert.equal(r.code, 3, r.stderr);
    const expected = await readFile(img);
    for (const i of damaged) expected.fill(0, i * BS, (i + 1) * BS);
    await assertSameBytes(out, expected);
  });
});

describe('a store whose objects mix codecs', () => {
  it('written without compression, then with zstd, LZ4 and other zstd levels: every version restores byte for byte', async () => {
    const sb = await sandbox('compression = none');
    try {
      const uids: string[] = [];
      const imgs: string[] = [];
      for (const [i, comp] of ['none', 'zstd', 'lz4', 'zstd:-3', 'zstd:5'].entries()) {
        await setData(sb, `compression = ${comp}`);
        const img = sb.path(`img${i}`);
        await writeImage(img, {
          blocks: 8,
          blockSize: BS,
          tail: 1000,
          seed: `mix${i >> 1}`, // versions 0 and 1, 2 and 3 share content: dedup across codecs
          kinds: (j) => (j % 2 ? 'text' : j % 4 ? 'random' : 'zero'),
        });
        uids.push(await sb.backup([img, `v${i}`]));
        imgs.push(img);
      }
      const codecs = new Set<number>();
      for (const name of await objectFiles(sb)) codecs.add((await readFile(objectPath(sb, name)))[5]);
      assert.deepEqual([...codecs].sort(), [0, 1, 2], 'raw, zstd and LZ4 objects');
      for (const [i, uid] of uids.entries()) {
        const out = sb.path(`out${i}`);
        await sb.ok(['restore', uid, out]);
        await assertSameBytes(imgs[i], out);
        await sb.ok(['scrub', uid]);
      }
    } finally {
      await sb.remove();
    }
  });
});

describe('an encrypted store: every path that names blocks uses the keyed names', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    await sb.ok(['key', 'create', sb.path('k')]);
    await setData(sb, `compression = zstd\nencryption = aes-256-gcm\nkey_file = ${sb.path('k')}`);
  });
  after(() => sb.remove());

  it('deep scrub, hinted incremental (hint check), export-diff patching, export and import into a new database', async () => {
    const img = sb.path('img');
    await writeImage(img, {
      blocks: 12,
      blockSize: BS,
      seed: 'paths',
      kinds: (i) => (i % 2 ? 'text' : 'random'),
    });
    const base = await sb.backup([img, 'vm1']);
    // Deep scrub compares the source's blocks by name: unkeyed names would all differ.
    const deep = await sb.run(['-m', 'scrub', '-s', img, base]);
    assert.equal(deep.code, 0, deep.stderr);
    assert.match(deep.stdout, new RegExp(`^scrub ${base} 12 0 0 0 0$`, 'm'));

    // -r with -f: the hint check re-reads unhinted blocks and compares their names with the base.
    const img2 = sb.path('img2');
    await copyFile(img, img2);
    const fh = await open(img2, 'r+');
    await fh.write(Buffer.alloc(BS, 9), 0, BS, 3 * BS);
    await fh.close();
    await writeFile(sb.path('hints.json'), JSON.stringify([{ offset: 3 * BS, length: BS, exists: 'true' }]));
    const inc = await sb.backup(['-r', sb.path('hints.json'), '-f', base, img2, 'vm1']);
    await sb.ok(['restore', inc, sb.path('inc.out')]);
    await assertSameBytes(img2, sb.path('inc.out'));

    // export-diff: a partial write patches the base's block, read back through the codec.
    const full = encodeExportDiff(1, [
      { tag: 't', name: 'snap1' },
      { tag: 's', size: 12 * BS },
      { tag: 'w', offset: 0, data: await readFile(img2) },
      { tag: 'e' },
    ]);
    const d1 = await sb.backup(['--rbd-export-diff', '-', 'vm2@snap1'], { input: full });
    const patch = Buffer.from('patched through the codec');
    const diff = encodeExportDiff(1, [
      { tag: 'f', name: 'snap1' },
      { tag: 't', name: 'snap2' },
      { tag: 's', size: 12 * BS },
      { tag: 'w', offset: 5 * BS + 10, data: patch },
      { tag: 'e' },
    ]);
    const d2 = await sb.backup(['--rbd-export-diff', '-', '-f', d1, 'vm2@snap2'], { input: diff });
    const expected = await readFile(img2);
    patch.copy(expected, 5 * BS + 10);
    await sb.ok(['restore', d2, sb.path('d2.out')]);
    await assertSameBytes(sb.path('d2.out'), expected);

    // export, a new database on the same data and key, import: objects adopted, restore works.
    // (The store's meta/ set aside: with its descriptor and copies, a new database must run
    // recover before it may write, import included: store-authority.test.ts.)
    await sb.ok(['export', d2, sb.path('d2.export')]);
    const text = await readFile(sb.config, 'utf8');
    await writeFile(sb.config, text.replace(/backy\.sqlite/, 'new.sqlite'));
    await rename(join(sb.dataDir, 'meta'), sb.path('meta.aside'));
    await sb.ok(['import', sb.path('d2.export')]);
    await sb.ok(['restore', d2, sb.path('d2.import.out')]);
    await assertSameBytes(sb.path('d2.import.out'), expected);
    await sb.ok(['scrub', d2]);
  });
});

describe('an encrypted store with its metadata in PostgreSQL', { skip: pgSkipReason() }, () => {
  it('records the key fingerprint there: restores byte for byte, refuses another key', async () => {
    const sb = await Sandbox.create({
      defaults: `block_size = ${BS}`,
      engine: await pgDatabase('backy_codec'),
    });
    try {
      await sb.ok(['key', 'create', sb.path('k')]);
      await sb.ok(['key', 'create', sb.path('other')]);
      await setData(sb, `encryption = aes-256-gcm\nkey_file = ${sb.path('k')}`);
      const img = sb.path('img');
      await markedImage(img, 6, 'pg');
      const uid = await sb.backup([img, 'vm1']);
      await sb.ok(['restore', uid, sb.path('out')]);
      await assertSameBytes(img, sb.path('out'));
      assert.deepEqual(await filesContaining(await allFiles(sb.dataDir), MARKER), []);
      await setData(sb, `encryption = aes-256-gcm\nkey_file = ${sb.path('other')}`);
      const r = await sb.run(['restore', uid, sb.path('out2')]);
      assert.equal(r.code, 1);
      assert.equal(errorLines(r.stderr).length, 1, r.stderr);
      assert.match(r.stderr, /not this store's key/);
      await setData(sb, '');
      assert.match((await sb.run(['ls'])).stderr, /this store is encrypted/);
    } finally {
      await sb.remove();
    }
  });
});
