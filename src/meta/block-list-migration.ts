/**
 * Converts the block rows of a database made before block lists were trees of pages
 * (migration 0005_block_pages) into pages, one version per transaction: a process killed
 * mid-way loses only the version it was converting, and the next open resumes where it
 * stopped. When no version has rows left, the old table goes.
 */
import { sql } from 'kysely';
import type { Db } from './meta-types.js';
import type { BlockRow } from './meta-types.js';
import { nowMicros } from './meta-types.js';
import { putRowsIn, sealIn } from './page-ops.js';
import type { Dialect } from './page-tree.js';

const PAGE = 10_000;

/** Told how far a conversion got (versions done, versions in all). */
export type MigrationReporter = (done: number, total: number) => void;

let reporter: MigrationReporter | undefined;

/** Where conversion progress goes (the CLI sets it; nothing is reported otherwise). */
export function setMigrationReporter(fn: MigrationReporter | undefined): void {
  reporter = fn;
}

export async function convertBlockLists(
  db: Db,
  dialect: Dialect,
  write: <T>(fn: (tx: Db) => Promise<T>) => Promise<T>,
): Promise<void> {
  try {
    await convert(db, dialect, write);
  } catch (err) {
    // Another process finished the conversion (and dropped the old table) meanwhile.
    if ((await stateOf(db)) === 'pages') return;
    throw err;
  }
}

async function stateOf(db: Db): Promise<string | undefined> {
  const row = await db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', 'block_lists')
    .executeTakeFirst();
  return row?.value;
}

async function convert(
  db: Db,
  dialect: Dialect,
  write: <T>(fn: (tx: Db) => Promise<T>) => Promise<T>,
): Promise<void> {
  const state = await db
    .selectFrom('settings')
    .select('value')
    .where('key', '=', 'block_lists')
    .executeTakeFirst();
  if (state?.value !== 'converting') return;
  const total = await db
    .selectFrom('blocks')
    .select((eb) => eb.fn.count<number>('version_uid').distinct().as('n'))
    .executeTakeFirstOrThrow();
  let done = 0;
  for (;;) {
    const next = await db.selectFrom('blocks').select('version_uid').limit(1).executeTakeFirst();
    if (!next) break;
    await write((tx) => convertOne(tx, dialect, next.version_uid));
    done++;
    reporter?.(done, Number(total.n));
  }
  await write(async (tx) => {
    const left = await tx.selectFrom('blocks').select('version_uid').limit(1).executeTakeFirst();
    if (left) return;
    await sql`DROP TABLE blocks`.execute(tx);
    await tx.updateTable('settings').set({ value: 'pages' }).where('key', '=', 'block_lists').execute();
  });
}

async function convertOne(tx: Db, dialect: Dialect, uid: string): Promise<void> {
  let q = tx.selectFrom('versions').select(['uid', 'status']).where('uid', '=', uid);
  if (dialect === 'postgres') q = q.forUpdate();
  const v = await q.executeTakeFirst();
  if (!v) {
    // Rows of a version that is gone (a removal that did not get to them).
    await tx.deleteFrom('blocks').where('version_uid', '=', uid).execute();
    return;
  }
  let from = 0;
  let entryInvalid = false;
  for (;;) {
    const rows = await tx
      .selectFrom('blocks')
      .select(['idx', 'checksum', 'size', 'valid'])
      .where('version_uid', '=', uid)
      .where('idx', '>=', from)
      .orderBy('idx')
      .limit(PAGE)
      .execute();
    if (rows.length === 0) break;
    const list: BlockRow[] = rows.map((r) => ({
      idx: Number(r.idx),
      checksum: r.checksum,
      size: Number(r.size),
      valid: Number(r.valid) === 1,
    }));
    if (list.some((r) => !r.valid)) entryInvalid = true;
    await putRowsIn(tx, dialect, uid, list, nowMicros());
    from = list[list.length - 1].idx + 1;
    if (rows.length < PAGE) break;
  }
  if (v.status !== 'incomplete') {
    await sealIn(tx, dialect, uid, nowMicros());
    // An invalid version stays invalid until a full scrub says otherwise (its entries' own
    // flags are not kept: validity follows objects from now on).
    if (v.status === 'invalid' || entryInvalid) {
      await tx
        .updateTable('versions')
        .set({ held: v.status === 'invalid' ? 1 : 0 })
        .where('uid', '=', uid)
        .execute();
    }
  }
  await tx.deleteFrom('blocks').where('version_uid', '=', uid).execute();
}
