import { spaceCache, storeSpace, versionSpace } from '../../meta/catalog.js';
import type { VersionSpace } from '../../meta/catalog.js';
import type { Context } from '../context.js';
import { parseUid } from '../context.js';
import { formatBytes } from '../render.js';
import { createRequire } from 'node:module';
import type Table from 'cli-table3';

/**
 * `du [UID...]`: per-version space (size, sparse, referenced and exclusive stored bytes) and
 * the store's totals with its dedup and compression ratios. All from SQL (no object is read).
 */
export async function duCommand(ctx: Context, uidArgs: string[]) {
  const uids = uidArgs.map(parseUid);
  const meta = await ctx.meta({ databaseOnly: true });
  const versions =
    uids.length > 0 ? await Promise.all(uids.map((u) => meta.getVersion(u))) : await meta.listVersions();
  const rows: VersionSpace[] = [];
  const cache = spaceCache();
  for (const v of versions) rows.push(await versionSpace(meta, v, cache));
  const store = await storeSpace(meta);
  if (ctx.json) {
    ctx.out(
      JSON.stringify({
        versions: rows.map((r) => ({
          uid: r.uid,
          name: r.name,
          size_bytes: r.sizeBytes,
          sparse_bytes: r.sparseBytes,
          referenced_bytes: r.referencedBytes,
          exclusive_bytes: r.exclusiveBytes,
        })),
        store: {
          versions: store.versions,
          logical_bytes: store.logicalBytes,
          data_bytes: store.dataBytes,
          unique_bytes: store.uniqueBytes,
          stored_bytes: store.storedBytes,
          recorded_bytes: store.recordedBytes,
          recorded_objects: store.recordedObjects,
          dedup_ratio: store.dedupRatio,
          compression_ratio: store.compressionRatio,
        },
      }),
    );
    return;
  }
  if (ctx.machine) {
    for (const r of rows) {
      ctx.out(
        `du ${r.uid} ${r.name} ${r.sizeBytes} ${r.sparseBytes} ${r.referencedBytes} ${r.exclusiveBytes}`,
      );
    }
    ctx.out(
      `store ${store.versions} ${store.logicalBytes} ${store.dataBytes} ${store.uniqueBytes} ${store.storedBytes} ` +
        `${store.recordedBytes} ${store.recordedObjects} ${store.dedupRatio.toFixed(3)} ${store.compressionRatio.toFixed(3)}`,
    );
    return;
  }
  const Table_ = createRequire(import.meta.url)('cli-table3') as typeof Table;
  const t = new Table_({
    head: ['uid', 'name', 'size', 'sparse', 'referenced', 'exclusive'],
    style: { head: process.stdout.isTTY ? ['cyan'] : [], border: process.stdout.isTTY ? ['grey'] : [] },
  });
  for (const r of rows) {
    t.push([
      r.uid,
      r.name,
      formatBytes(r.sizeBytes),
      formatBytes(r.sparseBytes),
      formatBytes(r.referencedBytes),
      formatBytes(r.exclusiveBytes),
    ]);
  }
  ctx.out(t.toString());
  ctx.out(
    `store: ${store.versions} versions, ${formatBytes(store.logicalBytes)} logical, ${formatBytes(store.dataBytes)} non-zero data, ` +
      `${formatBytes(store.uniqueBytes)} after dedup (${store.dedupRatio.toFixed(2)}x), ${formatBytes(store.storedBytes)} stored ` +
      `(compression ${store.compressionRatio.toFixed(2)}x); ${store.recordedObjects} objects, ${formatBytes(store.recordedBytes)} recorded`,
  );
}
