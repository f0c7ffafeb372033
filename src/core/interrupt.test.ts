/**
 * Cancellation of the core pipelines through an AbortSignal (what SIGINT does in the CLI), on a
 * real SQLite MetaStore and a real DirBackend. The signal is aborted from the progress
 * reporter after a fixed number of blocks, so the moment is exact. test/e2e/signals.test.ts
 * sends real signals to the CLI.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import SQLite from 'better-sqlite3';
import { InterruptedError } from '../errors.js';
import { MetaStore } from '../meta/meta-store.js';
import type { Version } from '../meta/meta-store.js';
import { openSource } from '../source/source.js';
import { BlockStore } from '../storage/block-store.js';
import { DirBackend } from '../storage/dir-backend.js';
import { backup } from './backup.js';
import { cleanup } from './cleanup.js';
import type { ProgressReporter } from './progress.js';
import { scrub } from './scrub.js';

const BS = 4096;
const BLOCKS = 64;

/** A reporter that aborts `ac` once `after` advances were reported. */
function abortAfter(ac: AbortController, after: number): ProgressReporter {
  let n = 0;
  return {
    start() {},
    advance() {
      if (++n === after) ac.abort(new InterruptedError('SIGINT'));
    },
    stop() {},
  };
}

describe('interrupting the core pipelines', () => {
  let dir: string;
  let meta: MetaStore;
  let backend: DirBackend;
  let store: BlockStore;
  let image: string;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-interrupt-'));
    meta = await MetaStore.open(`sqlite:///${join(dir, 'db.sqlite')}`);
    backend = new DirBackend(join(dir, 'data'));
    store = new BlockStore(backend, { hashFunction: meta.hashFunction, compression: { codec: 'none' } });
    image = join(dir, 'a.img');
    const data = Buffer.alloc(BLOCKS * BS);
    for (let i = 0; i < data.length; i += 8) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    await writeFile(image, data);
  });
  after(async () => {
    await meta.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function backupOf(name: string, signal?: AbortSignal, progress?: ProgressReporter) {
    const source = await openSource(image);
    let created: Version | undefined;
    try {
      const r = await backup({
        meta,
        store,
        source,
        name,
        blockSize: BS,
        hintCheckBlocks: 0,
        signal,
        progress,
        onVersion: (v) => (created = v),
      });
      return { version: r.version, created };
    } catch (err) {
      return { err, created };
    } finally {
      await source.close();
    }
  }

  it('a backup stops with the reason; its version stays incomplete, its lease released', async () => {
    const ac = new AbortController();
    const r = await backupOf('cut', ac.signal, abortAfter(ac, 10));
    assert.ok(r.err instanceof InterruptedError, String(r.err));
    assert.ok(r.created);
    assert.equal((await meta.getVersion(r.created.uid)).status, 'incomplete');
    assert.deepEqual(await meta.leases(), []);
    for await (const row of meta.blocks(r.created.uid)) {
      if (row.checksum !== null) assert.ok(await backend.stat(row.checksum), 'no row names a missing object');
    }
    await meta.removeVersion(r.created.uid);
  });

  it('an interrupted full scrub does not make an invalid version valid again', async () => {
    const { version } = await backupOf('scrubbed');
    assert.ok(version);
    const some = (await meta.blocksAt(version.uid, [3])).get(3)!.checksum!;
    await meta.markObjectInvalid(some); // recorded damage; the file is sound
    const v = await meta.getVersion(version.uid);
    assert.equal(v.status, 'invalid');
    const ac = new AbortController();
    await assert.rejects(
      scrub({ meta, store, version: v, percent: 100, signal: ac.signal, progress: abortAfter(ac, 5) }),
      InterruptedError,
    );
    assert.equal((await meta.getVersion(version.uid)).status, 'invalid', 'a partial scrub proves nothing');
    // Uninterrupted, the same scrub revalidates it (so the check above can fail).
    const full = await scrub({ meta, store, version: v, percent: 100 });
    assert.equal(full.revalidated, true);
    await meta.removeVersion(version.uid);
  });

  it('an interrupted cleanup stops between steps; every recorded object keeps its file', async () => {
    const ac = new AbortController();
    await assert.rejects(
      cleanup({ meta, backend, dryRun: false, signal: ac.signal, progress: abortAfter(ac, 1) }),
      InterruptedError,
    );
    const db = new SQLite(join(dir, 'db.sqlite'), { readonly: true });
    const recorded = db.prepare('SELECT checksum FROM objects').all() as { checksum: string }[];
    db.close();
    for (const o of recorded)
      assert.ok(await backend.stat(o.checksum), 'every recorded object keeps its file');
    // Run again, it finishes the job.
    const again = await cleanup({ meta, backend, dryRun: false });
    assert.equal(again.versionsRemoved.length, 0);
    assert.equal((await meta.objectStats()).count, 0);
  });
});
