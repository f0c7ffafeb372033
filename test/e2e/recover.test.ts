/**
 * Disaster recovery end to end: the store's descriptor and per-version metadata copies, and
 * `backy recover` rebuilding a lost database from them, on SQLite and PostgreSQL (a lost
 * PostgreSQL database is a fresh database name), with every restore compared byte for byte.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, REPO, Sandbox, assertSameBytes } from '../lib/cli.js';
import { mixedKind, scribble, writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { listKeys, newBucket, rgwServer, rgwSkipReason, s3Client, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';

const BS = 64 * 1024;
const pgSkip = pgSkipReason();

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

const copyPath = (sb: Sandbox, uid: string) => join(sb.dataDir, 'meta', `version-${uid}`);

async function lsLines(sb: Sandbox): Promise<string> {
  return (await sb.ok(['-m', 'ls'])).stdout;
}

/** The database is gone: SQLite's files deleted, or the config pointed at a new, empty PostgreSQL database. */
async function loseDatabase(sb: Sandbox, engine: string | undefined): Promise<void> {
  if (engine === undefined) {
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
  } else {
    const fresh = await pgDatabase('backy_recover_new');
    const text = await readFile(sb.config, 'utf8');
    await writeFile(sb.config, text.replace(/^engine = .*$/m, `engine = ${fresh}`));
  }
  assert.equal((await lsLines(sb)).trim(), '', 'the database is empty');
}

const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkip, engine: () => pgDatabase('backy_recover') },
];

for (const e of engines) {
  describe(`recover on ${e.name}`, { skip: e.skip }, () => {
    let sb: Sandbox;
    let engine: string | undefined;
    before(async () => {
      engine = await e.engine();
      sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
    });
    after(async () => sb?.remove());

    it('a lost database comes back: same ls -m, byte-for-byte restores, -f continues; rm stays gone, invalid stays invalid', async () => {
      const img1 = sb.path('one.img');
      const img2 = sb.path('two.img');
      const img3 = sb.path('three.img');
      const img4 = sb.path('four.img');
      await writeImage(img1, { blocks: 10, blockSize: BS, seed: `${e.name}-1`, kinds: mixedKind });
      await copyFile(img1, img2);
      await scribble(img2, 3 * BS + 7, 2 * BS, `${e.name}-2`);
      await writeImage(img3, { blocks: 5, blockSize: BS, seed: `${e.name}-3`, kinds: mixedKind });
      await writeImage(img4, { blocks: 6, blockSize: BS, seed: `${e.name}-4`, kinds: () => 'random' });
      const v1 = await sb.backup([
        '-l',
        'tier=gold',
        '-l',
        'site=a',
        '--snapshot-name',
        'snap1',
        img1,
        'vm1',
      ]);
      const v2 = await sb.backup(['-f', v1, img2, 'vm1']);
      await sb.ok(['protect', v2]);
      await sb.ok(['label', v2, 'kept=yes']);
      const v3 = await sb.backup([img3, 'vm2']);
      await sb.ok(['rm', v3]);
      const v4 = await sb.backup([img4, 'vm3']);
      // Damage an object only v4 uses: scrub marks v4 invalid (and its copy says so).
      const own = await sb.ok(['export', v4, '-']);
      const checksum = JSON.parse(own.stdout.split('\n')[1]).checksum as string;
      const obj = join(sb.dataDir, checksum.slice(0, 2), checksum.slice(2, 4), checksum);
      const bytes = await readFile(obj);
      bytes[bytes.length - 1] ^= 0xff;
      await writeFile(obj, bytes);
      assert.equal((await sb.run(['scrub', v4])).code, 3);
      const before = await lsLines(sb);
      assert.equal(before.trim().split('\n').length, 3);
      assert.match(before, new RegExp(`${v4} 0 `), 'v4 is invalid');

      await loseDatabase(sb, engine);
      // A dry run shows what the real run brings back, labels included (-m and --json).
      const dry = await sb.run(['-m', 'recover', '--dry-run']);
      assert.equal(dry.stdout, before, 'recover --dry-run -m prints the ls -m lines, labels too');
      const dryJson = JSON.parse((await sb.run(['--json', 'recover', '--dry-run'])).stdout) as {
        recovered: { uid: string; labels: Record<string, string> }[];
      };
      assert.deepEqual(dryJson.recovered.find((v) => v.uid === v1)?.labels, { site: 'a', tier: 'gold' });
      assert.deepEqual(dryJson.recovered.find((v) => v.uid === v2)?.labels, { kept: 'yes' });
      assert.equal((await lsLines(sb)).trim(), '', 'the dry run added nothing');
      // v4 comes back invalid: damage found, exit 3 (the dry run says so too), one line.
      assert.equal(dry.code, 3, dry.stderr);
      const r = await sb.run(['-m', 'recover']);
      assert.equal(r.code, 3, r.stderr);
      assert.deepEqual(
        errorLines(r.stderr).map((l) => l.replace(/^ *ERROR: /, '')),
        [
          '1 versions were recovered as invalid (blocks missing or damaged); 3 versions were recovered in all',
        ],
      );
      assert.equal(r.stdout, before, 'recover prints the ls -m line of every version it added');
      assert.equal(await lsLines(sb), before, 'ls -m is identical');
      assert.doesNotMatch(before, new RegExp(v3), 'the removed version did not come back');
      for (const [uid, img] of [
        [v1, img1],
        [v2, img2],
      ]) {
        const out = sb.path(`${uid}.out`);
        await sb.ok(['restore', uid, out]);
        await assertSameBytes(img, out);
      }
      assert.equal((await sb.run(['restore', v4, sb.path('v4.out')])).code, 3, 'v4 stays damaged');

      // Running it again changes nothing.
      const again = await sb.ok(['-m', 'recover']);
      assert.equal(again.stdout, '');
      assert.equal(await lsLines(sb), before);

      // An -f chain continues from a recovered version.
      const img5 = sb.path('five.img');
      await copyFile(img2, img5);
      await scribble(img5, 8 * BS, 100, `${e.name}-5`);
      const v5 = await sb.backup(['-f', v2, img5, 'vm1']);
      const out5 = sb.path('v5.out');
      await sb.ok(['restore', v5, out5]);
      await assertSameBytes(img5, out5);
      // cleanup after recover frees nothing a recovered version uses.
      await sb.ok(['cleanup']);
      await sb.ok(['restore', '--force', v1, sb.path(`${v1}.out`)]);
      await assertSameBytes(img1, sb.path(`${v1}.out`));
    });
  });
}

