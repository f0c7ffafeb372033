/**
 * A version's metadata copy is streamed to the store, never held whole in memory (~110 bytes a
 * block: 28 MB of text for a 1 TiB image, 280 MB for 10 TiB, written at the end of every
 * backup). The versions are synthesised (test/lib/synth-versions.ts) over one real backup.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { exportVersion } from '../../src/core/metadata-io.js';
import { copyName, readVersionCopy, writeVersionCopy } from '../../src/core/version-copy.js';
import { BlockStore } from '../../src/storage/block-store.js';
import { DirBackend } from '../../src/storage/dir-backend.js';
import { Sandbox } from '../lib/cli.js';
import { seedStore, synthesiseVersions } from '../lib/synth-versions.js';

const BS = 64 * 1024;
const BLOCKS = 100_000; // ~11 MB of export text: well above any chunk the stream may hold

/** What exportVersion writes for the store's copy of `uid`, as one Buffer (the expected copy). */
async function exported(s: Awaited<ReturnType<typeof seedStore>>, uid: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  const out = new Writable({
    write(chunk: Buffer | string, _e, cb) {
      parts.push(Buffer.from(chunk));
      cb();
    },
  });
  const { labelsOf } = await import('../../src/meta/catalog.js');
  await exportVersion({
    meta: s.meta,
    uid,
    out,
    copy: async () => ({ labels: (await labelsOf(s.meta, [uid])).get(uid) ?? {}, storeId: s.storeId }),
  });
  return Buffer.concat(parts);
}

/**
 * A real DirBackend whose putMeta is watched: it records what it was given (a Buffer or a
 * stream of chunks, and the largest chunk). With `failAfter`, the put fails after that many
 * chunks, as a store that breaks mid-write would (a fault not produced here for real; a full
 * disk is, in enospc.test.ts).
 */
class WatchedBackend extends DirBackend {
  kind = '';
  largest = 0;
  failAfter = Infinity;
  override async putMeta(name: string, data: Buffer | AsyncIterable<Buffer>): Promise<void> {
    if (Buffer.isBuffer(data)) {
      this.kind = 'buffer';
      this.largest = data.length;
      return super.putMeta(name, data);
    }
    this.kind = 'stream';
    const watched = async function* (this: WatchedBackend) {
      let n = 0;
      for await (const c of data) {
        if (++n > this.failAfter) throw new Error('the store broke mid-write');
        this.largest = Math.max(this.largest, c.length);
        yield c;
      }
    }.call(this);
    return super.putMeta(name, watched);
  }
}

describe('metadata copies are streamed', () => {
  it(`a ${BLOCKS}-block version's copy goes to the store in small chunks and reads back exactly`, async () => {
    const sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    try {
      const synth = await seedStore(sb, BS, 'copy-stream');
      const { uids } = await synthesiseVersions(synth, {
        versions: 1,
        blocks: BLOCKS,
        blockSize: BS,
        distinct: true,
      });
      const watched = new WatchedBackend(sb.dataDir);
      const store = new BlockStore(watched, synth.store.spec);
      assert.equal(await writeVersionCopy(synth.meta, store, synth.storeId, uids[0]), 'written');
      assert.equal(watched.kind, 'stream', 'the copy was handed over as a stream, not built whole');
      assert.ok(watched.largest <= 1 << 20, `largest chunk ${watched.largest} bytes`);
      const expected = await exported(synth, uids[0]);
      assert.ok(expected.length > 10 << 20, `the copy's text is ${expected.length} bytes`);
      assert.deepEqual(await readVersionCopy(store, uids[0]), expected);

      // A store that fails mid-write: one error, no hang, the old copy stays, no temp file left.
      watched.failAfter = 3;
      await assert.rejects(writeVersionCopy(synth.meta, store, synth.storeId, uids[0]), /broke mid-write/);
      assert.deepEqual(await readVersionCopy(store, uids[0]), expected, 'the previous copy is intact');
      const temps = (await readdir(sb.dataDir, { recursive: true })).filter((n) =>
        String(n).includes('.tmp-'),
      );
      assert.deepEqual(temps, []);
      assert.ok((await watched.getMeta(copyName(uids[0])))!.length > 0);
      await synth.meta.close();
    } finally {
      await sb.remove();
    }
  });
});
