/**
 * Faults on a real radosgw (the shared gateway; no mock): a bucket policy's 403 in the middle
 * of a restore, a bucket that does not exist, and a 403 on the PUT of a metadata copy (a
 * streamed request). A restore that fails removes the file it created (so that the retry is
 * not refused with "target exists") and names an existing target it partly overwrote; stderr
 * carries backy's own lines only, never one of the AWS SDK's.
 */
import assert from 'node:assert/strict';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { DeleteBucketPolicyCommand, PutBucketPolicyCommand } from '@aws-sdk/client-s3';
import type { S3Client } from '@aws-sdk/client-s3';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import type { RunResult } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';
import { newBucket, rgwServer, rgwSkipReason, s3Client, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';

const BS = 64 * 1024;
const skip = rgwSkipReason();

/** Every non-empty stderr line is one of backy's log lines; returns the ERROR lines. */
function backyLinesOnly(r: RunResult): string[] {
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  for (const l of lines)
    assert.match(l, /^ +(DEBUG|INFO|WARNING|ERROR): /, `a line not backy's:\n${r.stderr}`);
  return lines.filter((l) => l.startsWith('   ERROR: '));
}

describe('S3 faults from a bucket policy (radosgw)', { skip }, () => {
  let server: S3Server & { stop(): Promise<void> };
  let client: S3Client;
  let sb: Sandbox;
  let bucket: string;
  let img: string;
  let uid: string;

  /** Denies `action` on the keys `resources` name (explicit deny: the bucket's owner too). */
  const deny = (action: string, resources: string[]) =>
    client.send(
      new PutBucketPolicyCommand({
        Bucket: bucket,
        Policy: JSON.stringify({
          Version: '2012-10-17',
          Statement: [
            {
              Effect: 'Deny',
              Principal: '*',
              Action: action,
              Resource: resources.map((r) => `arn:aws:s3:::${bucket}/${r}`),
            },
          ],
        }),
      }),
    );
  const allow = () => client.send(new DeleteBucketPolicyCommand({ Bucket: bucket }));
  /** Block objects: keys of hex digits (the metadata lives under meta/). */
  const blockKeys = [...'0123456789abcdef'].map((h) => `${h}*`);

  before(async () => {
    server = await rgwServer();
    client = s3Client(server);
    bucket = newBucket('policy');
    sb = await Sandbox.create();
    await writeFile(
      sb.config,
      [
        '[DEFAULTS]',
        `block_size = ${BS}`,
        '[MetaBackend]',
        `engine = sqlite:///${sb.dbPath}`,
        ...s3ConfigLines(server, bucket),
        '',
      ].join('\n'),
    );
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 24, blockSize: BS, kinds: (i) => (i % 4 ? 'random' : 'zero') });
    uid = await sb.backup([img, 'vm']);
  });
  after(async () => {
    await allow().catch(() => {});
    client?.destroy();
    await sb?.remove();
    await server?.stop();
  });

  it('a 403 mid-restore to a new file: exit 1, one line, the partial file removed; the retry works', async () => {
    const out = sb.path('new.img');
    await deny('s3:GetObject', blockKeys);
    let r: RunResult;
    try {
      r = await sb.run(['restore', uid, out]);
    } finally {
      await allow();
    }
    assert.equal(r.code, 1, r.stderr);
    const errors = backyLinesOnly(r);
    assert.equal(errors.length, 1, r.stderr);
    assert.match(
      errors[0],
      /cannot read block .*; restore of .* to .*new\.img stopped; the partial file .* was removed/,
    );
    await assert.rejects(stat(out), { code: 'ENOENT' }, 'no partial file left');
    await sb.ok(['restore', uid, out]);
    await assertSameBytes(img, out);
  });

  it('a 403 mid-restore --force into an existing file: the line says the file is incomplete', async () => {
    const out = sb.path('existing.img');
    await writeFile(out, 'old content');
    await deny('s3:GetObject', blockKeys);
    let r: RunResult;
    try {
      r = await sb.run(['restore', '--force', uid, out]);
    } finally {
      await allow();
    }
    assert.equal(r.code, 1, r.stderr);
    const errors = backyLinesOnly(r);
    assert.equal(errors.length, 1, r.stderr);
    assert.match(
      errors[0],
      /existing\.img is now incomplete \(partly overwritten\): restore again before using it/,
    );
    await sb.ok(['restore', '--force', uid, out]);
    await assertSameBytes(img, out);
  });

  it('a bucket that does not exist (a typo in the config): exit 1, one line, no file left behind', async () => {
    const cfg = await readFile(sb.config, 'utf8');
    const out = sb.path('nobucket.img');
    await writeFile(sb.config, cfg.replace(`bucket = ${bucket}`, `bucket = ${bucket}-typo`));
    let r: RunResult;
    try {
      r = await sb.run(['restore', uid, out]);
    } finally {
      await writeFile(sb.config, cfg);
    }
    assert.equal(r.code, 1, r.stderr);
    const errors = backyLinesOnly(r);
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0], new RegExp(`${bucket}-typo`));
    await assert.rejects(stat(out), { code: 'ENOENT' }, 'no partial file left');
    await sb.ok(['restore', uid, out]);
    await assertSameBytes(img, out);
  });

  it('a 403 on the streamed PUT of a metadata copy: stderr has backy’s lines only, no SDK line', async () => {
    await deny('s3:PutObject', ['meta/version-*']);
    let r: RunResult;
    try {
      r = await sb.run(['backup', img, 'vm']);
    } finally {
      await allow();
    }
    assert.doesNotMatch(r.stderr, /non-retryable streaming request/);
    backyLinesOnly(r);
    assert.match(
      r.stderr,
      /WARNING: the store's metadata copy of version .* was not updated: .*AccessDenied/,
    );
    // Nor in the debug log with -v: single objects no longer go through the SDK, whose
    // warnings went there.
    await deny('s3:PutObject', ['meta/version-*']);
    let v: RunResult;
    try {
      v = await sb.run(['-v', 'backup', img, 'vm']);
    } finally {
      await allow();
    }
    backyLinesOnly(v);
    assert.match(
      v.stderr,
      /WARNING: the store's metadata copy of version .* was not updated: .*AccessDenied/,
    );
    assert.doesNotMatch(v.stderr, /non-retryable streaming request/);
  });
});
