/**
 * TLS for `backy nbd`, as qemu-nbd and nbdkit offer it (NBD_OPT_STARTTLS): X.509 (a
 * certificate and key; with a CA, clients must present a certificate it signed) or pre-shared
 * keys in the file format of nbdkit and GnuTLS's psktool (`username:hexkey` lines), so that
 * libnbd's clients connect with `nbds://...?tls-psk-file=FILE` and qemu with tls-creds-psk.
 *
 * Node (OpenSSL) serves PSK only up to TLS 1.2, so a PSK server offers TLS 1.2 PSK suites
 * (ECDHE/DHE first, for forward secrecy); GnuTLS clients negotiate one of them.
 * Key material never leaves this module: errors name the file and line, never their content.
 */
import { statSync, readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { createSecureContext, createServer } from 'node:tls';
import type { TLSSocket, TlsOptions } from 'node:tls';
import { InputError, ioReason } from '../errors.js';

export interface TlsFiles {
  cert?: string;
  key?: string;
  /** With cert: client certificates signed by this CA are required. */
  ca?: string;
  psk?: string;
}

const PSK_ID = Symbol('pskIdentity');

const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
].join(':');

/** How a connection was secured, for the log. */
export interface TlsInfo {
  protocol: string;
  cipher: string;
  /** The PSK username, or the client certificate's subject CN. */
  peer: string | undefined;
}

export class NbdTls {
  readonly kind: 'x509' | 'psk';
  readonly #options: TlsOptions;

  private constructor(kind: 'x509' | 'psk', options: TlsOptions) {
    this.kind = kind;
    this.#options = options;
  }

  /** Reads and checks the files; one-line InputError for anything unusable. */
  static load(files: TlsFiles): NbdTls {
    if (files.psk !== undefined) {
      const keys = readPskFile(files.psk);
      return new NbdTls('psk', {
        ciphers: PSK_CIPHERS,
        maxVersion: 'TLSv1.2',
        minVersion: 'TLSv1.2',
        dhparam: 'auto',
        pskCallback: (socket, identity) => {
          const key = keys.get(identity);
          // Node has no accessor for the identity a client gave: kept for the log.
          if (key) (socket as TLSSocket & { [PSK_ID]?: string })[PSK_ID] = identity;
          return key ?? null;
        },
      });
    }
    const cert = readTlsFile(files.cert!, 'certificate');
    const key = readTlsFile(files.key!, 'key');
    const ca = files.ca === undefined ? undefined : readTlsFile(files.ca, 'CA certificate');
    const options: TlsOptions = { cert, key, ca, minVersion: 'TLSv1.2' };
    if (ca) Object.assign(options, { requestCert: true, rejectUnauthorized: true });
    try {
      createSecureContext(options); // a key that does not match its certificate fails here
    } catch (err) {
      throw new InputError(`cannot use the TLS certificate and key: ${reason(err)}`);
    }
    return new NbdTls('x509', options);
  }

  /**
   * The TLS handshake as the server, on a socket that has just sent the STARTTLS reply;
   * resolves with the encrypted socket, rejects when the handshake fails or the socket closes.
   */
  upgrade(raw: Socket): Promise<{ socket: TLSSocket; info: TlsInfo }> {
    // A throwaway tls.Server gives a bare socket what a listening one does (PSK lookup, client
    // certificate checks, its errors as events).
    const server = createServer({ ...this.#options, handshakeTimeout: 2 ** 31 - 1 });
    return new Promise((resolve, reject) => {
      const closed = () => reject(new Error('the connection closed during the TLS handshake'));
      raw.once('close', closed);
      server.once('tlsClientError', (err: Error) => {
        raw.off('close', closed);
        raw.destroy();
        reject(new Error(`TLS handshake failed: ${reason(err)}`));
      });
      server.once('secureConnection', (socket: TLSSocket) => {
        raw.off('close', closed);
        const cipher = socket.getCipher();
        const cert = this.kind === 'x509' ? socket.getPeerCertificate() : undefined;
        const cn = cert?.subject?.CN;
        resolve({
          socket,
          info: {
            protocol: socket.getProtocol() ?? '?',
            cipher: cipher?.standardName ?? cipher?.name ?? '?',
            peer: this.kind === 'psk' ? pskIdentity(socket) : Array.isArray(cn) ? cn.join(',') : cn,
          },
        });
      });
      server.emit('connection', raw);
    });
  }
}

function pskIdentity(socket: TLSSocket): string | undefined {
  return (socket as TLSSocket & { [PSK_ID]?: string })[PSK_ID];
}

/**
 * `username:hexkey` lines (psktool's format; blank lines and `#` comments skipped). Refused,
 * as ssh refuses a private key, when group or others may read it.
 */
export function readPskFile(path: string): Map<string, Buffer> {
  let text: string;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new InputError(`TLS PSK file ${JSON.stringify(path)} is not a file`);
    if ((st.mode & 0o077) !== 0)
      throw new InputError(
        `permissions ${(st.mode & 0o777).toString(8).padStart(4, '0')} on TLS PSK file ${JSON.stringify(path)} are too open: it holds keys; make it readable by its owner only (chmod 600)`,
      );
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`cannot read TLS PSK file ${JSON.stringify(path)}: ${ioReason(err)}`);
  }
  const keys = new Map<string, Buffer>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([^:]+):([0-9a-fA-F]+)$/.exec(line);
    if (!m || m[2].length % 2 !== 0 || m[2].length < 32)
      throw new InputError(
        `TLS PSK file ${JSON.stringify(path)}, line ${i + 1}: not 'username:hexkey' with a key of at least 16 bytes (psktool -u USER -p FILE makes one)`,
      );
    keys.set(m[1], Buffer.from(m[2], 'hex'));
  });
  if (keys.size === 0) throw new InputError(`TLS PSK file ${JSON.stringify(path)} has no keys`);
  return keys;
}

function readTlsFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new InputError(`cannot read TLS ${what} ${JSON.stringify(path)}: ${ioReason(err)}`);
  }
}

/** OpenSSL's reason without its internal prefix (library, function, source file). */
function reason(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  const m = /:([^:]+):[^:]*:\d+:?\s*$/.exec(msg.split('\n')[0]);
  return (m ? m[1] : msg.split('\n')[0]).trim();
}
