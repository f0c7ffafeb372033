/**
 * backy's own S3 requests for single objects (GET, PUT, HEAD, DELETE, HEAD bucket): one signed
 * HTTP request each (SigV4 by the AWS SDK's own signer), the response body read straight into
 * the caller's buffer. The SDK (its client, middleware stack and output parsing, ~1 MB of code
 * loaded at start-up) costs twice the CPU per 4 MiB GET; it stays for what needs XML parsing
 * of results: listings and bucket creation (s3-sdk.ts, loaded on first use).
 *
 * A failed request rejects with an error shaped like the SDK's (name = the S3 error code,
 * $metadata.httpStatusCode), or with the socket's own error (code ECONNRESET, ...), so that
 * s3-retry.ts judges both clients' failures alike.
 */
import { createHash, createHmac } from 'node:crypto';
import type { Hash, Hmac } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import type { Agent, IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Readable } from 'node:stream';
import { SignatureV4 } from '@smithy/signature-v4';
import type { SourceData } from '@smithy/types';
import { freeBuffer } from '../util/free-buffer.js';
import type { S3Options } from './s3-backend.js';

/** SHA-256 of no bytes: the payload hash of a request without a body. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** An error response body longer than this is cut (it is XML of a few hundred bytes). */
const MAX_ERROR_BODY = 64 << 10;

/** An S3 error answer, in the SDK's shape (s3-retry.ts reads name and $metadata). */
export class S3ResponseError extends Error {
  readonly $metadata: { httpStatusCode: number; requestId?: string };
  readonly Code?: string;

  constructor(status: number, code: string | undefined, message: string | undefined, requestId?: string) {
    super(message || code || `HTTP ${status}`);
    // As the SDK names a body-less 404 (HEAD).
    this.name = code ?? (status === 404 ? 'NotFound' : `HTTP ${status}`);
    this.Code = code;
    this.$metadata = { httpStatusCode: status, requestId };
  }
}

export interface S3Answer {
  status: number;
  headers: IncomingMessage['headers'];
  /** The body (into `into` when it fitted); empty for HEAD. */
  body: Buffer;
}

/** node:crypto in the shape the signer asks for (a hash, or an HMAC when given a key). */
class Sha256 {
  #h: Hash | Hmac;
  readonly #key?: Uint8Array | string;
  constructor(key?: SourceData) {
    this.#key = key === undefined || typeof key === 'string' ? key : bytes(key);
    this.#h = this.#fresh();
  }
  #fresh(): Hash | Hmac {
    return this.#key === undefined ? createHash('sha256') : createHmac('sha256', this.#key);
  }
  update(data: SourceData): void {
    this.#h.update(typeof data === 'string' ? data : bytes(data));
  }
  async digest(): Promise<Uint8Array> {
    return this.#h.digest();
  }
  reset(): void {
    this.#h = this.#fresh();
  }
}

function bytes(d: ArrayBuffer | ArrayBufferView): Uint8Array {
  return ArrayBuffer.isView(d) ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength) : new Uint8Array(d);
}

export class S3Requests {
  readonly #agent: Agent;
  readonly #https: boolean;
  readonly #hostname: string;
  readonly #port: number | undefined;
  /** Host header (with a non-default port), and the path every object path starts with. */
  readonly #host: string;
  readonly #base: string;
  readonly #signer: SignatureV4;

