/**
 * Failures of S3 requests, decided here and nowhere else (restic's retry backend is the model):
 * - transient (5xx, throttling, connection reset, a timed-out attempt): retried with
 *   exponential backoff, all attempts of one operation within `timeoutMs`, so a stalled
 *   gateway makes the operation fail in bounded time instead of hanging;
 * - permanent (403, a missing bucket, a bad endpoint, any other 4xx): fail at once.
 * What a 404 means (a missing object or a missing bucket) is the backend's to decide, with
 * isNotFound and isNoSuchBucket.
 */
import { BackyError, errorMessage } from '../errors.js';

const FIRST_BACKOFF_MS = 100;
const MAX_BACKOFF_MS = 2000;

/** Raised for an error that retrying cannot fix (or after the retries ran out). */
export class S3Error extends BackyError {}

/** The configured bucket does not exist (a backup creates it). */
export class NoBucketError extends S3Error {}

/** One backend's retry policy: its deadline per operation; whether the endpoint ever answered. */
export class S3Retry {
  readonly #timeoutMs: number;
  /** Connection refused before the first success means a wrong endpoint: no retry. */
  #reachedOnce = false;

  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Runs `attempt` until it succeeds, fails permanently, or `timeoutMs` has passed since the
   * first try; each attempt gets a signal that fires at that deadline.
   */
  async run<T>(what: string, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.#timeoutMs;
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
          const reason = timedOut ? `no answer within ${this.#timeoutMs / 1000} s (timeout)` : describe(err);
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

/** TLS verification failures that trusting the gateway's CA would fix. */
const UNTRUSTED_CERT = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
]);

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

export function isNotFound(err: unknown): boolean {
  const name = (err as { name?: string }).name;
  return statusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchBucket';
}

export function isNoSuchBucket(err: unknown): boolean {
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
  if (code !== undefined && UNTRUSTED_CERT.has(code))
    return `${text} (${code}; the gateway's certificate is not signed by a trusted CA: give its CA in [DataBackend] ca_file, or in $NODE_EXTRA_CA_CERTS)`;
  return parts ? `${text} (${parts})` : text;
}
