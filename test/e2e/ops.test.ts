/**
 * Day-to-day operations end to end: protect, labels, retention (enforce), du and --json.
 * Old versions for retention are made the way an operator could: export a real version, give
 * the copy another uid and date, import it (so every version is real and restorable).
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { cp, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';

const BS = 64 * 1024;

function oneError(stderr: string, re: RegExp) {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, stderr);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m);
}

async function lsJson(sb: Sandbox, args: string[] = []) {
  const r = await sb.ok(['--json', 'ls', ...args]);
  return JSON.parse(r.stdout) as {
    uid: string;
    name: string;
    date: string;
    date_us: number;
    valid: boolean;
    status: string;
    protected: boolean;
    labels: Record<string, string>;
    size_bytes: number;
  }[];
}

/** A copy of version `uid` under a new uid, dated `iso`, via export + import. */
async function importCopy(sb: Sandbox, uid: string, iso: string, name?: string): Promise<string> {
  const file = sb.path(`export-${randomUUID()}.jsonl`);
  await sb.ok(['export', uid, file]);
  const lines = (await readFile(file, 'utf8')).split('\n');
  const header = JSON.parse(lines[0]);
  header.uid = randomUUID();
  header.date = Date.parse(iso) * 1000;
  header.protected = false;
  if (name) header.name = name;
  lines[0] = JSON.stringify(header);
  await writeFile(file, lines.join('\n'));
  await sb.ok(['import', file]);
  return header.uid;
}

async function objectBytes(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    // Objects only: meta/ holds the store's descriptor and metadata copies.
    if (e.isFile() && /^[0-9a-f]{64}$/.test(e.name)) n += (await stat(join(e.parentPath, e.name))).size;
  }
  return n;
}

describe('protect', () => {
  let sb: Sandbox;
  let img: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 6, blockSize: BS, kinds: () => 'random', seed: 'protect' });
  });
  after(() => sb.remove());

  it('rm refuses a protected version, even with --force; unprotect lifts it', async () => {
    const uid = await sb.backup([img, 'vm']);
    await sb.ok(['protect', uid]);
    assert.equal((await lsJson(sb)).find((v) => v.uid === uid)!.protected, true);
    for (const args of [
      ['rm', uid],
      ['rm', '--force', uid],
    ]) {
      const r = await sb.run(args);
      assert.equal(r.code, 1);
      oneError(r.stderr, /is protected; run 'backy unprotect/);
    }
    await sb.ok(['restore', uid, sb.path('p.img')]);
    await assertSameBytes(img, sb.path('p.img'));
    await sb.ok(['unprotect', uid]);
    await sb.ok(['rm', uid]);
    assert.equal(
      (await lsJson(sb)).find((v) => v.uid === uid),
      undefined,
    );
  });

  it('backup --protect protects the new version; ls shows it', async () => {
    const uid = await sb.backup(['--protect', img, 'vm']);
    const r = await sb.ok(['-m', 'ls', 'vm']);
    const f = r.stdout
      .trim()
      .split('\n')
      .find((l) => l.includes(uid))!
      .split(' ');
    assert.equal(f[9], '1', 'field 10: PROTECTED');
    assert.equal((await sb.run(['rm', '--force', uid])).code, 1);
  });

  it('protect of an unknown uid changes nothing (all or none)', async () => {
    const uid = await sb.backup([img, 'vm2']);
    const r = await sb.run(['protect', uid, '00000000-0000-4000-8000-000000000000']);
    assert.equal(r.code, 1);
    oneError(r.stderr, /not found/);
    assert.equal((await lsJson(sb)).find((v) => v.uid === uid)!.protected, false);
  });
});

