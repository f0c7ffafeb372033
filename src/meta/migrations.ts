import { SqliteAdapter, sql } from 'kysely';
import type { Kysely, Migration, MigrationProvider } from 'kysely';

/** Migrations in code (no files to find at run time); names sort in order. */
const migrations: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('versions')
        .addColumn('uid', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('snapshot_name', 'text', (c) => c.notNull().defaultTo(''))
        .addColumn('date', 'bigint', (c) => c.notNull())
        .addColumn('size_bytes', 'bigint', (c) => c.notNull())
        .addColumn('block_size', 'integer', (c) => c.notNull())
        .addColumn('status', 'text', (c) => c.notNull())
        .addColumn('base_uid', 'text')
        .addColumn('protected', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('hostname', 'text', (c) => c.notNull().defaultTo(''))
        .execute();
      await db.schema.createIndex('versions_name').on('versions').column('name').execute();
      await db.schema
        .createTable('blocks')
        .addColumn('version_uid', 'text', (c) => c.notNull().references('versions.uid').onDelete('cascade'))
        .addColumn('idx', 'bigint', (c) => c.notNull())
        .addColumn('checksum', 'text')
        .addColumn('size', 'integer', (c) => c.notNull())
        .addColumn('valid', 'integer', (c) => c.notNull().defaultTo(1))
        .addPrimaryKeyConstraint('blocks_pk', ['version_uid', 'idx'])
        .execute();
      await db.schema.createIndex('blocks_checksum').on('blocks').column('checksum').execute();
      await db.schema
        .createTable('objects')
        .addColumn('checksum', 'text', (c) => c.primaryKey())
        .addColumn('stored_size', 'bigint', (c) => c.notNull())
        .addColumn('valid', 'integer', (c) => c.notNull().defaultTo(1))
        .addColumn('last_seen', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema
        .createTable('leases')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('version_uid', 'text')
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('hostname', 'text', (c) => c.notNull())
        .addColumn('pid', 'integer', (c) => c.notNull())
        .addColumn('started', 'bigint', (c) => c.notNull())
        .addColumn('heartbeat', 'bigint', (c) => c.notNull())
        .execute();
    },
  },
  '0002_labels': {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable('labels')
        .addColumn('version_uid', 'text', (c) => c.notNull().references('versions.uid').onDelete('cascade'))
        .addColumn('key', 'text', (c) => c.notNull())
        .addColumn('value', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('labels_pk', ['version_uid', 'key'])
        .execute();
      await db.schema.createIndex('labels_key_value').on('labels').columns(['key', 'value']).execute();
    },
  },
  '0003_change_tracking': {
    async up(db: Kysely<unknown>) {
      // JSON (meta/tracking.ts); null: not recorded (a full backup, or made before this column).
      await db.schema.alterTable('versions').addColumn('tracking', 'text').execute();
    },
  },
  // Metadata copies of format 2 carry a checksum (storage/meta-codec.ts): every existing copy
  // is marked out of date (copy-pending.ts), so the next cleanup writes it again in that format.
  '0004_copy_checksums': {
    async up(db: Kysely<unknown>) {
      await sql`
        INSERT INTO settings (key, value)
        SELECT 'copy_pending:' || uid, '0' FROM versions WHERE status <> 'incomplete'
        ON CONFLICT (key) DO NOTHING`.execute(db);
    },
  },
  // Block lists as trees of shared pages (page-tree.ts). Only the schema changes here, in the
  // migration's transaction; the block rows of existing versions are converted afterwards,
  // one version per transaction (block-list-migration.ts), so a kill loses at most one
  // version's progress and the next open resumes.
  '0005_block_pages': {
    async up(db: Kysely<unknown>) {
      const sqlite = await isSqlite(db);
      if (sqlite) {
        // An INTEGER PRIMARY KEY AUTOINCREMENT id, never reused: pages name objects by it.
        await sql`CREATE TABLE objects_new (
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          checksum TEXT NOT NULL UNIQUE,
          stored_size BIGINT NOT NULL,
          valid INTEGER NOT NULL DEFAULT 1,
          last_seen BIGINT NOT NULL,
          refs INTEGER NOT NULL DEFAULT 0,
          size BIGINT)`.execute(db);
        await sql`INSERT INTO objects_new (checksum, stored_size, valid, last_seen)
          SELECT checksum, stored_size, valid, last_seen FROM objects ORDER BY checksum`.execute(db);
        await sql`DROP TABLE objects`.execute(db);
        await sql`ALTER TABLE objects_new RENAME TO objects`.execute(db);
        await sql`CREATE TABLE pages (
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          hash TEXT NOT NULL UNIQUE,
          level INTEGER NOT NULL,
          entries TEXT NOT NULL,
          refs INTEGER NOT NULL DEFAULT 0,
          last_seen BIGINT NOT NULL,
          data_blocks BIGINT NOT NULL DEFAULT 0,
          sparse_blocks BIGINT NOT NULL DEFAULT 0)`.execute(db);
      } else {
        await sql`ALTER TABLE objects ADD COLUMN id bigserial`.execute(db);
        await sql`ALTER TABLE objects ADD COLUMN refs integer NOT NULL DEFAULT 0`.execute(db);
        await sql`ALTER TABLE objects ADD COLUMN size bigint`.execute(db);
        await sql`CREATE UNIQUE INDEX objects_id ON objects (id)`.execute(db);
        await sql`CREATE TABLE pages (
          id bigserial PRIMARY KEY,
          hash text NOT NULL UNIQUE,
          level integer NOT NULL,
          entries text NOT NULL,
          refs integer NOT NULL DEFAULT 0,
          last_seen bigint NOT NULL,
          data_blocks bigint NOT NULL DEFAULT 0,
          sparse_blocks bigint NOT NULL DEFAULT 0)`.execute(db);
      }
      await sql`CREATE INDEX objects_garbage ON objects (refs, last_seen)`.execute(db);
      await sql`CREATE INDEX pages_garbage ON pages (refs, last_seen)`.execute(db);
      await sql`CREATE TABLE block_puts (
        version_uid text NOT NULL,
        idx bigint NOT NULL,
        object_id bigint NOT NULL,
        PRIMARY KEY (version_uid, idx))`.execute(db);
      await sql`CREATE INDEX block_puts_object ON block_puts (object_id)`.execute(db);
      await sql`CREATE TABLE leaf_puts (
        version_uid text NOT NULL,
        leaf bigint NOT NULL,
        page_id bigint NOT NULL,
        PRIMARY KEY (version_uid, leaf))`.execute(db);
      await sql`CREATE INDEX leaf_puts_page ON leaf_puts (page_id)`.execute(db);
      for (const [col, type] of [
        ['root', 'text'],
        ['listed', 'bigint NOT NULL DEFAULT 0'],
        ['held', 'integer NOT NULL DEFAULT 0'],
        ['suspect', 'integer NOT NULL DEFAULT 0'],
        ['data_bytes', 'bigint NOT NULL DEFAULT 0'],
        ['sparse_bytes', 'bigint NOT NULL DEFAULT 0'],
      ]) {
        await sql.raw(`ALTER TABLE versions ADD COLUMN ${col} ${type}`).execute(db);
      }
      await sql`INSERT INTO settings (key, value) VALUES ('block_lists', 'converting')`.execute(db);
    },
  },
};

async function isSqlite(db: Kysely<unknown>): Promise<boolean> {
  return db.getExecutor().adapter instanceof SqliteAdapter;
}

export const migrationProvider: MigrationProvider = {
  async getMigrations() {
    return migrations;
  },
};
