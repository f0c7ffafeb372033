/**
 * Objects in an S3 bucket (Ceph RADOS Gateway, MinIO, AWS): key `PREFIX` + checksum, flat
 * (S3 has no directories to fan out). A PUT is atomic and durable when it returns, so there
 * are no temp objects and sync() has nothing to do.
 *
 * Which failures are retried is s3-retry.ts's to decide; the sockets are s3-http.ts's; single
 * objects go through backy's own requests (s3-request.ts), listings and bucket creation through
 * the AWS SDK (s3-sdk.ts, loaded only for those). Here: only a 404 for the object itself is MissingBlockError: a network error
 * never reads as damage. Because HEAD responses carry no error code, the bucket is checked
 * once before the first 404 is believed; a missing bucket is created only by a write (put),
 * never by a read, so a restore from a vanished bucket is an I/O error, not a store full of
 * holes. Messages name the endpoint and bucket, never the credentials.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import type { Agent } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MissingBlockError } from '../errors.js';
import { META_NAME_RE, checkMetaName } from './backend.js';
import type { ObjectInfo, PutOptions, StorageBackend } from './backend.js';
import { createS3Agent, pieces } from './s3-http.js';
import { S3Requests } from './s3-request.js';
import { NoBucketError, S3Error, S3Retry, isNoSuchBucket, isNotFound } from './s3-retry.js';
import type { S3Sdk } from './s3-sdk.js';

export { S3Error } from './s3-retry.js';

const KEY_RE = /^[0-9a-f]{8,}$/;

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
  /** PEM certificates trusted for an https endpoint besides Node's own roots ([DataBackend] ca_file). */
  ca?: string[];
  /** Keys per list request (S3's maximum and default: 1000); smaller in tests. */
  listPageSize?: number;
  /** Where the SDK's own warnings go (backy's debug log), never stderr. */
  debug?: (msg: string) => void;
}

export class S3Backend implements StorageBackend {
  readonly url: string;
  /**
   * Blocks in flight: 4 of 4 MiB. Sockets and TLS cost more than a directory's files. 6 in
   * flight (24 MiB) measured no faster against radosgw here (it is the gateway that waits) and
   * 5-6 MB more peak RSS; 16 MiB keeps a restore over HTTPS at ~125 MB.
   */
  readonly inFlightBytes = 16 << 20;
  readonly #o: S3Options;
  readonly #requests: S3Requests;
  /** The SDK, for listings and bucket creation only: loaded at the first of those. */
  #sdk: Promise<S3Sdk> | undefined;
  readonly #agent: Agent;
  readonly #retry: S3Retry;
  /** Set once the bucket is known to exist (a 404 for an object is then the object's). */
  #bucketChecked: Promise<void> | undefined;
  #bucketWritable: Promise<void> | undefined;

  constructor(o: S3Options) {
    this.#o = o;
    this.url = `s3://${o.bucket}/${o.prefix}`;
    this.#agent = createS3Agent(o);
    this.#requests = new S3Requests(o, this.#agent);
    this.#retry = new S3Retry(o.timeoutMs);
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
      this.#retry.run(`cannot store block ${key} in ${this.where}`, (signal) =>
        this.#requests.send('PUT', Key, {
          body: { stream: () => pieces(body), length: body.length },
          signal,
        }),
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
      return await this.#retry.run(`cannot read block ${key} from ${this.where}`, async (signal) => {
        return (await this.#requests.send('GET', Key, { into, signal })).body;
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
      const res = await this.#retry.run(`cannot look up block ${key} in ${this.where}`, (signal) =>
        this.#requests.send('HEAD', Key, { signal }),
      );
      const modified = res.headers['last-modified'];
      return {
        key,
        size: Number(res.headers['content-length'] ?? 0),
        mtimeMs: latestMs(modified === undefined ? undefined : new Date(modified)),
      };
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
      await this.#retry.run(`cannot delete block ${key} from ${this.where}`, (signal) =>
        this.#requests.send('DELETE', Key, { signal }),
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
      const res = await this.#retry
        .run(`cannot list ${this.where}`, async (signal) =>
          (await this.#sdkClient()).list(this.#o.prefix || undefined, token, this.#o.listPageSize, signal),
        )
        .catch((err: unknown) => {
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

  async putMeta(name: string, data: Buffer | AsyncIterable<Buffer>): Promise<void> {
    const Key = this.#metaKey(name);
    await this.#bucketForWrites();
    if (Buffer.isBuffer(data)) {
      await this.#retry.run(`cannot store ${name} in ${this.where}`, (signal) =>
        this.#requests.send('PUT', Key, {
          body: { stream: () => pieces(data), length: data.length },
          signal,
        }),
      );
      return;
    }
    // A stream is spooled to a private temp file first: a PUT needs its length, and each retry
    // reads the file afresh. Memory stays a chunk, whatever the copy's size.
    const dir = await mkdtemp(join(tmpdir(), 'backy-meta-'));
    try {
      const file = join(dir, 'spool');
      const fh = await open(file, 'wx', 0o600);
      let size = 0;
      try {
        for await (const chunk of data) {
          await fh.writeFile(chunk); // the whole chunk, from the current position
          size += chunk.length;
        }
      } finally {
        await fh.close();
      }
      await this.#retry.run(`cannot store ${name} in ${this.where}`, (signal) =>
        this.#requests.send('PUT', Key, {
          body: { stream: () => createReadStream(file), length: size },
          signal,
        }),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async getMeta(name: string): Promise<Buffer | undefined> {
    const Key = this.#metaKey(name);
    try {
      return await this.#retry.run(`cannot read ${name} from ${this.where}`, async (signal) => {
        return (await this.#requests.send('GET', Key, { signal })).body;
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
      const res = await this.#retry
        .run(`cannot list ${this.where}`, async (signal) =>
          (await this.#sdkClient()).list(prefix, token, this.#o.listPageSize, signal),
        )
        .catch((err: unknown) => {
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
      await this.#retry.run(`cannot delete ${name} from ${this.where}`, (signal) =>
        this.#requests.send('DELETE', Key, { signal }),
      );
    } catch (err) {
      if (err instanceof S3Error && isNotFound(err.cause)) return;
      throw err;
    }
  }

  async close(): Promise<void> {
    const sdk = this.#sdk;
    this.#sdk = undefined;
    if (sdk) (await sdk.catch(() => undefined))?.destroy();
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
    this.#bucketChecked ??= this.#retry
      .run(`cannot reach bucket ${this.where}`, (signal) => this.#requests.send('HEAD', '', { signal }))
      .then(
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
      await this.#retry.run(`bucket ${this.where} does not exist and cannot be created`, async (signal) =>
        (await this.#sdkClient()).createBucket(signal),
      );
    } catch (err) {
      // Another host may have created it meanwhile.
      const name = (err as { cause?: { name?: string } }).cause?.name;
      if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw err;
    }
  }

  #sdkClient(): Promise<S3Sdk> {
    this.#sdk ??= import('./s3-sdk.js').then(({ S3Sdk }) => new S3Sdk(this.#o, this.#agent));
    return this.#sdk;
  }

  #noBucket(cause: unknown): S3Error {
    return new NoBucketError(
      `bucket ${this.#o.bucket} does not exist at ${this.#o.endpoint ?? 'AWS S3'} (a backup creates it; check [DataBackend] bucket)`,
      { cause },
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