describe('recover: damaged copies, wrong stores, dry runs', () => {
  let sb: Sandbox;
  let other: Sandbox;
  const uids: string[] = [];
  const imgs: string[] = [];
  let foreign: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    other = await Sandbox.create({ defaults: `block_size = ${BS}` });
    for (let i = 0; i < 5; i++) {
      const img = sb.path(`img${i}`);
      await writeImage(img, { blocks: 3, blockSize: BS, seed: `d${i}`, kinds: () => 'random' });
      imgs.push(img);
      uids.push(await sb.backup([img, `vm${i}`]));
    }
    foreign = await other.backup([imgs[0], 'elsewhere']);
  });
  after(async () => {
    await sb?.remove();
    await other?.remove();
  });

  it('a database pointed at another store is refused with one line, and nothing is written', async () => {
    const text = await readFile(other.config, 'utf8');
    await writeFile(other.config, text.replace(other.dataDir, sb.dataDir));
    try {
      for (const args of [['ls'], ['backup', imgs[1], 'x'], ['recover']]) {
        const r = await other.run(args);
        assert.equal(r.code, 1, args.join(' '));
        assert.equal(errorLines(r.stderr).length, 1);
        assert.match(r.stderr, /belongs to another store/);
        assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
      }
    } finally {
      await writeFile(other.config, text);
    }
    assert.match(await lsLines(other), /elsewhere/);
  });

  it('--dry-run lists what would come back and adds nothing; truncated, tampered, moved and foreign copies are reported and skipped', async () => {
    const before = await lsLines(sb);
    const lines = before.trim().split('\n');
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });

    const dry = await sb.ok(['-m', 'recover', '--dry-run']);
    assert.equal(dry.stdout, before);
    assert.equal((await lsLines(sb)).trim(), '');

    // The database adopted the store and has not recovered: it does not own the store, and
    // cleanup (like every writing command) is refused before it takes anything for garbage.
    const gc = await sb.run(['cleanup']);
    assert.equal(gc.code, 1);
    assert.match(errorLines(gc.stderr)[0], /does not own the store .*run 'backy recover'/);

    const [a, b, c, d] = uids;
    const ca = copyPath(sb, a);
    await truncate(ca, (await readFile(ca)).length - 9);
    const cb = copyPath(sb, b);
    const tampered = await readFile(cb);
    tampered[tampered.length >> 1] ^= 0x01;
    await writeFile(cb, tampered);
    // c's copy moved onto d's name; d's own copy gone.
    await copyFile(copyPath(sb, c), copyPath(sb, d));
    // Another store's copy, under its own name.
    await copyFile(copyPath(other, foreign), copyPath(sb, foreign));

    const r = await sb.run(['-m', 'recover']);
    assert.equal(r.code, 3, r.stderr);
    const errors = errorLines(r.stderr);
    for (const uid of [a, b, d, foreign]) {
      assert.equal(
        errors.filter((l) => l.includes(`version ${uid} not recovered`)).length,
        1,
        `${uid}:\n${r.stderr}`,
      );
    }
    assert.match(r.stderr, new RegExp(`${foreign} not recovered: .*another store`));
    assert.match(r.stderr, new RegExp(`${d} not recovered: .*describes version ${c}`));
    const expected = lines.filter((l) => l.includes(c) || l.includes(uids[4]));
    assert.equal(r.stdout, `${expected.join('\n')}\n`);
    assert.equal(await lsLines(sb), r.stdout);
    for (const i of [2, 4]) {
      const out = sb.path(`r${i}`);
      await sb.ok(['restore', uids[i], out]);
      await assertSameBytes(imgs[i], out);
    }
    // Named uids: a present one is left alone, a damaged one is reported again.
    const named = await sb.run(['-m', 'recover', c, a]);
    assert.equal(named.code, 3);
    assert.equal(named.stdout, '');
    assert.equal(errorLines(named.stderr).filter((l) => l.includes(a)).length, 1);
  });

  it('copies recover could not read keep cleanup away until forgotten; cleanup deletes the copies of removed versions only', async () => {
    const [a, b, , d] = uids;
    const refused = await sb.run(['cleanup']);
    assert.equal(refused.code, 1);
    assert.match(errorLines(refused.stderr)[0], /holds 4 versions this database does not know/);
    const dry = await sb.ok(['recover', '--forget', '--dry-run', a, b, d, foreign]);
    assert.match(
      dry.stderr,
      new RegExp(`Would forget version ${d} \\(its copy describes version ${uids[2]}: vm2, `),
    );
    assert.match(dry.stderr, new RegExp(`Would forget version ${a} \\(its copy cannot be read`));
    assert.equal((await sb.run(['cleanup'])).code, 1, 'a dry run forgets nothing');
    await sb.ok(['recover', '--forget', a, b, d, foreign]);
    const extra = await sb.backup([imgs[3], 'vm-extra']);
    // A copy whose version is gone (rm could not delete it, say): restored by hand.
    const saved = await readFile(copyPath(sb, extra));
    await sb.ok(['rm', extra]);
    await assert.rejects(readFile(copyPath(sb, extra)), 'rm removes the copy');
    await writeFile(copyPath(sb, extra), saved);
    await rm(copyPath(sb, uids[4]));
    await sb.ok(['cleanup']);
    await assert.rejects(readFile(copyPath(sb, extra)), 'cleanup removes a stale copy');
    await readFile(copyPath(sb, uids[4])); // and writes a missing one
    const names = (await readdir(join(sb.dataDir, 'meta'))).sort();
    assert.ok(names.includes('descriptor'));
    for (const uid of [a, b, d, foreign, extra]) {
      assert.ok(!names.includes(`version-${uid}`), `the given-up copy ${uid} is deleted`);
      assert.ok(!names.includes(`removed-${uid}`), `and its tombstone with it`);
    }
  });

  it('a copy that cannot be written: the change succeeds with one warning, cleanup rewrites the copy later', async () => {
    const uid = uids[4];
    // A real fault: a directory where the copy's file must go makes its rename fail.
    await rm(copyPath(sb, uid));
    await mkdir(copyPath(sb, uid));
    const r = await sb.ok(['label', uid, 'late=yes']);
    const warnings = r.stderr.split('\n').filter((l) => l.includes('WARN'));
    assert.equal(warnings.length, 1, r.stderr);
    assert.match(warnings[0], new RegExp(`copy of version ${uid} was not updated`));
    await rm(copyPath(sb, uid), { recursive: true });
    await writeFile(copyPath(sb, uid), await readFile(copyPath(sb, uids[2]))); // a stale, wrong copy
    const before = await lsLines(sb);
    await sb.ok(['cleanup']);
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
    await sb.ok(['recover']);
    assert.equal(await lsLines(sb), before, 'the label came back: cleanup rewrote the copy');
    assert.match(before, /late=yes/);
  });
});

