/**
 * All metadata access. Every SQL statement lives here; callers see plain objects and numbers.
 * Dialects: SQLite (better-sqlite3; WAL, busy timeout, BEGIN IMMEDIATE for writes so a
 * reader never blocks a writer and two writers queue instead of failing) and PostgreSQL (pg).
 *
 * PostgreSQL: every error from the server or the connection becomes a MetaDatabaseError whose
 * message names the database with its password redacted. A backup's lease is also a session
 * advisory lock held on a connection of its own for the whole run, so the lease dies with the
 * session (process crash, host loss) wherever the holder ran; see isLeaseAlive.
 */
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { Kysely, Migrator, PostgresDialect, SqliteDialect, sql } from 'kysely';
import type { PostgresPool, PostgresPoolClient, Transaction } from 'kysely';
import { BackyError, ConfigError, InputError, NotFoundError } from '../errors.js';
import { HASH_FUNCTIONS, redactUrl, sqlitePath } from '../config/config.js';
import type { HashFunction } from '../config/config.js';
import { migrationProvider } from './migrations.js';
import { endClient, endPool } from './pg-end.js';
import { ReadOnlyStoreError, checkSchemaCurrent } from './read-only.js';
import { openSqlite } from './sqlite-open.js';
import type { Database, VersionStatus } from './schema.js';

export type { VersionStatus };

export interface Version {
  uid: string;
  name: string;
  snapshotName: string;
  /** Microseconds since the epoch, UTC. */
  date: number;
  sizeBytes: number;
  blockSize: number;
  status: VersionStatus;
  baseUid: string | null;
  protected: boolean;
  hostname: string;
}

export interface BlockRow {
  idx: number;
  checksum: string | null;
  size: number;
  valid: boolean;
}

export interface Lease {
  id: string;
  versionUid: string | null;
  kind: string;
  hostname: string;
  pid: number;
  started: number;
  heartbeat: number;
}

/**
 * Lease kinds whose holder may reference any stored object, which it learns only as it reads
 * its input (an import's export file, recover's metadata copies): while one is held, cleanup
 * deletes no object at all.
 */
export const ANY_OBJECT_LEASE_KINDS: readonly string[] = ['import', 'recover'];

/** Rows per INSERT statement: well under SQLite's 32766 bound parameters and PostgreSQL's 65535. */
const INSERT_BATCH = 1000;
/** Block rows per PostgreSQL INSERT ... SELECT FROM unnest(arrays). */
const PG_UNNEST_BATCH = 10_000;
/** A lease from another host without a heartbeat for this long is considered dead. */
export const LEASE_TIMEOUT_US = 10 * 60 * 1_000_000;

let lastMicros = 0;
/** Wall-clock microseconds, strictly increasing within this process. */
export function nowMicros(): number {
  let t = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  if (t <= lastMicros) t = lastMicros + 1;
  lastMicros = t;
  return t;
}

/**
 * `pg` is loaded only for a PostgreSQL engine: loading it costs ~50 ms on every SQLite command.
 * int8 is parsed to number: our values stay far below 2^53.
 */
