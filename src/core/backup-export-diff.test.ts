/**
 * Property test of the export-diff pipeline in-process, on a real SQLite file and directory
 * store: chains of random diffs (data and zero records at any offsets and lengths, resizes
 * to sizes that are no multiple of the block size) must always reproduce the model image.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { blockCount } from '../blocks/blocks.js';
import { MetaStore } from '../meta/meta-store.js';
import { BlockStore } from '../storage/block-store.js';
import { DirBackend } from '../storage/dir-backend.js';
import { encodeExportDiff } from '../source/rbd-export-diff.js';
import { backupExportDiff } from './backup-export-diff.js';

const BS = 64;

type Rec = Parameters<typeof encodeExportDiff>[1][number];

interface Step {
  size: number;
  extents: { gap: number; length: number; zero: boolean; seed: number }[];
}

/** Records from gaps and lengths: sorted, non-overlapping, clipped to the image. */
function records(step: Step): Rec[] {
  const out: Rec[] = [];
  let pos = 0;
  for (const e of step.extents) {
    const offset = pos + e.gap;
    const length = Math.min(e.length, step.size - offset);
    if (length <= 0) break;
    if (e.zero) out.push({ tag: 'z', offset, length });
    else out.push({ tag: 'w', offset, data: Buffer.alloc(length, (e.seed % 255) + 1) });
    pos = offset + length;
  }
  return out;
}

function apply(image: Buffer, size: number, recs: Rec[]): Buffer {
  const out = Buffer.alloc(size);
  image.copy(out, 0, 0, Math.min(size, image.length));
  for (const r of recs) {
    if (r.tag === 'w') r.data.copy(out, r.offset);
    else if (r.tag === 'z') out.fill(0, r.offset, r.offset + r.length);
  }
  return out;
}

async function* pieces(buf: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

describe('backupExportDiff (property)', () => {
  let dir: string;
  let meta: MetaStore;
  let store: BlockStore;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-export-diff-'));
    meta = await MetaStore.open(`sqlite:///${join(dir, 'meta.sqlite')}`);
    store = new BlockStore(new DirBackend(join(dir, 'data')), {
      hashFunction: 'blake3',
      compression: { codec: 'none' },
    });
  });
  after(async () => {
    await meta.close();
    await rm(dir, { recursive: true, force: true });
  });

  const read = async (uid: string, size: number): Promise<Buffer> => {
    const out = Buffer.alloc(size);
    let n = 0;
    for await (const row of meta.blocks(uid)) {
      n++;
      if (row.checksum) (await store.get(row.checksum, row.size)).copy(out, row.idx * BS);
    }
    assert.equal(n, blockCount(size, BS), 'one row per block');
    return out;
  };

  const extent = fc.record({
    gap: fc.nat(150),
    length: fc.integer({ min: 1, max: 200 }),
    zero: fc.boolean(),
    seed: fc.nat(),
  });
  const step = fc.record({
    size: fc.integer({ min: 0, max: 700 }),
    extents: fc.array(extent, { maxLength: 8 }),
  });

  it('a full diff and incremental diffs reproduce the image exactly', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(step, { minLength: 1, maxLength: 4 }),
        fc.integer({ min: 1, max: 40 }),
        async (steps, chunk) => {
          let image: Buffer = Buffer.alloc(0);
          let base: string | undefined;
          for (const [i, s] of steps.entries()) {
            const recs = records(s);
            const stream = encodeExportDiff(i % 2 === 0 ? 1 : 2, [
              ...(i > 0 ? [{ tag: 'f' as const, name: `s${i - 1}` }] : []),
              { tag: 't', name: `s${i}` },
              { tag: 's', size: s.size },
              ...recs,
              { tag: 'e' },
            ]);
            image = apply(image, s.size, recs);
            const { version } = await backupExportDiff({
              meta,
              store,
              input: pieces(stream, chunk),
              inputName: 'test',
              name: 'p',
              blockSize: BS,
              baseUid: base,
            });
            assert.equal(version.status, 'valid');
            assert.equal(version.snapshotName, `s${i}`);
            assert.deepEqual(await read(version.uid, s.size), image);
            base = version.uid;
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});
