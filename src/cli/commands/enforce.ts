import { futureDated, parseRetentionRules, selectForRemoval } from '../../core/retention.js';
import { nowMicros } from '../../meta/meta-store.js';
import type { Version } from '../../meta/meta-store.js';
import type { Context } from '../context.js';
import { formatDate, jsonDate } from '../render.js';

/**
 * `enforce RULES [NAME...] [--dry-run]`: removes the versions the rules do not keep (see
 * core/retention.ts). Only valid, unprotected versions are candidates; a version that a
 * running command holds (a lease) is skipped and kept. A future-dated version is kept, counted
 * for nothing, and named in a warning. Does not run cleanup.
 */
export async function enforceCommand(
  ctx: Context,
  rulesArg: string,
  names: string[],
  opts: { dryRun?: boolean; localTime?: boolean },
) {
  const rules = parseRetentionRules(rulesArg);
  const meta = await ctx.meta({ write: 'enforce', withoutStore: true });
  const all = await meta.listVersions();
  const wanted = names.length > 0 ? new Set(names) : undefined;
  const byName = new Map<string, Version[]>();
  for (const v of all) {
    if (wanted && !wanted.has(v.name)) continue;
    if (v.status !== 'valid' || v.protected) continue;
    let list = byName.get(v.name);
    if (!list) byName.set(v.name, (list = []));
    list.push(v);
  }
  for (const n of wanted ?? []) if (!all.some((v) => v.name === n)) ctx.log.warn(`no versions named '${n}'`);
  const now = nowMicros();
  const inUse = new Set<string>();
  for (const l of await meta.leases()) {
    if (l.versionUid && (await meta.isLeaseAlive(l))) inUse.add(l.versionUid);
  }
  for (const v of futureDated([...byName.values()].flat(), now)) {
    ctx.log.warn(
      `version ${v.uid} (${v.name}) is dated ${formatDate(v.date)} UTC, in the future: kept, and not counted by the rules (clock skew or an import?)`,
    );
  }
  const removed: Version[] = [];
  for (const [, versions] of byName) {
    const byUid = new Map(versions.map((v) => [v.uid, v]));
    for (const uid of selectForRemoval(versions, rules, now, { localTime: opts.localTime })) {
      const v = byUid.get(uid)!;
      if (inUse.has(uid)) {
        ctx.log.warn(`kept ${uid} (${v.name}): a running command uses it`);
        continue;
      }
      if (!opts.dryRun) {
        const undo = await ctx.recordRemoval(uid, 'enforce');
        await meta.removeVersion(uid).catch(async (err: unknown) => {
          await undo();
          throw err;
        });
      }
      removed.push(v);
      if (!opts.dryRun) await ctx.updateCopies([uid]);
      if (!ctx.json) ctx.out(ctx.machine ? `removed ${uid} ${v.name} ${formatDate(v.date)}` : uid);
    }
  }
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        dry_run: Boolean(opts.dryRun),
        removed: removed.map((v) => ({ uid: v.uid, name: v.name, date: jsonDate(v.date), date_us: v.date })),
      }),
    );
  }
  ctx.log.info(
    `${opts.dryRun ? 'Would remove' : 'Removed'} ${removed.length} version(s) under '${rulesArg}'` +
      (removed.length > 0 && !opts.dryRun ? "; run 'backy cleanup' to free their blocks" : ''),
  );
}
