/**
 * Objects in an S3 bucket (Ceph RADOS Gateway, MinIO, AWS): key `PREFIX` + checksum, flat
 * (S3 has no directories to fan out). A PUT is atomic and durable when it returns, so there
 * are no temp objects and sync() has nothing to do.
 *
 * Failures, decided here and nowhere else (restic's retry backend is the model):
 * - transient (5xx, throttling, connection reset, a timed-out attempt): retried with
 *   exponential backoff, all attempts of one operation within `timeoutMs`, so a stalled
 *   gateway makes the operation fail in bounded time instead of hanging;
 * - permanent (403, a missing bucket, a bad endpoint, any other 4xx): fail at once;
 * - only a 404 for the object itself is MissingBlockError: a network error never reads as
 *   damage. Because HEAD responses carry no error code, the bucket is checked once before the
 *   first 404 is believed; a missing bucket is created only by a write (put), never by a
 *   read, so a restore from a vanished bucket is an I/O error, not a store full of holes.
 * Messages name the endpoint and bucket, never the credentials.
 *
 * One client, keep-alive sockets (at most `maxConnections`); every response body is read to
 * the end (or the socket destroyed), or the agent's sockets leak.
 */
import { Agent } from 'node:http';
import type { ClientRequestArgs } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import type { Duplex } from 'node:stream';
import type { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { BackyError, MissingBlockError, errorMessage } from '../errors.js';
import { freeBuffer } from '../util/free-buffer.js';
import { META_NAME_RE, checkMetaName } from './backend.js';
import type { ObjectInfo, PutOptions, StorageBackend } from './backend.js';

const KEY_RE = /^[0-9a-f]{8,}$/;
const FIRST_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 2000;

export interface S3Options {
  /** e.g. http://127.0.0.1:7480; undefined for AWS itself. */
  endpoint?: string;
  bucket: string;
  /** Prepended to every key; '' or ending in '/'. */
  prefix: string;
  region: string;
  pathStyle: boolean;
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  maxConnections: number;
  /** Longest one object operation may take, retries included. */
  timeoutMs: number;
  /** Keys per list request (S3's maximum and default: 1000); smaller in tests. */
  listPageSize?: number;
}

/** Raised for an error that retrying cannot fix (or after the retries ran out). */
export class S3Error extends BackyError {}

export class S3Backend implements StorageBackend {
  readonly url: string;
  readonly #o: S3Options;
  readonly #client: S3Client;
  readonly #agent: Agent;
  /** Set once the bucket is known to exist (a 404 for an object is then the object's). */
  #bucketChecked: Promise<void> | undefined;
  #bucketWritable: Promise<void> | undefined;
  /** Connection refused before the first success means a wrong endpoint: no retry. */
  #reachedOnce = false;

  constructor(o: S3Options) {
    this.#o = o;
    this.url = `s3://${o.bucket}/${o.prefix}`;
    // The SDK warns on stderr, once, that its 2027 releases will need Node 22; backy pins the
    // version and writes only its own one-line messages there.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const https = o.endpoint === undefined || o.endpoint.startsWith('https:');
    this.#agent = new (https ? QuietHttpsAgent : QuietAgent)({
      keepAlive: true,
      maxSockets: o.maxConnections,
    });
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
      // Retrying is ours (bounded by timeoutMs, with our idea of transient).
      maxAttempts: 1,
      requestHandler: {
        httpAgent: https ? undefined : this.#agent,
        httpsAgent: https ? this.#agent : undefined,
        connectionTimeout: o.timeoutMs,
        requestTimeout: o.timeoutMs,
      },
    });
  }

  /** Where, for messages: endpoint and bucket (and prefix). */
  get where(): string {
    return `${this.url} at ${this.#o.endpoint ?? 'AWS S3'}`;
  }

  #key(key: string): string {
    if (!KEY_RE.test(key)) throw new Error(`invalid object key '${key}'`);
    return this.#o.prefix + key;
  }

  async put(key: string, data: readonly Buffer[], _opts?: PutOptions): Promise<void> {
    const Key = this.#key(key);
    await this.#bucketForWrites();
    const body = data.length === 1 ? data[0] : Buffer.concat(data as Buffer[]);
    const send = () =>
      this.#retry(`cannot store block ${key} in ${this.where}`, (signal) =>
        this.#client.send(
          new PutObjectCommand({ Bucket: this.#o.bucket, Key, Body: body, ContentLength: body.length }),
          { abortSignal: signal },
        ),
      );
    try {
      await send();
    } catch (err) {
      if (!(err instanceof S3Error) || !isNoSuchBucket(err.cause)) throw err;
      await this.#createBucket();
      await send();
    }
  }

  async sync(): Promise<void> {}

  async get(key: string): Promise<Buffer> {
    return this.#get(key, undefined);
  }

  async getInto(key: string, buf: Buffer): Promise<Buffer> {
    return this.#get(key, buf);
  }

  async #get(key: string, into: Buffer | undefined): Promise<Buffer> {
    const Key = this.#key(key);
    try {
      return await this.#retry(`cannot read block ${key} from ${this.where}`, async (signal) => {
        const res = await this.#client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key }), {
          abortSignal: signal,
        });
        return readBody(res.Body as Readable, res.ContentLength, into, signal);
      });
    } catch (err) {
      if (err instanceof S3Error && isNotFound(err.cause)) {
        if (isNoSuchBucket(err.cause)) throw this.#noBucket(err.cause);
        await this.#checkBucket();
        throw new MissingBlockError(key);
      }
      throw err;
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const Key = this.#key(key);
    try {
      const res = await this.#retry(`cannot look up block ${key} in ${this.where}`, (signal) =>
        this.#client.send(new HeadObjectCommand({ Bucket: this.#o.bucket, Key }), { abortSignal: signal }),
      );
      return { key, size: res.ContentLength ?? 0, mtimeMs: latestMs(res.LastModified) };
    } catch (err) {
      if (err instanceof S3Error && isNotFound(err.cause)) {
        await this.#checkBucket();
        return undefined;
      }
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    const Key = this.#key(key);
    try {
      await this.#retry(`cannot delete block ${key} from ${this.where}`, (signal) =>
        this.#client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key }), { abortSignal: signal }),
      );
    } catch (err) {
      // S3 answers 204 for a missing key; some gateways 404. Either way it is gone.
      if (err instanceof S3Error && isNotFound(err.cause) && !isNoSuchBucket(err.cause)) return;
      throw err;
    }
  }

  async *list(): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const res = await this.#retry(`cannot list ${this.where}`, (signal) =>
        this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.#o.bucket,
            Prefix: this.#o.prefix || undefined,
            ContinuationToken: token,
            MaxKeys: this.#o.listPageSize,
          }),
          { abortSignal: signal },
        ),
      ).catch((err: unknown) => {
        if (err instanceof S3Error && isNoSuchBucket(err.cause)) throw this.#noBucket(err.cause);
        throw err;
      });
      for (const o of res.Contents ?? []) {
        const name = o.Key?.slice(this.#o.prefix.length) ?? '';
        if (!o.Key?.startsWith(this.#o.prefix) || !KEY_RE.test(name)) continue;
        yield { key: name, size: o.Size ?? 0, mtimeMs: latestMs(o.LastModified) };
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  /** Meta names live under PREFIX meta/: never a block key (hex only), skipped by list(). */
  #metaKey(name: string): string {
    return `${this.#o.prefix}meta/${checkMetaName(name)}`;
  }

  async putMeta(name: string, data: Buffer): Promise<void> {
    const Key = this.#metaKey(name);
    await this.#bucketForWrites();
    await this.#retry(`cannot store ${name} in ${this.where}`, (signal) =>
      this.#client.send(
        new PutObjectCommand({ Bucket: this.#o.bucket, Key, Body: data, ContentLength: data.length }),
        { abortSignal: signal },
      ),
    );
  }

  async getMeta(name: string): Promise<Buffer | undefined> {
    const Key = this.#metaKey(name);
    try {
      return await this.#retry(`cannot read ${name} from ${this.where}`, async (signal) => {
        const res = await this.#client.send(new GetObjectCommand({ Bucket: this.#o.bucket, Key }), {
          abortSignal: signal,
        });
        return readBody(res.Body as Readable, res.ContentLength, undefined, signal);
      });
    } catch (err) {
      // No bucket is no store yet: nothing describes it.
      if (err instanceof S3Error && isNotFound(err.cause)) return undefined;
      throw err;
    }
  }

  async *listMeta(): AsyncIterable<ObjectInfo> {
    const prefix = `${this.#o.prefix}meta/`;
    let token: string | undefined;
    do {
      const res = await this.#retry(`cannot list ${this.where}`, (signal) =>
        this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.#o.bucket,
            Prefix: prefix,
            ContinuationToken: token,
            MaxKeys: this.#o.listPageSize,
          }),
          { abortSignal: signal },
        ),
      ).catch((err: unknown) => {
        if (err instanceof S3Error && isNoSuchBucket(err.cause)) return undefined;
        throw err;
      });
      if (!res) return;
      for (const o of res.Contents ?? []) {
        const name = o.Key?.slice(prefix.length) ?? '';
        if (!o.Key?.startsWith(prefix) || !META_NAME_RE.test(name)) continue;
        yield { key: name, size: o.Size ?? 0, mtimeMs: latestMs(o.LastModified) };
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  }

  async deleteMeta(name: string): Promise<void> {
    const Key = this.#metaKey(name);
    try {
      await this.#retry(`cannot delete ${name} from ${this.where}`, (signal) =>
        this.#client.send(new DeleteObjectCommand({ Bucket: this.#o.bucket, Key }), { abortSignal: signal }),
      );
    } catch (err) {
      if (err instanceof S3Error && isNotFound(err.cause)) return;
      throw err;
    }
  }

  async close(): Promise<void> {
    this.#client.destroy();
    this.#agent.destroy();
  }

  /**
   * Once per process, before the first put: the bucket, created if missing. Without it the
   * first puts of a backup into a new bucket all meet NoSuchBucket, which radosgw answers
   * before reading their 4 MiB bodies and then hangs up on.
   */
  #bucketForWrites(): Promise<void> {
    this.#bucketWritable ??= this.#checkBucket().catch(async (err: unknown) => {
      if (!(err instanceof S3Error && isNotFound(err.cause))) {
        this.#bucketWritable = undefined;
        throw err;
      }
      await this.#createBucket().catch((e: unknown) => {
        this.#bucketWritable = undefined;
        throw e;
      });
    });
    return this.#bucketWritable;
  }

  #checkBucket(): Promise<void> {
    this.#bucketChecked ??= this.#retry(`cannot reach bucket ${this.where}`, (signal) =>
      this.#client.send(new HeadBucketCommand({ Bucket: this.#o.bucket }), { abortSignal: signal }),
    ).then(
      () => {},
      (err: unknown) => {
        this.#bucketChecked = undefined;
        if (err instanceof S3Error && isNotFound(err.cause)) throw this.#noBucket(err.cause);
        throw err;
      },
    );
    return this.#bucketChecked;
  }

  async #createBucket(): Promise<void> {
    try {
      await this.#retry(`bucket ${this.where} does not exist and cannot be created`, (signal) =>
        this.#client.send(new CreateBucketCommand({ Bucket: this.#o.bucket }), { abortSignal: signal }),
      );
    } catch (err) {
      // Another host may have created it meanwhile.
      const name = (err as { cause?: { name?: string } }).cause?.name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw err;
    }
  }

  #noBucket(cause: unknown): S3Error {
    return new S3Error(
      `bucket ${this.#o.bucket} does not exist at ${this.#o.endpoint ?? 'AWS S3'} (a backup creates it; check [DataBackend] bucket)`,
      { cause },
    );
  }

  /**
   * Runs `attempt` until it succeeds, fails permanently, or `timeoutMs` has passed since the
   * first try; each attempt gets a signal that fires at that deadline.
   */
  async #retry<T>(what: string, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.#o.timeoutMs;
    for (let n = 0; ; n++) {
      const left = deadline - Date.now();
      const signal = AbortSignal.timeout(Math.max(1, left));
      try {
        const result = await attempt(signal);
        this.#reachedOnce = true;
        return result;
      } catch (err) {
        const timedOut = signal.aborted;
        const transient = timedOut || this.#isTransient(err);
        const backoff = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** n) * (0.5 + Math.random() / 2);
        if (!transient || Date.now() + backoff >= deadline) {
          const reason = timedOut
            ? `no answer within ${this.#o.timeoutMs / 1000} s (timeout)`
            : describe(err);
          throw new S3Error(`${what}: ${reason}${transient && n > 0 ? ` (after ${n + 1} attempts)` : ''}`, {
            cause: err,
          });
        }
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  #isTransient(err: unknown): boolean {
    const e = err as { name?: string; code?: string; $metadata?: { httpStatusCode?: number } };
    const status = e.$metadata?.httpStatusCode;
    if (status !== undefined && status >= 500) return true;
    if (status === 429 || status === 408) return true;
    if (
      e.name !== undefined &&
      ['SlowDown', 'Throttling', 'ThrottlingException', 'RequestTimeout', 'TimeoutError'].includes(e.name)
    )
      return true;
    const code = e.code ?? (e as { cause?: { code?: string } }).cause?.code;
    if (code === 'ECONNREFUSED') return this.#reachedOnce;
    return (
      code !== undefined &&
      [
        'ECONNRESET',
        'EPIPE',
        'ETIMEDOUT',
        'ECONNABORTED',
        'EHOSTUNREACH',
        'ENETUNREACH',
        'EAI_AGAIN',
      ].includes(code)
    );
  }
}

