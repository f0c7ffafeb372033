/**
 * Security: what backy creates is private whatever the umask (object files, the SQLite file
 * and its -wal/-shm, the log file 0600; data directories 0700; the CLI runs here with umask
 * 000, so a mode left to the umask would show as world-readable); secrets in engine URLs
 * never reach stderr, stdout or the log file; a hostile checksum in the metadata cannot make
 * backy touch a path outside its store.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, runBacky } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { setEntry } from '../lib/tree-edit.js';

const BS = 64 * 1024;

/** Runs the CLI under `umask 000`; calls `poll` every few ms while it runs. */
function runUmask0(sb: Sandbox, args: string[], poll: () => Promise<void>): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'sh',
      ['-c', 'umask 000 && exec "$0" "$@"', process.execPath, BIN, '-c', sb.config, ...args],
      {
        cwd: sb.dir,
        stdio: 'ignore',
      },
    );
    let running = true;
    const loop = async () => {
      while (running) {
        await poll();
        await new Promise((r) => setTimeout(r, 3));
      }
    };
    const polling = loop();
    child.on('error', reject);
    child.on('close', (code) => {
      running = false;
      void polling.then(() => resolve(code), reject);
    });
  });
}

async function modes(root: string): Promise<{ path: string; mode: number; dir: boolean }[]> {
  const out: { path: string; mode: number; dir: boolean }[] = [];
  async function walk(dir: string) {
    const st = await stat(dir);
    out.push({ path: dir, mode: st.mode & 0o777, dir: true });
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push({ path: p, mode: (await stat(p)).mode & 0o777, dir: false });
    }
  }
  await walk(root);
  return out;
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

describe('files are private whatever the umask', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}\nlogfile = LOGFILE` });
    // The sandbox's data directory and database do not exist yet: backy creates them.
    const cfg = await readFile(sb.config, 'utf8');
    await writeFile(sb.config, cfg.replace('LOGFILE', sb.path('backy.log')));
  });
  after(async () => sb?.remove());

  it('objects, data directories, the SQLite file with its -wal and -shm, and the log file', async () => {
    const img = sb.path('disk.img');
    await writeImage(img, { blocks: 160, blockSize: BS, kinds: (i) => (i % 4 ? 'random' : 'zero') });
    const seen = new Map<string, number>();
    const watch = async () => {
      for (const suffix of ['', '-wal', '-shm']) {
        const st = await stat(sb.dbPath + suffix).catch(() => undefined);
        if (st) seen.set(suffix || 'db', st.mode & 0o777);
      }
    };
    assert.equal(await runUmask0(sb, ['backup', img, 'vm@one'], watch), 0);
    assert.equal(await runUmask0(sb, ['ls'], watch), 0);
    assert.equal(seen.get('db'), 0o600, 'SQLite file');
    assert.equal(seen.get('-wal'), 0o600, 'SQLite -wal file (seen while backy ran)');
    assert.equal(seen.get('-shm'), 0o600, 'SQLite -shm file (seen while backy ran)');
    const tree = await modes(sb.dataDir);
    assert.ok(tree.filter((e) => !e.dir).length > 50, 'objects were written');
    for (const e of tree) assert.equal(e.mode, e.dir ? 0o700 : 0o600, e.path);
    assert.equal((await stat(sb.path('backy.log'))).mode & 0o777, 0o600, 'log file');
  });
});

describe('secrets in engine URLs are never shown', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(async () => sb?.remove());

  const secret = 's3cr3t-pw';
  const urls = async () => {
    const port = await freePort(); // nothing listens there: the connection is refused
    return [
      `postgresql://backy:${secret}@127.0.0.1:${port}/backy`,
      `postgresql://backy:p@ss:${secret}@127.0.0.1:${port}/backy`,
      `postgres://127.0.0.1:${port}/backy?user=backy&password=${secret}&sslmode=disable`,
      `mysql://backy:${secret}@127.0.0.1:${port}/backy`,
    ];
  };

  it('not in errors, debug output, -m output or the log file', async () => {
    const log = sb.path('secret.log');
    for (const url of await urls()) {
      const cfg = sb.path('pg.cfg');
      await writeFile(cfg, `[DEFAULTS]\nlogfile = ${log}\n[MetaBackend]\nengine = ${url}\n`);
      for (const args of [['-v', 'ls'], ['-v', '-m', 'ls'], ['backup', sb.path('none.img'), 'x'], ['ls']]) {
        const r = await runBacky(['-c', cfg, ...args], { cwd: sb.dir });
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /ERROR: /);
        assert.ok(!r.stderr.includes(secret), `stderr shows the secret:\n${r.stderr}`);
        assert.ok(!r.stdout.includes(secret), 'stdout shows the secret');
      }
    }
    const text = await readFile(log, 'utf8');
    assert.match(text, /ERROR: /, 'the errors were logged');
    assert.ok(!text.includes(secret), `log file shows the secret:\n${text}`);
  });
});

describe('a hostile checksum in the metadata never becomes a path', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  it('restore reports the block, writes it as zeros and touches nothing outside', async () => {
    const img = sb.path('disk.img');
    await writeImage(img, { blocks: 6, blockSize: BS, kinds: () => 'random' });
    const uid = await sb.backup([img, 'vm@one']);
    // Point block 2 at a traversal path to a file that exists outside the store, and block 3
    // at one that would be created if anything wrote through it.
    const outside = sb.path('outside.bin');
    await writeFile(outside, Buffer.alloc(BS, 7));
    await setEntry(sb.dbPath, uid, 2, '../../../outside.bin');
    await setEntry(sb.dbPath, uid, 3, '../../../created\nby-backy');
    const out = sb.path('out.img');
    const r = await sb.run(['restore', uid, out]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(
      r.stderr,
      /block 2: block "\.\.\/\.\.\/\.\.\/outside\.bin" is damaged: the block list names an invalid checksum; written as zeros/,
    );
    assert.doesNotMatch(r.stderr, /^ {4}at /m);
    for (const line of r.stderr.split('\n'))
      assert.doesNotMatch(line, /^by-backy/, 'no line broken by the checksum');
    // The rest of the image is whole; the two hostile blocks are zeros.
    const expected = await readFile(img);
    expected.fill(0, 2 * BS, 4 * BS);
    const expectedPath = sb.path('expected.img');
    await writeFile(expectedPath, expected);
    await assertSameBytes(expectedPath, out);
    await assert.rejects(access(sb.path('created\nby-backy')));
    await assert.rejects(access(join(sb.dir, '..', 'created\nby-backy')));
    assert.deepEqual(await readFile(outside), Buffer.alloc(BS, 7));
  });
});
