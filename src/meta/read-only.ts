/**
 * A metadata database opened read-only cannot be migrated: it is used only when every
 * migration this code knows has already been applied (a newer schema is fine as far as the
 * migrations are concerned; columns this code reads exist in both).
 */
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import { BackyError } from '../errors.js';
import { migrationProvider } from './migrations.js';

/** A command that must write to a store whose metadata database is read-only. */
export class ReadOnlyStoreError extends BackyError {
  constructor(dbPath: string, what: string) {
    super(
      `${what} needs to write to the metadata database ${dbPath}, which is read-only (read-only file system or no write permission); use a writable store`,
    );
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- any database: only the migrations table is read
export async function checkSchemaCurrent(db: Kysely<any>, dbPath: string): Promise<void> {
  let applied: Set<string>;
  try {
    const rows = await sql<{ name: string }>`SELECT name FROM kysely_migration`.execute(db);
    applied = new Set(rows.rows.map((r) => r.name));
  } catch (err) {
    throw new BackyError(
      `metadata database ${dbPath} is read-only and holds no backy store (no schema); nothing to read: ${(err as Error).message}`,
    );
  }
  const missing = Object.keys(await migrationProvider.getMigrations()).filter((m) => !applied.has(m));
  if (missing.length > 0) {
    throw new BackyError(
      `metadata database ${dbPath} is read-only and its schema is older than this backy needs (missing ${missing.join(', ')}); open it once where it is writable to upgrade it`,
    );
  }
}
