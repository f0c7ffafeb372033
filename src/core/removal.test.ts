/**
 * A reader whose version is removed under it (rm --force) says so instead of taking the
 * emptied block list for damage: scrub and export, on a real SQLite database and data
 * directory. The removal is triggered from the reader's own progress (scrub) or output
 * (export), so it lands after the first page of the block list was read and before the next.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { VersionRemovedError } from '../errors.js';
import { MetaStore } from '../meta/meta-store.js';
import type { Version } from '../meta/meta-store.js';
import { BlockStore } from '../storage/block-store.js';
import { DirBackend } from '../storage/dir-backend.js';
import { exportVersion } from './metadata-io.js';
import { scrub } from './scrub.js';

const BS = 4096;
const BLOCKS = 3000;

describe('readers of a version removed under them', () => {
  let dir: string;
  let meta: MetaStore;
  let store: BlockStore;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-removal-'));
    meta = await MetaStore.open(`sqlite:///${join(dir, 'backy.sqlite')}`);
    store = new BlockStore(new DirBackend(join(dir, 'data')), {
      hashFunction: meta.hashFunction,
      compression: { codec: 'none' },
    });
  });
  after(async () => {
    await meta?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A valid version of BLOCKS sparse blocks: nothing to read but its block list. */
  async function sparseVersion(): Promise<Version> {
    const v = await meta.createVersion({ name: 'sparse', sizeBytes: BLOCKS * BS, blockSize: BS });
    await meta.putBlocks(
      v.uid,
      Array.from({ length: BLOCKS }, (_, idx) => ({ idx, checksum: null, size: BS, valid: true })),
    );
    assert.equal(await meta.completeVersion(v.uid), undefined);
    return { ...v, status: 'valid' };
  }

  it('scrub fails with VersionRemovedError and marks nothing', async () => {
    const v = await sparseVersion();
    let removal: Promise<void> | undefined;
    const progress = {
      start() {},
      advance() {
        removal ??= meta.removeVersion(v.uid);
      },
      stop() {},
    };
    await assert.rejects(
      scrub({ meta, store, version: v, percent: 100, progress }),
      (err: unknown) =>
        err instanceof VersionRemovedError &&
        err.message === `version ${v.uid} was removed while being scrubbed`,
    );
    await removal;
    assert.equal(await meta.findVersion(v.uid), undefined);
    assert.deepEqual(await meta.blockPage(v.uid, 0), [], 'no block row written for the removed version');
  });

  it('export fails with VersionRemovedError, not as a version that lacks block entries', async () => {
    const v = await sparseVersion();
    let removal: Promise<void> | undefined;
    const out = new Writable({
      write(_chunk, _enc, cb) {
        removal ??= meta.removeVersion(v.uid);
        void removal.then(() => cb(), cb);
      },
    });
    await assert.rejects(
      exportVersion({ meta, uid: v.uid, out }),
      (err: unknown) =>
        err instanceof VersionRemovedError &&
        err.message === `version ${v.uid} was removed while being exported; the export is incomplete`,
    );
  });
});
