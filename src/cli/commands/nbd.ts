import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { InputError, UsageError, ioReason } from '../../errors.js';
import type { InterruptedError } from '../../errors.js';
import { HANDSHAKE_TIMEOUT_MS, NbdServer, STALL_TIMEOUT_MS } from '../../nbd/server.js';
import { NbdTls } from '../../nbd/tls.js';
import type { TlsFiles } from '../../nbd/tls.js';
import type { Context } from '../context.js';

export interface NbdCliOptions {
  address?: string;
  port?: string;
  socket?: string;
  write?: boolean;
  discard?: boolean;
  handshakeTimeout?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPsk?: string;
  tlsOnly?: boolean;
  insecure?: boolean;
  stallTimeout?: string;
}

/** Longest --handshake-timeout and --stall-timeout: a day is already far beyond any client's need. */
const MAX_TIMEOUT_S = 86_400;

/** Checks the command line before anything is opened or logged. */
export function nbdOptions(opts: NbdCliOptions): {
  where: { host: string; port: number } | { path: string };
  handshakeTimeoutMs: number;
  tls: TlsFiles | undefined;
  stallTimeoutMs: number;
} {
  const where = listenOn(opts);
  const tls = tlsFiles(opts);
  if ('host' in where && !isLoopback(where.host) && !(tls && opts.tlsOnly) && !opts.insecure)
    throw new UsageError(
      `${where.host} is not a loopback address: anyone who can reach it could read every version; serve it with --tls-psk FILE (or --tls-cert/--tls-key) and --tls-only, or give --insecure`,
    );
  return {
    where,
    handshakeTimeoutMs: timeoutMs('--handshake-timeout', opts.handshakeTimeout, HANDSHAKE_TIMEOUT_MS),
    stallTimeoutMs: timeoutMs('--stall-timeout', opts.stallTimeout, STALL_TIMEOUT_MS),
    tls,
  };
}

