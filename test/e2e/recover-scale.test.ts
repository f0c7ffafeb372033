/**
 * Recover at scale (issue 12): recovering many versions costs one durable commit, not one
 * each. A commit made durable at once costs an fsync (milliseconds on most disks): 1,000
 * versions spent several seconds in them. Counted with strace, a real count of the syscalls.
 * The versions are synthesised through the MetaStore, as bench/recover.ts does at full size
 * (it prints the times; nothing here asserts on a time): backing up 100 images through the
 * CLI would test backups. Their blocks name one object stored by a real backup.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { BIN, Sandbox, assertSameBytes } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';
import { missingCommands } from '../lib/tools.js';
import { readDescriptor } from '../../src/core/store-descriptor.js';
import { writeVersionCopy } from '../../src/core/version-copy.js';
import { MetaStore } from '../../src/meta/meta-store.js';
import { BlockStore } from '../../src/storage/block-store.js';
import { DirBackend } from '../../src/storage/dir-backend.js';

const BS = 64 * 1024;
const VERSIONS = 100;
const BLOCKS = 4;

describe('recover of many versions', { skip: missingCommands(['strace'], 'apt-get install strace') }, () => {
  it(`${VERSIONS} versions come back with a handful of fsyncs, not one each; they restore byte for byte`, async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const img = sb.path('one.img');
      const block = randomBytesSeeded('recover-scale', BS);
      await writeFile(img, block);
      const seed = await sb.backup([img, 'seed']);
      const meta = await MetaStore.open(`sqlite:///${sb.dbPath}`);
      const backend = new DirBackend(sb.dataDir);
      const store = new BlockStore(backend, {
        hashFunction: meta.hashFunction,
        compression: { codec: 'zstd', level: 1 },
      });
      const { storeId } = (await readDescriptor(backend))!;
      const checksum = (await meta.blockPage(seed, 0, 1))[0].checksum;
      const uids: string[] = [];
      for (let i = 0; i < VERSIONS; i++) {
        const v = await meta.createVersion({ name: `vm${i % 10}`, sizeBytes: BLOCKS * BS, blockSize: BS });
        const rows = Array.from({ length: BLOCKS }, (_, idx) => ({ idx, checksum, size: BS, valid: true }));
        await meta.putBlocks(v.uid, rows);
        assert.equal(await meta.completeVersion(v.uid), undefined);
        await writeVersionCopy(meta, store, storeId, v.uid);
        uids.push(v.uid);
      }
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
