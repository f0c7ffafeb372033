/**
 * Leases: running operations registered so that cleanup keeps what they write. On PostgreSQL
 * a lease is also a session advisory lock held on a connection of its own for the whole run,
 * so the lease dies with the session (process crash, host loss) wherever the holder ran; see
 * isLeaseAlive.
 */
import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { sql } from 'kysely';
import { endClient } from './pg-end.js';
import { loadPg, pgError, queryTimeoutMs } from './pg-connect.js';
import type { MetaDb } from './meta-db.js';
import { nowMicros, toLease } from './meta-types.js';
import type { Lease } from './meta-types.js';

/** A lease from another host without a heartbeat for this long is considered dead. */
export const LEASE_TIMEOUT_US = 10 * 60 * 1_000_000;

/** Advisory lock keys of a backup lease: a fixed class id ("back") and 32 bits of the lease id. */
const LEASE_LOCK_CLASS = 0x6261636b;
function leaseLockKey(id: string): [number, number] {
  // A collision between two leases only makes a dead lease look alive: cleanup keeps more.
  return [LEASE_LOCK_CLASS, parseInt(id.replace(/-/g, '').slice(0, 8), 16) | 0];
}

/** The leases repository. */
export class Leases {
  readonly #m: MetaDb;
  /** PostgreSQL: the connection holding each lease's advisory lock, by lease id. */
  readonly #leaseClients = new Map<string, pg.Client>();

  constructor(m: MetaDb) {
    this.#m = m;
  }

  /** Ends the sessions holding this process's leases' advisory locks (MetaStore.close). */
  async close(): Promise<void> {
    for (const [id, client] of this.#leaseClients) {
      this.#leaseClients.delete(id);
      await endClient(client, Math.min(queryTimeoutMs(this.#m.url), 5000));
    }
  }

  /**
   * Registers a running operation (a backup) so that cleanup keeps what it writes.
   * PostgreSQL: first takes the lease's advisory lock on a connection of its own, held until
   * releaseLease or close (or until the process or its host dies, when the server ends the session).
   */
  async acquireLease(kind: string, versionUid: string | null): Promise<Lease> {
    return this.newLease(kind, versionUid, (row) => this.#m.db.insertInto('leases').values(row).execute());
  }

  /**
   * A new lease of `kind` naming `versionUid`, its row written by `insert` (alone, or in a
   * transaction with other rows); on PostgreSQL its advisory lock is held first, and dropped
   * again when `insert` fails. For the versions repository too (a version created with its lease).
   */
  async newLease(
    kind: string,
    versionUid: string | null,
    insert: (row: ReturnType<typeof leaseRow>) => Promise<unknown>,
  ): Promise<Lease> {
    const id = randomUUID();
    await this.#holdLeaseLock(id);
    const now = nowMicros();
    const lease: Lease = {
      id,
      versionUid,
      kind,
      hostname: hostname(),
      pid: process.pid,
      started: now,
      heartbeat: now,
    };
    try {
      await insert(leaseRow(lease));
    } catch (err) {
      await this.#dropLeaseLock(id);
      throw err;
    }
    return lease;
  }

  async heartbeat(id: string): Promise<void> {
    await this.#m.db.updateTable('leases').set({ heartbeat: nowMicros() }).where('id', '=', id).execute();
  }

  /**
   * A heartbeat committed durably at once. SQLite (NORMAL): the FULL commit fsyncs the WAL, which
   * makes every earlier commit durable too (a checkpoint that reset the WAL had synced the
   * database first), so a run of cheap commits costs one fsync instead of one each. PostgreSQL
   * commits are durable anyway.
   */
  async durableHeartbeat(id: string): Promise<void> {
    if (this.#m.dialect !== 'sqlite') return this.heartbeat(id);
    await sql`PRAGMA synchronous = FULL`.execute(this.#m.db);
    try {
      await this.heartbeat(id);
    } finally {
      await sql`PRAGMA synchronous = NORMAL`.execute(this.#m.db);
    }
  }

  /**
   * PostgreSQL: takes lease `id`'s advisory lock on a connection of its own, kept until
   * releaseLease or close. Call it before the lease row is inserted, so that no one can see the
   * row while the lock is free. A no-op on SQLite.
   */
  async #holdLeaseLock(id: string): Promise<void> {
    if (this.#m.dialect !== 'postgres') return;
    const timeout = queryTimeoutMs(this.#m.url);
    const client = new (await loadPg()).Client({
      connectionString: this.#m.url,
      connectionTimeoutMillis: timeout,
      query_timeout: timeout,
    });
    client.on('error', () => {}); // a lost session shows up on the next statement or not at all
    try {
      await client.connect();
      await client.query('SELECT pg_advisory_lock($1, $2)', leaseLockKey(id));
    } catch (err) {
      await client.end().catch(() => {});
      throw pgError(err, this.#m.url);
    }
    this.#leaseClients.set(id, client);
  }

  async releaseLease(id: string): Promise<void> {
    try {
      await this.#m.db.deleteFrom('leases').where('id', '=', id).execute();
    } finally {
      await this.#dropLeaseLock(id);
    }
  }

  /** Ends the session holding lease `id`'s advisory lock, which releases it. */
  async #dropLeaseLock(id: string): Promise<void> {
    const client = this.#leaseClients.get(id);
    this.#leaseClients.delete(id);
    if (client) await endClient(client, Math.min(queryTimeoutMs(this.#m.url), 5000));
  }

  /**
   * Whether the operation holding a lease still runs. SQLite (one host): leaseAlive (pid check,
   * heartbeat for other hosts). PostgreSQL: the holder's advisory lock is still held, which works
   * across hosts; if this session can take it, the holder is gone (and it is released at once).
   */
  async isLeaseAlive(lease: Lease): Promise<boolean> {
    if (this.#m.dialect !== 'postgres') return leaseAlive(lease);
    if (this.#leaseClients.has(lease.id)) return true;
    const [k1, k2] = leaseLockKey(lease.id);
    return this.#m.db.connection().execute(async (conn) => {
      const r = await sql<{ got: boolean }>`SELECT pg_try_advisory_lock(${k1}, ${k2}) AS got`.execute(conn);
      if (!r.rows[0].got) return true;
      await sql`SELECT pg_advisory_unlock(${k1}, ${k2})`.execute(conn);
      return false;
    });
  }

  async leases(): Promise<Lease[]> {
    const rows = await this.#m.db.selectFrom('leases').selectAll().execute();
    return rows.map(toLease);
  }
}

/** Whether a lease's process still runs: same host -> the pid is alive; other host -> recent heartbeat. */
export function leaseAlive(lease: Lease, now: number = nowMicros()): boolean {
  if (lease.hostname === hostname()) {
    if (lease.pid === process.pid) return true;
    try {
      process.kill(lease.pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
  }
  return now - lease.heartbeat < LEASE_TIMEOUT_US;
}

/** The leases row of `l`. */
function leaseRow(l: Lease) {
  return {
    id: l.id,
    version_uid: l.versionUid,
    kind: l.kind,
    hostname: l.hostname,
    pid: l.pid,
    started: l.started,
    heartbeat: l.heartbeat,
  };
}
