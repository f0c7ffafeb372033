/**
 * The sockets of one S3 backend: keep-alive (at most `maxConnections`), each reading into one
 * buffer of its own; request bodies written in pieces. Response bodies must be read to the end
 * (or the socket destroyed), or the agent's sockets leak.
 */
import { Agent } from 'node:http';
import type { ClientRequestArgs } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { rootCertificates } from 'node:tls';
import type { Duplex } from 'node:stream';
import { Readable } from 'node:stream';
import type { S3Options } from './s3-backend.js';

/** The keep-alive sockets of one backend (at most `maxConnections`), for both clients. */
export function createS3Agent(o: S3Options): Agent {
  const https = o.endpoint === undefined || o.endpoint.startsWith('https:');
  return https
    ? new QuietHttpsAgent({
        keepAlive: true,
        maxSockets: o.maxConnections,
        // `ca` replaces Node's bundled roots (and NODE_EXTRA_CA_CERTS's): keep the bundled ones
        // beside the file's, so that ca_file only ever adds trust.
        ca: o.ca === undefined ? undefined : [...rootCertificates, ...o.ca],
      })
    : new QuietAgent({ keepAlive: true, maxSockets: o.maxConnections });
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
