/**
 * The S3 client of one backend: keep-alive sockets (at most `maxConnections`), the SDK's own
 * retries and checksums off, and response bodies read to the end (or the socket destroyed),
 * or the agent's sockets leak.
 */
import { Agent } from 'node:http';
import type { ClientRequestArgs } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import type { Duplex } from 'node:stream';
import { Readable } from 'node:stream';
import { S3Client } from '@aws-sdk/client-s3';
import { errorMessage } from '../errors.js';
import { freeBuffer } from '../util/free-buffer.js';
import type { S3Options } from './s3-backend.js';

/** The client and the agent behind it (close() destroys both). */
export function createS3Client(o: S3Options): { client: S3Client; agent: Agent } {
  // The SDK warns on stderr, once, that its 2027 releases will need Node 22; backy pins the
  // version and writes only its own one-line messages there.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const https = o.endpoint === undefined || o.endpoint.startsWith('https:');
  const agent = https
    ? new QuietHttpsAgent({
        keepAlive: true,
        maxSockets: o.maxConnections,
        // `ca` replaces Node's bundled roots (and NODE_EXTRA_CA_CERTS's): keep the bundled ones
        // beside the file's, so that ca_file only ever adds trust.
        ca: o.ca === undefined ? undefined : [...rootCertificates, ...o.ca],
      })
    : new QuietAgent({ keepAlive: true, maxSockets: o.maxConnections });
  const client = new S3Client({
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
    // Without a logger the SDK writes some warnings with console.warn ("An error was
    // encountered in a non-retryable streaming request.", beside backy's own line for the same
    // failure): they go to the debug log. Its info lines (every request) are dropped.
    logger: sdkLogger(o.debug),
    requestHandler: {
      httpAgent: https ? undefined : agent,
      httpsAgent: https ? agent : undefined,
      connectionTimeout: o.timeoutMs,
      requestTimeout: o.timeoutMs,
    },
  });
  return { client, agent };
}

function sdkLogger(debug: ((msg: string) => void) | undefined) {
  const toDebug = (...args: unknown[]) =>
    debug?.(`S3 client: ${args.map((a) => (typeof a === 'string' ? a : errorMessage(a))).join(' ')}`);
  return { trace: () => {}, debug: () => {}, info: () => {}, warn: toDebug, error: toDebug };
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

/** Bytes a socket reads at once (decrypted ones over TLS), into its one reused buffer. */
const SOCKET_READ = 64 << 10;

/**
 * A socket's reads land in one buffer of its own instead of a new one per read: Node's HTTP
 * parser copies what it keeps (headers, body chunks) out of each read before the next, and the
 * per-read buffers (4 MiB of them per block) would otherwise pile up until a full collection.
 * The socket is handed each read as 'data', as without onread. Over TLS the same option takes
 * the decrypted bytes (tls.connect passes it on to its socket).
 */
function withOwnReadBuffer(options: ClientRequestArgs): ClientRequestArgs {
  const onread = {
    buffer: Buffer.allocUnsafeSlow(SOCKET_READ),
    callback(this: Duplex, n: number, buf: Buffer): boolean {
      this.emit('data', buf.subarray(0, n));
      return true;
    },
  };
  return { ...options, onread } as ClientRequestArgs;
}

class QuietAgent extends Agent {
  override createConnection(options: ClientRequestArgs, cb?: (err: Error | null, s: Duplex) => void) {
    return quiet(super.createConnection(withOwnReadBuffer(options), cb));
  }
}

class QuietHttpsAgent extends HttpsAgent {
  override createConnection(options: ClientRequestArgs, cb?: (err: Error | null, s: Duplex) => void) {
    return quiet(super.createConnection(withOwnReadBuffer(options), cb));
  }
}

/** Bytes of a request body handed to the socket at once (see pieces). */
const BODY_PIECE = 64 << 10;

/**
 * A request body as a stream of pieces of `body` (views, not copies). Written whole, a 4 MiB
 * body is encrypted whole over TLS: its 4 MiB of ciphertext wait in the TLS socket's native
 * buffer until the peer takes them, on each of the connections at once. Piped in pieces, the
 * socket takes the next one only as the last one leaves.
 */
export function pieces(body: Buffer): Readable {
  function* split(): Generator<Buffer> {
    for (let at = 0; at < body.length; at += BODY_PIECE) yield body.subarray(at, at + BODY_PIECE);
  }
  return Readable.from(split(), { highWaterMark: 2 });
}

/**
 * Reads a response body to its end, into `into` when it fits. Destroys the stream when the
 * signal fires, so a gateway that stalls mid-body cannot hang us.
 */
export async function readBody(
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
