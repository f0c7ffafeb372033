/**
 * Every metadata copy carries an integrity check (issue 19 §3): a flipped bit in a copy's date
 * or in one of its block checksums, which structurally still parses, is refused by `recover`
 * (one line naming the uid, exit 3 after the others are recovered) whatever the store's
 * compression and encryption. Before format 2 an uncompressed plaintext copy with its date
 * changed came back with the wrong date and exit 0, and a compressed one re-compressed after
 * the change passed zstd's own checks.
 */
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Compressor, Decompressor } from 'zstd-napi';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { mixedKind, writeImage } from '../lib/image.js';

const BS = 64 * 1024;
const HEADER = 16;
const NONCE = 12;

const copyPath = (sb: Sandbox, uid: string) => join(sb.dataDir, 'meta', `version-${uid}`);

/** A sandbox whose [DataBackend] holds `extra` lines. */
async function sandbox(extra: string): Promise<Sandbox> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  const text = await readFile(sb.config, 'utf8');
  await writeFile(sb.config, `${text.trimEnd()}\n${extra}\n`);
  return sb;
}

/**
 * The copy's text position to damage: the date's first digit (header line), or the first hex
 * digit of block 0's checksum (second line). The text is the version's export with the store
 * id (and labels, none here) added at the end of the header line.
 */
function textOffset(text: string, what: 'date' | 'checksum'): number {
  if (what === 'date') return text.indexOf('"date":') + 7;
  return text.indexOf('\n') + 1 + text.slice(text.indexOf('\n') + 1).indexOf('"checksum":"') + 12;
}

/** The copy's parts, whichever format it has: format 2 unencrypted ends in a 32-byte trailer. */
function parts(obj: Buffer): { header: Buffer; payload: Buffer; trailer: Buffer } {
  const trailer = obj[4] >= 2 && obj[6] === 0 ? 32 : 0;
  return {
    header: obj.subarray(0, HEADER),
    payload: obj.subarray(HEADER, obj.length - trailer),
    trailer: obj.subarray(obj.length - trailer),
  };
}

/**
 * Flips one bit of the copy's text at the date or a block checksum, keeping the copy well
 * formed: in place when uncompressed (in the ciphertext when encrypted: AES-GCM's counter mode
 * flips the same plaintext bit), and re-compressed as a valid zstd frame when compressed.
 */
async function damage(
  sb: Sandbox,
  uid: string,
  what: 'date' | 'checksum',
  mode: 'plain' | 'zstd' | 'encrypted',
) {
  const path = copyPath(sb, uid);
  const obj = await readFile(path);
  const { header, payload, trailer } = parts(obj);
  if (mode === 'plain') {
    const at = HEADER + textOffset(payload.toString('latin1'), what);
    obj[at] ^= 0x02;
    await writeFile(path, obj);
  } else if (mode === 'encrypted') {
    // Ciphertext and plaintext are the same length: the same offsets, after the nonce. The
    // copy's text is the export's with the store id added to the header line.
    const exported = (await sb.ok(['export', uid, '-'])).stdout;
    const storeId = `,"store_id":"${'0'.repeat(36)}"`;
    const text = exported.replace('}\n', `${storeId}}\n`);
    const at = HEADER + NONCE + textOffset(text, what);
    obj[at] ^= 0x02;
    await writeFile(path, obj);
  } else {
    const text = Buffer.from(new Decompressor().decompress(payload));
    text[textOffset(text.toString('latin1'), what)] ^= 0x02;
    const c = new Compressor();
    c.setParameters({ checksumFlag: true });
    await writeFile(path, Buffer.concat([header, c.compress(text), trailer]));
  }
}

const cases: { name: string; config: string; mode: 'plain' | 'zstd' | 'encrypted' }[] = [
  { name: 'uncompressed plaintext', config: 'compression = none', mode: 'plain' },
  { name: 'zstd', config: 'compression = zstd', mode: 'zstd' },
  { name: 'lz4 (copies are zstd)', config: 'compression = lz4', mode: 'zstd' },
  {
    name: 'encrypted (uncompressed)',
    config: 'compression = none\nencryption = aes-256-gcm',
    mode: 'encrypted',
  },
];

describe('metadata copies carry an integrity check', () => {
  const boxes: Sandbox[] = [];
  after(async () => {
    for (const sb of boxes) await sb.remove();
  });

  for (const c of cases) {
    it(`${c.name}: a bit flipped in the date or in a block checksum is refused by recover (exit 3), the intact copy recovered`, async () => {
      let config = c.config;
      const sb = await sandbox('');
      boxes.push(sb);
      if (c.mode === 'encrypted') {
        await sb.ok(['key', 'create', sb.path('k')]);
        config += `\nkey_file = ${sb.path('k')}`;
      }
      await writeFile(sb.config, `${(await readFile(sb.config, 'utf8')).trimEnd()}\n${config}\n`);
      const images: string[] = [];
      const uids: string[] = [];
      for (const i of [0, 1, 2]) {
        const img = sb.path(`img${i}`);
        await writeImage(img, {
          blocks: 6,
          blockSize: BS,
          seed: `${c.name}-${i}`,
          kinds: (k) => (k === 0 ? 'random' : mixedKind(k)),
        });
        images.push(img);
        uids.push(await sb.backup([img, `vm${i}`]));
      }
      const [dated, summed, intact] = uids;
      const before = (await sb.ok(['-m', 'ls'])).stdout;
      await damage(sb, dated, 'date', c.mode);
      await damage(sb, summed, 'checksum', c.mode);

      for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
      const r = await sb.run(['-m', 'recover']);
      assert.equal(r.code, 3, r.stderr);
      const errors = r.stderr.split('\n').filter((l) => l.includes('ERROR:'));
      for (const uid of [dated, summed])
        assert.equal(errors.filter((l) => l.includes(`version ${uid} not recovered`)).length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /at .*\.(ts|js|mjs):\d+/);
      const ls = (await sb.ok(['-m', 'ls'])).stdout;
      assert.equal(ls.trim().split('\n').length, 1, ls);
      assert.ok(before.split('\n').includes(ls.trim()), 'the intact version comes back exactly as it was');
      await sb.ok(['restore', intact, sb.path('out')]);
      await assertSameBytes(images[2], sb.path('out'));
    });
  }

  it('an old (format 1) plaintext copy without a checksum is recovered unverified, with one warning, and rewritten with one', async () => {
    const sb = await sandbox('compression = none');
    boxes.push(sb);
    const img = sb.path('old.img');
    await writeImage(img, { blocks: 4, blockSize: BS, seed: 'old', kinds: () => 'random' });
    const uid = await sb.backup([img, 'vm1']);
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    // What a backy before format 2 wrote: the same header with version 1, and no trailer.
    const path = copyPath(sb, uid);
    const obj = await readFile(path);
    assert.equal(obj[4], 2);
    const old = Buffer.from(obj.subarray(0, obj.length - 32));
    old[4] = 1;
    await writeFile(path, old);

    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
    const r = await sb.ok(['-m', 'recover']);
    assert.equal(r.stdout, before);
    assert.match(
      r.stderr,
      /WARN.*1 metadata copies were of the old format without a checksum: read unverified, now rewritten/,
    );
    const rewritten = await readFile(path);
    assert.equal(rewritten[4], 2);
    assert.deepEqual(rewritten, obj, 'the same copy, now with its checksum');
    await sb.ok(['restore', uid, sb.path('out')]);
    await assertSameBytes(img, sb.path('out'));
  });
});
