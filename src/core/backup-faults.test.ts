/**
 * I/O errors in the middle of a backup, through fault-injecting wrappers around a real Source
 * and a real StorageBackend (DirBackend), with a real SQLite MetaStore.
 *
 * Fakes, and why: this kernel has no device-mapper (no `dmsetup` error target) and a loop
 * device cannot be made to return EIO, so a read or write error from the disk cannot be
 * produced for real here. The wrappers throw exactly what the real FileSource / DirBackend
 * throw for an EIO (a one-line BackyError naming the place and "(EIO)"). ENOSPC is produced
 * for real in test/e2e/enospc.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BackyError } from '../errors.js';
import { MetaStore } from '../meta/meta-store.js';
import type { Version } from '../meta/meta-store.js';
import { openSource } from '../source/source.js';
import type { RandomSource } from '../source/source.js';
import type { ObjectInfo, StorageBackend } from '../storage/backend.js';
import { BlockStore } from '../storage/block-store.js';
import { DirBackend } from '../storage/dir-backend.js';
import { openTarget } from '../target/target.js';
import { backup } from './backup.js';
import { restore } from './restore.js';

const BS = 4096;
const BLOCKS = 64;

function seeded(seed: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A Source whose reads at or past `failAt` fail like an EIO from the disk. */
function failingSource(inner: RandomSource, failAt: number): RandomSource {
  return {
    kind: 'random',
    name: inner.name,
    size: inner.size,
    async read(offset, length) {
      if (offset + length > failAt) {
        throw new BackyError(`cannot read ${inner.name} at offset ${offset}: input/output error (EIO)`);
      }
      return inner.read(offset, length);
    },
    close: () => inner.close(),
  };
}

/** A backend whose puts fail like an EIO after `okPuts` successful ones. */
class FailingBackend implements StorageBackend {
  readonly url: string;
  #puts = 0;
  constructor(
    readonly inner: DirBackend,
    readonly okPuts: number,
  ) {
    this.url = inner.url;
  }
  async put(key: string, data: readonly Buffer[]) {
    if (++this.#puts > this.okPuts) {
      throw new BackyError(`cannot store block ${key} in ${this.inner.root}: input/output error (EIO)`);
    }
    return this.inner.put(key, data);
  }
  get(key: string) {
    return this.inner.get(key);
  }
  stat(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.stat(key);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  list() {
    return this.inner.list();
  }
  putMeta(name: string, data: Buffer) {
    return this.inner.putMeta(name, data);
  }
  getMeta(name: string) {
    return this.inner.getMeta(name);
  }
  listMeta() {
    return this.inner.listMeta();
  }
  deleteMeta(name: string) {
    return this.inner.deleteMeta(name);
  }
  close() {
    return this.inner.close();
  }
}

describe('I/O errors during a backup (fault-injecting wrappers)', () => {
  let dir: string;
  let meta: MetaStore;
  let backend: DirBackend;
  let store: BlockStore;
  let imgA: string;
  let imgB: string;
  let good: Version;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-faults-'));
    meta = await MetaStore.open(`sqlite:///${join(dir, 'backy.sqlite')}`);
    backend = new DirBackend(join(dir, 'data'));
    store = new BlockStore(backend, { hashFunction: meta.hashFunction, compression: { codec: 'none' } });
    imgA = join(dir, 'a.img');
    imgB = join(dir, 'b.img');
    await writeFile(imgA, seeded(1, BLOCKS * BS));
    await writeFile(imgB, seeded(2, BLOCKS * BS)); // every block new
    const source = await openSource(imgA);
    try {
      good = (await backup({ meta, store, source, name: 'a', blockSize: BS, hintCheckBlocks: 0 })).version;
    } finally {
      await source.close();
    }
  });

  after(async () => {
    await meta?.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function assertRestores(v: Version, image: string) {
    const out = join(dir, `restore-${v.uid}.img`);
    const target = await openTarget(out, v.sizeBytes, { force: false });
    try {
      const r = await restore({ meta, store, version: await meta.getVersion(v.uid), target, sparse: false });
      assert.deepEqual(r.bad, []);
    } finally {
      await target.close();
    }
    const { readFile } = await import('node:fs/promises');
    assert.ok((await readFile(out)).equals(await readFile(image)), 'restored byte for byte');
    await rm(out);
  }

  /** Every block row of `uid` names an object that is recorded and present on disk. */
  async function assertRowsBacked(uid: string) {
    for await (const row of meta.blocks(uid)) {
      if (row.checksum === null) continue;
      assert.ok(await backend.stat(row.checksum), `block ${row.idx} references a stored object`);
    }
  }

  it('a read error from the source fails the backup; the version stays incomplete', async () => {
    const inner = (await openSource(imgB)) as RandomSource;
    const source = failingSource(inner, 40 * BS);
    let created: Version | undefined;
    await assert.rejects(
      backup({
        meta,
        store,
        source,
        name: 'b',
        blockSize: BS,
        hintCheckBlocks: 0,
        onVersion: (v) => (created = v),
      }),
      (err: Error) =>
        err instanceof BackyError && /at offset \d+: input\/output error \(EIO\)/.test(err.message),
    );
    await source.close();
    assert.ok(created);
    assert.equal((await meta.getVersion(created.uid)).status, 'incomplete');
    assert.deepEqual(await meta.leases(), [], 'the lease is released');
    await assertRowsBacked(created.uid);
    await assertRestores(good, imgA);
    await assert.rejects(
      backup({
        meta,
        store,
        source: inner,
        name: 'c',
        blockSize: BS,
        hintCheckBlocks: 0,
        baseUid: created.uid,
      }),
      /incomplete and cannot be the base/,
    );
  });

  it('a write error in the data store fails the backup; no row names a missing object', async () => {
    const failing = new BlockStore(new FailingBackend(backend, 10), store.spec);
    const source = await openSource(imgB);
    let created: Version | undefined;
    try {
      await assert.rejects(
        backup({
          meta,
          store: failing,
          source,
          name: 'b',
          blockSize: BS,
          hintCheckBlocks: 0,
          onVersion: (v) => (created = v),
        }),
        /cannot store block [0-9a-f]+ in .*: input\/output error \(EIO\)/,
      );
    } finally {
      await source.close();
    }
    assert.ok(created);
    assert.equal((await meta.getVersion(created.uid)).status, 'incomplete');
    await assertRowsBacked(created.uid);
    await assertRestores(good, imgA);
    // The disk is healthy again: the same backup works and restores byte for byte.
    const again = await openSource(imgB);
    try {
      const { version } = await backup({
        meta,
        store,
        source: again,
        name: 'b',
        blockSize: BS,
        hintCheckBlocks: 0,
      });
      assert.equal(version.status, 'valid');
      await assertRestores(version, imgB);
    } finally {
      await again.close();
    }
  });
});
