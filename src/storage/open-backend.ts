/**
 * The configured StorageBackend. The S3 backend (and the AWS SDK, ~2 MB of code) is loaded
 * only when [DataBackend] type = s3, so no other command pays for it at start-up.
 */
import type { Config } from '../config/config.js';
import { ConfigError } from '../errors.js';
import type { StorageBackend } from './backend.js';
import { readCaFile } from './ca-file.js';
import { DirBackend } from './dir-backend.js';

export async function openBackend(
  cfg: Config['dataBackend'],
  env: NodeJS.ProcessEnv = process.env,
  /** The S3 SDK's warnings (debug log). */
  debug?: (msg: string) => void,
): Promise<StorageBackend> {
  if (cfg.type === 'file') return new DirBackend(cfg.path);
  const accessKeyId = cfg.accessKeyId ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = cfg.secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new ConfigError(
      'no S3 credentials: set access_key_id and secret_access_key in [DataBackend], or $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY',
    );
  }
  const ca = cfg.caFile === undefined ? undefined : await readCaFile(cfg.caFile);
  const { S3Backend } = await import('./s3-backend.js');
  return new S3Backend({
    endpoint: cfg.endpoint,
    bucket: cfg.bucket,
    prefix: cfg.prefix,
    region: cfg.region,
    pathStyle: cfg.pathStyle,
    accessKeyId,
    secretAccessKey,
    // A session token belongs to the environment's key pair only.
    sessionToken: cfg.accessKeyId === undefined ? env.AWS_SESSION_TOKEN || undefined : undefined,
    maxConnections: cfg.maxConnections,
    timeoutMs: cfg.timeout * 1000,
    ca,
    debug,
  });
}
