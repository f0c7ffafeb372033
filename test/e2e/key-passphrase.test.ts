/**
 * Passphrase-sealed key files through the real CLI: key create --passphrase, the passphrase
 * from BACKY_PASSPHRASE, BACKY_PASSCOMMAND or a real terminal (a pty made by util-linux
 * `script`), key passphrase (change, remove) keeping the store's key, and the refusals.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { spawnCollect } from '../lib/spawn.js';
import { BIN, Sandbox, assertSameBytes } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

const BS = 65536;
const SECRET = 'tr0ub4dor & 3';

async function setEncrypted(sb: Sandbox, keyFile: string): Promise<void> {
  const text = await readFile(sb.config, 'utf8');
  await writeFile(
    sb.config,
    `${text.replace(/\n\[DataBackend\][^]*$/, '')}\n[DataBackend]\ntype = file\npath = ${sb.dataDir}\nencryption = aes-256-gcm\nkey_file = ${keyFile}\n`,
  );
}

/** backy in a new session without a controlling terminal (as under cron or systemd). */
function runDetached(sb: Sandbox, args: string[], env: Record<string, string> = {}) {
  return spawnCollect('setsid', ['-w', process.execPath, BIN, '-c', sb.config, ...args], {
    cwd: sb.dir,
    env,
  });
}

/** The one ERROR line of a failed command. */
function errorLine(stderr: string): string {
  const errors = stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, stderr);
  assert.doesNotMatch(stderr, /^ {4}at /m, 'no stack trace');
  return errors[0];
}

