/**
 * `ls` at scale (issue 22): the human table for 10,000 versions. cli-table3 took 17 s (234 MB)
 * to draw it here; the bound below is many times what the table needs now and still well under
 * that. The versions are written straight through the MetaStore (one stored block, as in
 * test/lib/synth-versions.ts, without metadata copies, which ls never reads).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockRow } from '../../src/meta/meta-store.js';
import { Sandbox, parseLsMachine } from '../lib/cli.js';
import { seedStore } from '../lib/synth-versions.js';

const BS = 64 * 1024;
const VERSIONS = 10_000;

describe('ls of many versions', () => {
  it(`draws ${VERSIONS} versions as an aligned table, in ls -m's order`, async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const s = await seedStore(sb, BS, 'ls-scale');
      const rows: BlockRow[] = [{ idx: 0, checksum: s.checksum, size: BS, valid: true }];
      for (let i = 1; i < VERSIONS; i++) {
        const v = await s.meta.createVersion({ name: `vm${i % 10}`, sizeBytes: BS, blockSize: BS });
        await s.meta.putBlocks(v.uid, rows);
        assert.equal(await s.meta.completeVersion(v.uid), undefined);
      }
      await s.meta.close();
      const uids = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
      assert.equal(uids.length, VERSIONS);
      await sb.ok(['label', uids[5], 'owner=ops', 'tier=gold']);

      const started = Date.now();
      const table = (await sb.ok(['ls'])).stdout;
      const secs = (Date.now() - started) / 1000;
      assert.ok(secs < 8, `ls drew ${VERSIONS} versions in ${secs} s`);

      const lines = table.trimEnd().split('\n');
      const width = [...lines[0]].length;
      for (const l of lines) assert.equal([...l].length, width, l);
      const bars = (l: string) => [...l].flatMap((c, i) => ('│┼┬┴├┤┌┐└┘'.includes(c) ? [i] : []));
      const columns = bars(lines[0]);
      assert.equal(columns.length, 11);
      for (const l of lines) assert.deepEqual(bars(l), columns, l);

      const body = lines.filter((l) => l.startsWith('│')).map((l) => l.split('│').map((c) => c.trim()));
      assert.deepEqual(body[0].slice(1, -1), [
        'date',
        'name',
        'snapshot',
        'size',
        'size_bytes',
        'uid',
        'valid',
        'status',
        'protected',
        'labels',
      ]);
      const data = body.slice(1).filter((cells) => cells[6] !== '');
      assert.deepEqual(
        data.map((cells) => cells[6]),
        uids,
      );
      // The labelled version's second label sits on a line of its own under the first.
      const at = body.findIndex((cells) => cells[6] === uids[5]);
      assert.equal(body[at][10], 'owner=ops');
      assert.deepEqual(body[at + 1].slice(1, -1), ['', '', '', '', '', '', '', '', '', 'tier=gold']);
      assert.equal(lines.length, 1 + 1 + 1 + VERSIONS + 1 + (VERSIONS - 1) + 1);
    } finally {
      await sb.remove();
    }
  });
});
