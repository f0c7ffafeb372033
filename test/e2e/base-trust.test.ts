/**
 * What a -f base is trusted for, end to end: a base of another image is refused (unless
 * --force-base); a thin delta must start from the thin device the base was read from, and that
 * identity is recorded, shown by `ls --json`, and kept by export/import and recover;
 * `--verify-unhinted` catches wrong hints the sampling check misses; a future-dated version
 * (an import) does not make `enforce` remove the real newest one. Every restore compared byte
 * for byte.
 */
import assert from 'node:assert/strict';
import { copyFile, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import { restoreThinPool, thinDelta, thinToolsMissing } from '../lib/thin-pool.js';

const BS = 64 * 1024; // = the thin pool's data block
const BLOCKS = 64;

const uidOf = (stdout: string) => stdout.trim().split('\n').pop()!;

function oneErrorLine(stderr: string): string {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, stderr);
  assert.ok(!/^\s+at /m.test(stderr), `stack trace:\n${stderr}`);
  return errors[0];
}

async function lsJson(sb: Sandbox, name?: string) {
  const r = await sb.ok(['--json', 'ls', ...(name ? [name] : [])]);
  return JSON.parse(r.stdout) as { uid: string; name: string; tracking: unknown; date_us: number }[];
}

/** Blocks of random data, BS each. */
async function image(path: string, seeds: Record<number, string>, blocks = BLOCKS): Promise<void> {
  await writeFile(path, '');
  await truncate(path, blocks * BS);
  const fh = await open(path, 'r+');
  try {
    for (const [idx, seed] of Object.entries(seeds))
      await fh.write(randomBytesSeeded(seed, BS), 0, BS, Number(idx) * BS);
  } finally {
    await fh.close();
  }
}

describe('the -f base', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(() => sb.remove());

  it('of another image is refused (one line, exit 1, nothing recorded); --force-base accepts it', async () => {
    const img1 = sb.path('vm1.img');
    await writeImage(img1, { blocks: 8, blockSize: BS, seed: 'vm1', kinds: () => 'random' });
    const img2 = sb.path('vm2.img');
    await writeImage(img2, { blocks: 8, blockSize: BS, seed: 'vm2', kinds: () => 'random' });
    const base = await sb.backup([img1, 'vm1@a']);
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    const r = await sb.run(['backup', '-f', base, img2, 'vm2@a']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(oneErrorLine(r.stderr), /is a backup of 'vm1@a', another image than 'vm2@a'.*--force-base/);
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
    // The same image under another snapshot name is the normal chain.
    const next = await sb.backup(['-f', base, img1, 'vm1@b']);
    assert.ok(next);
    const forced = await sb.ok(['backup', '--force-base', '-f', base, img2, 'vm2@a']);
    assert.match(forced.stderr, /WARNING: --force-base: base .* is a backup of 'vm1@a'/);
    await sb.ok(['restore', uidOf(forced.stdout), sb.path('vm2.out')]);
    await assertSameBytes(img2, sb.path('vm2.out'));
  });
});

