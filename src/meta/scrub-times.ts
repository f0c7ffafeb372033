/**
 * When each version was last scrubbed: settings rows `scrubbed:<uid>` = `<micros> <percent>`
 * (no schema change). Written after every scrub that finished (`scrub`, `scrub --all`, the
 * daemon), read to scrub the longest-unscrubbed versions first. A row whose version is gone
 * is dropped by forgetScrubTimes (scrub --all does it for every row it finds so).
 */
import type { MetaHandle } from './meta-db.js';

const PREFIX = 'scrubbed:';

export interface ScrubTime {
  /** Microseconds since the epoch. */
  at: number;
  /** The share of blocks that scrub checked (100: all). */
  percent: number;
}

export async function recordScrubbed(meta: MetaHandle, uid: string, t: ScrubTime): Promise<void> {
  const value = `${t.at} ${t.percent}`;
  await meta.write(async (tx) => {
    await tx
      .insertInto('settings')
      .values({ key: `${PREFIX}${uid}`, value })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value }))
      .execute();
  });
}

/** Every recorded scrub time, by version uid. */
export async function scrubTimes(meta: MetaHandle): Promise<Map<string, ScrubTime>> {
  const rows = await meta.db
    .selectFrom('settings')
    .select(['key', 'value'])
    .where('key', 'like', `${PREFIX}%`)
    .execute();
  const times = new Map<string, ScrubTime>();
  for (const r of rows) {
    const [at, percent] = r.value.split(' ').map(Number);
    if (Number.isFinite(at) && Number.isFinite(percent))
      times.set(r.key.slice(PREFIX.length), { at, percent });
  }
  return times;
}

export async function forgetScrubTimes(meta: MetaHandle, uids: readonly string[]): Promise<void> {
  for (let i = 0; i < uids.length; i += 500) {
    const keys = uids.slice(i, i + 500).map((u) => `${PREFIX}${u}`);
    await meta.write(async (tx) => {
      await tx.deleteFrom('settings').where('key', 'in', keys).execute();
    });
  }
}
