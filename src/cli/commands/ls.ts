import type { Context } from '../context.js';
import { machineVersionLine, versionTable } from '../render.js';

export async function lsCommand(ctx: Context, name: string | undefined) {
  const meta = await ctx.meta();
  const versions = await meta.listVersions({ name });
  if (ctx.machine) {
    for (const v of versions) ctx.out(machineVersionLine(v));
  } else {
    ctx.out(versionTable(versions));
  }
}
