/**
 * Property tests (fast-check) for the object codec, on the main thread and through the
 * CodecPool's workers: every size, compression level and key round-trips; any change to a
 * stored object (any byte flipped, truncated, extended, renamed) is refused as corrupt, never
 * returned as data; names are keyed (two keys, two names) and stable.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { CodecPool, CorruptObject } from '../util/codec-pool.js';
import { ENCODE_ROOM, HEADER_SIZE, MAX_OBJECT_OVERHEAD, makeCodec } from './codec.js';
import type { CodecSpec, Compression, Decoded } from './codec.js';
import { deriveKeys } from './keyfile.js';

const RUNS = 60;

const compression = fc.constantFrom<Compression>(
  { codec: 'none' },
  { codec: 'lz4' },
  { codec: 'zstd', level: 1 },
  { codec: 'zstd', level: 3 },
  { codec: 'zstd', level: -3 },
);
const spec = fc.record({
  hashFunction: fc.constantFrom('blake3' as const, 'sha256' as const),
  compression,
  key: fc.option(fc.uint8Array({ minLength: 32, maxLength: 32 }), { nil: undefined }),
});
/** Random, repetitive (compressible) or mixed content, 0 bytes to 300 KiB. */
const block = fc.oneof(
  fc.uint8Array({ maxLength: 2000 }),
  fc.record({ len: fc.nat(300_000), seed: fc.nat(255) }).map(({ len, seed }) => {
    const b = Buffer.alloc(len);
    for (let i = 0; i < len; i++) b[i] = (i * 7 + seed) % 251 > 200 ? (i * seed) & 0xff : seed;
    return new Uint8Array(b);
  }),
  fc.nat(300_000).map((n) => new Uint8Array(randomBytes(n))),
);

function toSpec(s: {
  hashFunction: 'blake3' | 'sha256';
  compression: Compression;
  key?: Uint8Array;
}): CodecSpec {
  if (!s.key) return { hashFunction: s.hashFunction, compression: s.compression };
  const k = deriveKeys(Buffer.from(s.key));
  return {
    hashFunction: s.hashFunction,
    compression: s.compression,
    keys: { encryption: k.encryption, naming: k.naming },
  };
}

const joined = (chunks: Uint8Array[]) => Buffer.concat(chunks.map((c) => Buffer.from(c)));
const plainOf = (obj: Buffer, d: Decoded) =>
  d.shared ? obj.subarray(d.offset, d.offset + d.length) : Buffer.from(d.data);
const isCorrupt = (err: unknown) => (err as { corrupt?: boolean }).corrupt === true;

