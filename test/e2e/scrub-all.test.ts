/**
 * `scrub --all`: every complete version, longest-unscrubbed first, the time of each scrub
 * recorded (settings rows `scrubbed:<uid>`); damage in one version does not stop the batch
 * and makes it exit 3. Real object files damaged on disk, the real CLI, the real SQLite file.
 */
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { blockRows, objectPath, query } from '../lib/store.js';

const BS = 64 * 1024;

/** The uids of `scrub UID ...` lines, in order. */
function scrubbedUids(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('scrub '))
    .map((l) => l.split(' ')[1]);
}

function scrubTimes(sb: Sandbox): Map<string, number> {
  const rows = query<{ key: string; value: string }>(
    sb,
    "SELECT key, value FROM settings WHERE key LIKE 'scrubbed:%'",
  );
  return new Map(rows.map((r) => [r.key.slice('scrubbed:'.length), Number(r.value.split(' ')[0])]));
}

describe('scrub --all', () => {
  let sb: Sandbox;
  let a: string, b: string, c: string;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    for (const n of ['a', 'b', 'c']) {
      await writeImage(sb.path(`${n}.img`), { blocks: 6, blockSize: BS, seed: n, kinds: () => 'random' });
    }
    a = await sb.backup([sb.path('a.img'), 'vm-a']);
    b = await sb.backup([sb.path('b.img'), 'vm-b']);
    c = await sb.backup([sb.path('c.img'), 'vm-c']);
  });
  after(() => sb.remove());

  it('usage errors are one line, exit 2', async () => {
    for (const args of [
      ['scrub'],
      ['scrub', '--all', a],
      ['scrub', '--all', '-s', sb.path('a.img')],
      ['scrub', '--all', '--older-than', '5x'],
      ['scrub', '--older-than', '1d', a],
      ['scrub', '--all', '-p', '0'],
    ]) {
      const r = await sb.run(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.split('\n').filter((l) => l.includes('ERROR:')).length, 1, r.stderr);
    }
  });

  it('scrubs never-scrubbed versions oldest first and records when', async () => {
    const before = Date.now() * 1000;
    const r = await sb.ok(['-m', 'scrub', '--all']);
    assert.deepEqual(scrubbedUids(r.stdout), [a, b, c]);
    for (const line of r.stdout.trim().split('\n')) assert.match(line, / 6 0 0 0 0$/);
    const times = scrubTimes(sb);
    assert.deepEqual([...times.keys()].sort(), [a, b, c].sort());
    for (const t of times.values()) assert.ok(t >= before - 1_000_000 && t <= Date.now() * 1000 + 1_000_000);

    // All scrubbed within the hour: nothing to do.
    const none = await sb.ok(['-m', 'scrub', '--all', '--older-than', '1h']);
    assert.equal(none.stdout, '');
  });

  it('longest-unscrubbed first: a version scrubbed on its own goes last', async () => {
    await sb.ok(['scrub', a]); // `scrub UID` records its time too
    const times = scrubTimes(sb);
    assert.ok(times.get(a)! > times.get(c)!);
    const r = await sb.ok(['-m', 'scrub', '--all', '-p', '50']);
    assert.deepEqual(scrubbedUids(r.stdout), [b, c, a]);
    const j = await sb.ok(['--json', 'scrub', '--all', '--older-than', '1s', '-p', '100']);
    const doc = JSON.parse(j.stdout) as { percent: number; scrubbed: { uid: string; checked: number }[] };
    assert.equal(doc.percent, 100);
    // --older-than 1s: what the previous run scrubbed a moment ago may be skipped; the order holds.
    const order = [b, c, a].filter((u) => doc.scrubbed.some((s) => s.uid === u));
    assert.deepEqual(
      doc.scrubbed.map((s) => s.uid),
      order,
    );
  });

  it('damage in one version: the batch goes on, marks it invalid, names it, exits 3', async () => {
    const victim = blockRows(sb, b)[2].checksum!;
    const fh = await open(objectPath(sb, victim), 'r+');
    const one = Buffer.alloc(1);
    await fh.read(one, 0, 1, 500);
    one[0] ^= 0x10;
    await fh.write(one, 0, 1, 500);
    await fh.close();
    const r = await sb.run(['-m', 'scrub', '--all']);
    assert.equal(r.code, 3, r.stderr);
    const uids = scrubbedUids(r.stdout);
    assert.deepEqual([...uids].sort(), [a, b, c].sort());
    assert.match(r.stdout, new RegExp(`^scrub ${b} 6 1 0 1 0$`, 'm'));
    assert.match(r.stderr, new RegExp(`ERROR: version ${b} block 2: .*checksum mismatch`));
    assert.match(r.stderr, /scrub --all found damaged or missing blocks in 1 of 3 versions/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
    const ls = JSON.parse((await sb.ok(['--json', 'ls'])).stdout) as { uid: string; valid: boolean }[];
    assert.deepEqual(
      ls.filter((v) => !v.valid).map((v) => v.uid),
      [b],
    );
  });

  it('the time of a removed version is forgotten', async () => {
    await sb.ok(['rm', c]);
    await sb.run(['scrub', '--all', '--older-than', '1w']);
    assert.ok(!scrubTimes(sb).has(c));
  });
});
