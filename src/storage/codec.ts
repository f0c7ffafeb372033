/**
 * The object format: how a block's plaintext becomes the bytes stored under its name, and back.
 *
 * Object format (version 1): a 16-byte header, then the payload.
 *   0..3   magic "BKYO"
 *   4      format version (1)
 *   5      compression codec: 0 = none, 1 = zstd (one frame, content size in the frame),
 *          2 = LZ4 (one block in LZ4's block format, no frame: the length is in this header)
 *   6      encryption codec: 0 = none, 1 = AES-256-GCM
 *   7      reserved (0)
 *   8..15  plaintext length, unsigned 64-bit little endian
 * Payload without encryption: the (compressed or raw) bytes. With AES-256-GCM:
 *   nonce (12 bytes, random per object) | ciphertext of the (compressed or raw) bytes | tag (16)
 * and the authenticated data is the 16 header bytes followed by the object's name (its 64 hex
 * characters, ASCII): a flipped header bit, a changed codec id or length, or an object copied
 * onto another name fails authentication.
 *
 * Codec ids are read per object, so a store holds objects of mixed codecs (written before
 * compression was turned on, or at another level) and reads them all without a migration.
 * Compression is decided per block: the block is compressed into a buffer 1/32 smaller than
 * the block, and the compressed form is kept only if it fits (zstd gives up early on random
 * data, ~2 ms per 4 MiB here), so an incompressible block costs no decompression on read and
 * no extra byte.
 *
 * Names: without encryption an object's name is the store's hash of the plaintext (BLAKE3 or
 * SHA-256). With encryption it is HMAC-SHA256(naming key, hash(plaintext)): a keyed hash, so
 * nobody without the key can confirm a guessed block by its name, and two stores with different
 * keys share no names. The binding (@napi-rs/blake-hash) has no BLAKE3 keyed mode; hashing
 * first keeps BLAKE3's speed, and the construction is as strong as the hash's collision
 * resistance and HMAC's pseudo-randomness. Every read recomputes the name from the decoded
 * plaintext: that, plus the GCM tag, is what verification means.
 *
 * Not hidden by encryption: the plaintext length (every block but an image's last is the block
 * size) and the compressed size (how compressible a block is).
 *
 * The codec is plain JavaScript source (CODEC_SOURCE), evaluated once on the main thread and
 * once in each CodecPool worker: one implementation for both, no file to locate beside the
 * bundled CLI, no TypeScript loader in the workers.
 *
 * Memory: nothing of a block's size is allocated per block. An object is encoded in place
 * around its block when the caller gives the block up (ENCODE_ROOM bytes before and after it
 * are then overwritten too); an encrypted object is decrypted in place when the caller lets
 * the plaintext be written over it; otherwise two reused scratch buffers of a block each hold
 * the compressed or decrypted bytes. node:crypto's ciphers return a new buffer per call, which
 * V8 frees only once tens of MB of such garbage have piled up (external memory does not
 * trigger a young-generation collection): the codec feeds them CRYPT_PIECE bytes at a time
 * and frees each output as soon as it is copied (see release), so one piece is all it holds.
 */
import { createRequire } from 'node:module';
import type { HashFunction } from '../config/config.js';

export const HEADER_SIZE = 16;
/** Bytes an object may hold beyond its plaintext: header, GCM nonce and tag. */
export const MAX_OBJECT_OVERHEAD = HEADER_SIZE + 12 + 16;

/** A buffer able to hold any object of a block of `blockSize` bytes (for BufferPools and getInto). */
export function objectBufferSize(blockSize: number): number {
  return blockSize + MAX_OBJECT_OVERHEAD;
}

/**
 * Room an object encoded in place needs around its block: header and nonce before it, tag
 * after it (see Codec.encode). A BufferPool with this room holds blocks that encode in place.
 */
export const ENCODE_ROOM = { before: HEADER_SIZE + 12, after: 16 } as const;

export type Compression = { codec: 'none' } | { codec: 'lz4' } | { codec: 'zstd'; level: number };

/**
 * LZ4: on the bench's mixed image it takes ~1/3 less CPU than zstd:1 for a store ~14% larger
 * (README, "Compression"). `zstd` alone means level 1, zstd's fastest regular level.
 */
export const DEFAULT_COMPRESSION: Compression = { codec: 'lz4' };
const ZSTD_DEFAULT_LEVEL = 1;
export const ZSTD_MIN_LEVEL = -7;
export const ZSTD_MAX_LEVEL = 19;