describe('object codec (properties)', () => {
  const pools: CodecPool[] = [];
  after(async () => Promise.all(pools.map((p) => p.close())));

  it('round-trips every size, codec and key; objects are never larger than plaintext + overhead', () => {
    fc.assert(
      fc.property(spec, block, (s, data) => {
        const codec = makeCodec(toSpec(s));
        const name = codec.name(data);
        assert.match(name, /^[0-9a-f]{64}$/);
        const obj = joined(codec.encode(name, data));
        assert.ok(obj.length <= data.length + MAX_OBJECT_OVERHEAD, `object ${obj.length} for ${data.length}`);
        assert.equal(obj.subarray(0, 4).toString('latin1'), 'BKYO');
        assert.equal(obj[6], s.key ? 1 : 0);
        assert.deepEqual(plainOf(obj, codec.decode(name, obj, data.length, 0)), Buffer.from(data));
      }),
      { numRuns: RUNS },
    );
  });

  it('encoded in place, an object decodes the same and stays inside the room around its block', async () => {
    await fc.assert(
      fc.asyncProperty(spec, block, fc.boolean(), async (s, data, viaPool) => {
        const sp = toSpec(s);
        const codec = makeCodec(sp);
        const { before, after } = ENCODE_ROOM;
        // Guard bytes on both sides of the room must survive.
        const guard = 8;
        const buf = Buffer.from(new SharedArrayBuffer(guard + before + data.length + after + guard)).fill(
          0xa5,
        );
        const block = buf.subarray(guard + before, guard + before + data.length);
        block.set(data);
        const name = codec.name(data);
        let pool: CodecPool | undefined;
        if (viaPool) pools.push((pool = new CodecPool(sp, 1)));
        const chunks = pool ? await pool.encode(name, block, true) : codec.encode(name, block, true);
        assert.equal(chunks.length, 1);
        assert.equal(chunks[0].buffer, buf.buffer);
        assert.ok(buf.subarray(0, guard).every((b) => b === 0xa5));
        assert.ok(buf.subarray(buf.length - guard).every((b) => b === 0xa5));
        const obj = Buffer.from(chunks[0]);
        assert.ok(obj.length <= data.length + MAX_OBJECT_OVERHEAD);
        assert.deepEqual(plainOf(obj, codec.decode(name, obj, data.length, 0)), Buffer.from(data));
        await pool?.close();
      }),
      { numRuns: 40 },
    );
  });

  it('any flipped byte, truncation, extension or other name is refused as corrupt', () => {
    fc.assert(
      fc.property(spec, block, fc.nat(), fc.integer({ min: 1, max: 255 }), (s, data, at, bit) => {
        const codec = makeCodec(toSpec(s));
        const name = codec.name(data);
        const obj = joined(codec.encode(name, data));
        const flipped = Buffer.from(obj);
        flipped[at % obj.length] ^= bit;
        const cut = obj.subarray(0, at % obj.length);
        const longer = Buffer.concat([obj, Buffer.from([bit])]);
        const other = codec.name(Buffer.concat([Buffer.from(data), Buffer.from([1])]));
        for (const [what, o, n] of [
          ['flipped', flipped, name],
          ['truncated', cut, name],
          ['extended', longer, name],
          ['renamed', obj, other],
        ] as const) {
          // An unencrypted LZ4 stream has no checksum of its own: a flipped match offset in
          // repetitive data can decode to the very same plaintext, which the name then accepts.
          // Never wrong data: refused as corrupt, or exactly the original.
          let decoded: Decoded | undefined;
          try {
            decoded = codec.decode(n, o, undefined, 0);
          } catch (err) {
            assert.ok(isCorrupt(err), `${what}: ${String(err)}`);
            continue;
          }
          assert.equal(what, 'flipped', `${what} was not refused`);
          assert.deepEqual(plainOf(o, decoded), Buffer.from(data), 'flipped: decoded to other data');
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('names are keyed: another key (or none) gives another name, the same key the same', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), block, (key, data) => {
        const a = toSpec({ hashFunction: 'blake3', compression: { codec: 'none' }, key });
        const b = toSpec({ hashFunction: 'blake3', compression: { codec: 'none' }, key: randomBytes(32) });
        const plain = makeCodec({ hashFunction: 'blake3', compression: { codec: 'none' } });
        const name = makeCodec(a).name(data);
        assert.equal(makeCodec(a).name(data), name);
        assert.notEqual(makeCodec(b).name(data), name);
        assert.notEqual(plain.name(data), name);
        // An object encrypted under one key is refused under another, even under its name.
        const obj = joined(makeCodec(a).encode(name, data));
        assert.throws(() => makeCodec(b).decode(name, obj, undefined, 0), isCorrupt);
        assert.throws(() => plain.decode(name, obj, undefined, 0), isCorrupt);
      }),
      { numRuns: 30 },
    );
  });

  for (const [compression, id, ratio] of [
    [{ codec: 'zstd', level: 1 }, 1, 50],
    [{ codec: 'lz4' }, 2, 50],
  ] as const) {
    it(`keeps incompressible blocks raw and compressible ones compressed (${compression.codec}, codec id ${id})`, () => {
      const codec = makeCodec({ hashFunction: 'blake3', compression });
      const rnd = randomBytes(1 << 20);
      const raw = joined(codec.encode(codec.name(rnd), rnd));
      assert.equal(raw[5], 0, 'random data is stored uncompressed');
      assert.equal(raw.length, HEADER_SIZE + rnd.length, 'and costs no extra byte');
      const text = Buffer.from('backy '.repeat(200_000));
      const small = joined(codec.encode(codec.name(text), text));
      assert.equal(small[5], id);
      assert.ok(small.length < text.length / ratio);
      assert.deepEqual(plainOf(small, codec.decode(codec.name(text), small, text.length, 0)), text);
    });
  }

  it('an LZ4 object whose payload claims more or less than the header says is corrupt', () => {
    const codec = makeCodec({ hashFunction: 'blake3', compression: { codec: 'lz4' } });
    const text = Buffer.from('backy '.repeat(20_000));
    const name = codec.name(text);
    const obj = joined(codec.encode(name, text));
    assert.equal(obj[5], 2);
    for (const length of [text.length - 1, text.length + 1]) {
      const o = Buffer.from(obj);
      o.writeBigUInt64LE(BigInt(length), 8);
      assert.throws(() => codec.decode(name, o, undefined, 0), isCorrupt, `header says ${length}`);
    }
    // Random bytes as an LZ4 payload: refused, never read past the buffers.
    const junk = Buffer.concat([obj.subarray(0, HEADER_SIZE), randomBytes(4096)]);
    assert.throws(() => codec.decode(name, junk, undefined, 0), isCorrupt);
  });

  it('the worker pool gives the same names and plaintexts, and reports damage as CorruptObject', async () => {
    await fc.assert(
      fc.asyncProperty(spec, block, fc.nat(), async (s, data, at) => {
        const sp = toSpec(s);
        const pool = new CodecPool(sp, 1);
        pools.push(pool);
        const local = makeCodec(sp);
        const shared = Buffer.from(new SharedArrayBuffer(data.length + MAX_OBJECT_OVERHEAD));
        Buffer.from(data).copy(shared);
        const view = shared.subarray(0, data.length);
        const name = await pool.hash(view);
        assert.equal(name, local.name(data));
        const obj = joined(await pool.encode(name, view));
        // Read back into a shared buffer, as restore and scrub do: decoded in place.
        obj.copy(shared);
        const d = await pool.decode(name, shared.subarray(0, obj.length), data.length, shared.length);
        assert.deepEqual(plainOf(shared, d), Buffer.from(data));
        // And from an ordinary buffer.
        assert.deepEqual(plainOf(obj, await pool.decode(name, obj, undefined, 0)), Buffer.from(data));
        const bad = Buffer.from(obj);
        bad[at % bad.length] ^= 0x40;
        await assert.rejects(
          pool.decode(name, bad, undefined, 0),
          (e: unknown) => e instanceof CorruptObject,
        );
        await pool.close();
      }),
      { numRuns: 25 },
    );
  });
});
