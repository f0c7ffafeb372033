/**
 * A real S3 gateway for tests: Ceph's RADOS Gateway through ../shared/tools/mini-ceph.sh
 * (MINI_CEPH_RGW=1), never a mock.
 *
 * `rgwServer()` uses $BACKY_TEST_S3_ENDPOINT with $BACKY_TEST_S3_ACCESS_KEY and
 * $BACKY_TEST_S3_SECRET_KEY (`.ci/run` starts one gateway for the whole run and sets them), or
 * else starts a gateway for this test file (~10-20 s). Fault tests that stop or kill the
 * gateway always start their own (`startRgw()`). Every caller gets its own bucket
 * (`newBucket`), so test files can share a gateway.
 *
 * Without radosgw installed the S3 tests are skipped with a message; under CI (CI=true) or
 * BACKY_REQUIRE_S3=1 that is a failure instead, so CI cannot silently stop testing S3.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Agent as HttpsAgent } from 'node:https';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { MINI_CEPH, cephMissing, q, sh } from './ceph.js';
import { hasCommand, inCI } from './tools.js';

export interface S3Server {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** For an https endpoint: the PEM file of the CA that signed its certificate. */
  caFile?: string;
}

/** test/lib/rgw-tls.sh: a second radosgw on a mini-ceph.sh cluster, serving HTTPS. */
export const RGW_TLS = join(dirname(fileURLToPath(import.meta.url)), 'rgw-tls.sh');

export const RGW_INSTALL_HINT =
  'S3 tests need Ceph with radosgw (Debian: apt-get install --no-install-recommends ceph-mon ceph-osd ceph-common radosgw) or BACKY_TEST_S3_ENDPOINT';

function required(): boolean {
  return inCI() || process.env.BACKY_REQUIRE_S3 === '1';
}

/** Why the S3 tests cannot run here, or undefined. Throws in CI instead of skipping. */
export function rgwSkipReason(opts: { ownGateway?: boolean } = {}): string | undefined {
  if (!opts.ownGateway && process.env.BACKY_TEST_S3_ENDPOINT) return undefined;
  let missing: string | undefined;
  try {
    missing = cephMissing();
  } catch (err) {
    missing = (err as Error).message;
  }
  if (missing === undefined) {
    try {
      readFileSync('/usr/bin/radosgw');
    } catch {
      missing = 'radosgw not installed';
    }
  }
  if (missing === undefined) return undefined;
  if (required()) throw new Error(`CI: ${RGW_INSTALL_HINT} (${missing})`);
  return RGW_INSTALL_HINT;
}

/** Why the HTTPS S3 tests cannot run here (as rgwSkipReason), or undefined. */
export function rgwTlsSkipReason(opts: { ownGateway?: boolean } = {}): string | undefined {
  if (!opts.ownGateway && process.env.BACKY_TEST_S3_TLS_ENDPOINT) return undefined;
  const reason = rgwSkipReason({ ownGateway: true });
  if (reason !== undefined || hasCommand('openssl')) return reason;
  if (required()) throw new Error('CI: the HTTPS S3 tests need openssl');
  return 'the HTTPS S3 tests need openssl';
}

/**
 * A gateway this process started: can be paused, killed and restarted (fault tests). With
 * `tls`, the one it hands out (endpoint, pid) is an HTTPS radosgw beside mini-ceph.sh's plain
 * one (rgw-tls.sh), with a certificate from a CA of its own (caFile).
 */
export class Rgw implements S3Server {
  readonly dir: string;
  readonly endpoint: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly caFile?: string;

  private constructor(dir: string, env: Record<string, string>) {
    this.dir = dir;
    this.endpoint = env.BACKY_TEST_S3_TLS_ENDPOINT ?? env.MINI_CEPH_S3_ENDPOINT;
    this.caFile = env.BACKY_TEST_S3_CA_FILE;
    this.accessKeyId = env.MINI_CEPH_S3_ACCESS_KEY;
    this.secretAccessKey = env.MINI_CEPH_S3_SECRET_KEY;
  }

  static async start(dir?: string, opts: { tls?: boolean } = {}): Promise<Rgw> {
    dir ??= await mkdtemp(join(tmpdir(), 'backy-rgw-'));
    const env = await startIn(dir, opts.tls === true);
    return new Rgw(dir, env);
  }

  get #tlsDir(): string {
    return join(this.dir, 'tls-gateway');
  }

  /** The radosgw process id (of the HTTPS one with `tls`). */
  pid(): number {
    const file = this.caFile ? join(this.#tlsDir, 'radosgw.pid') : join(this.dir, 'run', 'client.rgw.a.pid');
    return Number(readFileSync(file, 'utf8').trim());
  }

  /** Starts what is not running (the gateway after a kill); same endpoint unless its port was taken. */
  async restart(): Promise<void> {
    const env = await startIn(this.dir, this.caFile !== undefined);
    const endpoint = env.BACKY_TEST_S3_TLS_ENDPOINT ?? env.MINI_CEPH_S3_ENDPOINT;
    if (endpoint !== this.endpoint) {
      throw new Error(`gateway came back on ${endpoint}, not ${this.endpoint}`);
    }
  }

  async destroy(): Promise<void> {
    if (this.caFile) await sh(`bash ${q(RGW_TLS)} stop ${q(this.#tlsDir)}`);
    await sh(`bash ${q(MINI_CEPH)} destroy ${q(this.dir)}`);
  }
}

