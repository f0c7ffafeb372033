/**
 * Recover at scale (issue 12): recovering many versions costs one durable commit, not one
 * each. A commit made durable at once costs an fsync (milliseconds on most disks): 1,000
 * versions spent several seconds in them. Counted with strace, a real count of the syscalls.
 * The versions are synthesised (test/lib/synth-versions.ts), as bench/recover.ts does at full
 * size (it prints the times; nothing here asserts on a time). Their blocks name one object
 * stored by a real backup.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes } from '../lib/cli.js';
import { seedStore, synthesiseVersions } from '../lib/synth-versions.js';
import { missingCommands } from '../lib/tools.js';

const BS = 64 * 1024;
const VERSIONS = 100;
const BLOCKS = 4;

describe('recover of many versions', { skip: missingCommands(['strace'], 'apt-get install strace') }, () => {
  it(`${VERSIONS} versions come back with a handful of fsyncs, not one each; they restore byte for byte`, async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const synth = await seedStore(sb, BS, 'recover-scale');
      const { img, block, seed, meta } = synth;
      const { uids } = await synthesiseVersions(synth, { versions: VERSIONS, blocks: BLOCKS, blockSize: BS });
      await meta.close();
      const before = (await sb.ok(['-m', 'ls'])).stdout;
      for (const s of ['', '-wal', '-shm']) await rm(sb.dbPath + s, { force: true });

      const trace = sb.path('strace.txt');
      const r = spawnSync(
        'strace',
        [
          '-f',
          '-c',
          '-e',
          'trace=fsync,fdatasync',
          '-o',
          trace,
          process.execPath,
          BIN,
          '-c',
          sb.config,
          '-m',
          'recover',
        ],
        { cwd: sb.dir, encoding: 'utf8' },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim().split('\n').length, VERSIONS + 1);
      const summary = await readFile(trace, 'utf8');
      const calls = [
        ...summary.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(?:fsync|fdatasync)$/gm),
      ];
      const fsyncs = calls.reduce((n, m) => n + Number(m[1]), 0);
      // One per version before: each version's commit was made durable on its own.
      assert.ok(fsyncs < VERSIONS / 4, `recover made ${fsyncs} fsyncs for ${VERSIONS} versions:\n${summary}`);

      assert.equal((await sb.ok(['-m', 'ls'])).stdout, before);
      await sb.ok(['restore', seed, sb.path('seed.out')]);
      await assertSameBytes(img, sb.path('seed.out'));
      await sb.ok(['restore', uids[VERSIONS - 1], sb.path('last.out')]);
      const expected = sb.path('last.expected');
      await writeFile(expected, Buffer.concat(Array.from({ length: BLOCKS }, () => block)));
      await assertSameBytes(expected, sb.path('last.out'));
    } finally {
      await sb.remove();
    }
  });
});
