import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hasherFor } from '../blocks/hash.js';
import { CorruptBlockError, MissingBlockError } from '../errors.js';
import { BlockStore, HEADER_SIZE } from './block-store.js';
import { DirBackend } from './dir-backend.js';
import { CodecPool } from '../util/codec-pool.js';
import type { CodecSpec } from './codec.js';

const PLAIN: CodecSpec = { hashFunction: 'blake3', compression: { codec: 'none' } };

describe('BlockStore on DirBackend', () => {
  let dir: string;
  let backend: DirBackend;
  let store: BlockStore;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-store-'));
    backend = new DirBackend(join(dir, 'data'));
    store = new BlockStore(backend, PLAIN);
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  const put = async (text: string) => {
    const data = Buffer.from(text.repeat(1000));
    const checksum = store.hash(data);
    await store.put(checksum, data);
    return { data, checksum, path: backend.path(checksum) };
  };

  it('stores under two fan-out levels with a header, private modes, and reads back verified', async () => {
    const { data, checksum, path } = await put('hello');
    assert.equal(path, join(dir, 'data', checksum.slice(0, 2), checksum.slice(2, 4), checksum));
    const raw = await readFile(path);
    assert.equal(raw.subarray(0, 4).toString('latin1'), 'BKYO');
    assert.equal(raw.length, HEADER_SIZE + data.length);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'data', checksum.slice(0, 2)))).mode & 0o777, 0o700);
    assert.deepEqual(await store.get(checksum, data.length), data);
    const keys = [];
    for await (const o of backend.list()) keys.push(o.key);
    assert.deepEqual(keys, [checksum]);
  });

  it('has() tells whether the object file exists', async () => {
    const { checksum, path } = await put('there');
    assert.equal(await store.has(checksum), true);
    await rm(path);
    assert.equal(await store.has(checksum), false);
  });

  it('detects a flipped byte', async () => {
    const { checksum, path } = await put('flip');
    const raw = await readFile(path);
    raw[HEADER_SIZE + 10] ^= 0xff;
    await writeFile(path, raw);
    await assert.rejects(
      store.get(checksum),
      (e: unknown) => e instanceof CorruptBlockError && /checksum mismatch/.test(e.message),
    );
  });

  it('detects truncation', async () => {
    const { checksum, path } = await put('trunc');
    await truncate(path, HEADER_SIZE + 5);
    await assert.rejects(
      store.get(checksum),
      (e: unknown) => e instanceof CorruptBlockError && /header says/.test(e.message),
    );
    await truncate(path, 3);
    await assert.rejects(
      store.get(checksum),
      (e: unknown) => e instanceof CorruptBlockError && /shorter than its header/.test(e.message),
    );
  });

  it('detects a bad header and a wrong expected size', async () => {
    const { checksum, path, data } = await put('magic');
    await assert.rejects(store.get(checksum, data.length + 1), /expected/);
    const raw = await readFile(path);
    raw[0] = 0x58;
    await writeFile(path, raw);
    await assert.rejects(store.get(checksum), /magic/);
  });

  it('reports a missing object', async () => {
    const checksum = store.hash(Buffer.from('never stored'));
    await assert.rejects(store.get(checksum), (e: unknown) => e instanceof MissingBlockError);
    assert.equal(await backend.stat(checksum), undefined);
    await backend.delete(checksum); // not an error
  });

  it('refuses keys that are not hex (no paths from outside)', async () => {
    await assert.rejects(backend.put('../../etc/passwd', [Buffer.from('x')]), /invalid object key/);
    assert.throws(() => backend.path('ab/cd'), /invalid object key/);
  });

  it('deferred puts, sync, reads into a pooled buffer and verification on a codec pool', async () => {
    const pool = new CodecPool(PLAIN, 1);
    const pooled = new BlockStore(backend, PLAIN, pool);
    try {
      const data = Buffer.alloc(200_000, 7);
      const checksum = await pooled.digest(data);
      assert.equal(checksum, store.hash(data));
      await pooled.put(checksum, data, { defer: true });
      await pooled.sync();
      const into = Buffer.alloc(HEADER_SIZE + data.length + 10);
      const got = await pooled.get(checksum, data.length, into);
      assert.deepEqual(got, data);
      assert.equal(got.buffer, into.buffer, 'read into the given buffer');
      // Too small a buffer still works (a fresh one is used).
      assert.deepEqual(await pooled.get(checksum, data.length, Buffer.alloc(10)), data);
      const raw = await readFile(backend.path(checksum));
      raw[HEADER_SIZE + 5] ^= 1;
      await writeFile(backend.path(checksum), raw);
      await assert.rejects(pooled.get(checksum, data.length, into), /checksum mismatch/);
    } finally {
      await pool.close();
    }
  });

  it('sha256 and blake3 differ and are 64 hex chars', () => {
    const d = Buffer.from('abc');
    const a = hasherFor('sha256')(d);
    const b = hasherFor('blake3')(d);
    assert.equal(a, 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    assert.equal(b, '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
  });
});