/** `none`, `lz4`, `zstd` or `zstd:LEVEL` -> Compression; undefined when the value is not one. */
export function parseCompression(value: string): Compression | undefined {
  if (value === 'none' || value === 'lz4') return { codec: value };
  if (value === 'zstd') return { codec: 'zstd', level: ZSTD_DEFAULT_LEVEL };
  const m = /^zstd:(-?\d{1,3})$/.exec(value);
  if (!m) return undefined;
  const level = Number(m[1]);
  if (level < ZSTD_MIN_LEVEL || level > ZSTD_MAX_LEVEL || level === 0) return undefined;
  return { codec: 'zstd', level };
}

export function formatCompression(c: Compression): string {
  return c.codec === 'zstd' ? `zstd:${c.level}` : c.codec;
}

/** Everything a codec needs; plain data, so that it can be handed to worker threads. */
export interface CodecSpec {
  hashFunction: HashFunction;
  compression: Compression;
  /** Sub-keys derived from the store's key (see keyfile.ts); absent for a plaintext store. */
  keys?: { encryption: Buffer; naming: Buffer };
}

/** What the codec source needs from outside, resolved by whoever evaluates it. */
export interface CodecModules {
  blake3Path: string;
  zstdPath: string;
  lz4Path: string;
}

export function codecModules(): CodecModules {
  const req = createRequire(import.meta.url);
  return {
    blake3Path: req.resolve('@napi-rs/blake-hash'),
    zstdPath: req.resolve('zstd-napi/binding'),
    // The native binding itself: the package's entry point would fall back to a JavaScript
    // codec (many times slower) when its build failed; a missing build must fail loudly.
    lz4Path: req.resolve('lz4/build/Release/lz4.node'),
  };
}

/**
 * A decoded object. When `shared` is true the plaintext was written into the buffer the object
 * was read into, at `offset` from the object's start (no copy back to the caller's thread).
 */
export type Decoded = { data: Uint8Array; shared: false } | { offset: number; length: number; shared: true };

/** An encoded object, as chunks to be concatenated. */
export type Encoded = Uint8Array[];

export interface Codec {
  /** Whether objects are encrypted. */
  readonly encrypted: boolean;
  /** The object name of a plaintext block: 64 hex characters. */
  name(data: Uint8Array): string;
  /**
   * The object for `data` under `name`. The data itself may be one of the chunks (no copy when
   * it is stored raw and unencrypted). With `inPlace` the caller gives up `data` and the
   * ENCODE_ROOM bytes around it: the object is written there, as one chunk, instead of into a
   * new buffer (ignored when `data` lacks that room).
   */
  encode(name: string, data: Uint8Array, inPlace?: boolean): Encoded;
  /**
   * Parses, authenticates, decompresses and verifies an object; throws an error with
   * `corrupt: true` when the object is damaged. `expectedLength` is checked before any work.
   * `room`: what the caller's buffer holds from `obj`'s start (0 for none). When it covers
   * `obj`, the object may be decrypted in place and a decoded plaintext of at most `room` bytes
   * is written over `obj`; a damaged object then leaves the buffer's content undefined.
   */
  decode(name: string, obj: Uint8Array, expectedLength: number | undefined, room: number): Decoded;
}

/**
 * CommonJS body: `makeCodec(spec, modules)` with `require` in scope. Errors meaning "this object
 * is damaged" carry `corrupt: true`; any other error is a failure of the machine (memory, a
 * missing module) and must never mark a block invalid.
 */