let pgModule: typeof pg | undefined;
async function loadPg(): Promise<typeof pg> {
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
function pgError(err: unknown, engine: string): unknown {
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
  if (/Query read timeout/i.test(msg)) {
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
function wrapPool(pool: pg.Pool, engine: string, clients: Set<pg.PoolClient>, endMs: number): PostgresPool {
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

/** Advisory lock keys of a backup lease: a fixed class id ("back") and 32 bits of the lease id. */
const LEASE_LOCK_CLASS = 0x6261636b;
function leaseLockKey(id: string): [number, number] {
  // A collision between two leases only makes a dead lease look alive: cleanup keeps more.
  return [LEASE_LOCK_CLASS, parseInt(id.replace(/-/g, '').slice(0, 8), 16) | 0];
}

/** SQLSTATEs after which a PostgreSQL transaction can simply be run again. */
const RETRYABLE = new Set(['40P01', '40001']);

type Db = Kysely<Database>;

export class MetaStore {
  readonly #db: Db;
  readonly dialect: 'sqlite' | 'postgres';
  readonly url: string;
  #hashFunction: HashFunction = 'blake3';
  #readOnly = false;
  /** PostgreSQL: the connection holding each lease's advisory lock, by lease id. */
  readonly #leaseClients = new Map<string, pg.Client>();

  private constructor(db: Db, dialect: 'sqlite' | 'postgres', url: string) {
    this.#db = db;
    this.dialect = dialect;
    this.url = url;
  }

  /** Opens (creating and migrating as needed) the metadata database named by an engine URL. */
  static async open(engine: string, opts: { hashFunction?: HashFunction } = {}): Promise<MetaStore> {
    let store: MetaStore;
    let readOnly = false;
    if (engine.startsWith('sqlite:///')) {
      const opened = openSqlite(resolve(sqlitePath(engine)));
      readOnly = opened.readOnly;
      store = new MetaStore(
        new Kysely<Database>({ dialect: new SqliteDialect({ database: opened.sqlite }) }),
        'sqlite',
        engine,
      );
    } else if (/^postgres(ql)?:\/\//.test(engine)) {
      // A stalled server (frozen, or a network that drops packets) answers nothing, and without
      // a client-side bound a command would wait for ever: every query and connection attempt
      // is bounded by query_timeout (ms; URL parameter, default 60 s), and fails naming it.
      const timeout = queryTimeoutMs(engine);
      const pool = new (await loadPg()).Pool({
        connectionString: engine,
        max: 4,
        connectionTimeoutMillis: timeout,
        query_timeout: timeout,
      });
      // A lost connection surfaces as the failure of the query that needs it, never as an
      // 'error' event nobody listens to (which would crash the process): the pool handles idle
      // clients' errors, this handler those of clients in use.
      pool.on('error', () => {});
      const clients = new Set<pg.PoolClient>();
      pool.on('connect', (client) => {
        client.on('error', () => {});
        clients.add(client);
      });
      pool.on('remove', (client) => clients.delete(client));
      store = new MetaStore(
        new Kysely<Database>({
          dialect: new PostgresDialect({ pool: wrapPool(pool, engine, clients, Math.min(timeout, 5000)) }),
        }),
        'postgres',
        engine,
      );
    } else {
      throw new ConfigError(`unsupported metadata engine '${redactUrl(engine)}'`);
    }
    try {
      if (readOnly) {
        store.#readOnly = true;
        await checkSchemaCurrent(store.#db, sqlitePath(engine));
        await store.#readSettings(opts.hashFunction);
      } else {
        await store.#migrate();
        await store.#loadSettings(opts.hashFunction);
      }
    } catch (err) {
      await store.close().catch(() => {});
      if (err instanceof BackyError) throw err;
      throw new BackyError(`cannot open metadata database ${redactUrl(engine)}: ${(err as Error).message}`);
    }
    return store;
  }

  /** The query builder, for the other modules of src/meta only (catalog.ts): SQL stays in src/meta. */
  get db(): Db {
    return this.#db;
  }

  get hashFunction(): HashFunction {
    return this.#hashFunction;
  }

  /**
   * True when the database was opened read-only (a store on read-only media, or a file this
   * user cannot write): nothing can be recorded. Commands that must write refuse up front
   * (requireWritable); readers (restore, scrub, export) report damage without marking it and
   * take no lease, which they could not write: nothing can remove a version from a read-only
   * database under them anyway.
   */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** Throws, naming the store, when the database is read-only and `what` must write to it. */
  requireWritable(what: string): void {
    if (this.#readOnly) throw new ReadOnlyStoreError(sqlitePath(this.url), what);
  }

  async close(): Promise<void> {
    for (const [id, client] of this.#leaseClients) {
      this.#leaseClients.delete(id);
      await endClient(client, Math.min(queryTimeoutMs(this.url), 5000));
    }
    await this.#db.destroy();
  }

  async #migrate(): Promise<void> {
    const migrator = new Migrator({ db: this.#db, provider: migrationProvider });
    for (let attempt = 0; ; attempt++) {
      const { error } = await migrator.migrateToLatest();
      if (!error) return;
      // Two processes creating a fresh database at once: the loser retries.
      if (
        attempt < 5 &&
        /SQLITE_BUSY|already exists|duplicate key/i.test(String((error as Error).message ?? error))
      ) {
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        continue;
      }
      throw error;
    }
  }

  /** The settings of a read-only database: nothing to create, only to check. */
  async #readSettings(wanted: HashFunction | undefined): Promise<void> {
    const row = await this.#db
      .selectFrom('settings')
      .select('value')
      .where('key', '=', 'hash_function')
      .executeTakeFirst();
    this.#checkHashFunction(row?.value ?? 'blake3', wanted);
  }

  #checkHashFunction(value: string, wanted: HashFunction | undefined): void {
    if (!HASH_FUNCTIONS.includes(value as HashFunction)) {
      throw new BackyError(`metadata database records unknown hash function '${value}'`);
    }
    this.#hashFunction = value as HashFunction;
    if (wanted && wanted !== this.#hashFunction) {
      throw new ConfigError(
        `[DEFAULTS] hash_function is '${wanted}' but this store was created with '${this.#hashFunction}'; remove the key or use a new store`,
      );
    }
  }

  async #loadSettings(wanted: HashFunction | undefined): Promise<void> {
    await this.write(async (tx) => {
      let row = await tx
        .selectFrom('settings')
        .select('value')
        .where('key', '=', 'hash_function')
        .executeTakeFirst();
      if (!row) {
        this.#hashFunction = wanted ?? 'blake3';
        // PostgreSQL does not serialise two processes creating a store at once as BEGIN
        // IMMEDIATE does: the second insert is a no-op, and its process then checks its wish.
        await tx
          .insertInto('settings')
          .values({ key: 'hash_function', value: this.#hashFunction })
          .onConflict((oc) => oc.column('key').doNothing())
          .execute();
        const stored = await tx
          .selectFrom('settings')
          .select('value')
          .where('key', '=', 'hash_function')
          .executeTakeFirstOrThrow();
        if (stored.value === this.#hashFunction) return;
        row = stored;
      }
      this.#checkHashFunction(row.value, wanted);
    });
  }

  /**
   * Runs `fn` in a write transaction. SQLite: BEGIN IMMEDIATE, so the write lock is taken up
   * front (waiting up to the busy timeout) instead of failing on upgrade.
   */
  async write<T>(fn: (tx: Kysely<Database>) => Promise<T>): Promise<T> {
    if (this.dialect === 'postgres') {
      // Two writers touching the same object rows may deadlock; PostgreSQL aborts one of them,
      // which then runs again (every transaction here can be repeated from the start).
      for (let attempt = 0; ; attempt++) {
        try {
          return await this.#db.transaction().execute((tx: Transaction<Database>) => fn(tx));
        } catch (err) {
          if (attempt >= 4 || !(err instanceof MetaDatabaseError) || !RETRYABLE.has(err.code ?? '')) {
            throw err;
          }
          await new Promise((r) => setTimeout(r, 20 * (attempt + 1) * Math.random()));
        }
      }
    }
    return this.#db.connection().execute(async (conn) => {
      await sql`BEGIN IMMEDIATE`.execute(conn);
      try {
        const result = await fn(conn);
        await sql`COMMIT`.execute(conn);
        return result;
      } catch (err) {
        await sql`ROLLBACK`.execute(conn).catch(() => {});
        throw err;
      }
    });
  }

  // ---- versions ----

  async createVersion(v: NewVersion): Promise<Version> {
    const version = newVersion(v);
    await this.#db
      .insertInto('versions')
      .values({
        uid: version.uid,
        name: version.name,
        snapshot_name: version.snapshotName,
        date: version.date,
        size_bytes: version.sizeBytes,
        block_size: version.blockSize,
        status: version.status,
        base_uid: version.baseUid,
        protected: 0,
        hostname: version.hostname,
      })
      .execute();
    return version;
  }

  /**
   * Creates a new incomplete version and a lease on it in one transaction, so no cleanup ever
   * sees the version without its lease (it removes lease-less incomplete versions as crashed).
   */
  async createVersionWithLease(v: NewVersion, kind: string): Promise<{ version: Version; lease: Lease }> {
    const version = newVersion(v);
    const lease = await this.insertVersionWithLease(version, kind);
    return { version, lease };
  }

  /**
   * Inserts a version row exactly as given (import) together with a lease on it, in one
   * transaction. Throws InputError when the uid exists already.
   */
  async insertVersionWithLease(version: Version, kind: string): Promise<Lease> {
    const id = randomUUID();
    await this.#holdLeaseLock(id);
    const now = nowMicros();
    const lease: Lease = {
      id,
      versionUid: version.uid,
      kind,
      hostname: hostname(),
      pid: process.pid,
      started: now,
      heartbeat: now,
    };
    try {
      await this.#insertVersionAndLease(version, lease);
    } catch (err) {
      await this.#dropLeaseLock(lease.id);
      throw err;
    }
    return lease;
  }

  async #insertVersionAndLease(version: Version, lease: Lease): Promise<void> {
    const { kind, started: now } = lease;
    await this.write(async (tx) => {
      const exists = await tx
        .selectFrom('versions')
        .select('uid')
        .where('uid', '=', version.uid)
        .executeTakeFirst();
      if (exists) throw new InputError(`version ${version.uid} exists already; remove it first ('backy rm')`);
      await tx
        .insertInto('versions')
        .values({
          uid: version.uid,
          name: version.name,
          snapshot_name: version.snapshotName,
          date: version.date,
          size_bytes: version.sizeBytes,
          block_size: version.blockSize,
          status: version.status,
          base_uid: version.baseUid,
          protected: version.protected ? 1 : 0,
          hostname: version.hostname,
        })
        .execute();
      await tx
        .insertInto('leases')
        .values({
          id: lease.id,
          version_uid: version.uid,
          kind,
          hostname: lease.hostname,
          pid: lease.pid,
          started: now,
          heartbeat: now,
        })
        .execute();
    });
  }

  async findVersion(uid: string): Promise<Version | undefined> {
    const row = await this.#db.selectFrom('versions').selectAll().where('uid', '=', uid).executeTakeFirst();
    return row ? toVersion(row) : undefined;
  }

  async getVersion(uid: string): Promise<Version> {
    const v = await this.findVersion(uid);
    if (!v) throw new NotFoundError(`version ${uid} not found (see 'backy ls')`);
    return v;
  }

  /** Versions by date, oldest first; optionally only those named `name`. */
  async listVersions(filter: { name?: string } = {}): Promise<Version[]> {
    let q = this.#db.selectFrom('versions').selectAll();
    if (filter.name !== undefined) q = q.where('name', '=', filter.name);
    const rows = await q.orderBy('date').orderBy('uid').execute();
    return rows.map(toVersion);
  }

  async setVersionStatus(uid: string, status: VersionStatus): Promise<void> {
    await this.#db.updateTable('versions').set({ status }).where('uid', '=', uid).execute();
  }

  async setVersionSize(uid: string, sizeBytes: number): Promise<void> {
    await this.#db.updateTable('versions').set({ size_bytes: sizeBytes }).where('uid', '=', uid).execute();
  }

  /**
   * Marks a version valid if, and only if, it has exactly one block row per block of its size
   * and every non-sparse block references a valid stored object. One transaction.
   * Returns the problem when it cannot.
   */
  async completeVersion(uid: string): Promise<string | undefined> {
    // The commit that makes a version valid is made durable at once (FULL), even in SQLite's
    // NORMAL mode: once backy printed the uid, a power loss must not take the version back.
    if (this.dialect === 'sqlite') await sql`PRAGMA synchronous = FULL`.execute(this.#db);
    try {
      return await this.#completeVersion(uid);
    } finally {
      if (this.dialect === 'sqlite') await sql`PRAGMA synchronous = NORMAL`.execute(this.#db);
    }
  }

  async #completeVersion(uid: string): Promise<string | undefined> {
    return this.write(async (tx) => {
      const v = await tx.selectFrom('versions').selectAll().where('uid', '=', uid).executeTakeFirstOrThrow();
      const gap = await blockListProblem(tx, uid, Number(v.size_bytes), Number(v.block_size));
      if (gap) return gap;
      const bad = await tx
        .selectFrom('blocks as b')
        .leftJoin('objects as o', 'o.checksum', 'b.checksum')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('b.version_uid', '=', uid)
        .where('b.checksum', 'is not', null)
        .where((eb) => eb.or([eb('o.checksum', 'is', null), eb('o.valid', '=', 0), eb('b.valid', '=', 0)]))
        .executeTakeFirstOrThrow();
      if (Number(bad.n) > 0) return `${bad.n} blocks reference objects that are missing or invalid`;
      await tx.updateTable('versions').set({ status: 'valid' }).where('uid', '=', uid).execute();
      return undefined;
    });
  }

  /**
   * After a full scrub found every block of `uid` sound: marks its block entries and their
   * objects valid and an invalid version valid again, in one transaction, provided the block
   * list is complete and every object is recorded. Returns the problem when it cannot.
   */
  async revalidateVersion(uid: string): Promise<string | undefined> {
    return this.write(async (tx) => {
      const v = await tx.selectFrom('versions').selectAll().where('uid', '=', uid).executeTakeFirst();
      if (!v) return 'the version was removed meanwhile';
      if (v.status !== 'invalid') return `the version is ${v.status}`;
      const gap = await blockListProblem(tx, uid, Number(v.size_bytes), Number(v.block_size));
      if (gap) return gap;
      const unrecorded = await tx
        .selectFrom('blocks as b')
        .leftJoin('objects as o', 'o.checksum', 'b.checksum')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('b.version_uid', '=', uid)
        .where('b.checksum', 'is not', null)
        .where('o.checksum', 'is', null)
        .executeTakeFirstOrThrow();
      if (Number(unrecorded.n) > 0)
        return `${unrecorded.n} blocks reference objects the database does not record`;
      await tx
        .updateTable('objects')
        .set({ valid: 1 })
        .where('valid', '=', 0)
        .where('checksum', 'in', (eb) =>
          eb
            .selectFrom('blocks')
            .select('checksum')
            .where('version_uid', '=', uid)
            .where('checksum', 'is not', null),
        )
        .execute();
      await tx
        .updateTable('blocks')
        .set({ valid: 1 })
        .where('version_uid', '=', uid)
        .where('valid', '=', 0)
        .execute();
      await tx.updateTable('versions').set({ status: 'valid' }).where('uid', '=', uid).execute();
      return undefined;
    });
  }

  /**
   * Removes a version unless a lease naming it is live (`isLive` decides), inside one
   * transaction that keeps new leases out (SQLite: BEGIN IMMEDIATE; PostgreSQL: the leases table
   * locked): a reader that takes its lease after this looks for the version and finds it gone.
   * Returns the live holders, and removes nothing, when there are any.
   */
  async removeVersionUnlessHeld(uid: string, isLive: (l: Lease) => Promise<boolean>): Promise<Lease[]> {
    return this.#cleanupTx({ leases: true }, async (tx) => {
      const rows = await tx.selectFrom('leases').selectAll().where('version_uid', '=', uid).execute();
      const live: Lease[] = [];
      for (const l of rows.map(toLease)) if (await isLive(l)) live.push(l);
      if (live.length > 0) return live;
      const v = await tx.selectFrom('versions').select('protected').where('uid', '=', uid).executeTakeFirst();
      if (v && Number(v.protected) === 1) {
        throw new InputError(`version ${uid} is protected; run 'backy unprotect ${uid}' first to remove it`);
      }
      await tx.deleteFrom('labels').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('blocks').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('versions').where('uid', '=', uid).execute();
      return [];
    });
  }

  /**
   * Removes a version, its block list and labels. Objects stay; cleanup removes unreferenced
   * ones. A protected version is refused, checked in the same transaction (so a concurrent
   * `protect` wins), unless `protectedToo` (a command undoing the version it just created).
   */
  async removeVersion(uid: string, opts: { protectedToo?: boolean } = {}): Promise<void> {
    await this.write(async (tx) => {
      const v = await tx.selectFrom('versions').select('protected').where('uid', '=', uid).executeTakeFirst();
      if (v && Number(v.protected) === 1 && !opts.protectedToo) {
        throw new InputError(`version ${uid} is protected; run 'backy unprotect ${uid}' first to remove it`);
      }
      await tx.deleteFrom('labels').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('blocks').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('versions').where('uid', '=', uid).execute();
    });
  }

  // ---- blocks ----

  /** Copies the base's block list (entries below `blockCount`) to a new version in one statement. */
  async copyBlocks(fromUid: string, toUid: string, blockCount: number): Promise<void> {
    await this.write(async (tx) => {
      await tx
        .insertInto('blocks')
        .columns(['version_uid', 'idx', 'checksum', 'size', 'valid'])
        .expression((eb) =>
          eb
            .selectFrom('blocks')
            .select([
              sql<string>`cast(${toUid} as text)`.as('version_uid'),
              'idx',
              'checksum',
              'size',
              'valid',
            ])
            .where('version_uid', '=', fromUid)
            .where('idx', '<', blockCount),
        )
        .execute();
    });
  }

  /** Inserts or replaces block entries (batched, one transaction). */
  async putBlocks(uid: string, rows: readonly BlockRow[]): Promise<void> {
    if (rows.length === 0) return;
    if (this.dialect === 'postgres') {
      // PostgreSQL refuses to upsert one row twice in a statement; SQLite lets the last win. Same here.
      const last = new Map<number, BlockRow>();
      for (const r of rows) last.set(r.idx, r);
      const unique = [...last.values()];
      // Columns as arrays through unnest: 4 parameters per statement instead of 5 per row, which
      // makes a 262,144-row block list several times faster to write than multi-row VALUES.
      await this.write(async (tx) => {
        for (let i = 0; i < unique.length; i += PG_UNNEST_BATCH) {
          const batch = unique.slice(i, i + PG_UNNEST_BATCH);
          await sql`
            INSERT INTO blocks (version_uid, idx, checksum, size, valid)
            SELECT ${uid}, * FROM unnest(
              ${batch.map((r) => r.idx)}::bigint[], ${batch.map((r) => r.checksum)}::text[],
              ${batch.map((r) => r.size)}::integer[], ${batch.map((r) => (r.valid ? 1 : 0))}::integer[])
            ON CONFLICT (version_uid, idx) DO UPDATE
              SET checksum = excluded.checksum, size = excluded.size, valid = excluded.valid`.execute(tx);
        }
      });
      return;
    }
    await this.write(async (tx) => {
      for (let i = 0; i < rows.length; i += INSERT_BATCH) {
        await tx
          .insertInto('blocks')
          .values(
            rows.slice(i, i + INSERT_BATCH).map((r) => ({
              version_uid: uid,
              idx: r.idx,
              checksum: r.checksum,
              size: r.size,
              valid: r.valid ? 1 : 0,
            })),
          )
          .onConflict((oc) =>
            oc.columns(['version_uid', 'idx']).doUpdateSet((eb) => ({
              checksum: eb.ref('excluded.checksum'),
              size: eb.ref('excluded.size'),
              valid: eb.ref('excluded.valid'),
            })),
          )
          .execute();
      }
    });
  }

  /** One page of a version's block list in index order: entries with idx >= fromIdx. */
  async blockPage(uid: string, fromIdx: number, limit = INSERT_BATCH): Promise<BlockRow[]> {
    const rows = await this.#db
      .selectFrom('blocks')
      .select(['idx', 'checksum', 'size', 'valid'])
      .where('version_uid', '=', uid)
      .where('idx', '>=', fromIdx)
      .orderBy('idx')
      .limit(limit)
      .execute();
    return rows.map((r) => ({
      idx: Number(r.idx),
      checksum: r.checksum,
      size: Number(r.size),
      valid: Number(r.valid) === 1,
    }));
  }

  /** A version's whole block list, streamed page by page (memory: one page). */
  async *blocks(uid: string): AsyncIterable<BlockRow> {
    let from = 0;
    while (true) {
      const page = await this.blockPage(uid, from);
      yield* page;
      if (page.length < INSERT_BATCH) return;
      from = page[page.length - 1].idx + 1;
    }
  }

  async blocksAt(uid: string, indices: readonly number[]): Promise<Map<number, BlockRow>> {
    const out = new Map<number, BlockRow>();
    for (let i = 0; i < indices.length; i += INSERT_BATCH) {
      const rows = await this.#db
        .selectFrom('blocks')
        .select(['idx', 'checksum', 'size', 'valid'])
        .where('version_uid', '=', uid)
        .where('idx', 'in', indices.slice(i, i + INSERT_BATCH))
        .execute();
      for (const r of rows) {
        out.set(Number(r.idx), {
          idx: Number(r.idx),
          checksum: r.checksum,
          size: Number(r.size),
          valid: Number(r.valid) === 1,
        });
      }
    }
    return out;
  }

  /**
   * Marks an object damaged: the object, every block entry referencing it, and every version
   * holding such an entry become invalid. Returns the uids of the versions affected.
   */
  async markObjectInvalid(checksum: string): Promise<string[]> {
    return this.write(async (tx) => {
      await tx.updateTable('objects').set({ valid: 0 }).where('checksum', '=', checksum).execute();
      await tx.updateTable('blocks').set({ valid: 0 }).where('checksum', '=', checksum).execute();
      const rows = await tx
        .selectFrom('blocks')
        .select('version_uid')
        .distinct()
        .where('checksum', '=', checksum)
        .execute();
      const uids = rows.map((r) => r.version_uid);
      if (uids.length > 0) {
        await tx
          .updateTable('versions')
          .set({ status: 'invalid' })
          .where('uid', 'in', uids)
          .where('status', '=', 'valid')
          .execute();
      }
      return uids;
    });
  }

  // ---- objects ----

  /**
   * Refreshes the last_seen of a recorded object (so a concurrent cleanup keeps it) and
   * returns true if it is valid. Invalid objects are never dedup targets, but their last_seen
   * is refreshed too: the caller is about to store the object again under the same name, and
   * a cleanup must not unlink that new file because the row looked stale.
   */
  async touchObject(checksum: string, now: number): Promise<boolean> {
    const row = await this.#db
      .updateTable('objects')
      .set({ last_seen: now })
      .where('checksum', '=', checksum)
      .returning('valid')
      .executeTakeFirst();
    return row !== undefined && Number(row.valid) === 1;
  }

  /** Records objects just written durably (valid, last_seen = now), replacing damaged entries. */
  async recordObjects(
    objects: readonly { checksum: string; storedSize: number }[],
    now: number,
  ): Promise<void> {
    if (objects.length === 0) return;
    // One order for every writer: concurrent backups recording the same objects lock their rows
    // in the same sequence instead of deadlocking. Duplicates would make one upsert hit a row twice.
    const unique = [...new Map(objects.map((o) => [o.checksum, o])).values()].sort((a, b) =>
      a.checksum < b.checksum ? -1 : a.checksum > b.checksum ? 1 : 0,
    );
    await this.write(async (tx) => {
      for (let i = 0; i < unique.length; i += INSERT_BATCH) {
        const batch = unique.slice(i, i + INSERT_BATCH);
        await tx
          .insertInto('objects')
          .values(
            batch.map((o) => ({ checksum: o.checksum, stored_size: o.storedSize, valid: 1, last_seen: now })),
          )
          .onConflict((oc) =>
            oc.column('checksum').doUpdateSet((eb) => ({
              stored_size: eb.ref('excluded.stored_size'),
              valid: 1,
              last_seen: eb.ref('excluded.last_seen'),
            })),
          )
          .execute();
        // A re-stored object is sound again: so are the block entries that reference it.
        await tx
          .updateTable('blocks')
          .set({ valid: 1 })
          .where(
            'checksum',
            'in',
            batch.map((o) => o.checksum),
          )
          .where('valid', '=', 0)
          .execute();
      }
    });
  }

  async objectStats(): Promise<{ count: number; bytes: number }> {
    const r = await this.#db
      .selectFrom('objects')
      .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.sum<number>('stored_size').as('bytes')])
      .executeTakeFirstOrThrow();
    return { count: Number(r.n), bytes: Number(r.bytes ?? 0) };
  }

  // ---- cleanup ----

  /**
   * A cleanup transaction. SQLite: BEGIN IMMEDIATE, which excludes every other writer.
   * PostgreSQL: with `leases`, the leases table is locked against writes (SHARE ROW EXCLUSIVE
   * conflicts with the ROW EXCLUSIVE lock an INSERT takes), so no lease can appear meanwhile;
   * object rows are locked one by one in deleteGarbage. Locking only one table keeps a
   * consistent lock order with the backups' transactions (no deadlock).
   */
  async #cleanupTx<T>(opts: { leases: boolean }, fn: (tx: Kysely<Database>) => Promise<T>): Promise<T> {
    return this.write(async (tx) => {
      if (this.dialect === 'postgres' && opts.leases) {
        await sql`LOCK TABLE leases IN SHARE ROW EXCLUSIVE MODE`.execute(tx);
      }
      return fn(tx);
    });
  }

  /** Incomplete versions that no lease row names: crashed backups or imports. */
  async orphanedIncompleteVersions(): Promise<Version[]> {
    const rows = await this.#db
      .selectFrom('versions as v')
      .selectAll('v')
      .where('v.status', '=', 'incomplete')
      .where((eb) =>
        eb.not(
          eb.exists(eb.selectFrom('leases as l').select('l.id').whereRef('l.version_uid', '=', 'v.uid')),
        ),
      )
      .orderBy('v.date')
      .execute();
    return rows.map(toVersion);
  }

  /** Removes an incomplete version if still no lease names it (re-checked in the transaction). */
  async removeOrphanedIncompleteVersion(uid: string): Promise<boolean> {
    return this.#cleanupTx({ leases: true }, async (tx) => {
      const v = await tx.selectFrom('versions').select('status').where('uid', '=', uid).executeTakeFirst();
      if (!v || v.status !== 'incomplete') return false;
      const lease = await tx
        .selectFrom('leases')
        .select('id')
        .where('version_uid', '=', uid)
        .executeTakeFirst();
      if (lease) return false;
      await tx.deleteFrom('labels').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('blocks').where('version_uid', '=', uid).execute();
      await tx.deleteFrom('versions').where('uid', '=', uid).execute();
      return true;
    });
  }

  /** One page of unreferenced objects last seen before `cutoff`, by checksum after `after`. */
  async garbageCandidates(
    cutoff: number,
    after: string,
    limit = INSERT_BATCH,
    /** Count these versions' block entries as gone (a dry run that would remove them). */
    ignoreVersions: readonly string[] = [],
  ): Promise<{ checksum: string; storedSize: number }[]> {
    const rows = await this.#db
      .selectFrom('objects as o')
      .select(['o.checksum', 'o.stored_size'])
      .where('o.checksum', '>', after)
      .where('o.last_seen', '<', cutoff)
      .where((eb) => {
        let refs = eb.selectFrom('blocks as b').select('b.idx').whereRef('b.checksum', '=', 'o.checksum');
        if (ignoreVersions.length > 0) refs = refs.where('b.version_uid', 'not in', ignoreVersions);
        return eb.not(eb.exists(refs));
      })
      .orderBy('o.checksum')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ checksum: r.checksum, storedSize: Number(r.stored_size) }));
  }

  /**
   * Deletes the given objects that are, re-checked inside one write transaction that no
   * other writer of these objects can interleave with (SQLite: BEGIN IMMEDIATE; PostgreSQL:
   * their rows locked FOR UPDATE), still unreferenced and last seen before both `cutoff` and the start of every lease now
   * in the table. `unlink` removes their files inside the transaction, before the rows go.
   * Returns what was deleted.
   */
  async deleteGarbage(
    checksums: readonly string[],
    cutoff: number,
    unlink: (checksums: string[]) => Promise<void>,
  ): Promise<{ checksum: string; storedSize: number }[]> {
    if (checksums.length === 0) return [];
    return this.#cleanupTx({ leases: false }, async (tx) => {
      if (this.dialect === 'postgres') {
        // Row locks: a concurrent touchObject or recordObjects of these objects waits for our
        // commit and then finds the row gone (touch fails, so the backup stores it anew).
        await tx
          .selectFrom('objects')
          .select('checksum')
          .where('checksum', 'in', checksums)
          .forUpdate()
          .execute();
      }
      // A holder that may reference anything keeps everything: an import, or a reader whose
      // version was removed under it (its block list, which named its objects, is gone).
      const holdsAll = await tx
        .selectFrom('leases as l')
        .select('l.id')
        .where((eb) =>
          eb.or([
            eb('l.kind', 'in', ANY_OBJECT_LEASE_KINDS),
            eb.and([
              eb('l.version_uid', 'is not', null),
              eb.not(
                eb.exists(
                  eb.selectFrom('versions as v').select('v.uid').whereRef('v.uid', '=', 'l.version_uid'),
                ),
              ),
            ]),
          ]),
        )
        .executeTakeFirst();
      if (holdsAll) return [];
      const oldest = await tx
        .selectFrom('leases')
        .select((eb) => eb.fn.min('started').as('started'))
        .executeTakeFirst();
      const limit = oldest?.started == null ? cutoff : Math.min(cutoff, Number(oldest.started));
      const rows = await tx
        .selectFrom('objects as o')
        .select(['o.checksum', 'o.stored_size'])
        .where('o.checksum', 'in', checksums)
        .where('o.last_seen', '<', limit)
        .where((eb) =>
          eb.not(
            eb.exists(eb.selectFrom('blocks as b').select('b.idx').whereRef('b.checksum', '=', 'o.checksum')),
          ),
        )
        .execute();
      if (rows.length === 0) return [];
      const doomed = rows.map((r) => r.checksum);
      await unlink(doomed);
      for (let i = 0; i < doomed.length; i += INSERT_BATCH) {
        await tx
          .deleteFrom('objects')
          .where('checksum', 'in', doomed.slice(i, i + INSERT_BATCH))
          .execute();
      }
      return rows.map((r) => ({ checksum: r.checksum, storedSize: Number(r.stored_size) }));
    });
  }

  /** Which of `checksums` have an objects row. */
  async recordedObjects(checksums: readonly string[]): Promise<Map<string, { valid: boolean }>> {
    const out = new Map<string, { valid: boolean }>();
    for (let i = 0; i < checksums.length; i += INSERT_BATCH) {
      const rows = await this.#db
        .selectFrom('objects')
        .select(['checksum', 'valid'])
        .where('checksum', 'in', checksums.slice(i, i + INSERT_BATCH))
        .execute();
      for (const r of rows) out.set(r.checksum, { valid: Number(r.valid) === 1 });
    }
    return out;
  }

  /**
   * Runs `fn` on the keys among `keys` that have no objects row, inside one write transaction
   * that keeps new leases out (SQLite: BEGIN IMMEDIATE; PostgreSQL: leases locked), but only when no lease exists at all: a running backup may have renamed an
   * object into place and not yet recorded it, and its lease keeps such files. Returns false
   * (without calling fn) when a lease exists.
   */
  async sweepUnrecorded(
    keys: readonly string[],
    fn: (unrecorded: string[]) => Promise<void>,
  ): Promise<boolean> {
    return this.#cleanupTx({ leases: true }, async (tx) => {
      const lease = await tx.selectFrom('leases').select('id').executeTakeFirst();
      if (lease) return false;
      const recorded = new Set<string>();
      for (let i = 0; i < keys.length; i += INSERT_BATCH) {
        const rows = await tx
          .selectFrom('objects')
          .select('checksum')
          .where('checksum', 'in', keys.slice(i, i + INSERT_BATCH))
          .execute();
        for (const r of rows) recorded.add(r.checksum);
      }
      await fn(keys.filter((k) => !recorded.has(k)));
      return true;
    });
  }

  // ---- import ----

  /**
   * Makes `checksums` usable by an imported version under the caller's lease. First refreshes
   * last_seen of recorded objects (from then on a concurrent cleanup keeps them; files without
   * a row are kept by the lease itself), then asks `present` for each object's stored size in
   * the data store: a file without a row gets one; a recorded object whose file is gone is
   * marked invalid, so that no backup dedups against it. Returns the checksums that are
   * recorded, valid and present.
   */
  async adoptObjects(
    checksums: readonly string[],
    present: (checksum: string) => Promise<number | undefined>,
  ): Promise<Set<string>> {
    const now = nowMicros();
    const known = await this.write(async (tx) => {
      await tx
        .updateTable('objects')
        .set({ last_seen: now })
        .where('checksum', 'in', checksums)
        .where('valid', '=', 1)
        .execute();
      const rows = await tx
        .selectFrom('objects')
        .select(['checksum', 'valid'])
        .where('checksum', 'in', checksums)
        .execute();
      return new Map(rows.map((r) => [r.checksum, Number(r.valid) === 1]));
    });
    const found: { checksum: string; storedSize: number }[] = [];
    const gone: string[] = [];
    const ok = new Set<string>();
    for (const c of checksums) {
      const size = await present(c);
      const recorded = known.get(c);
      if (size === undefined) {
        if (recorded) gone.push(c);
      } else if (recorded === undefined) {
        found.push({ checksum: c, storedSize: size });
        ok.add(c);
      } else if (recorded) ok.add(c);
    }
    if (found.length > 0 || gone.length > 0) {
      await this.write(async (tx) => {
        if (found.length > 0) {
          await tx
            .insertInto('objects')
            .values(
              found.map((o) => ({
                checksum: o.checksum,
                stored_size: o.storedSize,
                valid: 1,
                last_seen: now,
              })),
            )
            .onConflict((oc) => oc.column('checksum').doUpdateSet({ last_seen: now }))
            .execute();
        }
        if (gone.length > 0) {
          await tx.updateTable('objects').set({ valid: 0 }).where('checksum', 'in', gone).execute();
        }
      });
    }
    return ok;
  }

  // ---- leases ----

  /**
   * Registers a running operation (a backup) so that cleanup keeps what it writes.
   * PostgreSQL: first takes the lease's advisory lock on a connection of its own, held until
   * releaseLease or close (or until the process or its host dies, when the server ends the session).
   */
  async acquireLease(kind: string, versionUid: string | null): Promise<Lease> {
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
      await this.#db
        .insertInto('leases')
        .values({
          id: lease.id,
          version_uid: versionUid,
          kind,
          hostname: lease.hostname,
          pid: lease.pid,
          started: now,
          heartbeat: now,
        })
        .execute();
    } catch (err) {
      await this.#dropLeaseLock(id);
      throw err;
    }
    return lease;
  }

  async heartbeat(id: string): Promise<void> {
    await this.#db.updateTable('leases').set({ heartbeat: nowMicros() }).where('id', '=', id).execute();
  }

  /**
   * PostgreSQL: takes lease `id`'s advisory lock on a connection of its own, kept until
   * releaseLease or close. Call it before the lease row is inserted, so that no one can see the
   * row while the lock is free. A no-op on SQLite.
   */
  async #holdLeaseLock(id: string): Promise<void> {
    if (this.dialect !== 'postgres') return;
    const timeout = queryTimeoutMs(this.url);
    const client = new (await loadPg()).Client({
      connectionString: this.url,
      connectionTimeoutMillis: timeout,
      query_timeout: timeout,
    });
    client.on('error', () => {}); // a lost session shows up on the next statement or not at all
    try {
      await client.connect();
      await client.query('SELECT pg_advisory_lock($1, $2)', leaseLockKey(id));
    } catch (err) {
      await client.end().catch(() => {});
      throw pgError(err, this.url);
    }
    this.#leaseClients.set(id, client);
  }

  async releaseLease(id: string): Promise<void> {
    try {
      await this.#db.deleteFrom('leases').where('id', '=', id).execute();
    } finally {
      await this.#dropLeaseLock(id);
    }
  }

  /** Ends the session holding lease `id`'s advisory lock, which releases it. */
  async #dropLeaseLock(id: string): Promise<void> {
    const client = this.#leaseClients.get(id);
    this.#leaseClients.delete(id);
    if (client) await endClient(client, Math.min(queryTimeoutMs(this.url), 5000));
  }

  /**
   * Whether the operation holding a lease still runs. SQLite (one host): leaseAlive (pid check,
   * heartbeat for other hosts). PostgreSQL: the holder's advisory lock is still held, which works
   * across hosts; if this session can take it, the holder is gone (and it is released at once).
   */
  async isLeaseAlive(lease: Lease): Promise<boolean> {
    if (this.dialect !== 'postgres') return leaseAlive(lease);
    if (this.#leaseClients.has(lease.id)) return true;
    const [k1, k2] = leaseLockKey(lease.id);
    return this.#db.connection().execute(async (conn) => {
      const r = await sql<{ got: boolean }>`SELECT pg_try_advisory_lock(${k1}, ${k2}) AS got`.execute(conn);
      if (!r.rows[0].got) return true;
      await sql`SELECT pg_advisory_unlock(${k1}, ${k2})`.execute(conn);
      return false;
    });
  }

  async leases(): Promise<Lease[]> {
    const rows = await this.#db.selectFrom('leases').selectAll().execute();
    return rows.map(toLease);
  }
}