/**
 * Last-Modified has whole seconds: report the latest moment it may stand for, so that
 * cleanup's "written before I started" test errs towards keeping an object.
 */
function latestMs(d: Date | undefined): number {
  if (d === undefined) return Date.now();
  const ms = d.getTime();
  return ms % 1000 === 0 ? ms + 999 : ms;
}

/**
 * An error on a socket after its response was read (the server hung up while the rest of a
 * request body was still being sent: EPIPE) has no request left to report to; unhandled, it
 * would end the process. The request's own failure, if any, is reported through the request.
 */
function quiet(sock: Duplex | null | undefined): Duplex | null | undefined {
  sock?.on('error', () => {});
  return sock;
}

/** Bytes a plain-HTTP socket reads at once, into its one reused buffer (see QuietAgent). */
const SOCKET_READ = 64 << 10;

class QuietAgent extends Agent {
  override createConnection(options: ClientRequestArgs, cb?: (err: Error | null, s: Duplex) => void) {
    // A socket's reads land in one buffer of its own instead of a new one per read: Node's HTTP
    // parser copies what it keeps (headers, body chunks) out of each read before the next, and
    // the per-read buffers (4 MiB of them per block) would otherwise pile up until a full
    // collection. The socket is handed each read as 'data', as without onread.
    const onread = {
      buffer: Buffer.allocUnsafeSlow(SOCKET_READ),
      callback(this: Duplex, n: number, buf: Buffer): boolean {
        this.emit('data', buf.subarray(0, n));
        return true;
      },
    };
    return quiet(super.createConnection({ ...options, onread } as ClientRequestArgs, cb));
  }
}

