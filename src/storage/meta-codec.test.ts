import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeMetaObject, encodeMetaObject } from './meta-codec.js';
import type { MetaCodecSpec } from './meta-codec.js';

describe('metadata copy codec', () => {
  const plain = Buffer.from('{"uid":"x","blocks":[]}\n'.repeat(2000));
  for (const [spec, comp] of [
    [{ compression: { codec: 'none' } }, 0],
    [{ compression: { codec: 'zstd', level: 3 } }, 1],
    // Block objects have an LZ4 codec; copies have none of their own and use zstd.
    [{ compression: { codec: 'lz4' } }, 1],
  ] as [MetaCodecSpec, number][]) {
    it(`round-trips with compression ${spec.compression.codec} (copy codec ${comp})`, () => {
      const obj = encodeMetaObject('v1', plain, spec);
      assert.equal(obj[5], comp);
      if (comp) assert.ok(obj.length < plain.length / 10);
      assert.deepEqual(decodeMetaObject('v1', obj, spec), plain);
    });
  }
});