describe('labels', () => {
  let sb: Sandbox;
  let img: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 3, blockSize: BS, kinds: () => 'random', seed: 'labels' });
  });
  after(() => sb.remove());

  it('backup -l, label set/remove, ls --label (AND), ls -m and --json show them', async () => {
    const a = await sb.backup(['-l', 'env=prod', '-l', 'team=db', img, 'vm']);
    const b = await sb.backup(['-l', 'env=prod', img, 'vm']);
    const c = await sb.backup([img, 'vm']);
    let vs = await lsJson(sb);
    assert.deepEqual(vs.find((v) => v.uid === a)!.labels, { env: 'prod', team: 'db' });
    assert.deepEqual(vs.find((v) => v.uid === c)!.labels, {});
    assert.deepEqual(
      (await lsJson(sb, ['--label', 'env=prod'])).map((v) => v.uid),
      [a, b],
    );
    assert.deepEqual(
      (await lsJson(sb, ['--label', 'env=prod', '--label', 'team=db'])).map((v) => v.uid),
      [a],
    );
    await sb.ok(['label', b, 'team=web', 'env-', 'tier=gold']);
    vs = await lsJson(sb);
    assert.deepEqual(vs.find((v) => v.uid === b)!.labels, { team: 'web', tier: 'gold' });
    const m = await sb.ok(['-m', 'ls', '--label', 'team=web']);
    const fields = m.stdout.trim().split(' ');
    assert.equal(fields[6], b);
    assert.equal(fields[10], 'team=web,tier=gold', 'field 11: LABELS');
    const none = await sb.ok(['-m', 'ls', '--label', 'team=nobody']);
    assert.equal(none.stdout, '');
    // rm takes the labels with the version.
    await sb.ok(['rm', a]);
    assert.deepEqual(await lsJson(sb, ['--label', 'team=db']), []);
  });

  it('labels travel in export files: an import into a fresh database brings them back', async () => {
    const uid = await sb.backup(['-l', 'env=stage', '-l', 'owner=ops@example.org', img, 'exp']);
    const plain = await sb.backup([img, 'exp']);
    await sb.ok(['export', uid, sb.path('labelled.export')]);
    await sb.ok(['export', plain, sb.path('plain.export')]);
    const header = JSON.parse((await readFile(sb.path('labelled.export'), 'utf8')).split('\n')[0]) as {
      labels?: Record<string, string>;
      store_id?: string;
    };
    assert.deepEqual(header.labels, { env: 'stage', owner: 'ops@example.org' });
    assert.equal(header.store_id, undefined, "the store id is only in the store's own copies");
    const fresh = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      // The objects without the store's descriptor and copies (with them, a new database must
      // run recover before it may write: store-authority.test.ts), and a new database: the
      // README's rebuild by import.
      await cp(sb.dataDir, fresh.dataDir, { recursive: true, filter: (src) => !src.includes('/meta') });
      await fresh.ok(['import', sb.path('labelled.export')]);
      await fresh.ok(['import', sb.path('plain.export')]);
      const vs = await lsJson(fresh);
      assert.deepEqual(vs.find((v) => v.uid === uid)!.labels, { env: 'stage', owner: 'ops@example.org' });
      assert.deepEqual(vs.find((v) => v.uid === plain)!.labels, {});
      await fresh.ok(['restore', uid, fresh.path('r.img')]);
      await assertSameBytes(img, fresh.path('r.img'));
    } finally {
      await fresh.remove();
    }
  });

  it('bad labels are one-line errors and change nothing', async () => {
    const uid = await sb.backup([img, 'bad']);
    const before = await lsJson(sb);
    for (const args of [
      ['label', uid, 'novalue'],
      ['label', uid, '1key=x'],
      ['label', uid, 'k=has space'],
      ['label', uid, `k=${'x'.repeat(300)}`],
      ['label', uid, 'ok=1', 'bad key=2'],
      ['backup', '-l', 'x', img, 'bad'],
      ['ls', '--label', 'nokey'],
    ]) {
      const r = await sb.run(args);
      assert.notEqual(r.code, 0, args.join(' '));
      oneError(r.stderr, /label/);
    }
    const r = await sb.run(['label', uid]);
    assert.equal(r.code, 2);
    assert.deepEqual(await lsJson(sb), before);
  });
});

