/**
 * End to end: the built CLI on temp dirs, every restore compared byte for byte.
 * Small blocks (64 KiB) keep images small and block counts meaningful.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import {
  copyFile,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, parseLsMachine, runBacky } from '../lib/cli.js';
import { randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import { entryAt } from '../lib/tree-edit.js';

const BS = 64 * 1024;

async function countObjects(dir: string): Promise<number> {
  let n = 0;
  // Fan-out directories only: meta/ holds the descriptor and metadata copies, not objects.
  for (const a of (await readdir(dir).catch(() => [] as string[])).filter((d) => /^[0-9a-f]{2}$/.test(d))) {
    for (const b of await readdir(join(dir, a))) {
      n += (await readdir(join(dir, a, b))).filter((f) => !f.startsWith('.')).length;
    }
  }
  return n;
}

function lsLines(sb: Sandbox) {
  return sb.ok(['-m', 'ls']).then((r) => parseLsMachine(r.stdout));
}

/** One ERROR line, no stack trace. */
function assertOneLineError(stderr: string, re: RegExp) {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, `expected one ERROR line in:\n${stderr}`);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace without -v');
}

describe('backup and restore', () => {
  let sb: Sandbox;
  let img: string;
  const kinds = (i: number): BlockKind =>
    (['random', 'zero', 'text', 'dup', 'random', 'dup', 'zero'] as const)[i % 7];

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 40, blockSize: BS, tail: 1000, kinds });
  });
  after(() => sb.remove());

  it('backs up, prints the uid last, lists it, restores it exactly (plain, sparse, stdout)', async () => {
    const r = await sb.ok(['backup', img, 'vm1@backup1']);
    const uid = r.stdout.trim().split('\n').pop()!;
    assert.match(uid, /^[0-9a-f-]{36}$/);
    assert.equal(r.stderr, '', 'quiet without -v');

    const [v] = await lsLines(sb);
    assert.equal(v.uid, uid);
    assert.equal(v.name, 'vm1@backup1');
    assert.equal(v.blocks, 41);
    assert.equal(v.sizeBytes, 40 * BS + 1000);
    assert.equal(v.valid, true);
    assert.match(
      v.line,
      // Fields added later (SNAPSHOT, ...) follow VALID, never come between.
      /^version \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} vm1@backup1 41 2622440 [0-9a-f-]{36} 1( \S+)*$/,
    );

    await sb.ok(['restore', uid, sb.path('plain.img')]);
    await assertSameBytes(img, sb.path('plain.img'));
    await sb.ok(['restore', '-s', uid, sb.path('sparse.img')]);
    await assertSameBytes(img, sb.path('sparse.img'));
    // An existing file is written in full (zeros too) unless -s ...
    await writeFile(sb.path('existing.img'), Buffer.alloc(1));
    await sb.ok(['restore', '--force', uid, sb.path('existing.img')]);
    await assertSameBytes(img, sb.path('existing.img'));
    const sparse = await stat(sb.path('sparse.img'));
    const plain = await stat(sb.path('plain.img'));
    const existing = await stat(sb.path('existing.img'));
    assert.ok(
      sparse.blocks < existing.blocks,
      `sparse restore allocates less (${sparse.blocks} < ${existing.blocks})`,
    );
    // ... while a file the restore creates reads back zeros, so its zero blocks stay holes anyway.
    assert.ok(
      plain.blocks < existing.blocks,
      `a new file keeps holes (${plain.blocks} < ${existing.blocks})`,
    );
    const out = await sb.ok(['restore', uid, '-']);
    await assertSameBytes(img, out.stdoutBuf);
  });

  it('stores equal blocks once and zero blocks not at all, across versions and images', async () => {
    const before = await countObjects(sb.dataDir);
    // 40 blocks: random at i%7 in {0,4} (12), text at 2 (6), dup (one object), zero; plus the tail.
    assert.equal(before, 12 + 6 + 1 + 1);
    const { size: dataBytes } = await du(sb.dataDir);
    assert.ok(dataBytes < 0.6 * (40 * BS), `store ${dataBytes} bytes well below the image`);
    // The same image under another name stores nothing new.
    await sb.backup([img, 'vm1@again']);
    assert.equal(await countObjects(sb.dataDir), before);
    // Another image sharing most blocks stores only its new ones.
    const other = sb.path('other.img');
    await copyFile(img, other);
    await scribble(other, 5 * BS, BS, 'other-5');
    await scribble(other, 20 * BS + 7, 100, 'other-20');
    const uid = await sb.backup([other, 'vm2@backup1']);
    assert.equal(await countObjects(sb.dataDir), before + 2);
    await sb.ok(['restore', uid, sb.path('other.out')]);
    await assertSameBytes(other, sb.path('other.out'));
  });

  it('backs up from stdin', async () => {
    const data = await readFile(img);
    const uid = await sb.backup(['-', 'vm1@stdin'], { input: data });
    const v = (await lsLines(sb)).find((l) => l.uid === uid)!;
    assert.equal(v.sizeBytes, data.length);
    await sb.ok(['restore', uid, sb.path('stdin.out')]);
    await assertSameBytes(img, sb.path('stdin.out'));
  });

  it('backs up from a named pipe (sequential source)', async () => {
    const fifo = sb.path('pipe');
    execFileSync('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', 'cat "$0" > "$1"', img, fifo], { stdio: 'ignore' });
    const written = new Promise((r) => writer.on('close', r));
    const uid = await sb.backup([fifo, 'vm1@fifo']);
    assert.equal(await written, 0);
    await sb.ok(['restore', uid, sb.path('fifo.out')]);
    await assertSameBytes(img, sb.path('fifo.out'));
  });

  it('restores a damaged block as zeros, finishes the image and exits 3', async () => {
    const uid = (await lsLines(sb))[0].uid;
    const row = { checksum: (await entryAt(sb.dbPath, uid, 4)) as string };
    const objPath = join(sb.dataDir, row.checksum.slice(0, 2), row.checksum.slice(2, 4), row.checksum);
    const raw = await readFile(objPath);
    raw[100] ^= 1;
    await writeFile(objPath, raw);
    const r = await sb.run(['restore', uid, sb.path('damaged.out')]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /block 4: .*damaged/);
    const expected = await readFile(img);
    expected.fill(0, 4 * BS, 5 * BS);
    await assertSameBytes(sb.path('damaged.out'), expected);
    const v = (await lsLines(sb)).find((l) => l.uid === uid)!;
    assert.equal(v.valid, false);
    // An invalid version is never a base.
    const f = await sb.run(['backup', '-f', uid, img, 'vm1@next']);
    assert.equal(f.code, 1);
    assertOneLineError(f.stderr, /is invalid and cannot be the base/);
    // A new backup meeting the damaged block's checksum stores it again...
    const fresh = await sb.backup([img, 'vm1@fresh']);
    await sb.ok(['restore', fresh, sb.path('fresh.out')]);
    await assertSameBytes(img, sb.path('fresh.out'));
    // ...so the old version reads back whole again (it stays invalid until a full scrub).
    await sb.ok(['restore', uid, sb.path('healed.out')]);
    await assertSameBytes(img, sb.path('healed.out'));
  });
});