describe('passphrase-sealed key files', () => {
  let sb: Sandbox;
  let key: string;
  let img: string;
  let uid: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    key = sb.path('store.key');
    img = sb.path('disk.img');
    await writeImage(img, {
      blocks: 12,
      blockSize: BS,
      tail: 1000,
      kinds: (i) => (i % 4 ? 'random' : 'zero'),
    });
  });
  after(() => sb?.remove());

  it('key create --passphrase takes the new passphrase from BACKY_NEW_PASSPHRASE, never from argv', async () => {
    const r = await sb.run(['key', 'create', '--passphrase', key], { env: { BACKY_NEW_PASSPHRASE: SECRET } });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await stat(key)).mode & 0o777, 0o600);
    const text = await readFile(key, 'utf8');
    assert.match(text, /"version":2/);
    assert.ok(!text.includes(SECRET));
    assert.ok(!r.stderr.includes(SECRET), 'the passphrase is not logged');
    // Without a new passphrase and without a terminal: one line, no file.
    const none = await runDetached(sb, ['key', 'create', '--passphrase', sb.path('other.key')]);
    assert.equal(none.code, 1, none.stderr);
    assert.match(errorLine(none.stderr), /set BACKY_NEW_PASSPHRASE or run backy on a terminal/);
    await assert.rejects(stat(sb.path('other.key')));
  });

  it('backs up and restores with the passphrase from BACKY_PASSPHRASE; a wrong or missing one is one line', async () => {
    await setEncrypted(sb, key);
    const r = await sb.run(['backup', img, 'vm'], { env: { BACKY_PASSPHRASE: SECRET } });
    assert.equal(r.code, 0, r.stderr);
    uid = r.stdout.trim().split('\n').pop()!;
    const out = sb.path('restored.img');
    const rr = await sb.run(['restore', uid, out], { env: { BACKY_PASSPHRASE: SECRET } });
    assert.equal(rr.code, 0, rr.stderr);
    await assertSameBytes(img, out);

    const dbBefore = await readFile(sb.dbPath);
    const wrong = await sb.run(['backup', img, 'vm'], { env: { BACKY_PASSPHRASE: 'not it' } });
    assert.equal(wrong.code, 1, wrong.stderr);
    assert.match(errorLine(wrong.stderr), /wrong passphrase for key file .*store\.key/);
    assert.ok(!wrong.stderr.includes('not it'), 'the passphrase given is not echoed');
    const missing = await runDetached(sb, ['ls']);
    assert.equal(missing.code, 1, missing.stderr);
    assert.match(
      errorLine(missing.stderr),
      /sealed with a passphrase: set BACKY_PASSPHRASE or BACKY_PASSCOMMAND/,
    );
    assert.deepEqual(await readFile(sb.dbPath), dbBefore, 'refused commands changed nothing');
  });

  it('BACKY_PASSCOMMAND: its output is the passphrase; a failing command is one line without its output', async () => {
    await writeFile(sb.path('secret.txt'), `${SECRET}\n`, { mode: 0o600 });
    const ok = await runDetached(sb, ['-m', 'ls'], { BACKY_PASSCOMMAND: `cat ${sb.path('secret.txt')}` });
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout.toString(), new RegExp(uid));
    const failing = await runDetached(sb, ['ls'], { BACKY_PASSCOMMAND: `echo ${SECRET}; exit 3` });
    assert.equal(failing.code, 1, failing.stderr);
    assert.match(errorLine(failing.stderr), /BACKY_PASSCOMMAND for key file .* failed \(exit 3\)/);
    assert.ok(!failing.stderr.includes(SECRET));
  });

  it('asks on the terminal without echo (a real pty)', async () => {
    const r = await inPty(
      `${process.execPath} ${BIN} -c ${sb.config} -m ls`,
      /Passphrase for key file .*: $/,
      SECRET,
    );
    assert.equal(r.code, 0, r.output);
    assert.match(r.output, new RegExp(`version .* ${uid} `));
    assert.ok(!r.output.includes(SECRET), `the passphrase is not echoed:\n${r.output}`);
    const bad = await inPty(
      `${process.execPath} ${BIN} -c ${sb.config} ls`,
      /Passphrase for key file .*: $/,
      'nope',
    );
    assert.equal(bad.code, 1, bad.output);
    assert.match(bad.output, /wrong passphrase/);
  });

  it('key passphrase changes and removes the passphrase; the store keeps its key', async () => {
    const changed = await sb.run(['key', 'passphrase', key], {
      env: { BACKY_PASSPHRASE: SECRET, BACKY_NEW_PASSPHRASE: 'second' },
    });
    assert.equal(changed.code, 0, changed.stderr);
    const old = await sb.run(['ls'], { env: { BACKY_PASSPHRASE: SECRET } });
    assert.equal(old.code, 1);
    assert.match(errorLine(old.stderr), /wrong passphrase/);
    const out = sb.path('restored2.img');
    const rr = await sb.run(['restore', uid, out], { env: { BACKY_PASSPHRASE: 'second' } });
    assert.equal(rr.code, 0, rr.stderr);
    await assertSameBytes(img, out);

    // A wrong current passphrase leaves the file as it was.
    const before = await readFile(key, 'utf8');
    const refused = await sb.run(['key', 'passphrase', key], {
      env: { BACKY_PASSPHRASE: 'wrong', BACKY_NEW_PASSPHRASE: 'third' },
    });
    assert.equal(refused.code, 1);
    assert.equal(await readFile(key, 'utf8'), before);

    const removed = await sb.run(['key', 'passphrase', '--remove', key], {
      env: { BACKY_PASSPHRASE: 'second' },
    });
    assert.equal(removed.code, 0, removed.stderr);
    assert.match(await readFile(key, 'utf8'), /"version":1/);
    assert.equal((await stat(key)).mode & 0o777, 0o600);
    const out3 = sb.path('restored3.img');
    const r3 = await runDetached(sb, ['restore', uid, out3]);
    assert.equal(r3.code, 0, r3.stderr);
    await assertSameBytes(img, out3);
  });
});

/**
 * Runs `command` on a new pseudo-terminal (util-linux `script`), types `answer` and Enter once
 * `prompt` shows: typed earlier, the terminal (not yet in raw mode) would echo it.
 */
function inPty(
  command: string,
  prompt: RegExp,
  answer: string,
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qefc', command, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let answered = false;
    const onData = (b: Buffer) => {
      output += b.toString('utf8');
      if (!answered && prompt.test(output)) {
        answered = true;
        child.stdin.write(`${answer}\r`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (code) => {
      child.stdin.destroy();
      resolve({ code, output });
    });
  });
}