describe('enforce', () => {
  let sb: Sandbox;
  let img: string;
  let seed: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 4, blockSize: BS, kinds: () => 'random', seed: 'enforce' });
    seed = await sb.backup([img, 'seed']);
  });
  after(() => sb.remove());

  it('keeps latestN and one per calendar bucket; skips protected versions and other names', async () => {
    const day = (n: number) => new Date(Date.now() - n * 86_400_000).toISOString();
    // Two a day for the last 5 days (one at 00:30, one at 23:30 UTC of that day, never in the future).
    const vm: { uid: string; daysAgo: number }[] = [];
    for (let d = 5; d >= 1; d--) {
      const date = day(d).slice(0, 10);
      vm.push({ uid: await importCopy(sb, seed, `${date}T00:30:00Z`, 'vm'), daysAgo: d });
      vm.push({ uid: await importCopy(sb, seed, `${date}T23:30:00Z`, 'vm'), daysAgo: d });
    }
    const protectedOld = await importCopy(sb, seed, `${day(30).slice(0, 10)}T12:00:00Z`, 'vm');
    await sb.ok(['protect', protectedOld]);
    const other = await importCopy(sb, seed, `${day(40).slice(0, 10)}T12:00:00Z`, 'other');

    // latest1 takes the youngest out; days3 (Benji's 4 buckets: today, which has none, and 1, 2
    // and 3 days back) keeps the oldest of each of those 3 days.
    const dry = await sb.ok(['-m', 'enforce', '--dry-run', 'latest1,days3', 'vm']);
    const wouldRemove = dry.stdout
      .trim()
      .split('\n')
      .map((l) => l.split(' ')[1]);
    const keep = new Set([
      vm.find((v) => v.daysAgo === 1)!.uid, // yesterday's oldest
      vm.find((v) => v.daysAgo === 2)!.uid, // the day before's oldest
      vm.find((v) => v.daysAgo === 3)!.uid, // and the day before that
      vm[vm.length - 1].uid, // latest1
    ]);
    const expected = vm.filter((v) => !keep.has(v.uid)).map((v) => v.uid);
    assert.deepEqual([...wouldRemove].sort(), [...expected].sort());
    assert.match(
      dry.stdout.split('\n')[0],
      /^removed [0-9a-f-]{36} vm \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$/,
    );
    assert.equal((await lsJson(sb)).length, 13, '--dry-run removes nothing');

    const r = await sb.ok(['--json', 'enforce', 'latest1,days3', 'vm']);
    const out = JSON.parse(r.stdout) as { dry_run: boolean; removed: { uid: string }[] };
    assert.equal(out.dry_run, false);
    assert.deepEqual(out.removed.map((x) => x.uid).sort(), [...expected].sort());
    const left = new Set((await lsJson(sb)).map((v) => v.uid));
    for (const u of keep) assert.ok(left.has(u));
    assert.ok(left.has(protectedOld) && left.has(other) && left.has(seed));
    for (const u of expected) assert.ok(!left.has(u));
    // Idempotent.
    const again = await sb.ok(['-m', 'enforce', 'latest1,days3', 'vm']);
    assert.equal(again.stdout, '');
    // Kept versions still restore.
    for (const u of keep) {
      const out2 = sb.path(`k-${u}.img`);
      await sb.ok(['restore', u, out2]);
      await assertSameBytes(img, out2);
    }
  });

  it('never removes the youngest valid version of a name', async () => {
    const old = await importCopy(sb, seed, '2001-01-01T00:00:00Z', 'lonely');
    const r = await sb.ok(['-m', 'enforce', 'hours1', 'lonely']);
    assert.equal(r.stdout, '');
    assert.ok((await lsJson(sb)).some((v) => v.uid === old));
  });

  it('a bad rule is one line naming it', async () => {
    const r = await sb.run(['enforce', 'latest3,dayz7']);
    assert.equal(r.code, 1);
    oneError(r.stderr, /"dayz7"/);
  });
});

