/**
 * The AWS SDK's S3 client, for what backy's own requests (s3-request.ts) leave to it: listings
 * and bucket creation, whose answers are XML documents. Loaded on first use only (~1 MB of
 * code), on the backend's own sockets; its retries and checksums off (retrying is
 * s3-retry.ts's).
 */
import type { Agent } from 'node:http';
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import type { ListObjectsV2CommandOutput } from '@aws-sdk/client-s3';
import { errorMessage } from '../errors.js';
import type { S3Options } from './s3-backend.js';

export class S3Sdk {
  readonly #client: S3Client;
  readonly #bucket: string;

  constructor(o: S3Options, agent: Agent) {
    // The SDK warns on stderr, once, that its 2027 releases will need Node 22; backy pins the
    // version and writes only its own one-line messages there.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const https = o.endpoint === undefined || o.endpoint.startsWith('https:');
    this.#bucket = o.bucket;
    this.#client = new S3Client({
      endpoint: o.endpoint,
      region: o.region,
      forcePathStyle: o.pathStyle,
      credentials: {
        accessKeyId: o.accessKeyId,
        secretAccessKey: o.secretAccessKey,
        sessionToken: o.sessionToken,
      },
      // Since 3.729 the SDK adds CRC32 checksums that RGW and MinIO may reject or not return.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
      // Without a logger the SDK writes some warnings with console.warn: they go to the debug
      // log. Its info lines (every request) are dropped.
      logger: sdkLogger(o.debug),
      requestHandler: {
        httpAgent: https ? undefined : agent,
        httpsAgent: https ? agent : undefined,
        connectionTimeout: o.timeoutMs,
        requestTimeout: o.timeoutMs,
      },
    });
  }

  list(
    prefix: string | undefined,
    token: string | undefined,
    maxKeys: number | undefined,
    signal: AbortSignal,
  ): Promise<ListObjectsV2CommandOutput> {
    return this.#client.send(
      new ListObjectsV2Command({
        Bucket: this.#bucket,
        Prefix: prefix,
        ContinuationToken: token,
        MaxKeys: maxKeys,
      }),
      { abortSignal: signal },
    );
  }

  async createBucket(signal: AbortSignal): Promise<void> {
    await this.#client.send(new CreateBucketCommand({ Bucket: this.#bucket }), { abortSignal: signal });
  }

  destroy(): void {
    this.#client.destroy();
  }
}

function sdkLogger(debug: ((msg: string) => void) | undefined) {
  const toDebug = (...args: unknown[]) =>
    debug?.(`S3 client: ${args.map((a) => (typeof a === 'string' ? a : errorMessage(a))).join(' ')}`);
  return { trace: () => {}, debug: () => {}, info: () => {}, warn: toDebug, error: toDebug };
}
