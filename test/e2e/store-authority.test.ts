/**
 * The store is the authority for deletion (core/store-authority.ts), end to end on real
 * SQLite files, a real data directory and (with encryption) a real S3 gateway: a second
 * database, a database put back from an older copy, a recover that could not read every
 * copy, a lost or truncated descriptor and an absent store never make cleanup delete another
 * version's blocks or copies, and every version restores byte for byte.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, readFile, readdir, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine, runBacky } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import Database from 'better-sqlite3';
import { mixedKind, randomBytesSeeded, writeImage } from '../lib/image.js';
import { query, spawnBacky, waitFor } from '../lib/store.js';
import { listKeys, newBucket, rgwServer, rgwSkipReason, s3Client, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';

const BS = 64 * 1024;

function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.includes('ERROR:'));
}

/** Exit 1 with exactly one error line matching `re`, and no stack trace. */
function refused(r: RunResult, re: RegExp, what: string): void {
  assert.equal(r.code, 1, `${what}: exit code\n${r.stderr}`);
  const errors = errorLines(r.stderr);
  assert.equal(errors.length, 1, `${what}: one error line\n${r.stderr}`);
  assert.match(errors[0], re, what);
  assert.doesNotMatch(r.stderr, /\n\s+at /, `${what}: no stack trace`);
}

/** A store (directory, or S3 with encryption) that several databases can be pointed at. */
interface StoreKind {
  name: string;
  skip?: string;
  /** [DataBackend] lines of a new store in `sb`. */
  setup(sb: Sandbox): Promise<{ lines: (prefix?: string) => string[]; list(): Promise<string[]> }>;
  teardown?(): Promise<void>;
}

const dirStore: StoreKind = {
  name: 'a data directory',
  async setup(sb) {
    return {
      lines: () => ['[DataBackend]', 'type = file', `path = ${sb.dataDir}`],
      list: async () =>
        (await readdir(sb.dataDir, { recursive: true, withFileTypes: true }))
          .filter((f) => f.isFile())
          .map((f) => relative(sb.dataDir, join(f.parentPath, f.name)))
          .sort(),
    };
  },
};

let server: (S3Server & { stop(): Promise<void> }) | undefined;
const s3Store: StoreKind = {
  name: 'S3 with encryption',
  skip: rgwSkipReason(),
  async setup(sb) {
    server ??= await rgwServer();
    const bucket = newBucket('authority');
    const key = sb.path('store.key');
    await runBacky(['-c', sb.config, 'key', 'create', key]);
    const s = server;
    return {
      lines: (prefix = 'st/') =>
        s3ConfigLines(s, bucket, [`prefix = ${prefix}`, 'encryption = aes-256-gcm', `key_file = ${key}`]),
      list: async () => {
        const c = s3Client(s);
        try {
          return await listKeys(c, bucket, '', { meta: true });
        } catch (err) {
          if ((err as { name?: string }).name === 'NoSuchBucket') return [];
          throw err;
        }
      },
    };
  },
  async teardown() {
    await server?.stop();
    server = undefined;
  },
};