describe('du', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(() => sb.remove());

  it('sparse, referenced and exclusive bytes match what cleanup frees', async () => {
    const a = sb.path('a.img');
    const b = sb.path('b.img');
    // a: 4 random + 2 zero blocks; b: the same 4 random blocks, then 3 more.
    await writeImage(a, { blocks: 6, blockSize: BS, kinds: (i) => (i < 4 ? 'random' : 'zero'), seed: 'du' });
    await writeImage(b, { blocks: 4, blockSize: BS, kinds: () => 'random', seed: 'du' });
    // + one random block twice + another random block (random: incompressible, whatever the codec).
    const x = randomBytesSeeded('du/x', BS);
    await writeFile(b, Buffer.concat([await readFile(b), x, x, randomBytesSeeded('du/y', BS)]));
    const ua = await sb.backup([a, 'a']);
    const ub = await sb.backup([b, 'b']);
    const r = await sb.ok(['--json', 'du']);
    const du = JSON.parse(r.stdout) as {
      versions: {
        uid: string;
        size_bytes: number;
        sparse_bytes: number;
        referenced_bytes: number;
        exclusive_bytes: number;
      }[];
      store: {
        versions: number;
        logical_bytes: number;
        data_bytes: number;
        unique_bytes: number;
        stored_bytes: number;
        dedup_ratio: number;
      };
    };
    const va = du.versions.find((v) => v.uid === ua)!;
    const vb = du.versions.find((v) => v.uid === ub)!;
    assert.equal(va.sparse_bytes, 2 * BS);
    assert.equal(vb.sparse_bytes, 0);
    assert.equal(va.exclusive_bytes, 0, 'a shares all its data with b');
    // b's exclusive objects: x (stored once although it appears twice) and y.
    assert.ok(vb.exclusive_bytes >= 2 * BS && vb.exclusive_bytes < 3 * BS, String(vb.exclusive_bytes));
    assert.equal(du.store.versions, 2);
    assert.equal(du.store.logical_bytes, 6 * BS + 7 * BS);
    assert.equal(du.store.data_bytes, 4 * BS + 7 * BS);
    assert.equal(du.store.unique_bytes, 6 * BS);
    assert.equal(du.store.stored_bytes, await objectBytes(sb.dataDir));
    assert.ok(Math.abs(du.store.dedup_ratio - 11 / 6) < 1e-9);
    // What rm + cleanup of b frees is exactly b's exclusive bytes.
    await sb.ok(['rm', ub]);
    const c = await sb.ok(['-m', 'cleanup']);
    const freed = Number(
      c.stdout
        .trim()
        .split('\n')
        .find((l) => l.startsWith('cleanup '))!
        .split(' ')[3],
    );
    assert.equal(freed, vb.exclusive_bytes);
    assert.equal(await objectBytes(sb.dataDir), du.store.stored_bytes - vb.exclusive_bytes);
    // -m lines and a single-version du.
    const m = await sb.ok(['-m', 'du', ua]);
    const lines = m.stdout.trim().split('\n');
    assert.equal(lines.length, 2);
    assert.equal(lines[0], `du ${ua} a ${6 * BS} ${2 * BS} ${va.referenced_bytes} ${va.referenced_bytes}`);
    assert.match(lines[1], /^store 1 /);
    await sb.ok(['restore', ua, sb.path('a.out')]);
    await assertSameBytes(a, sb.path('a.out'));
  });
});

describe('--json', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(() => sb.remove());

  it('scrub, cleanup, import and backup print one JSON document each', async () => {
    const img = sb.path('j.img');
    await writeImage(img, { blocks: 3, blockSize: BS, kinds: () => 'random', seed: 'json' });
    const b = JSON.parse((await sb.ok(['--json', 'backup', img, 'j'])).stdout) as {
      uid: string;
      valid: boolean;
      stats: { blocks: number; stored: number };
    };
    assert.equal(b.valid, true);
    assert.deepEqual([b.stats.blocks, b.stats.stored], [3, 3]);
    const s = JSON.parse((await sb.ok(['--json', 'scrub', b.uid])).stdout);
    assert.deepEqual([s.uid, s.checked, s.bad, s.differing], [b.uid, 3, 0, 0]);
    await sb.ok(['export', b.uid, sb.path('j.export')]);
    await sb.ok(['rm', b.uid]);
    const c = JSON.parse((await sb.ok(['--json', 'cleanup', '--dry-run'])).stdout);
    assert.equal(c.dry_run, true);
    assert.equal(c.objects, 3);
    const i = JSON.parse((await sb.ok(['--json', 'import', sb.path('j.export')])).stdout);
    assert.deepEqual([i.uid, i.status, i.blocks_imported], [b.uid, 'valid', 3]);
    await sb.ok(['restore', b.uid, sb.path('j.out')]);
    await assertSameBytes(img, sb.path('j.out'));
  });
});
