/**
 * One quick look at the store: its descriptor, read with a short timeout (a frozen gateway
 * accepts connections and never answers, so without one each command would wait out the
 * full S3 timeout, retries included). Used where a command must decide at once whether the
 * store is there: commands that need only the database go on without it, cleanup and the
 * job runner fail fast with one line.
 */
import type { Config } from '../config/config.js';
import { errorMessage } from '../errors.js';
import type { StorageBackend } from '../storage/backend.js';
import { openBackend } from '../storage/open-backend.js';
import { DamagedDescriptorError, readDescriptor } from './store-descriptor.js';
import type { Descriptor } from './store-descriptor.js';

/** How long a probe waits for an S3 store's descriptor. */
export const PROBE_TIMEOUT_S = 5;

/** The backend for a probe: S3 with the probe's timeout (at most the configured one). */
export async function probeBackend(
  cfg: Config['dataBackend'],
  env: NodeJS.ProcessEnv = process.env,
  debug?: (msg: string) => void,
): Promise<StorageBackend> {
  return openBackend(
    cfg.type === 's3' ? { ...cfg, timeout: Math.min(cfg.timeout, PROBE_TIMEOUT_S) } : cfg,
    env,
    debug,
  );
}

export type ProbeResult = { ok: true; descriptor: Descriptor | undefined } | { ok: false; why: string };

/** Reads the descriptor once, quickly; never throws (a damaged descriptor is an answer: ok). */
export async function probeStore(
  cfg: Config['dataBackend'],
  env: NodeJS.ProcessEnv = process.env,
): Promise<ProbeResult> {
  let backend: StorageBackend | undefined;
  try {
    backend = await probeBackend(cfg, env);
    const descriptor = await readDescriptor(backend).catch((err: unknown) => {
      if (err instanceof DamagedDescriptorError) return undefined;
      throw err;
    });
    return { ok: true, descriptor };
  } catch (err) {
    return { ok: false, why: errorMessage(err) };
  } finally {
    await backend?.close().catch(() => {});
  }
}

/** The one line of a command that needs the store when the probe found it unreachable. */
export function storeUnreachableMessage(url: string, why: string, what: string): string {
  return `the store at ${url} cannot be reached (${why}): ${what}`;
}
