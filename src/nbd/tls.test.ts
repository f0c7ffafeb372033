import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { NbdTls, readPskFile } from './tls.js';

const KEY = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';

describe('TLS PSK file (nbdkit / psktool format)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-tls-'));
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  async function file(name: string, text: string, mode = 0o600): Promise<string> {
    const p = join(dir, name);
    await writeFile(p, text);
    await chmod(p, mode);
    return p;
  }

  it('reads username:hexkey lines, skipping blank lines and comments', async () => {
    const keys = readPskFile(await file('ok.psk', `# keys\n\nalice:${KEY}\nbob:${KEY.toUpperCase()}\r\n`));
    assert.deepEqual([...keys.keys()], ['alice', 'bob']);
    assert.deepEqual(keys.get('alice'), Buffer.from(KEY, 'hex'));
    assert.deepEqual(keys.get('bob'), Buffer.from(KEY, 'hex'));
  });

  it('refuses malformed lines, short or odd keys and empty files, naming the line but never the key', async () => {
    for (const [name, text, re] of [
      ['sep.psk', `alice=${KEY}\n`, /line 1: not 'username:hexkey'/],
      ['odd.psk', `alice:${KEY}0\n`, /line 1/],
      ['short.psk', `ok:${KEY}\nalice:0011\n`, /line 2/],
      ['nothex.psk', `alice:${KEY.replace('0', 'g')}\n`, /line 1/],
      ['empty.psk', '# nothing\n', /has no keys/],
    ] as const) {
      const p = await file(name, text);
      assert.throws(
        () => readPskFile(p),
        (err: Error) =>
          err instanceof InputError && re.test(err.message) && !err.message.includes('0011223344'),
        name,
      );
    }
  });

  it('refuses a file that group or others may read, as ssh refuses a key', async () => {
    for (const mode of [0o640, 0o604, 0o644]) {
      const p = await file(`loose-${mode.toString(8)}.psk`, `alice:${KEY}\n`, mode);
      assert.throws(() => readPskFile(p), /are too open/);
    }
    assert.throws(() => readPskFile(join(dir, 'missing.psk')), /cannot read TLS PSK file .*ENOENT/);
  });

  it('refuses a certificate file that cannot be read, with one line', () => {
    assert.throws(
      () => NbdTls.load({ cert: join(dir, 'nope.pem'), key: join(dir, 'nope.key') }),
      (err: Error) => err instanceof InputError && /cannot read TLS certificate/.test(err.message),
    );
  });
});
