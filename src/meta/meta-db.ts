/**
 * The metadata database every repository of src/meta works on: one kysely handle, its
 * dialect, whether it is read-only, its settings (the hash function), migrations, and the
 * write and cleanup transactions. Dialects: SQLite (better-sqlite3; WAL, busy timeout, BEGIN
 * IMMEDIATE for writes so a reader never blocks a writer and two writers queue instead of
 * failing) and PostgreSQL (pg).
 */
import { resolve } from 'node:path';
import type pg from 'pg';
import { Kysely, Migrator, PostgresDialect, SqliteDialect, sql } from 'kysely';
import type { Transaction } from 'kysely';
import { BackyError, ConfigError } from '../errors.js';
import { HASH_FUNCTIONS, redactUrl, sqlitePath } from '../config/config.js';
import type { HashFunction } from '../config/config.js';
import { convertBlockLists } from './block-list-migration.js';
import { migrationProvider } from './migrations.js';
import { MetaDatabaseError, loadPg, queryTimeoutMs, wrapPool } from './pg-connect.js';
import { ReadOnlyStoreError, checkSchemaCurrent } from './read-only.js';
import { openSqlite } from './sqlite-open.js';
import type { Database } from './schema.js';
import type { Db } from './meta-types.js';

/** SQLSTATEs after which a PostgreSQL transaction can simply be run again. */
const RETRYABLE = new Set(['40P01', '40001']);

/** Connects to the metadata database named by an engine URL; MetaDb.open migrates it. */
async function connectMeta(
  engine: string,
): Promise<{ db: Db; dialect: 'sqlite' | 'postgres'; readOnly: boolean }> {
  if (engine.startsWith('sqlite:///')) {
    const opened = openSqlite(resolve(sqlitePath(engine)));
    return {
      db: new Kysely<Database>({ dialect: new SqliteDialect({ database: opened.sqlite }) }),
      dialect: 'sqlite',
      readOnly: opened.readOnly,
    };
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
    return {
      db: new Kysely<Database>({
        dialect: new PostgresDialect({ pool: wrapPool(pool, engine, clients, Math.min(timeout, 5000)) }),
      }),
      dialect: 'postgres',
      readOnly: false,
    };
  }
  throw new ConfigError(`unsupported metadata engine '${redactUrl(engine)}'`);
}

/**
 * What the free functions of src/meta (catalog.ts, copy-pending.ts, store-identity.ts,
 * encryption-setting.ts, record-import.ts) take: the handle and its transactions. MetaDb
 * provides it, and so does the MetaStore facade, which callers outside src/meta hold.
 */
export type MetaHandle = Pick<MetaDb, 'db' | 'dialect' | 'url' | 'hashFunction' | 'readOnly' | 'write'>;

/** The handle the repositories (src/meta/meta-*.ts) share; MetaStore (meta-store.ts) composes them. */
export class MetaDb {
  readonly #db: Db;
  readonly dialect: 'sqlite' | 'postgres';
  readonly url: string;
  #hashFunction: HashFunction = 'blake3';
  #readOnly = false;

  private constructor(db: Db, dialect: 'sqlite' | 'postgres', url: string) {
    this.#db = db;
    this.dialect = dialect;
    this.url = url;
  }

  /** Opens (creating and migrating as needed) the metadata database named by an engine URL. */
  static async open(engine: string, hashFunction: HashFunction | undefined): Promise<MetaDb> {
    const { db, dialect, readOnly } = await connectMeta(engine);
    const m = new MetaDb(db, dialect, engine);
    await m.#init(readOnly, hashFunction);
    return m;
  }

  /** Creates and migrates the schema (read-only: checks it) and loads the settings. */
  async #init(readOnly: boolean, hashFunction: HashFunction | undefined): Promise<void> {
    try {
      if (readOnly) {
        this.#readOnly = true;
        await checkSchemaCurrent(this.#db, sqlitePath(this.url));
        await this.#readSettings(hashFunction);
      } else {
        await this.#migrate();
        await convertBlockLists(this.#db, this.dialect, (fn) => this.write(fn));
        await this.#loadSettings(hashFunction);
      }
    } catch (err) {
      await this.close().catch(() => {});
      if (err instanceof BackyError) throw err;
      throw new BackyError(`cannot open metadata database ${redactUrl(this.url)}: ${(err as Error).message}`);
    }
  }

  /** The query builder, for src/meta only: SQL stays in src/meta. */
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
    await this.#db.destroy();
  }

  async #migrate(): Promise<void> {
    const migrator = new Migrator({
      db: this.#db,
      provider: migrationProvider,
      allowUnorderedMigrations: true,
    });
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

  /**
   * A cleanup transaction. SQLite: BEGIN IMMEDIATE, which excludes every other writer.
   * PostgreSQL: with `leases`, the leases table is locked against writes (SHARE ROW EXCLUSIVE
   * conflicts with the ROW EXCLUSIVE lock an INSERT takes), so no lease can appear meanwhile;
   * object rows are locked one by one in Garbage.deleteGarbage. Locking only one table keeps a
   * consistent lock order with the backups' transactions (no deadlock). For the versions and
   * garbage repositories.
   */
  async cleanupTx<T>(opts: { leases: boolean }, fn: (tx: Kysely<Database>) => Promise<T>): Promise<T> {
    return this.write(async (tx) => {
      if (this.dialect === 'postgres' && opts.leases) {
        await sql`LOCK TABLE leases IN SHARE ROW EXCLUSIVE MODE`.execute(tx);
      }
      return fn(tx);
    });
  }
}