describe('thin device identity', { skip: thinToolsMissing ?? false }, () => {
  let sb: Sandbox;
  let pool: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    pool = await restoreThinPool(sb.dir);
    await image(sb.path('snap1.img'), { 0: 'a', 1: 'b', 2: 'c', 10: 'd' }, 32);
    await image(sb.path('snap2.img'), { 0: 'a', 1: 'b', 2: 'c2', 20: 'e', 21: 'f' }, 32);
  });
  after(() => sb.remove());

  it('is recorded, shown by ls --json, checked against the next delta, and kept by export/import and recover', async () => {
    const delta12 = sb.path('d12.xml');
    await writeFile(delta12, thinDelta(pool));
    const full = await sb.backup([sb.path('snap1.img'), 'lv@1']);
    // The full backup records no thin device: the delta cannot be checked, a warning says so.
    const r = await sb.ok(['backup', '--thin-delta', delta12, '-f', full, sb.path('snap2.img'), 'lv@2']);
    assert.match(r.stderr, /WARNING: base .* has no thin device id recorded/);
    const incr = uidOf(r.stdout);
    const tracking = { kind: 'thin', device_id: 2, base_device_id: 1 };
    const shown = await lsJson(sb);
    assert.deepEqual(shown.find((v) => v.uid === incr)?.tracking, tracking);
    assert.equal(shown.find((v) => v.uid === full)?.tracking, null);

    // The same delta (device 1 -> 2) again, onto the backup of device 2: refused.
    const before = (await sb.ok(['-m', 'ls'])).stdout;
    const bad = await sb.run(['backup', '--thin-delta', delta12, '-f', incr, sb.path('snap2.img'), 'lv@3']);
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(
      oneErrorLine(bad.stderr),
      /thin delta compares device 1 with 2, but base .* is a backup of thin device 2/,
    );
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
    // A delta starting from device 2 passes the check (2 -> 2: nothing changed).
    const delta22 = sb.path('d22.xml');
    await writeFile(delta22, thinDelta(pool, { from: 2, to: 2 }));
    const again = await sb.ok(['backup', '--thin-delta', delta22, '-f', incr, sb.path('snap2.img'), 'lv@3']);
    await sb.ok(['restore', uidOf(again.stdout), sb.path('out3.img')]);
    await assertSameBytes(sb.path('snap2.img'), sb.path('out3.img'));

    // Export carries it; import brings it back.
    const file = sb.path('lv2.export');
    await sb.ok(['export', incr, file]);
    assert.deepEqual(JSON.parse((await readFile(file, 'utf8')).split('\n')[0]).tracking, tracking);
    await sb.ok(['rm', uidOf(again.stdout)]);
    await sb.ok(['rm', incr]);
    await sb.ok(['import', file]);
    assert.deepEqual((await lsJson(sb)).find((v) => v.uid === incr)?.tracking, tracking);
    // An export without the field (an older backy's) still imports, with none recorded.
    const old = (await readFile(file, 'utf8')).split('\n');
    const header = JSON.parse(old[0]);
    delete header.tracking;
    old[0] = JSON.stringify(header);
    await writeFile(sb.path('old.export'), old.join('\n'));
    await sb.ok(['rm', incr]);
    await sb.ok(['import', sb.path('old.export')]);
    assert.equal((await lsJson(sb)).find((v) => v.uid === incr)?.tracking, null);
    await sb.ok(['rm', incr]);
    await sb.ok(['import', file]);
    await sb.ok(['restore', incr, sb.path('out2.img')]);
    await assertSameBytes(sb.path('snap2.img'), sb.path('out2.img'));

    // Recover rebuilds it from the store's metadata copy.
    await sb.ok(['cleanup']); // brings the copies up to date
    for (const suffix of ['', '-wal', '-shm']) await rm(sb.dbPath + suffix, { force: true });
    await sb.ok(['recover']);
    assert.deepEqual((await lsJson(sb)).find((v) => v.uid === incr)?.tracking, tracking);
  });
});

