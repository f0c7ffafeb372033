/**
 * A 1 TiB image's block list (262,144 rows) copied by `backup -f` and listed by `ls`, on both
 * engines (bench/scale.ts). Prints the times; asserts only on the results.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BLOCKS, CHANGED, formatResult, scale } from '../../bench/scale.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { MetaStore } from '../../src/meta/meta-store.js';

const engines: { name: string; skip?: string; engine: () => Promise<string | undefined> }[] = [
  { name: 'sqlite', engine: async () => undefined },
  { name: 'postgres', skip: pgSkipReason(), engine: () => pgDatabase('backy_scale') },
];

describe('scale: 262,144-block versions', () => {
  for (const e of engines) {
    it(`copies and lists a 1 TiB block list on ${e.name}`, { skip: e.skip }, async (t) => {
      const engine = await e.engine();
      const r = await scale(engine);
      try {
        t.diagnostic(formatResult(e.name, r));
        const meta = await MetaStore.open(engine ?? `sqlite:///${r.sb.dbPath}`);
        try {
          const v = await meta.getVersion(r.uid);
          assert.equal(v.status, 'valid');
          assert.equal(v.baseUid, r.baseUid);
          assert.equal(Math.ceil(v.sizeBytes / v.blockSize), BLOCKS);
          const rows = await meta.blocksAt(r.uid, [0, ...CHANGED, CHANGED[0] + 1, BLOCKS - 1]);
          assert.equal(rows.size, 5);
          for (const idx of CHANGED) assert.match(rows.get(idx)?.checksum ?? '', /^[0-9a-f]{64}$/);
          for (const idx of [0, CHANGED[0] + 1, BLOCKS - 1]) assert.equal(rows.get(idx)?.checksum, null);
          const last = await meta.blockPage(r.uid, BLOCKS - 3, 10);
          assert.deepEqual(
            last.map((b) => b.idx),
            [BLOCKS - 3, BLOCKS - 2, BLOCKS - 1],
          );
        } finally {
          await meta.close();
        }
      } finally {
        await r.sb.remove();
      }
    });
  }
});
