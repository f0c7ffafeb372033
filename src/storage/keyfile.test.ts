import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { tryMountTmpfs, umount } from '../../test/lib/tmpfs.js';
import { ConfigError, InputError } from '../errors.js';
import { DEFAULT_KDF } from './key-wrap.js';
import { createKeyFile, deriveKeys, isSealedKeyFile, readKeyFile, rewrapKeyFile } from './keyfile.js';

const noPassphrase = () => Promise.reject(new Error('no passphrase should be asked for a plain key file'));
const given = (p: string) => () => Promise.resolve(p);

describe('key files', () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), 'backy-key-'))));
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates 0600 files that read back to the same keys, and never overwrites', async () => {
    const path = join(dir, 'a.key');
    const made = await createKeyFile(path);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(await readKeyFile(path, noPassphrase), made);
    await assert.rejects(
      createKeyFile(path),
      (e: unknown) => e instanceof InputError && /exists/.test(e.message),
    );
    const other = await createKeyFile(join(dir, 'b.key'));
    assert.notEqual(other.fingerprint, made.fingerprint);
  });

  it('sub-keys are distinct and the fingerprint is none of them', () => {
    const k = deriveKeys(Buffer.alloc(32, 1));
    assert.notDeepEqual(k.encryption, k.naming);
    assert.match(k.fingerprint, /^[0-9a-f]{32}$/);
    assert.ok(!k.encryption.toString('hex').includes(k.fingerprint));
    assert.ok(!k.naming.toString('hex').includes(k.fingerprint));
  });

  it('refuses a truncated, edited, empty or foreign file with one line', async () => {
    const path = join(dir, 'c.key');
    await createKeyFile(path);
    const text = await readFile(path, 'utf8');
    const obj = JSON.parse(text) as { key: string };
    const flipped = obj.key[0] === 'A' ? `B${obj.key.slice(1)}` : `A${obj.key.slice(1)}`;
    const cases: [string, string, RegExp][] = [
      ['truncated', text.slice(0, 40), /not one line of JSON/],
      ['edited key', text.replace(obj.key, flipped), /check value does not match/],
      ['empty', '', /not one line of JSON/],
      ['foreign', '{"hello":1}', /no "format"/],
      ['short key', text.replace(obj.key, 'AAAA'), /not 32 bytes/],
    ];
    for (const [what, content, re] of cases) {
      const p = join(dir, `${what}.key`);
      await writeFile(p, content, { mode: 0o600 });
      await assert.rejects(
        readKeyFile(p, noPassphrase),
        (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'),
        what,
      );
    }
    await assert.rejects(readKeyFile(join(dir, 'missing'), noPassphrase), /cannot read key file .*ENOENT/);
  });

  it('a sealed key file opens with its passphrase only, to the same keys as unsealed', async () => {
    const path = join(dir, 'sealed.key');
    const made = await createKeyFile(path, 'correct horse');
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.ok(isSealedKeyFile(path));
    const text = await readFile(path, 'utf8');
    assert.ok(!text.includes('correct horse'), 'the passphrase is not in the file');
    const parsed = JSON.parse(text) as { version: number; kdf: { N: number }; key?: string };
    assert.equal(parsed.version, 2);
    assert.equal(parsed.kdf.N, DEFAULT_KDF.N);
    assert.equal(parsed.key, undefined, 'no clear key in a sealed file');
    assert.deepEqual(await readKeyFile(path, given('correct horse')), made);
    await assert.rejects(
      readKeyFile(path, given('correct hors')),
      (e: unknown) => e instanceof ConfigError && /wrong passphrase for key file/.test(e.message),
    );
    // Unicode passphrases are compared in NFC: the same text typed on another keyboard works.
    const uni = join(dir, 'uni.key');
    const u = await createKeyFile(uni, 'caf\u00e9');
    assert.deepEqual(await readKeyFile(uni, given('cafe\u0301')), u);
  });

  it('rewrapping keeps the key: seal, change, unseal; the fingerprint never changes', async () => {
    const path = join(dir, 'rewrap.key');
    const made = await createKeyFile(path);
    assert.deepEqual(await rewrapKeyFile(path, noPassphrase, given('one')), made);
    assert.ok(isSealedKeyFile(path));
    assert.deepEqual(await rewrapKeyFile(path, given('one'), given('two')), made);
    await assert.rejects(readKeyFile(path, given('one')), /wrong passphrase/);
    assert.deepEqual(await readKeyFile(path, given('two')), made);
    // A wrong current passphrase changes nothing.
    const before = await readFile(path, 'utf8');
    await assert.rejects(rewrapKeyFile(path, given('one'), given('three')), /wrong passphrase/);
    assert.equal(await readFile(path, 'utf8'), before);
    assert.deepEqual(await rewrapKeyFile(path, given('two'), undefined), made);
    assert.ok(!isSealedKeyFile(path));
    assert.deepEqual(await readKeyFile(path, noPassphrase), made);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
  });

  it('refuses an edited sealed file, and KDF parameters that would make it hang, with one line', async () => {
    const path = join(dir, 'edit.key');
    await createKeyFile(path, 'pw');
    const obj = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown> & {
      kdf: Record<string, unknown>;
      sealed: string;
    };
    const variants: [string, object, RegExp][] = [
      ['lower N', { ...obj, kdf: { ...obj.kdf, N: 1024 } }, /wrong passphrase .*altered/],
      ['huge N', { ...obj, kdf: { ...obj.kdf, N: 2 ** 30 } }, /scrypt parameters out of range/],
      ['N not a power of two', { ...obj, kdf: { ...obj.kdf, N: 65535 } }, /out of range/],
      ['flipped sealed byte', { ...obj, sealed: flip(obj.sealed) }, /wrong passphrase .*altered/],
      ['short tag', { ...obj, tag: 'AAAA' }, /wrong length/],
      ['no kdf', { ...obj, kdf: undefined }, /no valid "kdf"/],
    ];
    for (const [what, body, re] of variants) {
      const p = join(dir, `v-${what}.key`);
      await writeFile(p, JSON.stringify(body), { mode: 0o600 });
      await assert.rejects(
        readKeyFile(p, given('pw')),
        (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'),
        what,
      );
    }
  });

  it('a key file that cannot be written whole (full disk, a real tmpfs) is not left behind', async (t) => {
    const full = join(dir, 'full');
    await mkdir(full);
    const skip = tryMountTmpfs(full, '64k');
    if (skip) return t.skip(skip);
    try {
      await writeFile(join(full, 'filler'), Buffer.alloc(1 << 20)).catch(() => {});
      const path = join(full, 'k.key');
      await assert.rejects(
        createKeyFile(path),
        (e: unknown) =>
          e instanceof InputError && /cannot (create|write) key file .*k\.key: .*ENOSPC/.test(e.message),
      );
      assert.deepEqual(await readdir(full), ['filler'], 'no truncated key file, no temp file');
      await rm(join(full, 'filler'));
      // Not refused as existing: nothing was left under the name.
      const made = await createKeyFile(path);
      assert.deepEqual(await readKeyFile(path, noPassphrase), made);
      // A rewrap that runs out of space leaves the old file whole.
      await writeFile(join(full, 'filler'), Buffer.alloc(1 << 20)).catch(() => {});
      await assert.rejects(
        rewrapKeyFile(path, noPassphrase, given('pw')),
        (e: unknown) =>
          e instanceof InputError && /cannot rewrite key file .*ENOSPC|no space/i.test(e.message),
      );
      assert.deepEqual(await readKeyFile(path, noPassphrase), made);
      assert.deepEqual((await readdir(full)).sort(), ['filler', 'k.key']);
    } finally {
      umount(full);
    }
  });
});

function flip(b64: string): string {
  const b = Buffer.from(b64, 'base64');
  b[0] ^= 1;
  return b.toString('base64');
}
