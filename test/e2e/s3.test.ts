/**
 * End to end on S3: the built CLI with [DataBackend] type = s3 against a real Ceph RADOS
 * Gateway (test/lib/rgw.ts), every restore compared byte for byte. Small blocks (64 KiB) keep
 * images small and block counts meaningful.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, REPO, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import {
  deleteObject,
  getObject,
  listKeys,
  newBucket,
  putObject,
  rgwServer,
  rgwSkipReason,
  s3Client,
  s3ConfigLines,
} from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';
import { entriesAt, referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const skip = rgwSkipReason();
const kinds = (i: number): BlockKind => (['random', 'zero', 'text', 'dup', 'random', 'text'] as const)[i % 6];

/** A sandbox whose blocks go to `bucket` (SQLite metadata in the sandbox). */
export async function s3Sandbox(s: S3Server, bucket: string, extra: string[] = []): Promise<Sandbox> {
  const sb = await Sandbox.create();
  await writeFile(
    sb.config,
    [
      '[DEFAULTS]',
      `block_size = ${BS}`,
      '[MetaBackend]',
      `engine = sqlite:///${sb.dbPath}`,
      ...s3ConfigLines(s, bucket, extra),
      '',
    ].join('\n'),
  );
  return sb;
}

function referenced(sb: Sandbox): Promise<string[]> {
  return referencedChecksums(sb.dbPath);
}

async function ls(sb: Sandbox) {
  return parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
}

function oneErrorLine(stderr: string, re: RegExp): void {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, `expected one ERROR line in:\n${stderr}`);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
}

