import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  CopyLengthError,
  DamagedCopyError,
  decodeMetaCopy,
  decodeMetaObject,
  encodeMetaStream,
} from './meta-codec.js';
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

/** A copy's export text as recover reads it: a header with a date, block lines with checksums. */
function exportText(blocks: number): Buffer {
  const lines = [
    JSON.stringify({ format: 'backy-export', version: 1, uid: 'u', date: 1796000000000000, status: 'valid' }),
  ];
  for (let i = 0; i < blocks; i++)
    lines.push(`{"idx":${i},"checksum":"${randomBytes(32).toString('hex')}","size":4194304,"valid":true}`);
  lines.push('{"end":"backy-export","blocks":' + blocks + '}');
  return Buffer.from(lines.join('\n') + '\n');
}

const KEY = randomBytes(32);
const SPECS: [string, MetaCodecSpec][] = [
  ['uncompressed plaintext', { compression: { codec: 'none' } }],
  ['zstd', { compression: { codec: 'zstd', level: 3 } }],
  ['lz4 store (zstd copy)', { compression: { codec: 'lz4' } }],
  ['encrypted', { compression: { codec: 'none' }, key: KEY }],
  ['zstd + encrypted', { compression: { codec: 'zstd', level: 1 }, key: KEY }],
];

async function encoded(name: string, plain: Buffer, spec: MetaCodecSpec): Promise<Buffer> {
  return (await collect(encodeMetaStream(name, plain.length, pieces(plain, 1000), spec))).all;
}

describe('metadata copy integrity (format 2: checksum trailer, or AES-GCM)', () => {
  const plain = exportText(300);
  for (const [what, spec] of SPECS) {
    it(`${what}: any flipped bit anywhere in the copy is refused`, async () => {
      const obj = await encoded('version-a', plain, spec);
      assert.equal(obj[4], 2);
      assert.deepEqual(decodeMetaCopy('version-a', obj, spec), { plain, verified: true });
      fc.assert(
        fc.property(fc.nat(obj.length * 8 - 1), (bit) => {
          const bad = Buffer.from(obj);
          bad[bit >> 3] ^= 1 << (bit & 7);
          assert.throws(() => decodeMetaObject('version-a', bad, spec), DamagedCopyError);
        }),
        { numRuns: 300 },
      );
    });

    it(`${what}: a flipped bit in the date or in a block checksum is refused`, async () => {
      const obj = await encoded('version-a', plain, spec);
      // Without compression or encryption the text is in the copy as it is: flip the very bits
      // a reviewer flipped (the date's leading digit; a checksum's first hex digit).
      const date = spec.key || spec.compression.codec !== 'none' ? 30 : obj.indexOf('1796');
      const sum =
        spec.key || spec.compression.codec !== 'none' ? obj.length - 40 : obj.indexOf('"checksum":"') + 12;
      for (const at of [date, sum]) {
        const bad = Buffer.from(obj);
        bad[at] ^= 0x02;
        assert.throws(() => decodeMetaObject('version-a', bad, spec), DamagedCopyError);
      }
    });

    it(`${what}: a truncated copy, or one with bytes appended, is refused (encrypted: one moved to another name too)`, async () => {
      const obj = await encoded('version-a', plain, spec);
      for (const cut of [obj.length - 1, obj.length - 32, obj.length >> 1, 17])
        assert.throws(() => decodeMetaObject('version-a', obj.subarray(0, cut), spec), DamagedCopyError);
      assert.throws(
        () => decodeMetaObject('version-a', Buffer.concat([obj, Buffer.from('x')]), spec),
        DamagedCopyError,
      );
      // Unencrypted, a moved copy is caught by recover's check of the uid inside.
      if (spec.key) assert.throws(() => decodeMetaObject('version-b', obj, spec), DamagedCopyError);
    });
  }

  it('property: every plaintext round-trips through every codec, verified', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 5000 }),
        fc.integer({ min: 1, max: 700 }),
        fc.constantFrom(...SPECS.map(([, s]) => s)),
        async (bytes, piece, spec) => {
          const p = Buffer.from(bytes);
          const obj = (await collect(encodeMetaStream('n', p.length, pieces(p, piece), spec))).all;
          const d = decodeMetaCopy('n', obj, spec);
          assert.ok(d.verified);
          assert.deepEqual(d.plain, p);
        },
      ),
      { numRuns: 100 },
    );
  });

  it('format 1 copies still decode: encrypted ones authenticated, plaintext ones marked unverified', async () => {
    const header = (enc: number, comp = 0) => {
      const h = Buffer.alloc(16);
      h.write('BKYM', 0, 'ascii');
      h[4] = 1;
      h[5] = comp;
      h[6] = enc;
      h.writeBigUInt64LE(BigInt(plain.length), 8);
      return h;
    };
    // Plaintext format 1: header and the text, nothing else.
    const plainV1 = Buffer.concat([header(0), plain]);
    assert.deepEqual(decodeMetaCopy('version-a', plainV1, { compression: { codec: 'none' } }), {
      plain,
      verified: false,
    });
    // Encrypted format 1: the same AES-GCM layout, authenticated as before.
    const nonce = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', KEY, nonce);
    const h = header(1);
    c.setAAD(Buffer.concat([h, Buffer.from('version-a', 'ascii')]));
    const encV1 = Buffer.concat([h, nonce, c.update(plain), c.final(), c.getAuthTag()]);
    const spec: MetaCodecSpec = { compression: { codec: 'none' }, key: KEY };
    assert.deepEqual(decodeMetaCopy('version-a', encV1, spec), { plain, verified: true });
    const bad = Buffer.from(encV1);
    bad[100] ^= 1;
    assert.throws(() => decodeMetaObject('version-a', bad, spec), DamagedCopyError);
    // An unknown format version is refused.
    const v3 = Buffer.from(plainV1);
    v3[4] = 3;
    assert.throws(
      () => decodeMetaObject('version-a', v3, { compression: { codec: 'none' } }),
      /format version 3/,
    );
  });
});
