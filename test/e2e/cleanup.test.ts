/**
 * cleanup end to end: what it frees after rm, what it leaves of a crashed backup, and that it
 * keeps everything a running backup (a separate process, paused mid-stream) uses.
 */
import assert from 'node:assert/strict';
import { readFile, utimes, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded, scribble, writeImage } from '../lib/image.js';
import { blockRows, dumpDb, objectFiles, objectPath, query, spawnBacky, waitFor } from '../lib/store.js';
import { referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const HEADER = 16;

/** `cleanup DRY OBJECTS BYTES FILES FILE_BYTES VERSIONS_REMOVED` and `removed UID` lines. */
async function cleanup(sb: Sandbox, ...args: string[]) {
  // -v: what cleanup kept and why are INFO lines, on stderr only with -v.
  const r = await sb.ok(['-v', '-m', 'cleanup', ...args]);
  const lines = r.stdout.trim().split('\n');
  const f = lines[0].split(' ').map(Number);
  return {
    objects: f[2],
    bytes: f[3],
    files: f[4],
    removed: lines.filter((l) => l.startsWith('removed ')).map((l) => l.slice(8)),
    stderr: r.stderr,
  };
}

function referenced(sb: Sandbox): Promise<string[]> {
  return referencedChecksums(sb.dbPath);
}

describe('cleanup', () => {
  let sb: Sandbox;
  let imgA: string, imgB: string;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    imgA = sb.path('a.img');
    imgB = sb.path('b.img');
    await writeImage(imgA, {
      blocks: 12,
      blockSize: BS,
      seed: 'cl',
      kinds: (i) => (i === 3 ? 'zero' : 'random'),
    });
    await writeImage(imgB, {
      blocks: 12,
      blockSize: BS,
      seed: 'cl',
      kinds: (i) => (i === 3 ? 'zero' : 'random'),
    });
    await scribble(imgB, 0, 4 * BS, 'b-only'); // B: blocks 0..3 its own, 4..11 shared with A
  });
  after(() => sb.remove());

  it('after rm frees exactly the removed version unique objects; dry run changes nothing', async () => {
    const a = await sb.backup([imgA, 'vm-a']);
    const b = await sb.backup([imgB, 'vm-b']);
    const inB = new Set(blockRows(sb, b).map((r) => r.checksum));
    const onlyA = blockRows(sb, a)
      .map((r) => r.checksum)
      .filter((c): c is string => c !== null && !inB.has(c));
    assert.equal(onlyA.length, 3); // blocks 0..2 (3 is sparse)
    await sb.ok(['rm', a]);

    const dbBefore = dumpDb(sb);
    const filesBefore = await objectFiles(sb);
    const dry = await cleanup(sb, '--dry-run');
    assert.deepEqual([dry.objects, dry.bytes], [3, 3 * (BS + HEADER)]);
    assert.equal(dumpDb(sb), dbBefore);
    assert.deepEqual(await objectFiles(sb), filesBefore);

    const real = await cleanup(sb);
    assert.deepEqual([real.objects, real.bytes, real.files], [3, 3 * (BS + HEADER), 0]);
    const files = await objectFiles(sb);
    assert.deepEqual(
      files,
      filesBefore.filter((f) => !onlyA.includes(f)),
    );
    assert.deepEqual(files, await referenced(sb));
    const out = sb.path('b.out');
    await sb.ok(['restore', b, out]);
    await assertSameBytes(imgB, out);
    assert.equal((await sb.run(['scrub', b])).code, 0);
    assert.equal((await cleanup(sb)).objects, 0, 'a second cleanup finds nothing');
  });

  it('reclaims what a crashed backup left: lease, incomplete version, unrecorded and temp files', async () => {
    const before = await objectFiles(sb);
    const run = spawnBacky(sb, ['backup', '-', 'vm-crash']);
    run.child.stdin.write(randomBytesSeeded('crash', 6 * BS));
    await waitFor(
      'object files of the crashing backup',
      async () => (await objectFiles(sb)).length >= before.length + 4,
    );
    run.child.kill('SIGKILL');
    await run.done;
    const [{ uid }] = query<{ uid: string }>(sb, "SELECT uid FROM versions WHERE status = 'incomplete'");
    // A temp file as a writer killed before its rename leaves it, an hour old.
    const dir = join(sb.dataDir, 'ab', 'cd');
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, '.tmp-abcd0123-000000000000');
    await writeFile(tmp, Buffer.alloc(1000, 1));
    const old = new Date(Date.now() - 3600_000);
    await utimes(tmp, old, old);

    const dbBefore = dumpDb(sb);
    const dry = await cleanup(sb, '--dry-run');
    assert.equal(dumpDb(sb), dbBefore, 'a dry run releases and removes nothing');
    const r = await cleanup(sb);
    assert.deepEqual([dry.objects, dry.files, dry.removed], [r.objects, r.files, r.removed]);
    assert.deepEqual(r.removed, [uid]);
    assert.ok(r.files >= 5, `unrecorded object files and the temp file go, got ${r.files}`);
    assert.deepEqual(query(sb, 'SELECT * FROM leases'), []);
    assert.deepEqual(await objectFiles(sb), before);
    assert.deepEqual(await objectFiles(sb), await referenced(sb));
    await assert.rejects(readFile(tmp), /ENOENT/);
  });

  it('keeps what a running backup dedups against or has stored but not yet recorded', async () => {
    const [{ uid: b }] = query<{ uid: string }>(sb, "SELECT uid FROM versions WHERE name = 'vm-b'");
    const a2 = await sb.backup([imgA, 'vm-a2']);
    await sb.ok(['rm', b]);
    await sb.ok(['rm', a2]); // every object of A is garbage now, last seen before the backup below
    const garbage = (await objectFiles(sb)).length;
    assert.equal(garbage, 15); // B's 4 own objects and A's 11

    const a = await readFile(imgA);
    const novel = randomBytesSeeded('novel', 4 * BS);
    const first = Buffer.concat([a.subarray(0, 8 * BS), novel]); // dedups 7 objects (3 is zero), stores 4
    const rest = a.subarray(8 * BS); // 4 more of A's objects, not yet touched when cleanup runs
    const run = spawnBacky(sb, ['backup', '-', 'vm-c']);
    try {
      run.child.stdin.write(first);
      await waitFor('the running backup to dedup and store', async () => {
        const touched = query<{ n: number }>(
          sb,
          'SELECT count(*) AS n FROM objects WHERE last_seen >= (SELECT min(started) FROM leases)',
        )[0].n;
        return touched === 7 && (await objectFiles(sb)).length === garbage + 4;
      });
      const r = await cleanup(sb);
      // B's own four and A's last four were garbage and untouched; the rest is the backup's.
      assert.deepEqual([r.objects, r.files, r.removed], [8, 0, []]);
      assert.match(r.stderr, /Running: 1 backup;/);
      run.child.stdin.end(rest);
      const done = await run.done;
      assert.equal(done.code, 0, done.stderr);
    } finally {
      run.child.kill('SIGKILL');
    }
    const [{ uid: c }] = query<{ uid: string }>(sb, "SELECT uid FROM versions WHERE name = 'vm-c'");
    const expected = sb.path('c.expected');
    await writeFile(expected, Buffer.concat([first, rest]));
    const out = sb.path('c.out');
    await sb.ok(['restore', c, out]);
    await assertSameBytes(expected, out);
    assert.equal((await sb.run(['scrub', c])).code, 0);
    assert.equal((await cleanup(sb)).objects, 0);
    assert.deepEqual(await objectFiles(sb), await referenced(sb));
    for (const ch of await referenced(sb)) await readFile(objectPath(sb, ch));
  });
});
