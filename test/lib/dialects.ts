/**
 * The SQL dialects a metadata test loops over, like kysely's tests: SQLite (a temp file,
 * removed when the test file ends) and PostgreSQL (a database of its own on a real server,
 * see pg.ts; skipped with its reason when there is none).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { pgDatabase, pgSkipReason } from './pg.js';

export interface Dialect {
  name: 'sqlite' | 'postgres';
  skip?: string;
  /** A fresh, empty database: its engine URL. */
  fresh(): Promise<string>;
}

/** Both dialects; `tag` names the temp dirs and PostgreSQL databases this test file makes. */
export function testDialects(tag: string): Dialect[] {
  const tempDirs: string[] = [];
  after(async () => {
    for (const d of tempDirs) await rm(d, { recursive: true, force: true });
  });
  return [
    {
      name: 'sqlite',
      async fresh() {
        const dir = await mkdtemp(join(tmpdir(), `backy-${tag}-`));
        tempDirs.push(dir);
        return `sqlite:///${join(dir, 'backy.sqlite')}`;
      },
    },
    { name: 'postgres', skip: pgSkipReason(), fresh: () => pgDatabase(`backy_${tag}`) },
  ];
}