/** A config naming its own SQLite file and the given store lines; returns a runner. */
async function database(sb: Sandbox, name: string, lines: string[], dbName = name) {
  const cfg = sb.path(`${name}.cfg`);
  const db = sb.path(`${dbName}.sqlite`);
  await writeFile(
    cfg,
    ['[DEFAULTS]', `block_size = ${BS}`, '[MetaBackend]', `engine = sqlite:///${db}`, ...lines, ''].join(
      '\n',
    ),
  );
  const run = (args: string[]) => runBacky(['-c', cfg, ...args], { cwd: sb.dir });
  const ok = async (args: string[]) => {
    const r = await run(args);
    if (r.code !== 0) throw new Error(`${name}: backy ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
    return r;
  };
  return {
    cfg,
    db,
    run,
    ok,
    backup: async (img: string, vm: string) =>
      (await ok(['backup', img, vm])).stdout.trim().split('\n').pop()!,
    ls: async () => parseLsMachine((await ok(['-m', 'ls'])).stdout),
    restoresAs: async (uid: string, img: string) => {
      const out = sb.path(`${name}-${uid}.out`);
      await rm(out, { force: true });
      await ok(['restore', uid, out]);
      await assertSameBytes(img, out);
    },
  };
}

async function image(sb: Sandbox, name: string): Promise<string> {
  const img = sb.path(`${name}.img`);
  await writeImage(img, { blocks: 6, blockSize: BS, seed: name, kinds: mixedKind });
  return img;
}

for (const kind of [dirStore, s3Store]) {
  describe(`the store is the authority, on ${kind.name}`, { skip: kind.skip }, () => {
    let sb: Sandbox;
    const made: Sandbox[] = [];
    const sandbox = async () => {
      sb = await Sandbox.create();
      made.push(sb);
      return sb;
    };
    after(async () => {
      for (const s of made) await s.remove();
      await kind.teardown?.();
    });

    it('two databases on one store: the second is refused until it recovers, then the first is; no restore loses a block', async () => {
      await sandbox();
      const store = await kind.setup(sb);
      const one = await database(sb, 'one', store.lines());
      const two = await database(sb, 'two', store.lines());
      const img1 = await image(sb, 'two-dbs-1');
      const img2 = await image(sb, 'two-dbs-2');
      const v1 = await one.backup(img1, 'vm1');

      const before = await store.list();
      for (const args of [['backup', img2, 'vm2'], ['cleanup'], ['rm', v1], ['label', v1, 'a=b']]) {
        refused(
          await two.run(args),
          /does not own the store .*run 'backy recover'/,
          `second database: ${args[0]}`,
        );
      }
      assert.deepEqual(await store.list(), before, 'the refused commands wrote and deleted nothing');
      await two.ok(['recover']);
      const v2 = await two.backup(img2, 'vm2');
      await two.ok(['cleanup']);

      for (const args of [['backup', img1, 'vm1'], ['cleanup']]) {
        refused(
          await one.run(args),
          /does not own the store .*run 'backy recover'/,
          `first database: ${args[0]}`,
        );
      }
      await two.restoresAs(v1, img1);
      await two.restoresAs(v2, img2);
      await one.restoresAs(v1, img1); // reading is not refused
      // The first database takes the store back the same way, and knows both versions then.
      await one.ok(['recover']);
      await one.ok(['cleanup']);
      await one.restoresAs(v2, img2);
      refused(
        await two.run(['cleanup']),
        /does not own the store/,
        'second database after the first recovered',
      );
    });

    it('a database put back from an older copy: cleanup refuses naming the newer versions and deletes nothing; after recover it works', async () => {
      await sandbox();
      const store = await kind.setup(sb);
      const db = await database(sb, 'main', store.lines());
      const imgs = await Promise.all([1, 2, 3, 4].map((i) => image(sb, `dump-${i}`)));
      const v1 = await db.backup(imgs[0], 'vm1');
      const v2 = await db.backup(imgs[1], 'vm2');
      const suffixes = ['', '-wal', '-shm'];
      for (const x of suffixes) await copyFile(db.db + x, sb.path(`dump.sqlite${x}`)).catch(() => {});
      const v3 = await db.backup(imgs[2], 'vm3');
      const v4 = await db.backup(imgs[3], 'vm4');
      for (const x of suffixes) {
        await rm(db.db + x, { force: true });
        await copyFile(sb.path(`dump.sqlite${x}`), db.db + x).catch(() => {});
      }
      assert.deepEqual(
        (await db.ls()).map((v) => v.uid).sort(),
        [v1, v2].sort(),
        'the database is the older one',
      );

      const before = await store.list();
      for (const args of [['cleanup'], ['cleanup', '--dry-run']]) {
        const r = await db.run(args);
        refused(r, /holds 2 versions this database does not know .*run 'backy recover'/, args.join(' '));
        for (const uid of [v3, v4]) assert.match(errorLines(r.stderr)[0], new RegExp(uid));
      }
      assert.deepEqual(await store.list(), before, 'nothing was deleted');

      await db.ok(['recover']);
      await db.ok(['cleanup']);
      for (const [i, uid] of [v1, v2, v3, v4].entries()) await db.restoresAs(uid, imgs[i]);
    });
  });
}

describe('recover that cannot read every copy keeps cleanup away', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  const copy = (uid: string) => join(sb.dataDir, 'meta', `version-${uid}`);
  const loseDatabase = async () => {
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
  };
  const files = async () => (await readdir(sb.dataDir, { recursive: true })).sort();

  it('a moved copy: exit 3, cleanup refuses and deletes nothing; moved back, recover brings it and cleanup works', async () => {
    const img1 = await image(sb, 'moved-1');
    const img2 = await image(sb, 'moved-2');
    const v1 = await sb.backup([img1, 'vm1']);
    const v2 = await sb.backup([img2, 'vm2']);
    await loseDatabase();
    const elsewhere = '0b6f1e6a-7c1d-4d7e-9a53-3c2e1f0a9b8c';
    await rename(copy(v2), copy(elsewhere));

    const r = await sb.run(['recover']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`${elsewhere} not recovered: .*describes version ${v2}`));
    const before = await files();
    refused(
      await sb.run(['cleanup']),
      new RegExp(`does not know \\(${elsewhere}\\)`),
      'cleanup after exit 3',
    );
    assert.deepEqual(await files(), before, 'nothing was deleted');

    await rename(copy(elsewhere), copy(v2));
    await sb.ok(['recover']);
    await sb.ok(['cleanup']);
    for (const [uid, img] of [
      [v1, img1],
      [v2, img2],
    ]) {
      const out = sb.path(`${uid}.out`);
      await sb.ok(['restore', uid, out]);
      await assertSameBytes(img, out);
    }
  });

  it('a truncated copy: cleanup refuses until `recover --forget UID`, which says what it gives up; then cleanup frees its blocks', async () => {
    const img3 = await image(sb, 'forget-3');
    const v3 = await sb.backup([img3, 'vm3']);
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    await loseDatabase();
    const full = await readFile(copy(v3));
    await truncate(copy(v3), full.length - 5);
    assert.equal((await sb.run(['recover'])).code, 3);
    refused(await sb.run(['cleanup']), new RegExp(`does not know \\(${v3}\\)`), 'cleanup');

    const dry = await sb.ok(['recover', '--forget', '--dry-run', v3]);
    assert.match(dry.stderr, new RegExp(`Would forget version ${v3} \\(its copy cannot be read`));
    assert.match(dry.stderr, /cleanup deletes its metadata copy and frees every block/);
    refused(await sb.run(['cleanup']), /does not know/, 'a dry run forgets nothing');
    // Put back whole, the copy is what --forget describes: name and date.
    await writeFile(copy(v3), full);
    const vm3 = parseLsMachine(before).find((v) => v.uid === v3)!;
    assert.match(
      (await sb.ok(['recover', '--forget', '--dry-run', v3])).stderr,
      new RegExp(`\\(vm3, ${vm3.date}`),
    );
    await truncate(copy(v3), full.length - 5);

    const objects = (await files()).filter((f) => /^[0-9a-f]{2}\/[0-9a-f]{2}\/[0-9a-f]{64}$/.test(f)).length;
    await sb.ok(['recover', '--forget', v3]);
    assert.equal((await sb.run(['recover'])).code, 0, 'recover skips what was given up');
    await sb.ok(['cleanup']);
    const after = await files();
    assert.ok(!after.includes(`meta/version-${v3}`), 'its copy is deleted');
    const left = after.filter((f) => /^[0-9a-f]{2}\/[0-9a-f]{2}\/[0-9a-f]{64}$/.test(f)).length;
    assert.ok(left < objects, `its blocks are freed (${objects} -> ${left})`);
    assert.doesNotMatch((await sb.ok(['-m', 'ls'])).stdout, new RegExp(v3));
  });
});

describe('a lost or damaged descriptor', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());
  const descriptor = () => join(sb.dataDir, 'meta', 'descriptor');

  it('lost with the database: backup refuses to make a new store over the data; recover rebuilds it', async () => {
    const img = await image(sb, 'lost-1');
    const v1 = await sb.backup([img, 'vm1']);
    const original = JSON.parse(await readFile(descriptor(), 'utf8')) as { store_id: string };
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
    await rm(descriptor());

    refused(await sb.run(['backup', img, 'vm2']), /descriptor .* is missing; run 'backy recover'/, 'backup');
    await assert.rejects(readFile(descriptor()), /ENOENT/, 'no descriptor was made');
    refused(await sb.run(['cleanup']), /run 'backy recover'/, 'cleanup');

    await sb.ok(['recover']);
    const rebuilt = JSON.parse(await readFile(descriptor(), 'utf8')) as { store_id: string };
    assert.equal(rebuilt.store_id, original.store_id, 'the same store id');
    const out = sb.path('lost.out');
    await sb.ok(['restore', v1, out]);
    await assertSameBytes(img, out);
    await sb.backup([img, 'vm2']);
    await sb.ok(['cleanup']);
  });

  it('truncated: writers are told to run recover, which rebuilds it', async () => {
    const img = await image(sb, 'lost-2');
    await truncate(descriptor(), 20);
    refused(
      await sb.run(['backup', img, 'vm3']),
      /descriptor .* is damaged: .*'backy recover' rebuilds it/,
      'backup',
    );
    await sb.ok(['recover']);
    JSON.parse(await readFile(descriptor(), 'utf8'));
    const v = await sb.backup([img, 'vm3']);
    const out = sb.path('trunc.out');
    await sb.ok(['restore', v, out]);
    await assertSameBytes(img, out);
  });
});

describe('an absent store is an I/O error, never damage', () => {
  const absent = /store [0-9a-f-]{36} not found at .*: unmounted or wrong prefix\?/;

  async function check(
    run: (args: string[]) => Promise<RunResult>,
    uids: string[],
    img: string,
    sbx: Sandbox,
    listed: () => Promise<string[]>,
  ) {
    for (const args of [
      ['scrub', uids[0]],
      ['restore', uids[0], sbx.path('absent.out')],
      ['backup', img, 'vm9'],
      ['cleanup'],
      ['recover'],
      ['import', sbx.path('none.jsonl')],
      ['nbd', '-u', sbx.path('absent.sock')],
    ]) {
      refused(await run(args), absent, args[0]);
    }
    assert.deepEqual(await listed(), [], 'nothing was written where the store should be');
    await assert.rejects(readFile(sbx.path('absent.out')), /ENOENT/);
    const ls = parseLsMachine((await run(['-m', 'ls'])).stdout);
    assert.deepEqual(
      ls.map((v) => [v.uid, v.valid]),
      uids.map((u) => [u, true]),
      'ls works from the database alone, and nothing was marked invalid',
    );
  }

  it('an empty directory in place of the data directory (an unmounted mount point)', async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const img = await image(sb, 'absent-1');
      const uids = [await sb.backup([img, 'vm1']), await sb.backup([img, 'vm2'])];
      await rename(sb.dataDir, sb.path('data.real'));
      await mkdir(sb.dataDir);
      await check(
        (a) => sb.run(a),
        uids,
        img,
        sb,
        async () => readdir(sb.dataDir, { recursive: true }),
      );
      await rm(sb.dataDir, { recursive: true });
      await rename(sb.path('data.real'), sb.dataDir);
      assert.equal((await sb.run(['scrub', uids[0]])).code, 0, 'mounted again, all is well');
    } finally {
      await sb.remove();
    }
  });

  it('a mistyped S3 prefix', { skip: rgwSkipReason() }, async () => {
    const sb = await Sandbox.create();
    try {
      const store = await s3Store.setup(sb);
      const good = await database(sb, 'db', store.lines('right/'));
      const img = await image(sb, 'absent-2');
      const uids = [await good.backup(img, 'vm1')];
      const wrong = await database(sb, 'wrong', store.lines('wrnog/'), 'db');
      const under = async () => (await store.list()).filter((k) => k.startsWith('wrnog/'));
      await check(wrong.run, uids, img, sb, under);
      assert.equal((await good.run(['scrub', uids[0]])).code, 0);
    } finally {
      await sb.remove();
      await s3Store.teardown!();
    }
  });
});

describe('a store made by the previous backy (descriptor version 1)', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(async () => sb?.remove());

  it('is claimed by the database that knows it; a database that only adopted it is refused', async () => {
    const lines = await dirStore.setup(sb);
    const own = await database(sb, 'own', lines.lines());
    const img = await image(sb, 'v1-desc');
    const v = await own.backup(img, 'vm1');
    const path = join(sb.dataDir, 'meta', 'descriptor');
    const d = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    delete d.owner_database;
    await writeFile(path, `${JSON.stringify({ ...d, version: 1 })}\n`);

    const other = await database(sb, 'other', lines.lines());
    assert.equal((await other.ls()).length, 0); // adopts the store's settings, owns nothing
    refused(await other.run(['backup', img, 'vm2']), /does not own the store/, 'adopted over versions');
    await own.backup(img, 'vm1');
    const claimed = JSON.parse(await readFile(path, 'utf8')) as { version: number; owner_database: string };
    assert.equal(claimed.version, 2);
    assert.match(claimed.owner_database, /^[0-9a-f-]{36}$/);
    refused(await other.run(['backup', img, 'vm2']), /does not own the store/, 'after the claim');
    await own.ok(['cleanup']);
    await own.restoresAs(v, img);
  });
});

describe('a dump taken while a backup ran', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  it('holds that version incomplete: cleanup refuses instead of removing it as a crashed backup', async () => {
    const img1 = await image(sb, 'during-1');
    const v1 = await sb.backup([img1, 'vm1']);
    const data = randomBytesSeeded('during-2', 5 * BS);
    const run = spawnBacky(sb, ['backup', '-', 'vm2']);
    try {
      run.child.stdin.write(data.subarray(0, 2 * BS));
      await waitFor(
        'the running backup',
        () => query(sb, "SELECT id FROM leases WHERE kind = 'backup'").length === 1,
      );
      // An online backup of the SQLite file (as a dump job would take it) while vm2 runs.
      const live = new Database(sb.dbPath, { readonly: true });
      await live.backup(sb.path('dump.sqlite'));
      live.close();
      run.child.stdin.end(data.subarray(2 * BS));
      const done = await run.done;
      assert.equal(done.code, 0, done.stderr);
    } finally {
      run.child.kill('SIGKILL');
    }
    const v2 = (await sb.ok(['-m', 'ls'])).stdout.match(/ vm2 \d+ \d+ (\S+) /)![1];
    for (const x of ['', '-wal', '-shm']) await rm(sb.dbPath + x, { force: true });
    await copyFile(sb.path('dump.sqlite'), sb.dbPath);

    const before = await readdir(sb.dataDir, { recursive: true });
    refused(await sb.run(['cleanup']), new RegExp(`does not know \\(${v2}\\)`), 'cleanup');
    assert.deepEqual(await readdir(sb.dataDir, { recursive: true }), before, 'nothing was deleted');
    // recover replaces the stale incomplete row with the finished version its copy describes.
    assert.equal((await sb.ok(['recover'])).stdout.trim(), v2);
    await sb.ok(['cleanup']);
    const out = sb.path('during.out');
    await sb.ok(['restore', v2, out]);
    await writeFile(sb.path('during.img'), data);
    await assertSameBytes(sb.path('during.img'), out);
    await sb.ok(['restore', v1, sb.path('during-1.out')]);
    await assertSameBytes(img1, sb.path('during-1.out'));
  });
});