async function startIn(dir: string, tls: boolean): Promise<Record<string, string>> {
  const { stdout } = await sh(`bash ${q(MINI_CEPH)} start ${q(dir)}`, { MINI_CEPH_RGW: '1' });
  const env: Record<string, string> = {};
  for (const m of stdout.matchAll(/^export (\w+)='([^']*)'$/gm)) env[m[1]] = m[2];
  if (!env.MINI_CEPH_S3_ENDPOINT)
    throw new Error(`mini-ceph.sh printed no MINI_CEPH_S3_ENDPOINT:\n${stdout}`);
  if (tls) {
    const out = await sh(`bash ${q(RGW_TLS)} start ${q(dir)} ${q(join(dir, 'tls-gateway'))}`);
    for (const m of out.stdout.matchAll(/^export (\w+)='([^']*)'$/gm)) env[m[1]] = m[2];
  }
  return env;
}

/**
 * The shared gateway from the environment, or one started for this test file; `stop` is a
 * no-op for the shared one.
 */
export async function rgwServer(): Promise<S3Server & { stop(): Promise<void> }> {
  const e = process.env;
  if (e.BACKY_TEST_S3_ENDPOINT) {
    if (!e.BACKY_TEST_S3_ACCESS_KEY || !e.BACKY_TEST_S3_SECRET_KEY) {
      throw new Error('BACKY_TEST_S3_ENDPOINT needs BACKY_TEST_S3_ACCESS_KEY and BACKY_TEST_S3_SECRET_KEY');
    }
    return {
      endpoint: e.BACKY_TEST_S3_ENDPOINT,
      accessKeyId: e.BACKY_TEST_S3_ACCESS_KEY,
      secretAccessKey: e.BACKY_TEST_S3_SECRET_KEY,
      stop: async () => {},
    };
  }
  const rgw = await Rgw.start();
  return {
    endpoint: rgw.endpoint,
    accessKeyId: rgw.accessKeyId,
    secretAccessKey: rgw.secretAccessKey,
    stop: () => rgw.destroy(),
  };
}

/**
 * The shared HTTPS gateway from the environment ($BACKY_TEST_S3_TLS_ENDPOINT and
 * $BACKY_TEST_S3_CA_FILE, on the cluster of $BACKY_TEST_S3_ENDPOINT: same keys), or an HTTPS
 * one started for this test file.
 */
export async function rgwTlsServer(): Promise<S3Server & { caFile: string; stop(): Promise<void> }> {
  const e = process.env;
  if (e.BACKY_TEST_S3_TLS_ENDPOINT) {
    if (!e.BACKY_TEST_S3_CA_FILE || !e.BACKY_TEST_S3_ACCESS_KEY || !e.BACKY_TEST_S3_SECRET_KEY) {
      throw new Error(
        'BACKY_TEST_S3_TLS_ENDPOINT needs BACKY_TEST_S3_CA_FILE, BACKY_TEST_S3_ACCESS_KEY and BACKY_TEST_S3_SECRET_KEY',
      );
    }
    return {
      endpoint: e.BACKY_TEST_S3_TLS_ENDPOINT,
      caFile: e.BACKY_TEST_S3_CA_FILE,
      accessKeyId: e.BACKY_TEST_S3_ACCESS_KEY,
      secretAccessKey: e.BACKY_TEST_S3_SECRET_KEY,
      stop: async () => {},
    };
  }
  const rgw = await Rgw.start(undefined, { tls: true });
  return {
    endpoint: rgw.endpoint,
    caFile: rgw.caFile!,
    accessKeyId: rgw.accessKeyId,
    secretAccessKey: rgw.secretAccessKey,
    stop: () => rgw.destroy(),
  };
}

/** A bucket name no other test uses (not created: backy creates it on first write). */
export function newBucket(tag: string): string {
  return `backy-${tag}-${randomBytes(4).toString('hex')}`;
}

/** A plain SDK client on the server, for tests to look at or damage what backy stored. */
export function s3Client(s: S3Server): S3Client {
  // The SDK's one-time warning that its 2027 releases need Node 22 is noise in test output.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({
    endpoint: s.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    requestHandler: s.caFile
      ? { httpsAgent: new HttpsAgent({ ca: readFileSync(s.caFile, 'utf8') }) }
      : undefined,
    credentials: { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

/**
 * Every block object key in the bucket (under `prefix`); with `meta`, also the store's meta
 * namespace (`PREFIX meta/...`: descriptor and version copies).
 */
export async function listKeys(
  c: S3Client,
  bucket: string,
  prefix = '',
  opts: { meta?: boolean } = {},
): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const res = await c.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix || undefined, ContinuationToken: token }),
    );
    for (const o of res.Contents ?? []) {
      if (o.Key && (opts.meta || !o.Key.slice(prefix.length).startsWith('meta/'))) keys.push(o.Key);
    }
    token = res.IsTruncated ? res.NextContinuationToken : undefined;
  } while (token);
  return keys.sort();
}

export async function getObject(c: S3Client, bucket: string, key: string): Promise<Buffer> {
  const res = await c.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

export async function putObject(c: S3Client, bucket: string, key: string, body: Buffer): Promise<void> {
  await c.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
}

export async function deleteObject(c: S3Client, bucket: string, key: string): Promise<void> {
  await c.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
}

/** [DataBackend] lines for a bucket on this server (credentials in the file). */
export function s3ConfigLines(s: S3Server, bucket: string, extra: string[] = []): string[] {
  return [
    '[DataBackend]',
    'type = s3',
    `endpoint = ${s.endpoint}`,
    `bucket = ${bucket}`,
    `access_key_id = ${s.accessKeyId}`,
    `secret_access_key = ${s.secretAccessKey}`,
    ...(s.caFile ? [`ca_file = ${s.caFile}`] : []),
    ...extra,
  ];
}