function toLease(r: {
  id: string;
  version_uid: string | null;
  kind: string;
  hostname: string;
  pid: number;
  started: number;
  heartbeat: number;
}): Lease {
  return {
    id: r.id,
    versionUid: r.version_uid,
    kind: r.kind,
    hostname: r.hostname,
    pid: Number(r.pid),
    started: Number(r.started),
    heartbeat: Number(r.heartbeat),
  };
}

type NewVersion = {
  name: string;
  snapshotName?: string;
  sizeBytes: number;
  blockSize: number;
  baseUid?: string;
};

/** A new incomplete version made here, on this host, now. */
function newVersion(v: NewVersion): Version {
  return {
    uid: randomUUID(),
    name: v.name,
    snapshotName: v.snapshotName ?? '',
    date: nowMicros(),
    sizeBytes: v.sizeBytes,
    blockSize: v.blockSize,
    status: 'incomplete',
    baseUid: v.baseUid ?? null,
    protected: false,
    hostname: hostname(),
  };
}

/** Whether a version has exactly one block entry per block of its size (idx 0..n-1). */
async function blockListProblem(
  tx: Kysely<Database>,
  uid: string,
  sizeBytes: number,
  blockSize: number,
): Promise<string | undefined> {
  const expected = Math.ceil(sizeBytes / blockSize);
  const counts = await tx
    .selectFrom('blocks')
    .select((eb) => [eb.fn.countAll<number>().as('n'), eb.fn.max('idx').as('max_idx')])
    .where('version_uid', '=', uid)
    .executeTakeFirstOrThrow();
  const n = Number(counts.n);
  if (n !== expected || (n > 0 && Number(counts.max_idx) !== n - 1)) {
    return `version has ${n} block entries, expected ${expected}`;
  }
  return undefined;
}

function toVersion(r: {
  uid: string;
  name: string;
  snapshot_name: string;
  date: number;
  size_bytes: number;
  block_size: number;
  status: VersionStatus;
  base_uid: string | null;
  protected: number;
  hostname: string;
}): Version {
  return {
    uid: r.uid,
    name: r.name,
    snapshotName: r.snapshot_name,
    date: Number(r.date),
    sizeBytes: Number(r.size_bytes),
    blockSize: Number(r.block_size),
    status: r.status,
    baseUid: r.base_uid,
    protected: Number(r.protected) === 1,
    hostname: r.hostname,
  };
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
