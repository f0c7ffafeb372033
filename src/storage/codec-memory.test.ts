/**
 * The codec allocates nothing of a block's size per block (see codec.ts, "Memory"): objects
 * are encoded in place around a block given up for it, decrypted in place in the caller's
 * buffer, and node:crypto's per-call output is freed as soon as it is copied. Checked through
 * process.memoryUsage().arrayBuffers (the bytes of every live ArrayBuffer backing store,
 * garbage not yet collected included), which moves by exact byte counts, not by timing.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CodecPool } from '../util/codec-pool.js';
import { BufferPool } from '../util/buffer-pool.js';
import { randomBytesSeeded, textBytesSeeded } from '../../test/lib/image.js';
import { ENCODE_ROOM, makeCodec, objectBufferSize } from './codec.js';
import type { CodecSpec, Compression } from './codec.js';
import { deriveKeys } from './keyfile.js';

const BLOCK = 1 << 20;
const keys = deriveKeys(Buffer.alloc(32, 7));
const specs: [string, CodecSpec][] = [];
for (const compression of [
  { codec: 'none' },
  { codec: 'zstd', level: 1 },
  { codec: 'lz4' },
] as Compression[]) {
  for (const encrypted of [false, true]) {
    specs.push([
      `${compression.codec}${encrypted ? '+aes' : ''}`,
      {
        hashFunction: 'blake3',
        compression,
        keys: encrypted ? { encryption: keys.encryption, naming: keys.naming } : undefined,
      },
    ]);
  }
}
/** An incompressible and a compressible block: both of the encoder's paths. */
const contents = [randomBytesSeeded('codec-memory', BLOCK), textBytesSeeded('codec-memory', BLOCK)];

/** Runs `fn` 8 times after a first warm-up round; the bytes ArrayBuffers grew by, in all. */
async function growth(fn: (i: number) => Promise<void>): Promise<number> {
  // The first rounds allocate the codec's scratch buffers, once.
  await fn(0);
  await fn(1);
  let grown = 0;
  for (let i = 0; i < 8; i++) {
    const before = process.memoryUsage().arrayBuffers;
    await fn(i);
    // A collection in between can only lower the count.
    grown += Math.max(0, process.memoryUsage().arrayBuffers - before);
  }
  return grown;
}

describe('codec memory', () => {
  for (const [label, spec] of specs) {
    it(`${label}: decoding into the caller's buffer leaves no block-sized garbage`, async () => {
      const codec = makeCodec(spec);
      const objects = contents.map((c) => {
        const name = codec.name(c);
        return { name, obj: Buffer.concat(codec.encode(name, c).map((x) => Buffer.from(x))) };
      });
      const into = Buffer.from(new SharedArrayBuffer(objectBufferSize(BLOCK)));
      const grown = await growth(async (i) => {
        const { name, obj } = objects[i % 2];
        obj.copy(into);
        const d = codec.decode(name, into.subarray(0, obj.length), BLOCK, into.length);
        assert.ok(d.shared, "plaintext in the caller's buffer");
        assert.ok(into.subarray(d.offset, d.offset + d.length).equals(contents[i % 2]));
      });
      // A buffer per block (node:crypto's output, kept until a full collection) would be 8 MiB.
      assert.ok(grown < BLOCK / 4, `ArrayBuffers grew by ${grown} bytes over 8 blocks`);
    });

    it(`${label}: encodes in place, in the block's own buffer, leaving no block-sized garbage`, async () => {
      const codec = makeCodec(spec);
      const blocks = new BufferPool(1, BLOCK, ENCODE_ROOM);
      const into = Buffer.from(new SharedArrayBuffer(objectBufferSize(BLOCK)));
      const grown = await growth(async (i) => {
        await blocks.with(async (block) => {
          contents[i % 2].copy(block);
          const name = codec.name(block);
          const chunks = codec.encode(name, block, true);
          assert.equal(chunks.length, 1, 'one chunk: the object in place');
          assert.equal(chunks[0].buffer, block.buffer, "written in the block's own buffer");
          into.set(chunks[0]);
          const d = codec.decode(name, into.subarray(0, chunks[0].length), BLOCK, into.length);
          assert.ok(d.shared && into.subarray(d.offset, d.offset + d.length).equals(contents[i % 2]));
        });
      });
      assert.ok(grown < BLOCK / 4, `ArrayBuffers grew by ${grown} bytes over 8 blocks`);
    });
  }

  it('the worker pool encodes a block given up for it in its own shared buffer', async () => {
    for (const [label, spec] of specs) {
      const pool = new CodecPool(spec, 1);
      try {
        const blocks = new BufferPool(1, BLOCK, ENCODE_ROOM);
        for (const content of contents) {
          const block = await blocks.acquire();
          content.copy(block);
          const name = await pool.hash(block);
          const chunks = await pool.encode(name, block, true);
          assert.equal(chunks.length, 1, label);
          assert.equal(chunks[0].buffer, block.buffer, `${label}: in the block's buffer, not a new one`);
          const obj = Buffer.from(chunks[0]);
          const d = makeCodec(spec).decode(name, obj, BLOCK, 0);
          assert.ok(
            Buffer.from(d.shared ? obj.subarray(d.offset, d.offset + d.length) : d.data).equals(content),
          );
          blocks.release(block);
        }
      } finally {
        await pool.close();
      }
    }
  });
});
