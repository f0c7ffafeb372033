import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, InputError } from '../errors.js';
import { createKeyFile, deriveKeys, readKeyFile } from './keyfile.js';

describe('key files', () => {
  let dir: string;
  before(async () => (dir = await mkdtemp(join(tmpdir(), 'backy-key-'))));
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates 0600 files that read back to the same keys, and never overwrites', async () => {
    const path = join(dir, 'a.key');
    const made = await createKeyFile(path);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(readKeyFile(path), made);
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
      await writeFile(p, content);
      assert.throws(
        () => readKeyFile(p),
        (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes('\n'),
        what,
      );
    }
    assert.throws(() => readKeyFile(join(dir, 'missing')), /cannot read key file .*ENOENT/);
  });
});
