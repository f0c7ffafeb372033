/**
 * Many hosts on one store: backup processes with different hostnames (each in a UTS
 * namespace of its own, `unshare -u`, with its own hostname), one PostgreSQL database and one
 * S3 bucket on a real radosgw, backing up concurrently (deduplicating against objects that a
 * concurrent rm makes garbage) while cleanup loops run on another "host". Afterwards every
 * valid version restores byte for byte and scrubs clean, and a final cleanup leaves exactly
 * the referenced objects in the bucket.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { listKeys, newBucket, rgwServer, rgwSkipReason, s3Client, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';
import { referencedChecksums } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const BLOCKS = 24;
const ROUNDS = 2;
const HOSTS = ['backup-host-a', 'backup-host-b', 'backup-host-c'];

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

function canUnshare(): boolean {
  try {
    execFileSync('unshare', ['-u', 'hostname', 'backy-probe'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const skip =
  rgwSkipReason() ??
  pgSkipReason() ??
  (canUnshare() ? undefined : 'needs unshare -u (root) to give each backup process a hostname of its own');

async function query<T>(url: string, text: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows as T[];
  } finally {
    await client.end();
  }
}

/** `backy ARGS` as a process on host HOST (its own hostname); stdin fed from `input` slowly. */
function onHost(sb: Sandbox, host: string, args: string[], input?: Buffer) {
  const child = spawn(
    'unshare',
    ['-u', 'sh', '-c', 'hostname "$0" && exec "$@"', host, process.execPath, BIN, '-c', sb.config, ...args],
    { cwd: sb.dir, stdio: 'pipe' },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdin.on('error', () => {});
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  void (async () => {
    if (input) {
      for (let off = 0; off < input.length; off += BS) {
        child.stdin.write(input.subarray(off, off + BS));
        await delay(20);
      }
    }
    child.stdin.end();
  })();
  return done;
}

describe('many hosts: one PostgreSQL, one bucket, concurrent backups and cleanups', { skip }, () => {
  let server: S3Server & { stop(): Promise<void> };
  let sb: Sandbox;
  let engine: string;
  let bucket: string;
  let base: string;

  before(async () => {
    server = await rgwServer();
    engine = await pgDatabase('backy_s3hosts');
    bucket = newBucket('hosts');
    sb = await Sandbox.create();
    await writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = ${engine}`,
        ...s3ConfigLines(server, bucket),
        '',
      ].join('\n'),
    );
    base = sb.path('base.img');
    await writeImage(base, {
      blocks: BLOCKS,
      blockSize: BS,
      seed: 'hosts',
      kinds: (i) => (i % 7 === 6 ? 'zero' : 'random'),
    });
  });
  after(async () => {
    await sb?.remove();
    await server?.stop();
  });

  it(`${ROUNDS} rounds of ${HOSTS.length} hosts backing up + rm + 2 cleanup loops: every version restores`, async () => {
    const images = new Map<string, string>();
    // The store is in use before the race starts: the bucket exists (a cleanup on a missing
    // bucket is an error, as on any read), and round 0's backups dedup against this version
    // while a concurrent rm makes it garbage.
    const first = await onHost(sb, HOSTS[0], ['backup', base, 'vm0@first']);
    assert.equal(first.code, 0, first.stderr);
    let previous: string[] = [first.stdout.trim().split('\n').pop()!];
    for (let round = 0; round < ROUNDS; round++) {
      const imgs: string[] = [];
      for (let k = 0; k < HOSTS.length; k++) {
        const img = sb.path(`r${round}-${k}.img`);
        await copyFile(base, img);
        await scribble(img, ((round * 5 + k * 11) % BLOCKS) * BS, BS, `r${round}k${k}`);
        imgs.push(img);
      }
      const backups = await Promise.all(imgs.map((img) => readFile(img))).then((datas) =>
        datas.map((data, k) => onHost(sb, HOSTS[k], ['backup', '-', `vm${k}@r${round}`], data)),
      );
      const removals = (async () => {
        await delay(150);
        for (const uid of previous) {
          const r = await onHost(sb, 'admin-host', ['rm', uid]);
          assert.equal(r.code, 0, r.stderr);
        }
      })();
      let finished = false;
      const all = Promise.all(backups).finally(() => (finished = true));
      const cleanups = ['gc-host-1', 'gc-host-2'].map(async (host, k) => {
        await delay(k * 100);
        do {
          const r = await onHost(sb, host, ['cleanup']);
          assert.equal(r.code, 0, r.stderr);
        } while (!finished);
      });
      const results = await all;
      await Promise.all([...cleanups, removals]);
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      previous = results.map((r) => r.stdout.trim().split('\n').pop()!);
      previous.forEach((uid, k) => images.set(uid, imgs[k]));

      const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      assert.deepEqual(versions.map((v) => v.uid).sort(), [...previous].sort());
      for (const v of versions) {
        assert.ok(v.valid, `${v.uid} is valid`);
        const out = sb.path(`${v.uid}.out`);
        await sb.ok(['restore', v.uid, out]);
        await assertSameBytes(images.get(v.uid)!, out);
        const s = await sb.run(['scrub', v.uid]);
        assert.equal(s.code, 0, s.stderr);
      }
    }
    const hosts = await query<{ hostname: string }>(engine, 'SELECT DISTINCT hostname FROM versions');
    assert.deepEqual(hosts.map((h) => h.hostname).sort(), HOSTS, 'each version names the host that made it');

    await sb.ok(['cleanup']);
    const referenced = await referencedChecksums(engine);
    const c = s3Client(server);
    try {
      assert.deepEqual(await listKeys(c, bucket), referenced);
    } finally {
      c.destroy();
    }
    assert.deepEqual(await query(engine, 'SELECT * FROM leases'), []);
  });
});