describe('recover on an encrypted store', () => {
  const MARKER = 'RECOVER-SECRET-MARKER-5be1';
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  const useKey = async (key: string | undefined) => {
    const text = (await readFile(sb.config, 'utf8')).replace(/^(encryption|key_file) = .*\n/gm, '');
    await writeFile(sb.config, key ? `${text}encryption = aes-256-gcm\nkey_file = ${key}\n` : text);
  };

  it('copies reveal nothing without the key; a wrong or missing key is refused with one line; the right one recovers', async () => {
    const k1 = sb.path('k1.key');
    const k2 = sb.path('k2.key');
    await sb.ok(['key', 'create', k1]);
    await sb.ok(['key', 'create', k2]);
    await useKey(k1);
    const img = sb.path('secret.img');
    await writeImage(img, { blocks: 4, blockSize: BS, seed: 'enc', kinds: () => 'text' });
    const uid = await sb.backup(['-l', `note=${MARKER}`, '--snapshot-name', MARKER, img, `vm-${MARKER}`]);
    const before = await lsLines(sb);
    assert.match(before, new RegExp(MARKER));
    const files = (await readdir(sb.dataDir, { recursive: true, withFileTypes: true }))
      .filter((f) => f.isFile())
      .map((f) => join(f.parentPath, f.name));
    assert.ok(files.includes(copyPath(sb, uid)), 'the version has its copy');
    for (const f of files) {
      const content = await readFile(f);
      assert.ok(!content.includes(MARKER), `${f} reveals the version's name`);
    }
    assert.equal((await readFile(copyPath(sb, uid)))[6], 1, 'the copy is encrypted');

    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
    await useKey(k2);
    const wrong = await sb.run(['recover']);
    assert.equal(wrong.code, 1);
    assert.equal(errorLines(wrong.stderr).length, 1, wrong.stderr);
    assert.match(wrong.stderr, /not this store's key/);
    await useKey(undefined);
    const none = await sb.run(['recover']);
    assert.equal(none.code, 1);
    assert.equal(errorLines(none.stderr).length, 1, none.stderr);
    assert.match(none.stderr, /this store is encrypted/);

    await useKey(k1);
    assert.equal((await lsLines(sb)).trim(), '', 'nothing was recovered with the wrong key');
    const r = await sb.ok(['-m', 'recover']);
    assert.equal(r.stdout, before);
    assert.equal(await lsLines(sb), before);
    const out = sb.path('secret.out');
    await sb.ok(['restore', uid, out]);
    await assertSameBytes(img, out);
  });
});

describe('recover on S3 (radosgw)', { skip: rgwSkipReason() }, () => {
  let server: S3Server & { stop(): Promise<void> };
  let sb: Sandbox;
  before(async () => {
    server = await rgwServer();
    sb = await Sandbox.create();
    const bucket = newBucket('recover');
    await writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${sb.dbPath}`,
        ...s3ConfigLines(server, bucket, ['prefix = store1/']),
        '',
      ].join('\n'),
    );
  });
  after(async () => {
    await sb?.remove();
    await server?.stop();
  });

  it('the descriptor and copies live under PREFIX meta/; a lost database comes back from the bucket alone', async () => {
    const img1 = sb.path('a.img');
    const img2 = sb.path('b.img');
    await writeImage(img1, { blocks: 8, blockSize: BS, seed: 's3-1', kinds: mixedKind });
    await copyFile(img1, img2);
    await scribble(img2, BS + 3, 300, 's3-2');
    const v1 = await sb.backup(['-l', 'k=v', img1, 'vm1']);
    const v2 = await sb.backup(['-f', v1, img2, 'vm1']);
    const gone = await sb.backup([img2, 'vm2']);
    await sb.ok(['rm', gone]);
    const c = s3Client(server);
    const bucket = /^bucket = (.*)$/m.exec(await readFile(sb.config, 'utf8'))![1];
    const meta = (await listKeys(c, bucket, 'store1/', { meta: true })).filter((k) => k.includes('/meta/'));
    c.destroy();
    assert.deepEqual(
      meta,
      [
        'store1/meta/descriptor',
        `store1/meta/removed-${gone}`,
        `store1/meta/version-${v1}`,
        `store1/meta/version-${v2}`,
      ].sort(),
    );
    const before = await lsLines(sb);

    await loseDatabase(sb, undefined);
    const r = await sb.ok(['-m', 'recover']);
    assert.equal(r.stdout, before);
    assert.equal(await lsLines(sb), before);
    for (const [uid, img] of [
      [v1, img1],
      [v2, img2],
    ]) {
      const out = sb.path(`${uid}.out`);
      await sb.ok(['restore', uid, out]);
      await assertSameBytes(img, out);
    }
    assert.equal((await sb.ok(['-m', 'recover'])).stdout, '', 'a second run adds nothing');
  });
});

describe("the README's Disaster recovery section", () => {
  it('works as written, with the default paths', async () => {
    const readme = await readFile(join(REPO, 'README.md'), 'utf8');
    const section = /^## Disaster recovery\n([\s\S]*?)\n## /m.exec(readme)?.[1];
    assert.ok(section, 'README has a Disaster recovery section');
    const cmds = [...section.matchAll(/^ {4}(\S.*)$/gm)].map((m) => m[1]);
    assert.ok(cmds.includes('backy recover'), cmds.join('\n'));
    const sb = await Sandbox.create();
    try {
      // HOME is the sandbox: the default ~/.local/share/backy; `backy` on the PATH is this build.
      const home = sb.path('home');
      const bin = sb.path('bin');
      const work = sb.path('work');
      for (const d of [home, bin, work]) await mkdir(d, { recursive: true });
      await writeFile(join(bin, 'backy'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, {
        mode: 0o755,
      });
      const env: NodeJS.ProcessEnv = { ...process.env, HOME: home, PATH: `${bin}:${process.env.PATH}` };
      delete env.XDG_DATA_HOME;
      delete env.BACKY_CONFIG;
      const sh = (line: string) =>
        execFileSync('sh', ['-ec', line], { cwd: work, env, encoding: 'utf8', stdio: 'pipe' });
      const img = join(work, 'disk.img');
      await writeImage(img, { blocks: 3, blockSize: 4 << 20, seed: 'readme', kinds: mixedKind });
      const uid = sh('backy backup disk.img vm1').trim().split('\n').pop()!;
      const before = sh('backy -m ls');
      let out = '';
      for (const line of cmds) out = sh(line);
      assert.match(out, new RegExp(uid), 'the last command (ls) shows the recovered version');
      assert.equal(sh('backy -m ls'), before);
      sh(`backy restore ${uid} restored.img`);
      await assertSameBytes(img, join(work, 'restored.img'));
    } finally {
      await sb.remove();
    }
  });
});
