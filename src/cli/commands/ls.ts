import { findVersions, labelsOf, parseLabel } from '../../meta/catalog.js';
import type { Context } from '../context.js';
import { machineVersionLine, versionJsonFields, versionTable } from '../render.js';

export async function lsCommand(ctx: Context, name: string | undefined, opts: { label?: string[] } = {}) {
  const labelFilter = Object.fromEntries((opts.label ?? []).map(parseLabel));
  const meta = await ctx.meta({ databaseOnly: true });
  const versions = await findVersions(meta, { name, labels: labelFilter });
  const labels = await labelsOf(meta, versions.length > 1000 ? undefined : versions.map((v) => v.uid));
  if (ctx.json) {
    ctx.out(JSON.stringify(versions.map((v) => versionJsonFields(v, labels.get(v.uid)))));
  } else if (ctx.machine) {
    for (const v of versions) ctx.out(machineVersionLine(v, labels.get(v.uid)));
  } else {
    ctx.out(versionTable(versions, labels));
  }
}
