import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { CopyLengthError, DamagedCopyError, decodeMetaObject, encodeMetaStream } from './meta-codec.js';
import type { MetaCodecSpec } from './meta-codec.js';

async function collect(chunks: AsyncIterable<Buffer>): Promise<{ all: Buffer; largest: number }> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(c);
  return { all: Buffer.concat(parts), largest: Math.max(...parts.map((p) => p.length)) };
}

async function* pieces(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let o = 0; o < data.length; o += size) yield data.subarray(o, o + size);
}

describe('metadata copy codec', () => {
  const plain = Buffer.from('{"uid":"x","blocks":[]}\n'.repeat(2000));
  for (const [spec, comp] of [
    [{ compression: { codec: 'none' } }, 0],
    [{ compression: { codec: 'zstd', level: 3 } }, 1],
    // Block objects have an LZ4 codec; copies have none of their own and use zstd.
    [{ compression: { codec: 'lz4' } }, 1],
  ] as [MetaCodecSpec, number][]) {
    it(`round-trips with compression ${spec.compression.codec} (copy codec ${comp})`, async () => {
      const { all: obj } = await collect(encodeMetaStream('v1', plain.length, pieces(plain, 4096), spec));
      assert.equal(obj[5], comp);
      if (comp) assert.ok(obj.length < plain.length / 10);
      assert.deepEqual(decodeMetaObject('v1', obj, spec), plain);
    });
  }
});

describe('metadata copy codec, streamed', () => {
  // A big copy's worth of varied lines (random checksums compress little), in small pieces.
  const lines: string[] = [];
  for (let i = 0; i < 20_000; i++)
    lines.push(`{"idx":${i},"checksum":"${randomBytes(32).toString('hex')}","valid":true,"size":4194304}\n`);
  const plain = Buffer.from(lines.join(''));
  const key = randomBytes(32);
  for (const spec of [
    { compression: { codec: 'none' } },
    { compression: { codec: 'zstd', level: 1 } },
    { compression: { codec: 'lz4' } },
    { compression: { codec: 'none' }, key },
    { compression: { codec: 'lz4' }, key },
  ] as MetaCodecSpec[]) {
    const what = `${spec.compression.codec}${spec.key ? ' + AES-256-GCM' : ''}`;
    it(`${what}: what the one-shot decoder reads back, in pieces no bigger than a few hundred KiB`, async () => {
      const { all, largest } = await collect(
        encodeMetaStream('version-a', plain.length, pieces(plain, 65536), spec),
      );
      assert.ok(largest <= 512 << 10, `largest chunk ${largest} bytes`);
      assert.deepEqual(decodeMetaObject('version-a', all, spec), plain);
      if (spec.key) {
        // Authenticated like a one-shot copy: another name, or any flipped byte, is refused.
        assert.throws(() => decodeMetaObject('version-b', all, spec), DamagedCopyError);
        const bad = Buffer.from(all);
        bad[bad.length >> 1] ^= 1;
        assert.throws(() => decodeMetaObject('version-a', bad, spec), DamagedCopyError);
      }
    });
  }

  it('fails when the plaintext is longer or shorter than promised (the header holds the length)', async () => {
    for (const spec of [
      { compression: { codec: 'zstd', level: 1 } },
      { compression: { codec: 'none' }, key },
    ] as MetaCodecSpec[]) {
      await assert.rejects(
        collect(encodeMetaStream('v', plain.length - 1, pieces(plain, 4096), spec)),
        CopyLengthError,
      );
      await assert.rejects(
        collect(encodeMetaStream('v', plain.length + 1, pieces(plain, 4096), spec)),
        CopyLengthError,
      );
    }
  });

  it('a damaged copy does not spoil the decoding of the next one (no shared decoder state)', async () => {
    const spec: MetaCodecSpec = { compression: { codec: 'zstd', level: 1 } };
    const { all } = await collect(encodeMetaStream('v', plain.length, pieces(plain, 65536), spec));
    const truncated = all.subarray(0, all.length >> 1);
    const flipped = Buffer.from(all);
    flipped[flipped.length >> 1] ^= 0xff;
    for (const bad of [truncated, flipped]) {
      assert.throws(() => decodeMetaObject('v', bad, spec), DamagedCopyError);
      assert.deepEqual(decodeMetaObject('v', all, spec), plain);
    }
  });

  it('passes on an error of its source', async () => {
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.from('{"a":1}\n');
      throw new Error('the database went away');
    }
    await assert.rejects(
      collect(encodeMetaStream('v', 100, failing(), { compression: { codec: 'zstd', level: 1 } })),
      /the database went away/,
    );
  });
});
