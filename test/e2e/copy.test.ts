/**
 * `backy copy` between directory stores with SQLite databases, through the built CLI: plain
 * to encrypted and between two keys, a second copy, a copy killed and run again, rm and
 * cleanup on either side while a copy is paused (BACKY_TEST_COPY_PAUSE), a damaged source
 * block. Every copied version is restored from the target alone and compared byte for byte.
 * The other store kinds (S3, PostgreSQL) are in copy-stores.test.ts.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, open, readFile, rm, writeFile } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, runBacky } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import { blockRows, objectFiles, objectPath, query, waitFor } from '../lib/store.js';

const BS = 64 * 1024;
const BLOCKS = 48;
const sandboxes: Sandbox[] = [];

after(async () => {
  for (const sb of sandboxes) await sb.remove();
});

/** A sandbox with 64 KiB blocks; `data` lines go under [DataBackend] (encryption, key_file). */
export async function copySandbox(data = '', engine?: string): Promise<Sandbox> {
  const sb = await Sandbox.create({ defaults: `block_size = ${BS}`, engine });
  sandboxes.push(sb);
  if (data) await writeFile(sb.config, `${await readFile(sb.config, 'utf8')}${data}\n`);
  return sb;
}

export async function keyed(): Promise<Sandbox> {
  const sb = await copySandbox();
  const key = sb.path('store.key');
  const r = await runBacky(['key', 'create', key]);
  assert.equal(r.code, 0, r.stderr);
  await writeFile(
    sb.config,
    `${await readFile(sb.config, 'utf8')}encryption = aes-256-gcm\nkey_file = ${key}\n`,
  );
  return sb;
}

export interface CopyJson {
  dry_run: boolean;
  copied: number;
  present: number;
  skipped: number;
  bytes_sent: number;
  versions: {
    uid: string;
    outcome: string;
    status: string;
    blocks: number;
    blocks_from_base: number;
    blocks_sent: number;
    bytes_sent: number;
    bytes_read: number;
    blocks_damaged: number;
  }[];
}

export async function copy(src: Sandbox, dst: Sandbox, args: string[], env?: NodeJS.ProcessEnv) {
  const r = await src.run(['--json', 'copy', '--to', dst.config, ...args], { env });
  return { r, json: r.code === 0 || r.code === 3 ? (JSON.parse(r.stdout) as CopyJson) : undefined };
}

export async function copyOk(src: Sandbox, dst: Sandbox, args: string[]): Promise<CopyJson> {
  const { r, json } = await copy(src, dst, args);
  assert.equal(r.code, 0, r.stderr);
  return json!;
}

/** Restores `uid` from `sb` and compares it with `image`. */
export async function restoresAs(sb: Sandbox, uid: string, image: string): Promise<void> {
  const out = sb.path(`restored-${uid}`);
  await rm(out, { force: true });
  await sb.ok(['restore', uid, out]);
  await assertSameBytes(image, out);
  await rm(out);
}

/** A base of BLOCKS blocks (with zero runs) and a hinted incremental changing blocks 3, 17, 30. */
export async function baseAndIncremental(
  src: Sandbox,
): Promise<{ base: string; child: string; img1: string; img2: string }> {
  const img1 = src.path('img1');
  await writeImage(img1, {
    blockSize: BS,
    blocks: BLOCKS,
    kinds: (i) => (i % 7 === 6 ? 'zero' : i % 5 === 4 ? 'text' : 'random'),
    seed: 'copy',
  });
  const base = await src.backup(['--snapshot-name', 'snap1', '-l', 'tier=gold', '--protect', img1, 'vm1']);
  const img2 = src.path('img2');
  await writeFile(img2, await readFile(img1));
  const hints = [];
  for (const b of [3, 17, 30]) {
    await scribble(img2, b * BS + 100, 5000, `change-${b}`);
    hints.push({ offset: b * BS, length: BS, exists: 'true' });
  }
  await writeFile(src.path('hints.json'), JSON.stringify(hints));
  const child = await src.backup(['-f', base, '-r', src.path('hints.json'), img2, 'vm1']);
  return { base, child, img1, img2 };
}

/** Object names in the database and in the data directory. */
async function names(sb: Sandbox): Promise<Set<string>> {
  const rows = query<{ checksum: string }>(sb, 'SELECT checksum FROM objects');
  return new Set([...rows.map((r) => r.checksum), ...(await objectFiles(sb))]);
}