class QuietHttpsAgent extends HttpsAgent {
  override createConnection(options: ClientRequestArgs, cb?: (err: Error | null, s: Duplex) => void) {
    return quiet(super.createConnection(options, cb));
  }
}

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string }).name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchBucket';
}

function isNoSuchBucket(err: unknown): boolean {
  return (err as { name?: string; Code?: string }).name === 'NoSuchBucket';
}

/** One phrase for any SDK or socket error: "access denied (AccessDenied, HTTP 403)". */
function describe(err: unknown): string {
  const e = err as { name?: string; code?: string; message?: string };
  const status = statusOf(err);
  const code = e.code ?? (e as { cause?: { code?: string } }).cause?.code;
  const msg = errorMessage(err).split('\n')[0];
  const text = msg === '' || msg === 'UnknownError' ? (e.name ?? 'unknown error') : msg;
  const parts = [
    e.name && e.name !== 'Error' ? e.name : undefined,
    code,
    status ? `HTTP ${status}` : undefined,
  ]
    .filter((p) => p !== undefined && !text.includes(p))
    .join(', ');
  if (status === 403)
    return `${text} (${parts || 'HTTP 403'}; check the credentials and their rights on the bucket)`;
  return parts ? `${text} (${parts})` : text;
}

/**
 * Reads a response body to its end, into `into` when it fits. Destroys the stream when the
 * signal fires, so a gateway that stalls mid-body cannot hang us.
 */
async function readBody(
  body: Readable,
  length: number | undefined,
  into: Buffer | undefined,
  signal: AbortSignal,
): Promise<Buffer> {
  const onAbort = () => body.destroy(new Error('timed out reading the response body'));
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    if (length !== undefined && into && length <= into.length) {
      let done = 0;
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (done + chunk.length > into.length) {
          // Longer than announced: keep reading into a fresh buffer; the header check reports it.
          const rest: Buffer[] = [into.subarray(0, done), chunk];
          for await (const c of body as AsyncIterable<Buffer>) rest.push(c);
          return Buffer.concat(rest);
        }
        chunk.copy(into, done);
        done += chunk.length;
        // A copy Node's HTTP parser made for us alone: 4 MiB of them per block would otherwise
        // pile up until a full collection.
        freeBuffer(chunk);
      }
      return into.subarray(0, done);
    }
    const chunks: Buffer[] = [];
    for await (const chunk of body as AsyncIterable<Buffer>) chunks.push(chunk);
    return Buffer.concat(chunks);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