describe('S3 end to end (radosgw)', { skip }, () => {
  let server: S3Server & { stop(): Promise<void> };
  let sb: Sandbox;
  let bucket: string;
  let img1: string;
  let img2: string;
  let uid1: string;
  let uid2: string;

  before(async () => {
    server = await rgwServer();
    bucket = newBucket('e2e');
    sb = await s3Sandbox(server, bucket);
    img1 = sb.path('disk1.img');
    img2 = sb.path('disk2.img');
    await writeImage(img1, { blocks: 30, blockSize: BS, tail: 1000, kinds });
  });
  after(async () => {
    await sb?.remove();
    await server?.stop();
  });

  it('the seed workflow: backup (creating the bucket), -f chain with hints, restores byte for byte, scrub, deep scrub', async () => {
    const c = s3Client(server);
    try {
      uid1 = await sb.backup([img1, 'vm1@b1']);
      // The bucket holds exactly the objects the version references, in backy's object format.
      const keys = await listKeys(c, bucket);
      assert.deepEqual(keys, await referenced(sb));
      assert.equal((await getObject(c, bucket, keys[0])).subarray(0, 4).toString('latin1'), 'BKYO');

      await copyFile(img1, img2);
      await scribble(img2, 3 * BS + 100, 200, 'change-1'); // block 3 (was dup)
      await scribble(img2, 10 * BS - 50, 100, 'change-2'); // blocks 9 and 10
      const hints = sb.path('b2.json');
      await writeFile(
        hints,
        JSON.stringify([
          { offset: 3 * BS + 100, length: 200, exists: 'true' },
          { offset: 10 * BS - 50, length: 100, exists: 'true' },
        ]),
      );
      uid2 = await sb.backup(['-r', hints, '-f', uid1, img2, 'vm1@b2']);

      for (const [uid, img] of [
        [uid1, img1],
        [uid2, img2],
      ]) {
        const out = sb.path(`restore-${uid}.img`);
        await sb.ok(['restore', uid, out]);
        await assertSameBytes(img, out);
        const sparse = sb.path(`restore-sparse-${uid}.img`);
        await sb.ok(['restore', '-s', uid, sparse]);
        await assertSameBytes(img, sparse);
        const r = await sb.ok(['restore', uid, '-']);
        await assertSameBytes(img, r.stdoutBuf);
      }
      const s1 = await sb.ok(['-m', 'scrub', uid1]);
      assert.match(s1.stdout, new RegExp(`^scrub ${uid1} \\d+ 0 0 0 0$`, 'm'));
      const s2 = await sb.ok(['-m', 'scrub', '-s', img2, uid2]);
      assert.match(s2.stdout, new RegExp(`^scrub ${uid2} \\d+ 0 0 0 0$`, 'm'));
      // A deep scrub against the wrong source fails without invalidating anything.
      const wrong = await sb.run(['scrub', '-s', img1, uid2]);
      assert.equal(wrong.code, 3, wrong.stderr);
      assert.ok((await ls(sb)).every((v) => v.valid));
    } finally {
      c.destroy();
    }
  });

  it('rm and cleanup leave exactly the referenced objects in the bucket', async () => {
    const c = s3Client(server);
    try {
      const before = await listKeys(c, bucket);
      // An object no row names, as a crashed backup leaves it between PUT and commit.
      const stray = 'f'.repeat(64);
      await putObject(c, bucket, stray, Buffer.from('stray'));
      // Cleanup sweeps objects without a row only when they are older than its start (1 s
      // resolution of Last-Modified).
      await new Promise((r) => setTimeout(r, 1500));
      await sb.ok(['rm', uid1]);
      const r = await sb.ok(['-m', 'cleanup']);
      const m = /^cleanup 0 (\d+) (\d+) (\d+) (\d+) 0$/m.exec(r.stdout);
      assert.ok(m, r.stdout);
      const after = await listKeys(c, bucket);
      assert.deepEqual(after, await referenced(sb));
      assert.equal(Number(m[1]), before.length - after.length, 'objects freed');
      assert.ok(Number(m[1]) > 0, 'the blocks only uid1 used are freed');
      assert.equal(Number(m[3]), 1, 'the stray object is swept');
      assert.ok(!after.includes(stray));
      const out = sb.path('after-cleanup.img');
      await sb.ok(['restore', uid2, out]);
      await assertSameBytes(img2, out);
    } finally {
      c.destroy();
    }
  });

  it('export and import into a fresh database on the same bucket; the import restores byte for byte', async () => {
    const exp = sb.path('v2.export');
    await sb.ok(['export', uid2, exp]);
    // A fresh database over a bucket with the store's descriptor and copies must run recover
    // before it may write (store-authority.test.ts); export/import serves a store without
    // them, so here they are set aside (a store that lost them, or one from before them).
    const c = s3Client(server);
    const metaKeys = await listKeys(c, bucket, '', { meta: true });
    const aside = new Map<string, Buffer>();
    for (const k of metaKeys.filter((key) => key.startsWith('meta/'))) {
      aside.set(k, await getObject(c, bucket, k));
      await deleteObject(c, bucket, k);
    }
    const other = await s3Sandbox(server, bucket);
    try {
      const r = await other.ok(['import', exp]);
      assert.equal(r.stdout.trim().split('\n').pop(), uid2);
      const [v] = await ls(other);
      assert.equal(v.uid, uid2);
      assert.equal(v.valid, true);
      const out = other.path('imported.img');
      await other.ok(['restore', uid2, out]);
      await assertSameBytes(img2, out);
      await other.ok(['scrub', uid2]);
    } finally {
      await other.remove();
      // The first database's store again, as it was (the import described it anew).
      for (const k of (await listKeys(c, bucket, '', { meta: true })).filter((key) =>
        key.startsWith('meta/'),
      ))
        await deleteObject(c, bucket, k);
      for (const [k, body] of aside) await putObject(c, bucket, k, body);
      c.destroy();
    }
  });

  it('a damaged object (overwritten through S3) and a deleted one are found by scrub and restore', async () => {
    const dBucket = newBucket('damage');
    const dsb = await s3Sandbox(server, dBucket);
    const c = s3Client(server);
    try {
      const img = dsb.path('d.img');
      await writeImage(img, { blocks: 12, blockSize: BS, kinds: () => 'random', seed: 'damage' });
      const uid = await dsb.backup([img, 'vm2']);
      const checksums = await entriesAt(
        dsb.dbPath,
        uid,
        Array.from({ length: 12 }, (_, idx) => idx),
      );
      const rows = checksums.map((checksum, idx) => ({ idx, checksum: checksum as string }));
      // Same length, one byte flipped in the payload: only the checksum can tell.
      const obj = await getObject(c, dBucket, rows[4].checksum);
      obj[obj.length - 1] ^= 0xff;
      await putObject(c, dBucket, rows[4].checksum, obj);
      await deleteObject(c, dBucket, rows[7].checksum);

      const scrub = await dsb.run(['-m', 'scrub', uid]);
      assert.equal(scrub.code, 3, scrub.stderr);
      assert.match(scrub.stdout, new RegExp(`^scrub ${uid} 12 2 0 1 0$`, 'm'));
      assert.match(scrub.stderr, new RegExp(`${rows[4].checksum} is damaged: checksum mismatch`));
      assert.match(scrub.stderr, new RegExp(`${rows[7].checksum} is missing`));
      assert.equal((await ls(dsb))[0].valid, false);

      const out = dsb.path('damaged-restore.img');
      const r = await dsb.run(['restore', uid, out]);
      assert.equal(r.code, 3, r.stderr);
      // Everything else restores exactly; the two bad blocks read as zeros.
      const expected = dsb.path('expected.img');
      await copyFile(img, expected);
      const fh = await open(expected, 'r+');
      await fh.write(Buffer.alloc(BS), 0, BS, 4 * BS);
      await fh.write(Buffer.alloc(BS), 0, BS, 7 * BS);
      await fh.close();
      await assertSameBytes(expected, out);

      // A new backup of the same image stores the two blocks again: the version, whose only
      // problem they were, is valid again at once (validity follows objects); a scrub agrees.
      await dsb.backup([img, 'vm2']);
      assert.equal((await ls(dsb)).find((v) => v.uid === uid)?.valid, true);
      const again = await dsb.run(['-m', 'scrub', uid]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, new RegExp(`^scrub ${uid} 12 0 0 0 0$`, 'm'));
    } finally {
      c.destroy();
      await dsb.remove();
    }
  });

  it("the README's S3 section works as written (only the gateway's port differs)", async () => {
    const readme = await readFile(join(REPO, 'README.md'), 'utf8');
    const section = /^### S3 object storage\n([\s\S]*?)\n#/m.exec(readme)?.[1];
    assert.ok(section, 'README has an S3 section');
    const cfg = /^```ini\n([\s\S]*?)```$/m.exec(section)?.[1];
    assert.ok(cfg?.includes('type = s3'), 'with an ini block');
    const cmds = [...section.matchAll(/^ {4}(\S.*)$/gm)].map((m) => m[1]);
    assert.ok(
      cmds.some((c) => c.startsWith('backy -c s3.cfg backup')),
      cmds.join('\n'),
    );
    const rsb = await Sandbox.create();
    // The recipe makes a new store with a new database: a store left under that prefix by an
    // earlier run (a gateway shared between runs) belongs to that run's database and would
    // refuse this one (store-authority.test.ts), so it goes first.
    const old = s3Client(server);
    try {
      for (const k of await listKeys(old, 'backy', 'vms/', { meta: true }))
        await deleteObject(old, 'backy', k);
    } catch (err) {
      if ((err as { name?: string }).name !== 'NoSuchBucket') throw err;
    } finally {
      old.destroy();
    }
    try {
      await writeFile(rsb.path('s3.cfg'), cfg!.replace('http://127.0.0.1:7480', server.endpoint));
      await writeImage(rsb.path('disk.img'), { blocks: 5, blockSize: BS, tail: 77, kinds, seed: 'readme' });
      const env = {
        HOME: rsb.path('home'),
        XDG_DATA_HOME: '',
        BACKY_CONFIG: '',
        AWS_ACCESS_KEY_ID: server.accessKeyId,
        AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
      };
      await mkdir(env.HOME);
      let uid = '';
      for (const line of cmds) {
        if (line.startsWith('export ')) continue; // credentials: set in env above
        const cmd = line.replace('<uid>', uid).replace(/^backy /, `${process.execPath} ${BIN} `);
        const out = execFileSync('bash', ['-c', `set -euo pipefail; ${cmd}`], {
          cwd: rsb.dir,
          env: { ...process.env, ...env },
          encoding: 'utf8',
        });
        if (line.startsWith('backy -c s3.cfg backup')) uid = out.trim().split('\n').pop()!;
      }
      assert.match(uid, /^[0-9a-f-]{36}$/);
      await assertSameBytes(rsb.path('disk.img'), rsb.path('restored.img'));
      const c = s3Client(server);
      const keys = await listKeys(c, 'backy', 'vms/');
      c.destroy();
      assert.ok(keys.length >= 1 && keys.every((k) => /^vms\/[0-9a-f]{64}$/.test(k)), keys.join(' '));
    } finally {
      await rsb.remove();
    }
  });

  it('a missing bucket on restore and scrub is an I/O error: one line, exit 1, nothing marked invalid', async () => {
    const msb = await s3Sandbox(server, newBucket('gone'));
    try {
      const img = msb.path('m.img');
      await writeImage(img, { blocks: 4, blockSize: BS, kinds: () => 'random', seed: 'gone' });
      const uid = await msb.backup([img, 'vm3']);
      // Point the same database at a bucket that does not exist (a typo, a deleted bucket).
      const missing = newBucket('typo');
      const text = (await readFile(msb.config, 'utf8')).replace(/^bucket = .*$/m, `bucket = ${missing}`);
      await writeFile(msb.config, text);
      for (const args of [
        ['restore', uid, msb.path('x.img')],
        ['scrub', uid],
      ]) {
        const r = await msb.run(args);
        assert.equal(r.code, 1, r.stderr);
        oneErrorLine(r.stderr, new RegExp(`bucket ${missing} does not exist at ${server.endpoint}`));
        assert.ok(!r.stderr.includes(server.secretAccessKey));
      }
      assert.equal((await ls(msb))[0].valid, true);
    } finally {
      await msb.remove();
    }
  });
});