function spawnCopy(src: Sandbox, dst: Sandbox, args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(
    process.execPath,
    [BIN, '-c', src.config, '--json', 'copy', '--to', dst.config, ...args],
    {
      cwd: src.dir,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { child, done };
}

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

function versionStatus(sb: Sandbox, uid: string): string | undefined {
  return query<{ status: string }>(sb, 'SELECT status FROM versions WHERE uid = ?', uid)[0]?.status;
}

describe('backy copy between directory stores', () => {
  for (const kind of ['plain → encrypted', 'one key → another key'] as const) {
    it(`${kind}: restores from the target alone, keeps every field, shares no object name; a second copy sends nothing`, async () => {
      const src = kind === 'plain → encrypted' ? await copySandbox() : await keyed();
      const dst = await keyed();
      const { base, child, img1, img2 } = await baseAndIncremental(src);

      const first = await copyOk(src, dst, ['--all']);
      assert.equal(first.copied, 2);
      assert.deepEqual(
        first.versions.map((v) => [v.uid, v.outcome, v.status]),
        [
          [base, 'copied', 'valid'],
          [child, 'copied', 'valid'],
        ],
      );
      assert.ok(first.bytes_sent > 0);
      // The incremental starts from its base's list at the target: only its 3 changed blocks travel.
      const inc = first.versions[1];
      assert.equal(inc.blocks_from_base, BLOCKS - 3);
      assert.equal(inc.blocks_sent, 3);
      assert.equal(inc.bytes_read, 3 * BS);

      // Same uid, name, date, size, validity, snapshot, protection and labels.
      assert.equal((await dst.ok(['-m', 'ls'])).stdout, (await src.ok(['-m', 'ls'])).stdout);
      const json = (sb: Sandbox) => sb.ok(['--json', 'ls']).then((r) => JSON.parse(r.stdout) as unknown);
      assert.deepEqual(await json(dst), await json(src));

      // Different keys: no object name in common, in the databases or the data directories.
      const srcNames = await names(src);
      const dstNames = await names(dst);
      assert.ok(dstNames.size > 0);
      for (const n of dstNames) assert.ok(!srcNames.has(n), `object ${n} is named alike in both stores`);

      const second = await copyOk(src, dst, ['--all']);
      assert.equal(second.copied, 0);
      assert.equal(second.present, 2);
      assert.equal(second.bytes_sent, 0);

      // The target alone: the source store is gone.
      await rm(src.dataDir, { recursive: true });
      await restoresAs(dst, base, img1);
      await restoresAs(dst, child, img2);
      const scrub = await dst.run(['scrub', child]);
      assert.equal(scrub.code, 0, scrub.stderr);
    });
  }

  it('killed (SIGKILL) mid-way leaves an incomplete version that cleanup removes; run again, it sends only what is missing', async () => {
    const src = await copySandbox();
    const dst = await keyed();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'kill' });
    const uid = await src.backup([img, 'vm']);
    const pause = src.path('pause');
    const killAt = async () => {
      const c = spawnCopy(src, dst, [uid], { BACKY_TEST_COPY_PAUSE: `20:${pause}` });
      await waitFor('the copy to pause', () => exists(pause));
      c.child.kill('SIGKILL');
      const r = await c.done;
      assert.equal(r.signal, 'SIGKILL');
      await rm(pause);
    };

    await killAt();
    assert.equal(versionStatus(dst, uid), 'incomplete');
    assert.match((await dst.ok(['-m', 'cleanup'])).stdout, new RegExp(`^removed ${uid}$`, 'm'));
    assert.equal(versionStatus(dst, uid), undefined);

    // Killed again, then run to the end without a cleanup in between.
    await killAt();
    assert.equal(versionStatus(dst, uid), 'incomplete');
    const again = await copyOk(src, dst, [uid]);
    assert.equal(again.versions[0].status, 'valid');
    // At least the 20 blocks settled before the kill were stored then and are not sent again.
    assert.ok(again.versions[0].blocks_sent <= BLOCKS - 20, `sent ${again.versions[0].blocks_sent}`);
    assert.equal((await objectFiles(dst)).length, BLOCKS);
    await rm(src.dataDir, { recursive: true });
    await restoresAs(dst, uid, img);
    assert.equal((await dst.run(['scrub', uid])).code, 0);
  });

  it('rm and cleanup on either side while a copy runs lose nothing', async () => {
    const src = await copySandbox();
    const dst = await copySandbox();
    const img1 = src.path('img1');
    await writeImage(img1, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'rm1' });
    const v1 = await src.backup([img1, 'vm']);
    const img2 = src.path('img2');
    await writeFile(img2, await readFile(img1));
    await scribble(img2, 5 * BS, 3 * BS, 'rm2');
    const v2 = await src.backup(['-f', v1, img2, 'vm']);
    const other = await src.backup([img2, 'other']);
    await copyOk(src, dst, [other]);

    const pause = src.path('pause');
    const c = spawnCopy(src, dst, [v2], { BACKY_TEST_COPY_PAUSE: `10:${pause}` });
    await waitFor('the copy to pause', () => exists(pause));
    // Source: the version being copied is held; its base (not at the target) may go, and a
    // cleanup then frees only what nothing references.
    const rmSrc = await src.run(['rm', v2]);
    assert.equal(rmSrc.code, 1);
    assert.match(rmSrc.stderr, /copy/);
    await src.ok(['rm', v1]);
    await src.ok(['cleanup']);
    // Target: the incomplete copy is held, and cleanup keeps it and what it stored; a version
    // sharing its blocks may go.
    const rmDst = await dst.run(['rm', v2]);
    assert.equal(rmDst.code, 1);
    assert.match(rmDst.stderr, /copy/);
    await dst.ok(['rm', other]);
    await dst.ok(['cleanup']);
    assert.equal(versionStatus(dst, v2), 'incomplete');
    await rm(pause);
    const r = await c.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(versionStatus(dst, v2), 'valid');
    await dst.ok(['cleanup']);
    await rm(src.dataDir, { recursive: true });
    await restoresAs(dst, v2, img2);
    assert.equal((await dst.run(['scrub', v2])).code, 0);
  });

  it('a damaged source block: reported, the target version invalid, exit 3; the rest copies', async () => {
    const src = await copySandbox();
    const dst = await keyed();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: BLOCKS, kinds: () => 'random', seed: 'dmg' });
    const uid = await src.backup([img, 'vm']);
    const good = await src.backup([img, 'good']);
    const row = blockRows(src, uid)[7];
    // Damage one object of `uid` only: `good` shares it, so make good first and break after.
    const f = await open(objectPath(src, row.checksum!), 'r+');
    await f.write(Buffer.from([0xff, 0x00, 0xff]), 0, 3, 4000);
    await f.close();

    const { r, json } = await copy(src, dst, ['--all']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /block 7: .*damaged/);
    assert.doesNotMatch(r.stderr, /^\s+at /m);
    assert.deepEqual(
      json!.versions.map((v) => [v.uid, v.status, v.blocks_damaged]),
      [
        [uid, 'invalid', 1],
        [good, 'invalid', 1],
      ],
    );
    assert.equal(versionStatus(dst, uid), 'invalid');
    // Recorded at the source too, as a restore would.
    assert.equal(versionStatus(src, uid), 'invalid');
    // The target restores the rest; the damaged block is zeros there.
    const out = dst.path('out');
    const restored = await dst.run(['restore', uid, out]);
    assert.equal(restored.code, 3);
    const expected = await readFile(img);
    expected.fill(0, 7 * BS, 8 * BS);
    await assertSameBytes(out, expected);
  });

  it('selection, dry run and bad input', async () => {
    const src = await copySandbox();
    const dst = await copySandbox();
    const img = src.path('img');
    await writeImage(img, { blockSize: BS, blocks: 4, kinds: () => 'random', seed: 'sel' });
    const a = await src.backup([img, 'a']);
    const b = await src.backup([img, 'b']);

    const usage = async (args: string[]) => {
      const r = await src.run(['copy', '--to', dst.config, ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    };
    await usage([]);
    await usage([a, '--all']);
    await usage(['--all', '--since', 'yesterday']);
    const notUid = await src.run(['copy', '--to', dst.config, 'not-a-uid']);
    assert.equal(notUid.code, 1);
    assert.match(notUid.stderr, /is not a version uid/);
    const self = await src.run(['copy', '--to', src.config, '--all']);
    assert.equal(self.code, 1);
    assert.match(self.stderr, /source's own/);

    const dry = await copyOk(src, dst, ['--all', '--dry-run']);
    assert.deepEqual(
      dry.versions.map((v) => v.outcome),
      ['copied', 'copied'],
    );
    assert.equal(dry.bytes_sent, 0);
    assert.equal((await dst.ok(['-m', 'ls'])).stdout, '');
    assert.equal((await copyOk(src, dst, ['--all', '--since', '0s'])).versions.length, 0);

    const byName = await copyOk(src, dst, ['--name', 'b', '--since', '1h']);
    assert.deepEqual(
      byName.versions.map((v) => v.uid),
      [b],
    );
    const m = await src.run(['-m', 'copy', '--to', dst.config, a, b]);
    assert.equal(m.code, 0, m.stderr);
    const lines = m.stdout.trim().split('\n');
    assert.match(lines[0], new RegExp(`^copy ${a} copied valid \\d+ \\d+ \\d+ 0$`));
    assert.equal(lines[1], `copy ${b} present valid 0 0 0 0`);
    assert.match(lines[2], /^total 1 1 0 \d+$/);
    await restoresAs(dst, a, img);
  });
});
