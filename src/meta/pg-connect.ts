/**
 * PostgreSQL plumbing: loading pg, the query timeout, and error wrapping. Every error from the
 * server or the connection becomes a MetaDatabaseError whose message names the database with
 * its password redacted.
 */
import type pg from 'pg';
import type { PostgresPool, PostgresPoolClient } from 'kysely';
import { BackyError, ConfigError } from '../errors.js';
import { redactUrl } from '../config/config.js';
import { endPool } from './pg-end.js';

/**
 * `pg` is loaded only for a PostgreSQL engine: loading it costs ~50 ms on every SQLite command.
 * int8 is parsed to number: our values stay far below 2^53.
 */
let pgModule: typeof pg | undefined;
export async function loadPg(): Promise<typeof pg> {
  if (!pgModule) {
    pgModule = (await import('pg')).default;
    pgModule.types.setTypeParser(20, (v: string) => Number(v));
  }
  return pgModule;
}

/** An error from the PostgreSQL server or the connection to it; the message holds no password. */
export class MetaDatabaseError extends BackyError {
  /** The SQLSTATE (e.g. 40P01) or the socket error code (e.g. ECONNREFUSED), if any. */
  readonly code: string | undefined;
  constructor(message: string, code: string | undefined, cause: unknown) {
    super(message, { cause });
    this.code = code;
  }
}

/** The `query_timeout` URL parameter of a PostgreSQL engine in ms (default 60 s). */
export function queryTimeoutMs(engine: string): number {
  let value: string | null = null;
  try {
    value = new URL(engine).searchParams.get('query_timeout');
  } catch {
    // not a parseable URL: pg reports it when connecting
  }
  if (value === null) return 60_000;
  if (!/^\d{1,9}$/.test(value) || Number(value) < 1) {
    throw new ConfigError(
      `query_timeout in the engine URL must be a whole number of milliseconds (at least 1), got '${value}'`,
    );
  }
  return Number(value);
}

/** Wraps a pg error: names the database (password redacted) and never repeats the password. */
export function pgError(err: unknown, engine: string): unknown {
  if (err instanceof BackyError) return err;
  const e = err as { message?: string; code?: string; errors?: { message?: string }[] };
  // AggregateError (every address refused) has an empty message of its own.
  let msg = e?.message || e?.errors?.map((x) => x.message).join('; ') || String(err);
  const passwords: string[] = [];
  try {
    const url = new URL(engine);
    passwords.push(decodeURIComponent(url.password), url.password, url.searchParams.get('password') ?? '');
  } catch {
    // not a parseable URL: redactUrl below is all there is
  }
  for (const p of passwords) if (p) msg = msg.split(p).join('***');
  // A query that got no answer, or a connection whose handshake got none (connectionTimeoutMillis
  // is the same query_timeout): one wording for both, so an operator sees one kind of outage.
  if (/Query read timeout|terminated due to connection timeout/i.test(msg)) {
    const s = queryTimeoutMs(engine) / 1000;
    return new MetaDatabaseError(
      `metadata database ${redactUrl(engine)} did not answer within ${s} s (query_timeout): the server is stalled or unreachable`,
      'ETIMEDOUT',
      err,
    );
  }
  const what = /ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT|timeout expired|timeout exceeded/i.test(msg)
    ? 'cannot reach metadata database'
    : 'metadata database';
  return new MetaDatabaseError(`${what} ${redactUrl(engine)}: ${redactUrl(msg)}`, e?.code, err);
}

/** A pg.Pool as Kysely sees it, with every error passed through pgError. */
export function wrapPool(
  pool: pg.Pool,
  engine: string,
  clients: Set<pg.PoolClient>,
  endMs: number,
): PostgresPool {
  return {
    async connect() {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw pgError(err, engine);
      }
      // A query that timed out is still on the wire: this connection is not reused.
      let timedOut = false;
      const wrapped = {
        query(...args: unknown[]) {
          const r = (client.query as (...a: unknown[]) => unknown)(...args);
          return r instanceof Promise
            ? r.catch((err: unknown) => {
                if (/Query read timeout/.test((err as Error)?.message ?? '')) timedOut = true;
                throw pgError(err, engine);
              })
            : r;
        },
        release: (destroy?: boolean) => client.release(timedOut || destroy),
      };
      return wrapped as unknown as PostgresPoolClient;
    },
    end: () => endPool(pool, clients, endMs),
  };
}
