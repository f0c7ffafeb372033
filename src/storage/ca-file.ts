/**
 * [DataBackend] ca_file: the certificate authorities an https S3 endpoint may be signed by,
 * besides Node's own (a private gateway's self-signed or in-house CA). Read and checked when the
 * backend opens, so a wrong file is one line naming it, not a TLS failure on the first request.
 */
import { X509Certificate } from 'node:crypto';
import { ConfigError, ioReason } from '../errors.js';
import { TooLargeError, readTextLimited } from '../util/read-limited.js';

/** A bundle of hundreds of certificates is well under this. */
const MAX_CA_FILE = 4 << 20;

const PEM_CERT_RE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** The PEM certificates in `path`, each one parsed once to be sure it is one. */
export async function readCaFile(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readTextLimited(path, MAX_CA_FILE);
  } catch (err) {
    const why = err instanceof TooLargeError ? err.message : ioReason(err);
    throw new ConfigError(`[DataBackend] ca_file ${path}: cannot read it: ${why}`);
  }
  const certs = text.match(PEM_CERT_RE) ?? [];
  if (certs.length === 0) {
    throw new ConfigError(
      `[DataBackend] ca_file ${path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it`,
    );
  }
  for (const [i, pem] of certs.entries()) {
    try {
      new X509Certificate(pem);
    } catch (err) {
      throw new ConfigError(
        `[DataBackend] ca_file ${path}: certificate ${i + 1} is not a valid certificate (${ioReason(err)})`,
      );
    }
  }
  return certs;
}