describe('hints and incremental backups', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}\nhint_check_blocks = 0` });
  });
  after(() => sb.remove());

  const hints = async (
    name: string,
    extents: { offset: number; length: number; exists: string | boolean }[],
  ) => {
    const p = sb.path(name);
    await writeFile(p, JSON.stringify(extents));
    return p;
  };

  it('an initial backup with hints reads only hinted blocks; the rest is sparse', async () => {
    const img = sb.path('initial.img');
    await writeImage(img, { blocks: 10, blockSize: BS, kinds: () => 'random', seed: 'initial' });
    const h = await hints('initial.json', [
      { offset: 2 * BS + 10, length: BS, exists: 'true' }, // touches blocks 2 and 3
      { offset: 6 * BS, length: BS, exists: 'false' },
    ]);
    const uid = await sb.backup(['-r', h, img, 'vm@initial']);
    const expected = Buffer.alloc(10 * BS);
    (await readFile(img)).copy(expected, 2 * BS, 2 * BS, 4 * BS);
    const out = await sb.ok(['restore', uid, '-']);
    assert.ok(out.stdoutBuf.equals(expected), 'restore = hinted blocks, zeros elsewhere');
  });

  it('follows hints exactly along a -f chain; each version restores as of its time; bases unchanged', async () => {
    const img = sb.path('chain.img');
    await writeImage(img, {
      blocks: 24,
      blockSize: BS,
      tail: 4096,
      kinds: (i) => (i % 3 === 0 ? 'zero' : 'random'),
      seed: 'chain',
    });
    const snaps: { uid: string; copy: string }[] = [];
    const snap = async (uid: string) => {
      const copy = sb.path(`snap-${snaps.length}.img`);
      await copyFile(img, copy);
      snaps.push({ uid, copy });
    };
    await snap(await sb.backup([img, 'chain@0']));

    for (let round = 1; round <= 4; round++) {
      const changed = [round, round + 5, 23];
      const extents = [];
      for (const b of changed) {
        await scribble(img, b * BS + 100 * round, 300, `chain-${round}-${b}`);
        extents.push({ offset: b * BS + 100 * round, length: 300, exists: 'true' });
      }
      // Discard a whole block (now zeros) and report it as exists:false.
      const discard = 10 + round;
      const fh = await open(img, 'r+');
      await fh.write(Buffer.alloc(BS), 0, BS, discard * BS);
      await fh.close();
      extents.push({ offset: discard * BS, length: BS, exists: 'false' });
      // Change the tail (short last block) too, in some rounds.
      if (round % 2 === 0) {
        await scribble(img, 24 * BS + 10, 20, `tail-${round}`);
        extents.push({ offset: 24 * BS + 10, length: 20, exists: true });
      }
      extents.sort((a, b) => a.offset - b.offset);
      const h = await hints(`chain-${round}.json`, extents);
      await snap(await sb.backup(['-r', h, '-f', snaps[snaps.length - 1].uid, img, `chain@${round}`]));
    }
    for (const s of snaps) {
      const out = sb.path(`restore-${s.uid}.img`);
      await sb.ok(['restore', '-s', s.uid, out]);
      await assertSameBytes(s.copy, out);
    }
  });

  it('a changed block that is not hinted keeps its old content (the hint contract)', async () => {
    const img = sb.path('contract.img');
    await writeImage(img, { blocks: 8, blockSize: BS, kinds: () => 'random', seed: 'contract' });
    const base = await sb.backup([img, 'c@0']);
    const old = await readFile(img);
    await scribble(img, 2 * BS, 50, 'hinted');
    await scribble(img, 5 * BS, 50, 'not hinted');
    const h = await hints('contract.json', [{ offset: 2 * BS, length: 50, exists: 'true' }]);
    const uid = await sb.backup(['-r', h, '-f', base, img, 'c@1']);
    const expected = Buffer.from(old);
    (await readFile(img)).copy(expected, 2 * BS, 2 * BS, 3 * BS);
    const out = await sb.ok(['restore', uid, '-']);
    assert.ok(out.stdoutBuf.equals(expected));
  });

  it('handles a source that grew or shrank since the base', async () => {
    const img = sb.path('resize.img');
    await writeImage(img, { blocks: 6, blockSize: BS, tail: 5000, kinds: () => 'random', seed: 'resize' });
    const base = await sb.backup([img, 'r@0']);
    // Grow by 2.5 blocks; the new region is written and hinted.
    const grownSize = 8 * BS + BS / 2;
    await truncate(img, grownSize);
    await scribble(img, 6 * BS + 5000, grownSize - (6 * BS + 5000), 'grown');
    const h1 = await hints('grow.json', [
      { offset: 6 * BS + 5000, length: grownSize - (6 * BS + 5000), exists: 'true' },
    ]);
    const grown = await sb.backup(['-r', h1, '-f', base, img, 'r@grown']);
    await sb.ok(['restore', grown, sb.path('grown.out')]);
    await assertSameBytes(img, sb.path('grown.out'));
    // Shrink to 3.25 blocks, no hints: the new short last block is re-read.
    await truncate(img, 3 * BS + BS / 4);
    const h2 = await hints('shrink.json', []);
    const shrunk = await sb.backup(['-r', h2, '-f', grown, img, 'r@shrunk']);
    await sb.ok(['restore', shrunk, sb.path('shrunk.out')]);
    await assertSameBytes(img, sb.path('shrunk.out'));
    // Without hints, -f reads everything.
    const full = await sb.backup(['-f', shrunk, img, 'r@full']);
    await sb.ok(['restore', full, sb.path('full.out')]);
    await assertSameBytes(img, sb.path('full.out'));
  });

  it('catches wrong hints with the sanity check and stores nothing', async () => {
    const sb2 = await Sandbox.create({ defaults: `block_size = ${BS}\nhint_check_blocks = 1000` });
    try {
      const img = sb2.path('wrong.img');
      await writeImage(img, { blocks: 12, blockSize: BS, kinds: () => 'random', seed: 'wrong' });
      const base = await sb2.backup([img, 'w@0']);
      await scribble(img, 9 * BS, 10, 'unhinted change');
      await writeFile(sb2.path('w.json'), JSON.stringify([{ offset: 0, length: 10, exists: 'true' }]));
      const before = (await sb2.ok(['-m', 'ls'])).stdout;
      const r = await sb2.run(['backup', '-r', sb2.path('w.json'), '-f', base, img, 'w@1']);
      assert.equal(r.code, 1);
      assertOneLineError(r.stderr, /hints are wrong: block 9 .*differs from base/);
      assert.equal((await sb2.ok(['-m', 'ls'])).stdout, before);
      // The same hints with the change hinted pass the check.
      await writeFile(sb2.path('w2.json'), JSON.stringify([{ offset: 9 * BS, length: 10, exists: 'true' }]));
      const ok = await sb2.backup(['-r', sb2.path('w2.json'), '-f', base, img, 'w@1']);
      await sb2.ok(['restore', ok, sb2.path('w.out')]);
      await assertSameBytes(img, sb2.path('w.out'));
    } finally {
      await sb2.remove();
    }
  });
});

describe('bad input', () => {
  let sb: Sandbox;
  let img: string;
  let uid: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 4, blockSize: BS, kinds: () => 'random', seed: 'bad' });
    uid = await sb.backup([img, 'bad@0']);
  });
  after(() => sb.remove());

  const cases: { name: string; args: () => Promise<string[]>; code: number; re: RegExp }[] = [
    {
      name: 'malformed uid',
      args: async () => ['restore', 'not-a-uid', sb.path('x')],
      code: 1,
      re: /'not-a-uid' is not a version uid/,
    },
    {
      name: 'unknown uid',
      args: async () => ['restore', '00000000-0000-4000-8000-000000000000', sb.path('x')],
      code: 1,
      re: /not found/,
    },
    {
      name: 'existing target without --force',
      args: async () => ['restore', uid, img],
      code: 1,
      re: /exists; use --force/,
    },
    {
      name: 'target is a directory',
      args: async () => ['restore', uid, sb.dir],
      code: 1,
      re: /is a directory/,
    },
    {
      name: 'missing source',
      args: async () => ['backup', sb.path('nope.img'), 'x'],
      code: 1,
      re: /does not exist/,
    },
    {
      name: 'source is a directory',
      args: async () => ['backup', sb.dir, 'x'],
      code: 1,
      re: /is a directory/,
    },
    {
      name: 'hints past the end',
      args: async () => {
        await writeFile(
          sb.path('past.json'),
          JSON.stringify([{ offset: 4 * BS - 10, length: 20, exists: 'true' }]),
        );
        return ['backup', '-r', sb.path('past.json'), img, 'x'];
      },
      code: 1,
      re: /past the end of the source/,
    },
    {
      name: 'hints not JSON',
      args: async () => {
        await writeFile(sb.path('garbage.json'), 'offset=1');
        return ['backup', '-r', sb.path('garbage.json'), img, 'x'];
      },
      code: 1,
      re: /not valid JSON/,
    },
    {
      name: 'hint file missing',
      args: async () => ['backup', '-r', sb.path('none.json'), img, 'x'],
      code: 1,
      re: /cannot read hint file/,
    },
    {
      name: 'hints with stdin',
      args: async () => ['backup', '-r', sb.path('past.json'), '-', 'x'],
      code: 2,
      re: /seekable/,
    },
    {
      name: 'unknown base',
      args: async () => ['backup', '-f', '00000000-0000-4000-8000-000000000000', img, 'x'],
      code: 1,
      re: /not found/,
    },
    { name: 'name with spaces', args: async () => ['backup', img, 'a b'], code: 2, re: /whitespace/ },
    {
      name: 'unknown rm uid',
      args: async () => ['rm', '00000000-0000-4000-8000-000000000000'],
      code: 1,
      re: /not found/,
    },
  ];
  for (const c of cases) {
    it(`${c.name}: one line, exit ${c.code}, store unchanged`, async () => {
      const before = (await sb.ok(['-m', 'ls'])).stdout;
      const objects = await countObjects(sb.dataDir);
      const r = await sb.run(await c.args());
      assert.equal(r.code, c.code, r.stderr);
      assertOneLineError(r.stderr, c.re);
      assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
      assert.equal(await countObjects(sb.dataDir), objects);
    });
  }

  it('usage errors exit 2 without a stack trace', async () => {
    for (const args of [['restore', uid], ['backup'], ['frobnicate'], ['ls', '--bogus']]) {
      const r = await sb.run(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.doesNotMatch(r.stderr, /^\s+at /m);
    }
  });

  it('a bad config file names the key and exits 1', async () => {
    const cfg = sb.path('bad.cfg');
    await writeFile(cfg, '[DEFAULTS]\nblok_size = 4096\n');
    const r = await runBacky(['-c', cfg, 'ls']);
    assert.equal(r.code, 1);
    assertOneLineError(r.stderr, /unknown key 'blok_size' in \[DEFAULTS\]/);
  });

  it('-v shows a stack trace for errors', async () => {
    const r = await sb.run(['-v', 'restore', '00000000-0000-4000-8000-000000000000', sb.path('x')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^\s+at /m);
  });

  it('a reader that stops early (restore UID - | head) gives one line and exit 1', async () => {
    const big = sb.path('pipe-big.img');
    await writeImage(big, { blocks: 64, blockSize: BS, kinds: () => 'random', seed: 'epipe' });
    const bigUid = await sb.backup([big, 'pipe@0']);
    const err = sb.path('epipe.err');
    const status = execFileSync(
      'bash',
      [
        '-c',
        `"$0" "$1" -c "$2" restore "$3" - 2>"$4" | head -c 10 >/dev/null; echo \${PIPESTATUS[0]}`,
        process.execPath,
        BIN,
        sb.config,
        bigUid,
        err,
      ],
      { encoding: 'utf8' },
    ).trim();
    assert.equal(status, '1');
    assertOneLineError(await readFile(err, 'utf8'), /EPIPE/);
  });

  it('--force overwrites an existing file exactly', async () => {
    const target = sb.path('overwrite.img');
    await writeFile(target, randomBytesSeeded('junk', 10 * BS)); // longer than the image
    await sb.ok(['restore', '--force', uid, target]);
    await assertSameBytes(img, target);
  });

  it('rm removes a version; its blocks stay for others', async () => {
    const again = await sb.backup([img, 'bad@1']);
    await sb.ok(['rm', uid]);
    const uids = (await lsLines(sb)).map((l) => l.uid);
    assert.ok(!uids.includes(uid), 'the removed version is gone');
    assert.ok(uids.includes(again), 'the other version stays');
    await sb.ok(['restore', again, sb.path('after-rm.img')]);
    await assertSameBytes(img, sb.path('after-rm.img'));
  });
});

describe('embedded default (no config file)', () => {
  it('backs up to ~/.local/share/backy and restores', async () => {
    const home = await mkdtemp(join(tmpdir(), 'backy-home-'));
    try {
      const env = { HOME: home, XDG_DATA_HOME: '', BACKY_CONFIG: '' };
      const img = join(home, 'disk.img');
      await writeImage(img, {
        blocks: 3,
        blockSize: 1 << 20,
        kinds: (i) => (i === 1 ? 'zero' : 'random'),
        seed: 'home',
      });
      const r = await runBacky(['backup', 'disk.img', 'vm1@backup1'], { cwd: home, env });
      assert.equal(r.code, 0, r.stderr);
      const uid = r.stdout.trim();
      assert.ok((await stat(join(home, '.local/share/backy/backy.sqlite'))).isFile());
      assert.ok((await stat(join(home, '.local/share/backy/data'))).isDirectory());
      const ls = await runBacky(['ls'], { cwd: home, env });
      assert.match(ls.stdout, new RegExp(uid));
      assert.equal((await runBacky(['restore', uid, 'out.img'], { cwd: home, env })).code, 0);
      await assertSameBytes(img, join(home, 'out.img'));
      // XDG_DATA_HOME wins when set.
      const xdg = join(home, 'xdg');
      await mkdir(xdg);
      const r2 = await runBacky(['backup', 'disk.img', 'vm1@backup2'], {
        cwd: home,
        env: { ...env, XDG_DATA_HOME: xdg },
      });
      assert.equal(r2.code, 0, r2.stderr);
      assert.ok((await stat(join(xdg, 'backy/backy.sqlite'))).isFile());
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});

const isRoot = process.getuid?.() === 0;
let haveLosetup = false;
try {
  execFileSync('losetup', ['--version'], { stdio: 'ignore' });
  haveLosetup = true;
} catch {
  haveLosetup = false;
}

describe(
  'block devices (loop devices)',
  { skip: !isRoot || !haveLosetup ? 'needs root and losetup (util-linux)' : false },
  () => {
    let sb: Sandbox;
    const loops: string[] = [];
    before(async () => {
      sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    });
    after(async () => {
      for (const l of loops) execFileSync('losetup', ['-d', l]);
      await sb.remove();
    });
    const attach = (file: string) => {
      const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
      loops.push(dev);
      return dev;
    };

    it('backs up from a block device and restores to another, exactly', async () => {
      const img = sb.path('dev.img');
      await writeImage(img, {
        blocks: 32,
        blockSize: BS,
        kinds: (i) => (i % 4 === 0 ? 'zero' : 'random'),
        seed: 'dev',
      });
      const src = attach(img);
      const uid = await sb.backup([src, 'dev@0']);
      const v = (await lsLines(sb)).find((l) => l.uid === uid)!;
      assert.equal(v.sizeBytes, 32 * BS, 'size comes from the device, not stat');
      const targetFile = sb.path('target.img');
      await writeFile(targetFile, randomBytesSeeded('old content', 32 * BS));
      const dst = attach(targetFile);
      await sb.ok(['restore', uid, dst]); // a device needs no --force
      await assertSameBytes(img, await readFile(dst)); // readFile reads a device to its end
      // Too small a device is refused.
      const smallFile = sb.path('small.img');
      await writeFile(smallFile, Buffer.alloc(BS));
      const small = attach(smallFile);
      const r = await sb.run(['restore', uid, small]);
      assert.equal(r.code, 1);
      assertOneLineError(r.stderr, /holds 65536 bytes, the version needs/);
    });
  },
);

async function du(dir: string): Promise<{ size: number }> {
  let size = 0;
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else size += (await stat(join(d, e.name))).size;
    }
  };
  await walk(dir);
  return { size };
}
