import { sql } from 'kysely';
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
};

export const migrationProvider: MigrationProvider = {
  async getMigrations() {
    return migrations;
  },
};
