import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hasherFor } from '../blocks/hash.js';
import { CorruptBlockError } from '../errors.js';
import { BlockStore, objectBufferSize } from '../storage/block-store.js';
import { DirBackend } from '../storage/dir-backend.js';
import { BlockCache } from './block-cache.js';

const BS = 4096;
const OBJ = objectBufferSize(BS);

describe('BlockCache (real store in a temp dir)', () => {
  let dir: string;
  let store: BlockStore;
  const blocks = ['a', 'b', 'c', 'd'].map((c) => Buffer.alloc(BS, c));
  const sums = blocks.map((b) => hasherFor('blake3')(b));

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-cache-'));
    store = new BlockStore(new DirBackend(dir), { hashFunction: 'blake3', compression: { codec: 'none' } });
    for (let i = 0; i < blocks.length; i++) await store.put(sums[i], blocks[i]);
  });
  after(async () => {
    await store.backend.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('never reuses the buffer of a block a reader still holds, however many blocks pass through', async () => {
    // Room for the four held at once at the end.
    const cache = new BlockCache({ maxBytes: 4 * OBJ });
    const held = await cache.get(store, sums[0], BS, BS);
    // Each of these evicts the one before; the held block must keep its contents.
    for (let round = 0; round < 3; round++) {
      for (let i = 1; i < blocks.length; i++) {
        const r = await cache.get(store, sums[i], BS, BS);
        assert.deepEqual(r.data, blocks[i]);
        r.release();
      }
    }
    assert.deepEqual(held.data, blocks[0]);
    held.release();
    held.release(); // a second release is harmless
    const again = await Promise.all(sums.map((s) => cache.get(store, s, BS, BS)));
    again.forEach((r, i) => assert.deepEqual(r.data, blocks[i]));
    for (const r of again) r.release();
  });

  it('never holds more than maxBytes of buffers: a fetch waits for a held block to come back', async () => {
    const cache = new BlockCache({ maxBytes: 2 * OBJ });
    const a = await cache.get(store, sums[0], BS, BS);
    const b = await cache.get(store, sums[1], BS, BS);
    let c: Awaited<ReturnType<BlockCache['get']>> | undefined;
    const waiting = cache.get(store, sums[2], BS, BS).then((r) => (c = r));
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.equal(c, undefined, 'both buffers are held: the third block waits');
    assert.equal(cache.allocatedBytes, 2 * OBJ);
    a.release();
    await waiting;
    assert.deepEqual(c!.data, blocks[2]);
    assert.deepEqual(b.data, blocks[1], 'the block still held kept its contents');
    assert.equal(cache.allocatedBytes, 2 * OBJ);
    // Prefetching never waits and never goes beyond the bound either.
    cache.prefetch(store, sums[3], BS, BS);
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    assert.ok(cache.allocatedBytes <= 2 * OBJ);
    b.release();
    c!.release();
  });

  it('shares one fetch among concurrent readers and fails them all on a damaged object', async () => {
    const cache = new BlockCache({ maxBytes: 2 * OBJ });
    const refs = await Promise.all([1, 2, 3].map(() => cache.get(store, sums[1], BS, BS)));
    assert.equal(refs[0].data.buffer, refs[2].data.buffer);
    for (const r of refs) r.release();

    const bad = Buffer.alloc(BS, 'z');
    const badSum = hasherFor('blake3')(bad);
    await store.put(badSum, bad);
    await writeFile(join(dir, badSum.slice(0, 2), badSum.slice(2, 4), badSum), Buffer.alloc(20));
    const results = await Promise.allSettled([1, 2].map(() => cache.get(store, badSum, BS, BS)));
    for (const r of results) assert.ok(r.status === 'rejected' && r.reason instanceof CorruptBlockError);
    // A wrong expected length is damage too, not a short read.
    await assert.rejects(cache.get(store, sums[2], BS - 1, BS), CorruptBlockError);
  });
});
