import { existsSync, chmodSync } from 'node:fs';
import { InputError, UsageError, ioReason } from '../../errors.js';
import type { InterruptedError } from '../../errors.js';
import { HANDSHAKE_TIMEOUT_MS, NbdServer, STALL_TIMEOUT_MS } from '../../nbd/server.js';
import type { Context } from '../context.js';

export interface NbdCliOptions {
  address?: string;
  port?: string;
  socket?: string;
  write?: boolean;
  discard?: boolean;
  handshakeTimeout?: string;
  stallTimeout?: string;
}

/** Longest --handshake-timeout and --stall-timeout: a day is already far beyond any client's need. */
const MAX_TIMEOUT_S = 86_400;

/** Checks the command line before anything is opened or logged. */
export function nbdOptions(opts: NbdCliOptions): {
  where: { host: string; port: number } | { path: string };
  handshakeTimeoutMs: number;
  stallTimeoutMs: number;
} {
  return {
    where: listenOn(opts),
    handshakeTimeoutMs: timeoutMs('--handshake-timeout', opts.handshakeTimeout, HANDSHAKE_TIMEOUT_MS),
    stallTimeoutMs: timeoutMs('--stall-timeout', opts.stallTimeout, STALL_TIMEOUT_MS),
  };
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
  const { where, handshakeTimeoutMs, stallTimeoutMs } = nbdOptions(opts);
  if ('path' in where && existsSync(where.path))
    throw new InputError(`${JSON.stringify(where.path)} exists; remove it or choose another socket path`);
  const meta = await ctx.meta();
  const store = await ctx.store();
  const log = ctx.log;
  const server = new NbdServer({
    meta,
    store,
    writable: Boolean(opts.write),
    discard: Boolean(opts.discard),
    handshakeTimeoutMs,
    stallTimeoutMs,
    log: (level, msg) => (level === 'warn' ? log.warn(msg) : log[level](msg)),
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
  log.info(
    `NBD server listening on ${address} (${mode}); export names are version uids. Stop it with Ctrl-C`,
  );
  // main turns SIGINT/SIGTERM into ctx.signal; for a server that is the normal way to stop.
  await new Promise<void>((resolve) => {
    if (ctx.signal.aborted) resolve();
    else ctx.signal.addEventListener('abort', () => resolve(), { once: true });
  });
  const reason = ctx.signal.reason as InterruptedError | undefined;
  log.info(`${reason?.signal ?? 'signal'}: stopping the NBD server`);
  await server.close();
}
