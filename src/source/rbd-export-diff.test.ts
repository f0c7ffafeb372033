import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InputError } from '../errors.js';
import { ExportDiffReader, encodeExportDiff } from './rbd-export-diff.js';
import type { ExportDiffHeader, ExportDiffPiece } from './rbd-export-diff.js';

/** Feeds `buf` in pieces of the given sizes (cycled), to cross every record boundary. */
async function* chunked(buf: Buffer, sizes: number[] = [buf.length || 1]): AsyncGenerator<Buffer> {
  let pos = 0;
  for (let i = 0; pos < buf.length; i++) {
    const n = sizes[i % sizes.length];
    yield buf.subarray(pos, pos + n);
    pos += n;
  }
}

async function parse(
  buf: Buffer,
  opts: { pieceSize?: number; sizes?: number[] } = {},
): Promise<{ header: ExportDiffHeader; pieces: ExportDiffPiece[] }> {
  const r = await ExportDiffReader.open(chunked(buf, opts.sizes), {
    name: 'test stream',
    pieceSize: opts.pieceSize ?? 1024,
  });
  const pieces: ExportDiffPiece[] = [];
  for await (const p of r.pieces()) pieces.push({ ...p, data: p.data && Buffer.from(p.data) });
  return { header: r.header, pieces };
}

async function rejects(buf: Buffer, pattern: RegExp, pieceSize = 1024): Promise<void> {
  await assert.rejects(parse(buf, { pieceSize }), (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  });
}

const data = (n: number, seed: number) =>
  Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff));

describe('rbd export-diff parser', () => {
  for (const format of [1, 2] as const) {
    test(`v${format}: metadata, data split at block boundaries, zeros`, async () => {
      const w1 = data(3000, 1);
      const stream = encodeExportDiff(format, [
        { tag: 'f', name: 'backup1' },
        { tag: 't', name: 'backup2' },
        ...(format === 2 ? [{ tag: 'p' as const, status: 0 }] : []),
        { tag: 's', size: 10_000 },
        { tag: 'w', offset: 500, data: w1 },
        { tag: 'z', offset: 4096, length: 2048 },
        { tag: 'w', offset: 9000, data: data(1000, 2) },
        { tag: 'e' },
      ]);
      for (const sizes of [[stream.length], [1], [3, 7, 1000]]) {
        const { header, pieces } = await parse(stream, { sizes });
        assert.deepEqual(header, { format, fromSnap: 'backup1', toSnap: 'backup2', size: 10_000 });
        assert.deepEqual(
          pieces.map((p) => [p.offset, p.length, p.data ? 'w' : 'z']),
          [
            [500, 524, 'w'],
            [1024, 1024, 'w'],
            [2048, 1024, 'w'],
            [3072, 428, 'w'],
            [4096, 1024, 'z'],
            [5120, 1024, 'z'],
            [9000, 216, 'w'],
            [9216, 784, 'w'],
          ],
        );
        assert.deepEqual(Buffer.concat(pieces.slice(0, 4).map((p) => p.data!)), w1);
      }
    });
  }

  test('a full diff: no from-snap, no to-snap, no records', async () => {
    const { header, pieces } = await parse(encodeExportDiff(1, [{ tag: 's', size: 0 }, { tag: 'e' }]));
    assert.deepEqual(header, { format: 1, fromSnap: undefined, toSnap: undefined, size: 0 });
    assert.deepEqual(pieces, []);
  });

  test('every truncation of a valid stream is an error naming truncation', async () => {
    const stream = encodeExportDiff(2, [
      { tag: 'f', name: 'a' },
      { tag: 't', name: 'b' },
      { tag: 's', size: 4096 },
      { tag: 'w', offset: 0, data: data(100, 3) },
      { tag: 'z', offset: 200, length: 100 },
      { tag: 'e' },
    ]);
    for (let len = 0; len < stream.length; len++) {
      await rejects(stream.subarray(0, len), len === 0 ? /empty/ : /truncated|too short/);
    }
  });

  const bad: [string, Buffer, RegExp][] = [
    ['wrong header', Buffer.from('rbd diff v3\nse'), /not an rbd export-diff stream/],
    ['an export image', Buffer.from('rbd image v2\nxxxxxx'), /rbd export --export-format 2/],
    [
      'unknown tag',
      encodeExportDiff(1, [{ tag: 's', size: 10 }, { tag: 'e' }]).fill(0x51, 12, 13),
      /unknown record tag 'Q'/,
    ],
    [
      'no size',
      encodeExportDiff(1, [{ tag: 'w', offset: 0, data: data(1, 0) }, { tag: 'e' }]),
      /before the image size/,
    ],
    [
      'size twice',
      encodeExportDiff(1, [{ tag: 's', size: 10 }, { tag: 's', size: 10 }, { tag: 'e' }]),
      /'s' at byte 21 appears twice/,
    ],
    [
      'data past the end',
      encodeExportDiff(1, [{ tag: 's', size: 10 }, { tag: 'w', offset: 5, data: data(6, 0) }, { tag: 'e' }]),
      /covers 5\+6, past the end of the image \(10 bytes\)/,
    ],
    [
      'zeros past the end',
      encodeExportDiff(2, [{ tag: 's', size: 10 }, { tag: 'z', offset: 10, length: 1 }, { tag: 'e' }]),
      /past the end/,
    ],
    [
      'records out of order',
      encodeExportDiff(1, [
        { tag: 's', size: 100 },
        { tag: 'w', offset: 50, data: data(10, 0) },
        { tag: 'z', offset: 0, length: 10 },
        { tag: 'e' },
      ]),
      /increasing offset order/,
    ],
    [
      'overlapping records',
      encodeExportDiff(1, [
        { tag: 's', size: 100 },
        { tag: 'w', offset: 0, data: data(10, 0) },
        { tag: 'w', offset: 9, data: data(10, 0) },
        { tag: 'e' },
      ]),
      /overlaps/,
    ],
    [
      'metadata after data',
      encodeExportDiff(1, [
        { tag: 's', size: 100 },
        { tag: 'z', offset: 0, length: 10 },
        { tag: 't', name: 'x' },
        { tag: 'e' },
      ]),
      /metadata record 't' .* after data records/,
    ],
    [
      'trailing bytes after the end',
      Buffer.concat([encodeExportDiff(1, [{ tag: 's', size: 1 }, { tag: 'e' }]), Buffer.from('x')]),
      /after the end record/,
    ],
    [
      'v2 record length that does not match',
      (() => {
        const b = encodeExportDiff(2, [
          { tag: 's', size: 100 },
          { tag: 'z', offset: 0, length: 10 },
          { tag: 'e' },
        ]);
        b.writeBigUInt64LE(17n, 'rbd diff v2\n'.length + 17 + 1);
        return b;
      })(),
      /record 'z' at byte 29 has length 17, expected 16/,
    ],
    [
      'a huge snapshot name length',
      Buffer.concat([Buffer.from('rbd diff v1\nf'), Buffer.from([0xff, 0xff, 0xff, 0x7f])]),
      /snapshot name at byte 12 is 2147483647 bytes long/,
    ],
    [
      'a 64-bit size beyond 2^53',
      Buffer.concat([
        Buffer.from('rbd diff v1\ns'),
        Buffer.from([0, 0, 0, 0, 0, 0, 0, 0x80]),
        Buffer.from('e'),
      ]),
      /image size at byte 13 is too large/,
    ],
  ];
  for (const [what, buf, pattern] of bad) {
    test(`rejects ${what}`, () => rejects(buf, pattern));
  }
});
