/**
 * S3 over HTTPS end to end: the built CLI against a radosgw that serves TLS itself (beast's
 * ssl_endpoint; test/lib/rgw-tls.sh) with a certificate from a CA made for the test, trusted
 * through [DataBackend] ca_file or $NODE_EXTRA_CA_CERTS. Every restore is compared byte for
 * byte; backup and restore stay within the memory goal (150 MB peak RSS).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { scribble, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import { newBucket, rgwTlsServer, rgwTlsSkipReason, s3ConfigLines } from '../lib/rgw.js';
import type { S3Server } from '../lib/rgw.js';

const BS = 64 * 1024;
const skip = rgwTlsSkipReason();
const kinds = (i: number): BlockKind => (['random', 'zero', 'text', 'dup', 'random', 'text'] as const)[i % 6];
const PEAK_RSS_MB = 150;

async function tlsSandbox(s: S3Server, bucket: string, opts: { caFile?: string; bs?: number } = {}) {
  const sb = await Sandbox.create();
  const server = { ...s, caFile: opts.caFile };
  await writeFile(
    sb.config,
    [
      '[DEFAULTS]',
      ...(opts.bs === undefined ? [] : [`block_size = ${opts.bs}`]),
      '[MetaBackend]',
      `engine = sqlite:///${sb.dbPath}`,
      ...s3ConfigLines(server, bucket),
      '',
    ].join('\n'),
  );
  return sb;
}

function oneErrorLine(stderr: string, re: RegExp): void {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, `expected one ERROR line in:\n${stderr}`);
  assert.match(errors[0], re);
  assert.doesNotMatch(stderr, /^\s+at /m, 'no stack trace');
}

/** Runs backy with the config; its exit code and its peak RSS in MB (from getrusage, via python3). */
async function peakRss(
  sb: Sandbox,
  args: string[],
): Promise<{ code: number | null; stderr: string; mb: number }> {
  const wrapper = [
    'import resource, subprocess, sys',
    'r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)',
    'print("maxrss", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)',
    'sys.exit(r.returncode)',
  ].join('\n');
  const child = spawn('python3', ['-c', wrapper, process.execPath, BIN, '-c', sb.config, ...args], {
    cwd: sb.dir,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const code = await new Promise<number | null>((r) => child.on('close', r));
  const kib = Number(/^maxrss (\d+)$/m.exec(stderr)?.[1]);
  assert.ok(kib > 0, `no maxrss in:\n${stderr}`);
  return { code, stderr, mb: kib / 1024 };
}

describe('S3 over HTTPS end to end (radosgw serving TLS)', { skip }, () => {
  let server: S3Server & { caFile: string; stop(): Promise<void> };
  let bucket: string;
  let sb: Sandbox;
  let img1: string;
  let uid1: string;

  before(async () => {
    server = await rgwTlsServer();
    bucket = newBucket('tls');
    // The CA beside the config, named relative to it (commands run from another directory).
    sb = await tlsSandbox(server, bucket, { caFile: 'gateway-ca.pem', bs: BS });
    await copyFile(server.caFile, sb.path('gateway-ca.pem'));
    img1 = sb.path('disk1.img');
    await writeImage(img1, { blocks: 30, blockSize: BS, tail: 1000, kinds });
  });
  after(async () => {
    await sb?.remove();
    await server?.stop();
  });

  it('ca_file (relative to the config file): backup, hinted incremental, restores byte for byte, deep scrub', async () => {
    assert.match(await readFile(sb.config, 'utf8'), /^ca_file = gateway-ca\.pem$/m);
    assert.ok(server.endpoint.startsWith('https://'));

    uid1 = await sb.backup([img1, 'vm@1'], { cwd: '/' });
    const img2 = sb.path('disk2.img');
    await copyFile(img1, img2);
    await scribble(img2, 4 * BS + 10, 300, 'tls-change');
    const hints = sb.path('hints.json');
    await writeFile(hints, JSON.stringify([{ offset: 4 * BS + 10, length: 300, exists: 'true' }]));
    const uid2 = await sb.backup(['-r', hints, '-f', uid1, img2, 'vm@2'], { cwd: '/' });
    for (const [uid, img] of [
      [uid1, img1],
      [uid2, img2],
    ]) {
      const out = sb.path(`restored-${uid}.img`);
      await sb.ok(['restore', uid, out], { cwd: '/' });
      await assertSameBytes(img, out);
    }
    const r = await sb.ok(['restore', uid2, '-']);
    await assertSameBytes(img2, r.stdoutBuf);
    await sb.ok(['scrub', '-s', img2, uid2], { cwd: '/' });
    assert.ok(parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).every((v) => v.valid));
  });

  it('$NODE_EXTRA_CA_CERTS trusts the gateway as well as ca_file does', async () => {
    const plain = await tlsSandbox(server, bucket, { bs: BS });
    try {
      await copyFile(sb.dbPath, plain.dbPath);
      const out = plain.path('extra-ca.img');
      await plain.ok(['restore', uid1, out], { env: { NODE_EXTRA_CA_CERTS: server.caFile } });
      await assertSameBytes(img1, out);
    } finally {
      await plain.remove();
    }
  });

  it('a gateway certificate nobody vouches for: one line naming ca_file, exit 1, nothing marked invalid', async () => {
    const plain = await tlsSandbox(server, bucket, { bs: BS });
    try {
      await copyFile(sb.dbPath, plain.dbPath);
      const r = await plain.run(['restore', uid1, plain.path('untrusted.img')]);
      assert.equal(r.code, 1, r.stderr);
      oneErrorLine(r.stderr, /not signed by a trusted CA: give its CA in \[DataBackend\] ca_file/);
      assert.ok(r.stderr.includes(server.endpoint));
      assert.ok(!r.stderr.includes(server.secretAccessKey));
      assert.ok(parseLsMachine((await plain.ok(['-m', 'ls'])).stdout).every((v) => v.valid));
    } finally {
      await plain.remove();
    }
  });

  it('a ca_file that is missing or holds no certificate: one line naming it, exit 1', async () => {
    for (const [content, re] of [
      [undefined, /ca_file .*missing-ca\.pem: cannot read it: .*ENOENT/],
      ['not a certificate\n', /ca_file .*missing-ca\.pem: no PEM certificate/],
      [
        '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
        /ca_file .*missing-ca\.pem: certificate 1 is not a valid certificate/,
      ],
    ] as const) {
      const bad = await tlsSandbox(server, bucket, { caFile: 'missing-ca.pem', bs: BS });
      try {
        if (content !== undefined) await writeFile(bad.path('missing-ca.pem'), content);
        await copyFile(sb.dbPath, bad.dbPath);
        const r = await bad.run(['restore', uid1, bad.path('x.img')]);
        assert.equal(r.code, 1, r.stderr);
        oneErrorLine(r.stderr, re);
      } finally {
        await bad.remove();
      }
    }
  });

  it(`backup and restore of 40 blocks of 4 MiB over HTTPS stay under ${PEAK_RSS_MB} MB peak RSS`, async () => {
    const big = await tlsSandbox(server, newBucket('tls-mem'), { caFile: server.caFile });
    try {
      const img = big.path('big.img');
      await writeImage(img, { blocks: 40, blockSize: 4 << 20, kinds: () => 'random', seed: 'tls-mem' });
      const b = await peakRss(big, ['backup', img, 'big@1']);
      assert.equal(b.code, 0, b.stderr);
      const uid = parseLsMachine((await big.ok(['-m', 'ls'])).stdout)[0].uid;
      const out = big.path('big-restored.img');
      const r = await peakRss(big, ['restore', uid, out]);
      assert.equal(r.code, 0, r.stderr);
      await assertSameBytes(img, out);
      process.stderr.write(
        `# peak RSS over HTTPS: backup ${b.mb.toFixed(0)} MB, restore ${r.mb.toFixed(0)} MB (${basename(img)}, 160 MiB)\n`,
      );
      assert.ok(b.mb <= PEAK_RSS_MB, `backup peak RSS ${b.mb.toFixed(0)} MB`);
      assert.ok(r.mb <= PEAK_RSS_MB, `restore peak RSS ${r.mb.toFixed(0)} MB`);
    } finally {
      await big.remove();
    }
  });
});