function tlsFiles(opts: NbdCliOptions): TlsFiles | undefined {
  const { tlsCert: cert, tlsKey: key, tlsCa: ca, tlsPsk: psk } = opts;
  if (psk !== undefined && (cert !== undefined || key !== undefined || ca !== undefined))
    throw new UsageError('--tls-psk and --tls-cert/--tls-key/--tls-ca exclude each other');
  if ((cert === undefined) !== (key === undefined))
    throw new UsageError('--tls-cert and --tls-key go together');
  if (ca !== undefined && cert === undefined) throw new UsageError('--tls-ca needs --tls-cert and --tls-key');
  for (const [flag, v] of [
    ['--tls-cert', cert],
    ['--tls-key', key],
    ['--tls-ca', ca],
    ['--tls-psk', psk],
  ])
    if (v === '') throw new UsageError(`${flag} needs a file`);
  const files = psk !== undefined ? { psk } : cert !== undefined ? { cert, key, ca } : undefined;
  if (opts.tlsOnly && !files) throw new UsageError('--tls-only needs --tls-psk FILE or --tls-cert/--tls-key');
  return files;
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost: only local processes can connect. */
function isLoopback(host: string): boolean {
  const h = host.toLowerCase().replace(/^::ffff:/, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

function timeoutMs(flag: string, value: string | undefined, dflt: number): number {
  if (value === undefined) return dflt;
  const s = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !(s > 0) || s > MAX_TIMEOUT_S)
    throw new UsageError(
      `${flag} '${value}' is not a number of seconds above 0 and at most ${MAX_TIMEOUT_S}`,
    );
  // At least 1 ms: a tiny fraction must not round to "no time at all".
  return Math.max(1, Math.round(s * 1000));
}

function listenOn(opts: NbdCliOptions): { host: string; port: number } | { path: string } {
  if (opts.discard && !opts.write) throw new UsageError('--discard only makes sense with -w (copy-on-write)');
  if (opts.socket !== undefined) {
    if (opts.address !== undefined || opts.port !== undefined)
      throw new UsageError('-u SOCKET serves on a Unix socket: give it without -a or -p');
    if (opts.socket === '') throw new UsageError('-u needs a socket path');
    return { path: opts.socket };
  }
  const port = opts.port === undefined ? 10809 : Number(opts.port);
  if (!/^\d+$/.test(opts.port ?? '0') || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new UsageError(`port '${opts.port}' is not a number from 0 to 65535`);
  return { host: opts.address ?? '127.0.0.1', port };
}

export async function nbdCommand(ctx: Context, opts: NbdCliOptions): Promise<void> {
  const { where, handshakeTimeoutMs, stallTimeoutMs, tls: tlsFiles } = nbdOptions(opts);
  const tls = tlsFiles && NbdTls.load(tlsFiles);
  if ('path' in where) await removeStaleSocket(where.path, ctx);
  const meta = await ctx.meta(opts.write ? { write: 'nbd -w' } : {});
  const store = await ctx.store();
  const log = ctx.log;
  const server = new NbdServer({
    meta,
    store,
    writable: Boolean(opts.write),
    discard: Boolean(opts.discard),
    handshakeTimeoutMs,
    stallTimeoutMs,
    copies: await ctx.copies(),
    tls,
    tlsOnly: Boolean(opts.tlsOnly),
    // A server's activity (connections, the new versions it makes) is its output: shown without -v.
    log: (level, msg) =>
      level === 'warn' ? log.warn(msg) : level === 'info' ? log.notice(msg) : log[level](msg),
  });
  let address: string;
  // The socket is created 0600: only this user may read the backups through it.
  const umask = 'path' in where ? process.umask(0o177) : undefined;
  try {
    address = await server.listen(where);
    if ('path' in where) chmodSync(where.path, 0o600);
  } catch (err) {
    throw new InputError(
      `cannot listen on ${'path' in where ? where.path : `${where.host}:${where.port}`}: ${ioReason(err)}`,
    );
  } finally {
    if (umask !== undefined) process.umask(umask);
  }
  const mode = opts.write
    ? opts.discard
      ? 'copy-on-write, writes discarded'
      : 'copy-on-write'
    : 'read-only';
  const security = tls
    ? `TLS ${tls.kind === 'psk' ? 'PSK' : 'X.509'}${opts.tlsOnly ? ' required' : ' offered, plaintext allowed'}`
    : 'no TLS';
  log.notice(
    `NBD server listening on ${address} (${mode}, ${security}); export names are version uids. Stop it with Ctrl-C`,
  );
  // main turns SIGINT/SIGTERM into ctx.signal; for a server that is the normal way to stop.
  await new Promise<void>((resolve) => {
    if (ctx.signal.aborted) resolve();
    else ctx.signal.addEventListener('abort', () => resolve(), { once: true });
  });
  const reason = ctx.signal.reason as InterruptedError | undefined;
  log.notice(`${reason?.signal ?? 'signal'}: stopping the NBD server`);
  await server.close();
}

/**
 * A socket file left by a server that was killed (kill -9, a crash) would block every restart:
 * one nobody listens on is removed. A live server's socket, and anything not a socket, stay.
 */
async function removeStaleSocket(path: string, ctx: Context): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new InputError(`cannot use ${JSON.stringify(path)}: ${ioReason(err)}`);
  }
  if (!st.isSocket())
    throw new InputError(
      `${JSON.stringify(path)} exists and is not a socket; remove it or choose another socket path`,
    );
  const live = await new Promise<boolean | Error>((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED' ? false : err));
  });
  if (live === true)
    throw new InputError(
      `${JSON.stringify(path)}: a server is already listening on it; stop it or choose another socket path`,
    );
  if (live instanceof Error) throw new InputError(`cannot use ${JSON.stringify(path)}: ${ioReason(live)}`);
  unlinkSync(path);
  ctx.log.notice(`removed the stale socket ${JSON.stringify(path)} (nothing listened on it)`);
}