describe('backup --verify-unhinted', () => {
  let sb: Sandbox;
  let base: string;
  let img: string;
  before(async () => {
    // No sampling: what the sample would miss, --verify-unhinted must not.
    sb = await Sandbox.create({ defaults: `block_size = ${BS}\nhint_check_blocks = 0` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: BLOCKS, blockSize: BS, seed: 'v', kinds: () => 'random' });
    base = await sb.backup([img, 'vm@0']);
    await scribble(img, 5 * BS + 100, 200, 'changed-5'); // hinted
    await scribble(img, 9 * BS + 7, 16, 'changed-9'); // 16 bytes, never hinted
  });
  after(() => sb.remove());

  const hints = async (blocks: number[]) => {
    const path = sb.path(`h-${blocks.join('-')}.json`);
    await writeFile(
      path,
      JSON.stringify(blocks.map((b) => ({ offset: b * BS, length: BS, exists: 'true' }))),
    );
    return path;
  };

  it('catches a single wrong block that the sampling check misses; nothing is recorded', async () => {
    const wrong = await hints([5]);
    // The sampling check (off here; and 10 of 62 would find one wrong block 16% of the time) lets it through:
    const missed = await sb.ok(['backup', '-r', wrong, '-f', base, img, 'vm@missed']);
    await sb.ok(['restore', uidOf(missed.stdout), sb.path('missed.img')]);
    await assert.rejects(
      assertSameBytes(img, sb.path('missed.img')),
      /content differs at byte 5898[0-9]{2}$/,
    );
    await sb.ok(['rm', uidOf(missed.stdout)]);

    const before = (await sb.ok(['-m', 'ls'])).stdout;
    const r = await sb.run(['backup', '--verify-unhinted', '-r', wrong, '-f', base, img, 'vm@1']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      oneErrorLine(r.stderr),
      /--verify-unhinted: 1 block\(s\) are not what the hints say \(first: block 9, offset 589824, differs from base/,
    );
    assert.equal((await sb.ok(['-m', 'ls'])).stdout, before, 'no version, not even an incomplete one');
  });

  it('passes on right hints, stores only the changes, and reports how many blocks it verified', async () => {
    const right = await hints([5, 9]);
    const r = await sb.ok(['-v', '-m', 'backup', '--verify-unhinted', '-r', right, '-f', base, img, 'vm@2']);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[lines.length - 2], `verified ${BLOCKS - 2}`);
    assert.match(r.stderr, /2 read, .* 62 kept from base, 62 verified against the base/);
    await sb.ok(['restore', uidOf(r.stdout), sb.path('two.img')]);
    await assertSameBytes(img, sb.path('two.img'));
    const j = await sb.ok(['--json', 'backup', '--verify-unhinted', '-r', right, '-f', base, img, 'vm@3']);
    const out = JSON.parse(j.stdout);
    assert.equal(out.stats.verified, BLOCKS - 2);
    assert.equal(out.stats.read, 2);
  });

  it('a discarded block that holds data is caught too', async () => {
    const copy = sb.path('disc.img');
    await copyFile(img, copy);
    const h = sb.path('disc.json');
    // Block 20 "discarded", but it still holds data; 5 and 9 named.
    await writeFile(
      h,
      JSON.stringify([
        { offset: 5 * BS, length: BS, exists: 'true' },
        { offset: 9 * BS, length: BS, exists: 'true' },
        { offset: 20 * BS, length: BS, exists: 'false' },
      ]),
    );
    const r = await sb.run(['backup', '--verify-unhinted', '-r', h, '-f', base, copy, 'vm@d']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(oneErrorLine(r.stderr), /1 block\(s\) .*first: block 20, .*not zeros although discarded/);
  });

  it('needs hints and -f (usage, exit 2)', async () => {
    for (const args of [
      ['--verify-unhinted', '-f', base, img, 'vm@u'],
      ['--verify-unhinted', '-r', await hints([5]), img, 'vm@u'],
    ]) {
      const r = await sb.run(['backup', ...args]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(oneErrorLine(r.stderr), /--verify-unhinted needs change hints .* and -f UID/);
    }
  });
});

describe('enforce with a future-dated version', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(() => sb.remove());

  it('keeps the real newest backup, keeps the future-dated one, and warns about it', async () => {
    const img = sb.path('vm.img');
    await writeImage(img, { blocks: 3, blockSize: 4 * 1024 * 1024, seed: 'e', kinds: () => 'random' });
    const oldest = await sb.backup([img, 'vm']);
    const skewed = await sb.backup([img, 'vm']);
    const newest = await sb.backup([img, 'vm']);
    // The middle one comes back from an export dated a year ahead (clock skew on another host).
    const file = sb.path('skewed.export');
    await sb.ok(['export', skewed, file]);
    const lines = (await readFile(file, 'utf8')).split('\n');
    const header = JSON.parse(lines[0]);
    header.date += 365 * 86_400 * 1_000_000;
    lines[0] = JSON.stringify(header);
    await writeFile(file, lines.join('\n'));
    await sb.ok(['rm', skewed]);
    await sb.ok(['import', file]);

    const r = await sb.ok(['-m', 'enforce', 'latest1', 'vm']);
    assert.equal(r.stdout.trim().split('\n').length, 1, r.stdout);
    assert.match(r.stdout, new RegExp(`^removed ${oldest} vm `));
    assert.match(
      r.stderr,
      new RegExp(
        `WARNING: version ${skewed} \\(vm\\) is dated ${new Date(header.date / 1000).getUTCFullYear()}-.* in the future`,
      ),
    );
    const left = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
    assert.deepEqual(left.sort(), [newest, skewed].sort());
    // Every night the same: nothing more goes.
    const again = await sb.ok(['-m', 'enforce', 'latest1', 'vm']);
    assert.equal(again.stdout.trim(), '');
    await sb.ok(['restore', newest, sb.path('newest.img')]);
    await assertSameBytes(img, sb.path('newest.img'));
  });
});