export const CODEC_SOURCE = String.raw`
function makeCodec(spec, modules) {
  const crypto = require('node:crypto');
  const HEADER = 16, NONCE = 12, TAG = 16;
  const MAGIC = Buffer.from('BKYO', 'latin1');
  const ZSTD = 1, LZ4 = 2, AES_GCM = 1;
  // Block sizes are at most 1 GiB (config); a hostile header must not make us allocate more.
  const MAX_PLAIN = 2 ** 30;
  let hash;
  if (spec.hashFunction === 'blake3') {
    const { blake3 } = require(modules.blake3Path);
    hash = (d) => blake3(Buffer.from(d.buffer, d.byteOffset, d.length));
  } else if (spec.hashFunction === 'sha256') {
    hash = (d) => crypto.createHash('sha256').update(d).digest();
  } else {
    throw new Error('unknown hash function ' + spec.hashFunction);
  }
  const keys = spec.keys ? { encryption: Buffer.from(spec.keys.encryption), naming: Buffer.from(spec.keys.naming) } : undefined;
  const name = keys
    ? (d) => crypto.createHmac('sha256', keys.naming).update(hash(d)).digest('hex')
    : (d) => hash(d).toString('hex');
  let zstd;
  const zstdModule = () => (zstd ??= require(modules.zstdPath));
  let lz4;
  const lz4Module = () => (lz4 ??= require(modules.lz4Path));
  let cctx, dctx;
  // Two reused buffers (compressed or decrypted payload, decompressed plaintext): no
  // allocation per block.
  const scratch = [Buffer.alloc(0), Buffer.alloc(0)];
  const scratchOf = (n, i = 0) => {
    if (scratch[i].length < n) scratch[i] = Buffer.allocUnsafeSlow(n);
    return scratch[i].subarray(0, n);
  };
  const corrupt = (msg) => Object.assign(new Error(msg), { corrupt: true });
  const asBuffer = (u) => (Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.length));

  // Posting on a closed port still transfers (detaches) what it is given, and drops the message
  // at once: the buffer's memory is freed then and there, not at V8's next full collection.
  const sink = new (require('node:worker_threads').MessageChannel)().port1;
  sink.close();
  const release = (b) => {
    const whole = b.length > 0 && b.byteOffset === 0 && b.length === b.buffer.byteLength;
    if (whole && !(b.buffer instanceof SharedArrayBuffer)) sink.postMessage(null, [b.buffer]);
  };
  const CRYPT_PIECE = 256 * 1024;
  // Runs src through a cipher or decipher into dst from offset at (dst may be src itself:
  // output never overtakes input); returns the end. Each piece's output is freed once copied.
  function crypt(c, src, dst, at) {
    for (let o = 0; o < src.length; o += CRYPT_PIECE) {
      const out = c.update(src.subarray(o, o + CRYPT_PIECE));
      at += out.copy(dst, at);
      release(out);
    }
    return at;
  }

  function header(compression, encryption, length) {
    const h = Buffer.alloc(HEADER);
    MAGIC.copy(h, 0);
    h[4] = 1;
    h[5] = compression;
    h[6] = encryption;
    h.writeBigUInt64LE(BigInt(length), 8);
    return h;
  }

  function encode(objName, dataIn, inPlace) {
    const data = asBuffer(dataIn);
    let payload = data;
    let codec = 0;
    if (spec.compression.codec === 'zstd' && data.length >= 64) {
      cctx ??= new (zstdModule().CCtx)();
      const limit = data.length - Math.max(32, data.length >> 5);
      const dst = scratchOf(limit);
      try {
        const n = cctx.compress(dst, data, spec.compression.level);
        payload = dst.subarray(0, n);
        codec = ZSTD;
      } catch (err) {
        // Did not fit: not worth keeping compressed. Anything else is a real failure.
        if (!/too small/i.test(String(err && err.message))) throw err;
      }
    } else if (spec.compression.codec === 'lz4' && data.length >= 64) {
      const limit = data.length - Math.max(32, data.length >> 5);
      const dst = scratchOf(limit);
      // 0: did not fit into the limit (LZ4 stops as soon as it knows, fast on random data).
      const n = lz4Module().compress(data, dst);
      if (n > 0) {
        payload = dst.subarray(0, n);
        codec = LZ4;
      }
    }
    const before = keys ? HEADER + NONCE : HEADER;
    const total = before + payload.length + (keys ? TAG : 0);
    const roomy = inPlace && data.byteOffset >= HEADER + NONCE && data.buffer.byteLength - data.byteOffset - data.length >= TAG;
    const h = header(codec, keys ? AES_GCM : 0, data.length);
    if (!roomy && !keys) {
      // The scratch buffer is reused: hand out a copy of the compressed bytes, in a buffer of its
      // own (never one of Buffer's shared slabs: a worker transfers it).
      return codec ? [h, new Uint8Array(payload)] : [h, data];
    }
    // In place the payload starts where the block does: a raw block is already there.
    const out = roomy ? Buffer.from(data.buffer, data.byteOffset - before, total) : Buffer.from(new ArrayBuffer(total));
    h.copy(out, 0);
    if (!keys) {
      if (codec) payload.copy(out, before);
      return [out];
    }
    const nonce = crypto.randomBytes(NONCE);
    nonce.copy(out, HEADER);
    const cipher = crypto.createCipheriv('aes-256-gcm', keys.encryption, nonce);
    cipher.setAAD(Buffer.concat([h, Buffer.from(objName, 'latin1')]));
    let at = crypt(cipher, payload, out, before);
    const last = cipher.final();
    at += last.copy(out, at);
    release(last);
    cipher.getAuthTag().copy(out, at);
    return [out];
  }

  function decode(objName, objIn, expectedLength, room) {
    const obj = Buffer.from(objIn.buffer, objIn.byteOffset, objIn.length);
    if (obj.length < HEADER) throw corrupt('object is ' + obj.length + ' bytes, shorter than its header');
    if (!obj.subarray(0, 4).equals(MAGIC)) throw corrupt('bad object header (magic)');
    if (obj[4] !== 1) throw corrupt('unknown object format version ' + obj[4]);
    const comp = obj[5], enc = obj[6];
    if ((comp !== 0 && comp !== ZSTD && comp !== LZ4) || (enc !== 0 && enc !== AES_GCM) || obj[7] !== 0) {
      throw corrupt('unknown codec (compression ' + comp + ', encryption ' + enc + ', reserved ' + obj[7] + ')');
    }
    const big = obj.readBigUInt64LE(8);
    if (big > BigInt(MAX_PLAIN)) throw corrupt('header claims ' + big + ' bytes of plaintext');
    const length = Number(big);
    if (expectedLength !== undefined && expectedLength !== null && length !== expectedLength) {
      throw corrupt('block is ' + length + ' bytes, expected ' + expectedLength);
    }
    if (keys && enc !== AES_GCM) throw corrupt('object is not encrypted, but this store encrypts every object');
    if (!keys && enc !== 0) throw corrupt('object is encrypted, but this store has no key');
    let payload = obj.subarray(HEADER);
    if (enc === AES_GCM) {
      if (payload.length < NONCE + TAG) throw corrupt('object is too short for its nonce and tag');
      const nonce = payload.subarray(0, NONCE);
      const tag = payload.subarray(payload.length - TAG);
      const decipher = crypto.createDecipheriv('aes-256-gcm', keys.encryption, nonce);
      decipher.setAAD(Buffer.concat([obj.subarray(0, HEADER), Buffer.from(objName, 'latin1')]));
      decipher.setAuthTag(tag);
      const sealed = payload.subarray(NONCE, payload.length - TAG);
      // In place when the caller's buffer may take the plaintext anyway.
      const plain = room >= obj.length ? sealed : scratchOf(sealed.length);
      let at = crypt(decipher, sealed, plain, 0);
      try {
        const last = decipher.final();
        at += last.copy(plain, at);
        release(last);
      } catch {
        throw corrupt('authentication failed (the object was altered, truncated or copied from another name)');
      }
      payload = plain.subarray(0, at);
    }
    let data = payload;
    if (comp === ZSTD) {
      dctx ??= new (zstdModule().DCtx)();
      const out = scratchOf(length, 1);
      let n;
      try {
        n = dctx.decompress(out, payload);
      } catch (err) {
        throw corrupt('cannot decompress: ' + String(err && err.message));
      }
      if (n !== length) throw corrupt('decompressed to ' + n + ' bytes, header says ' + length);
      data = out.subarray(0, n);
    } else if (comp === LZ4) {
      const out = scratchOf(length, 1);
      // LZ4_decompress_safe never reads or writes outside its buffers, whatever the input, and
      // returns a negative number for malformed input.
      const n = length === 0 ? 0 : lz4Module().uncompress(payload, out);
      if (n !== length) throw corrupt(n < 0 ? 'cannot decompress (LZ4)' : 'decompressed to ' + n + ' bytes, header says ' + length);
      data = out.subarray(0, n);
    } else if (payload.length !== length) {
      throw corrupt('object holds ' + payload.length + ' bytes, header says ' + length);
    }
    const actual = name(data);
    if (actual !== objName) throw corrupt('checksum mismatch (content hashes to ' + actual.slice(0, 16) + '…)');
    if (data.buffer === obj.buffer && data.byteOffset >= obj.byteOffset) {
      return { shared: true, offset: data.byteOffset - obj.byteOffset, length: data.length };
    }
    if (data.length <= room) {
      Buffer.from(obj.buffer, obj.byteOffset, data.length).set(data);
      return { shared: true, offset: 0, length: data.length };
    }
    return { shared: false, data: new Uint8Array(data) };
  }

  return { name, encode, decode, encrypted: !!keys };
}
`;

type MakeCodec = (spec: CodecSpec, modules: CodecModules) => Codec;

/** The codec on the calling thread. */
export function makeCodec(spec: CodecSpec, modules: CodecModules = codecModules()): Codec {
  const factory = new Function('require', `${CODEC_SOURCE}\nreturn makeCodec;`) as (
    req: NodeJS.Require,
  ) => MakeCodec;
  return factory(createRequire(import.meta.url))(spec, modules);
}
