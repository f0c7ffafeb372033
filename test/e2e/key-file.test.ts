/**
 * Key files through the real CLI: `key passphrase` through a symlink rewrites the file the
 * link points to (the link stays); a key file other users may read is refused with one line,
 * as ssh refuses a loose private key; a relative key_file is relative to the config file; and
 * BACKY_PASSCOMMAND has a time limit.
 */
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

const BS = 65536;

/** The one ERROR line of a failed command, without its prefix. */
function errorLine(r: RunResult): string {
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, r.stderr);
  assert.doesNotMatch(r.stderr, /^ {4}at /m, 'no stack trace');
  return errors[0].slice('   ERROR: '.length);
}

async function setKeyFile(sb: Sandbox, keyFile: string): Promise<void> {
  const text = await readFile(sb.config, 'utf8');
  await writeFile(
    sb.config,
    `${text.replace(/\n\[DataBackend\][^]*$/, '')}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\nencryption = aes-256-gcm\nkey_file = ${keyFile}\n`,
  );
}

describe('key files', () => {
  let sb: Sandbox;
  let img: string;
  let uid: string;
  let real: string;
  let link: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 6, blockSize: BS, kinds: (i) => (i % 3 ? 'random' : 'zero') });
    await mkdir(sb.path('keys'));
    real = sb.path('keys/store.key');
    link = sb.path('store-link.key');
    await sb.ok(['key', 'create', '--passphrase', real], { env: { BACKY_NEW_PASSPHRASE: 'one' } });
    await symlink(real, link);
    await setKeyFile(sb, link);
    uid = await sb.backup([img, 'vm'], { env: { BACKY_PASSPHRASE: 'one' } });
  });
  after(() => sb?.remove());

  it('a key file readable or writable by others is refused with one line saying what to do', async () => {
    for (const mode of [0o644, 0o640, 0o620]) {
      await chmod(real, mode);
      const octal = mode.toString(8).padStart(4, '0');
      for (const args of [['ls'], ['backup', img, 'vm'], ['key', 'passphrase', '--remove', link]]) {
        const r = await sb.run(args, { env: { BACKY_PASSPHRASE: 'one' } });
        assert.equal(r.code, 1, `${octal} ${args.join(' ')}: ${r.stderr}`);
        assert.match(
          errorLine(r),
          new RegExp(
            `^key file .*store-link\\.key is (readable|accessible) by others \\(mode ${octal}\\): chmod 600 `,
          ),
        );
      }
    }
    await chmod(real, 0o600);
    await sb.ok(['ls'], { env: { BACKY_PASSPHRASE: 'one' } });
  });

  it("a relative key_file is found relative to the config file's directory, from any working directory", async () => {
    await setKeyFile(sb, 'keys/store.key');
    try {
      const out = sb.path('relative.img');
      await sb.ok(['restore', uid, out], { cwd: '/', env: { BACKY_PASSPHRASE: 'one' } });
      await assertSameBytes(img, out);
    } finally {
      await setKeyFile(sb, link);
    }
  });

  it('BACKY_PASSCOMMAND that does not finish: one line after BACKY_PASSCOMMAND_TIMEOUT seconds, exit 1', async () => {
    const t0 = performance.now();
    const r = await sb.run(['ls'], {
      env: { BACKY_PASSPHRASE: '', BACKY_PASSCOMMAND: 'sleep 30', BACKY_PASSCOMMAND_TIMEOUT: '1' },
    });
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      errorLine(r),
      /BACKY_PASSCOMMAND for key file .* did not finish within 1 s; set BACKY_PASSCOMMAND_TIMEOUT to wait longer/,
    );
    assert.ok(seconds < 20, `gave up after ${seconds.toFixed(1)} s`);
    const bad = await sb.run(['ls'], {
      env: { BACKY_PASSPHRASE: '', BACKY_PASSCOMMAND: 'echo one', BACKY_PASSCOMMAND_TIMEOUT: 'soon' },
    });
    assert.equal(bad.code, 2, bad.stderr);
    assert.match(errorLine(bad), /BACKY_PASSCOMMAND_TIMEOUT must be a number of seconds/);
    await sb.ok(['ls'], { env: { BACKY_PASSPHRASE: '', BACKY_PASSCOMMAND: 'echo one' } });
  });

  it('key passphrase on a symlink rewrites the file it points to; the link stays a link', async () => {
    await sb.ok(['key', 'passphrase', link], {
      env: { BACKY_PASSPHRASE: 'one', BACKY_NEW_PASSPHRASE: 'two' },
    });
    assert.ok((await lstat(link)).isSymbolicLink(), 'still a symlink');
    assert.equal((await stat(real)).mode & 0o777, 0o600);
    assert.deepEqual(
      (await readdir(sb.path('keys'))).sort(),
      ['store.key'],
      'no temp file left beside the key',
    );
    // The real file, as another config naming it directly would read it, has the new passphrase.
    const old = await sb.run(['ls'], { env: { BACKY_PASSPHRASE: 'one' } });
    assert.equal(old.code, 1, old.stderr);
    assert.match(errorLine(old), /wrong passphrase/);
    await setKeyFile(sb, real);
    const out = sb.path('two.img');
    await sb.ok(['restore', uid, out], { env: { BACKY_PASSPHRASE: 'two' } });
    await assertSameBytes(img, out);
    await setKeyFile(sb, link);

    await sb.ok(['key', 'passphrase', '--remove', link], { env: { BACKY_PASSPHRASE: 'two' } });
    assert.ok((await lstat(link)).isSymbolicLink(), 'still a symlink after --remove');
    assert.match(await readFile(real, 'utf8'), /"version":1/);
    assert.equal((await stat(real)).mode & 0o777, 0o600);
    await sb.ok(['-m', 'ls'], { env: { BACKY_PASSPHRASE: '' } });
  });
});
