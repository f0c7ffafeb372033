/**
 * The core CLI scenarios (backup, -f chains, hints, restore byte for byte, ls -m, rm) with the
 * metadata in PostgreSQL, and SQLite alongside as the reference; plus what only PostgreSQL has:
 * connection errors without the password, and $BACKY_DATABASE_URL.
 */
import assert from 'node:assert/strict';
import { copyFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mixedKind, scribble, writeImage } from '../lib/image.js';
import { pgDatabase, pgServer, pgSkipReason } from '../lib/pg.js';

const BS = 64 * 1024;
const pgSkip = pgSkipReason();

/** stderr lines other than the INFO/DEBUG log. */
function problems(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !/^\s*(INFO|DEBUG):/.test(l));
}

const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkip, engine: () => pgDatabase('backy_cli') },
];

for (const e of engines) {
  describe(`CLI on ${e.name}`, { skip: e.skip }, () => {
    let sb: Sandbox;
    before(async () => {
      sb = await Sandbox.create({
        defaults: `block_size = ${BS}\nhint_check_blocks = 4`,
        engine: await e.engine(),
      });
    });
    after(async () => sb?.remove());

    it('backs up, chains with -f and hints, lists, removes, and restores every version byte for byte', async () => {
      const img = sb.path('disk.img');
      await writeImage(img, { blocks: 40, blockSize: BS, tail: 1000, kinds: mixedKind });
      const v1img = sb.path('v1.img');
      await copyFile(img, v1img);
      const uid1 = await sb.backup([img, 'vm1@b1']);

      // Changes inside two hinted regions; the hints say exactly that.
      await scribble(img, 3 * BS + 100, 5000, 'change-1');
      await scribble(img, 20 * BS, BS + 10, 'change-2');
      const hints = sb.path('hints.json');
      await writeFile(
        hints,
        JSON.stringify([
          { offset: 3 * BS, length: BS, exists: 'true' },
          { offset: 20 * BS, length: 2 * BS, exists: 'true' },
        ]),
      );
      const v2img = sb.path('v2.img');
      await copyFile(img, v2img);
      const uid2 = await sb.backup(['-r', hints, '-f', uid1, img, 'vm1@b2']);

      await scribble(img, 39 * BS + 7, BS, 'change-3');
      const uid3 = await sb.backup(['-f', uid2, img, 'vm1@b3']);
      const other = await sb.backup([v1img, 'vm2@b1']);

      for (const [uid, expected] of [
        [uid1, v1img],
        [uid2, v2img],
        [uid3, img],
        [other, v1img],
      ]) {
        const out = sb.path(`restore-${uid}.img`);
        await sb.ok(['restore', uid, out]);
        await assertSameBytes(expected, out);
      }
      const sparse = sb.path('sparse.img');
      await sb.ok(['restore', '-s', uid3, sparse]);
      await assertSameBytes(img, sparse);

      const ls = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      assert.deepEqual(
        ls.map((v) => [v.name, v.uid, v.blocks, v.sizeBytes, v.valid]),
        [
          ['vm1@b1', uid1, 41, 40 * BS + 1000, true],
          ['vm1@b2', uid2, 41, 40 * BS + 1000, true],
          ['vm1@b3', uid3, 41, 40 * BS + 1000, true],
          ['vm2@b1', other, 41, 40 * BS + 1000, true],
        ],
      );
      assert.deepEqual(
        parseLsMachine((await sb.ok(['-m', 'ls', 'vm2@b1'])).stdout).map((v) => v.uid),
        [other],
      );

      await sb.ok(['rm', uid2]);
      assert.deepEqual(
        parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid),
        [uid1, uid3, other],
      );
      const missing = await sb.run(['restore', uid2, sb.path('gone.img')]);
      assert.equal(missing.code, 1);
      assert.match(problems(missing.stderr).join('\n'), /not found/);
      const again = sb.path('again.img');
      await sb.ok(['restore', uid3, again]);
      await assertSameBytes(img, again);
    });
  });
}

describe('PostgreSQL connection settings', { skip: pgSkip }, () => {
  let server: string;
  const sandboxes: Sandbox[] = [];
  before(async () => {
    server = await pgServer();
  });
  after(async () => {
    for (const sb of sandboxes) await sb.remove();
  });

  async function sandbox(engine?: string): Promise<Sandbox> {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
    sandboxes.push(sb);
    return sb;
  }

  it('reports a wrong password in one line without the password', async () => {
    const url = new URL(await pgDatabase('backy_auth'));
    url.password = 'Wr0ng-s3cret-pw';
    const sb = await sandbox(url.toString());
    for (const args of [['ls'], ['-v', 'ls']]) {
      const r = await sb.run(args);
      assert.equal(r.code, 1);
      assert.ok(!r.stderr.includes('Wr0ng-s3cret-pw'), r.stderr);
      assert.ok(!r.stdout.includes('Wr0ng-s3cret-pw'));
      if (args[0] === 'ls') {
        assert.deepEqual(problems(r.stderr).length, 1, r.stderr);
        assert.match(
          r.stderr,
          /ERROR: metadata database postgresql:\/\/postgres:\*\*\*@.*password authentication failed/,
        );
      }
    }
  });

  it('reports an unreachable server in one line without the password', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const sb = await sandbox(`postgresql://backy:Unre4chable-pw@127.0.0.1:${port}/backy`);
    const img = sb.path('disk.img');
    await writeImage(img, { blocks: 2, blockSize: BS, kinds: () => 'random' });
    const r = await sb.run(['backup', img, 'vm@x']);
    assert.equal(r.code, 1);
    assert.equal(problems(r.stderr).length, 1, r.stderr);
    assert.match(
      r.stderr,
      /ERROR: cannot reach metadata database postgresql:\/\/backy:\*\*\*@127\.0\.0\.1:\d+\/backy: .*ECONNREFUSED/,
    );
    assert.ok(!r.stderr.includes('Unre4chable-pw'));
  });

  it('takes the engine from $BACKY_DATABASE_URL over the config file', async () => {
    const url = await pgDatabase('backy_env');
    const sb = await sandbox(); // its config names SQLite
    const img = sb.path('disk.img');
    await writeImage(img, { blocks: 3, blockSize: BS, kinds: mixedKind });
    const env = { BACKY_DATABASE_URL: url };
    const uid = await sb.backup([img, 'vm@env'], { env });
    assert.deepEqual(
      parseLsMachine((await sb.ok(['-m', 'ls'], { env })).stdout).map((v) => v.uid),
      [uid],
    );
    assert.equal((await sb.ok(['-m', 'ls'])).stdout.trim(), '', 'nothing went to the SQLite file');
    const out = sb.path('out.img');
    await sb.ok(['restore', uid, out], { env });
    await assertSameBytes(img, out);
    const verbose = await sb.ok(['-v', 'ls'], { env });
    assert.ok(!verbose.stderr.includes(new URL(server).password), 'debug log shows no password');
    assert.match(verbose.stderr, /metadata: postgresql:\/\/postgres:\*\*\*@/);

    const bad = await sb.run(['ls'], { env: { BACKY_DATABASE_URL: 'mysql://u:Secr3t-x@h/db' } });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /\$BACKY_DATABASE_URL must be sqlite/);
    assert.ok(!bad.stderr.includes('Secr3t-x'));
  });
});