  constructor(o: S3Options, agent: Agent) {
    this.#agent = agent;
    const url = new URL(o.endpoint ?? `https://s3.${o.region}.amazonaws.com`);
    this.#https = url.protocol === 'https:';
    const basePath = url.pathname.replace(/\/+$/, '');
    const host = o.pathStyle ? url.host : `${o.bucket}.${url.host}`;
    this.#host = host;
    this.#hostname = o.pathStyle ? url.hostname : `${o.bucket}.${url.hostname}`;
    this.#port = url.port === '' ? undefined : Number(url.port);
    this.#base = o.pathStyle ? `${basePath}/${o.bucket}` : basePath;
    this.#signer = new SignatureV4({
      service: 's3',
      region: o.region,
      credentials: {
        accessKeyId: o.accessKeyId,
        secretAccessKey: o.secretAccessKey,
        sessionToken: o.sessionToken,
      },
      sha256: Sha256,
      uriEscapePath: false,
      applyChecksum: false,
    });
  }

  /**
   * One request for `key` ('' for the bucket itself; plain URL-safe characters only, as
   * backy's keys are). A 2xx answer resolves; any other rejects with S3ResponseError.
   */
  async send(
    method: 'GET' | 'PUT' | 'HEAD' | 'DELETE',
    key: string,
    opts: { body?: { stream: () => Readable; length: number }; into?: Buffer; signal: AbortSignal },
  ): Promise<S3Answer> {
    const path = key === '' ? this.#base || '/' : `${this.#base}/${key}`;
    const headers: Record<string, string> = {
      host: this.#host,
      // The payload is backy's object format, whose checksum every read verifies.
      'x-amz-content-sha256': opts.body ? 'UNSIGNED-PAYLOAD' : EMPTY_SHA256,
    };
    if (opts.body) headers['content-length'] = String(opts.body.length);
    const signed = await this.#signer.sign({
      method,
      protocol: this.#https ? 'https:' : 'http:',
      hostname: this.#hostname,
      port: this.#port,
      path,
      query: {},
      headers,
    });
    opts.signal.throwIfAborted();
    return new Promise<S3Answer>((resolve, reject) => {
      const req = (this.#https ? httpsRequest : httpRequest)(
        {
          agent: this.#agent,
          method,
          host: this.#hostname,
          port: this.#port,
          path,
          headers: signed.headers,
          signal: opts.signal,
        },
        (res) => {
          readAnswer(method, res, opts.into).then(resolve, reject);
        },
      );
      // After an early answer (a refusal before the body was read) the rest of the upload meets
      // a closed socket: the promise is settled by then, and this only keeps the error handled.
      req.on('error', reject);
      if (opts.body) opts.body.stream().pipe(req);
      else req.end();
    });
  }
}

/** The whole answer; a non-2xx one as S3ResponseError (from its XML error body). */
function readAnswer(method: string, res: IncomingMessage, into: Buffer | undefined): Promise<S3Answer> {
  const status = res.statusCode ?? 0;
  const ok = status >= 200 && status < 300;
  const length =
    res.headers['content-length'] === undefined ? undefined : Number(res.headers['content-length']);
  return new Promise<S3Answer>((resolve, reject) => {
    const fits = ok && into !== undefined && length !== undefined && length <= into.length;
    const chunks: Buffer[] = [];
    let done = 0;
    res.on('data', (chunk: Buffer) => {
      const n = chunk.length; // 0 once freed
      if (fits && done + n <= into.length) {
        chunk.copy(into, done);
        // A copy Node's HTTP parser made for us alone: 4 MiB of them per block would otherwise
        // pile up until a full collection.
        freeBuffer(chunk);
      } else if (ok || done < MAX_ERROR_BODY) {
        // Longer than announced: the rest goes to fresh buffers; the object's header check
        // reports it.
        if (fits && chunks.length === 0) chunks.push(Buffer.from(into.subarray(0, done)));
        chunks.push(chunk);
      }
      done += n;
    });
    res.on('error', reject);
    res.on('close', () => {
      if (!res.complete)
        reject(Object.assign(new Error('connection closed mid-answer'), { code: 'ECONNRESET' }));
    });
    res.on('end', () => {
      if (!ok) {
        const xml = Buffer.concat(chunks).toString('utf8');
        const tag = (t: string) => new RegExp(`<${t}>([^<]*)</${t}>`).exec(xml)?.[1];
        const requestId = res.headers['x-amz-request-id'];
        reject(
          new S3ResponseError(
            status,
            tag('Code'),
            tag('Message'),
            typeof requestId === 'string' ? requestId : undefined,
          ),
        );
        return;
      }
      const body =
        method === 'HEAD'
          ? Buffer.alloc(0)
          : fits && chunks.length === 0
            ? into.subarray(0, done)
            : Buffer.concat(chunks);
      resolve({ status, headers: res.headers, body });
    });
  });
}
