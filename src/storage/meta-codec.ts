/**
 * How a metadata copy (an export of one version, kept in the store's meta namespace) is
 * encoded: like a block object, but its name is not the hash of its content, so it has a
 * format of its own that can never pass for a block.
 *
 * Format (version 2): a 16-byte header, the payload, and (unencrypted only) a trailer.
 *   0..3   magic "BKYM"
 *   4      format version (2; 1 is still read, see below)
 *   5      compression: 0 = none, 1 = zstd (one frame; a streamed copy's frame has a checksum
 *          and no content size)
 *   6      encryption: 0 = none, 1 = AES-256-GCM
 *   7      reserved (0)
 *   8..15  plaintext length, unsigned 64-bit little endian
 * With AES-256-GCM the payload is nonce (12, random) | ciphertext | tag (16), and the
 * authenticated data is the header followed by the copy's name (ASCII): a copy moved onto
 * another version's name, or altered anywhere, fails authentication (the nonce is not in the
 * authenticated data, but a changed nonce changes the keystream and the tag: it fails too).
 * Without encryption the payload is followed by a 32-byte trailer, the SHA-256 of the header
 * and the payload: every byte of the copy is checked, whatever the compression (zstd's own
 * frame checksum is 32 bits and covers only what it decompresses; an uncompressed copy had
 * nothing). Either check runs before any byte is decompressed or parsed. (The name is not
 * hashed: an unkeyed digest would not stop a deliberate move, and a copy moved by mistake is
 * caught by recover, which checks the uid inside against the name, with a clearer message.)
 *
 * Version 1 (before the trailer): an encrypted one is authenticated exactly as above and read
 * as such; an unencrypted one carries no check over its content and is read unverified
 * (decodeMetaObject says so): refusing it would leave a store whose cleanup has not rewritten
 * its copies yet without disaster recovery. The migration to version 2 rewrites them.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { CipherGCM, Hash } from 'node:crypto';
import { Readable, pipeline } from 'node:stream';
import { CompressStream, Decompressor } from 'zstd-napi';
import type { Compression } from './codec.js';

const MAGIC = Buffer.from('BKYM');
const HEADER = 16;
const NONCE = 12;
const TAG = 16;
const TRAILER = 32;
const FORMAT = 2;
/** Far beyond any real copy (a 1 PiB image of 4 MiB blocks is ~30 GB of JSON); a header claiming more is damage. */
const MAX_PLAIN = 2 ** 40;

export interface MetaCodecSpec {
  compression: Compression;
  /** The store's encryption sub-key; absent for a plaintext store. */
  key?: Buffer;
}

/** A copy that cannot be decoded: wrong format, truncated, tampered, or another store's key. */
export class DamagedCopyError extends Error {}

/** The plaintext given to encodeMetaStream was not as long as promised (its source changed). */
export class CopyLengthError extends Error {}

/** The trailer's digest, started with the header; the payload follows. */
function trailerDigest(header: Buffer): Hash {
  return createHash('sha256').update(header);
}

function metaHeader(comp: number, enc: number, length: number): Buffer {
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header, 0);
  header[4] = FORMAT;
  header[5] = comp;
  header[6] = enc;
  header.writeBigUInt64LE(BigInt(length), 8);
  return header;
}

/**
 * Encodes a copy in the format above, streamed: memory stays a few buffers whatever the copy's
 * size. The header (authenticated before any data) holds the plaintext length, so the caller
 * says it up front (`length`: e.g. from a first, counting pass) and the stream fails with
 * CopyLengthError, before its last chunk, when `plain` turns out longer or shorter. Compressed
 * whenever the store compresses (one zstd frame without a content size; the reader handles it).
 */
export async function* encodeMetaStream(
  name: string,
  length: number,
  plain: AsyncIterable<Buffer | string>,
  spec: MetaCodecSpec,
): AsyncGenerator<Buffer> {
  const comp = spec.compression.codec !== 'none' ? 1 : 0;
  const header = metaHeader(comp, spec.key ? 1 : 0, length);
  yield header;
  let cipher: CipherGCM | undefined;
  const digest = spec.key ? undefined : trailerDigest(header);
  if (spec.key) {
    const nonce = randomBytes(NONCE);
    cipher = createCipheriv('aes-256-gcm', spec.key, nonce);
    cipher.setAAD(Buffer.concat([header, Buffer.from(name, 'ascii')]));
    yield nonce;
  }
  let seen = 0;
  async function* counted(): AsyncGenerator<Buffer> {
    for await (const c of plain) {
      const b = typeof c === 'string' ? Buffer.from(c) : c;
      seen += b.length;
      if (seen > length) throw new CopyLengthError(`the copy grew past the ${length} bytes promised`);
      yield b;
    }
  }
  const level = spec.compression.codec === 'zstd' ? spec.compression.level : 1;
  // pipeline() passes an error of the source on to the compressor, which the loop then throws.
  const body: AsyncIterable<Buffer> = comp
    ? pipeline(
        Readable.from(counted()),
        new CompressStream({ compressionLevel: level, checksumFlag: true }),
        () => {},
      )
    : counted();
  for await (const chunk of body) {
    if (cipher) yield cipher.update(chunk);
    else {
      digest!.update(chunk);
      yield chunk;
    }
  }
  if (seen !== length) throw new CopyLengthError(`the copy holds ${seen} bytes, ${length} were promised`);
  if (cipher) {
    const last = cipher.final();
    if (last.length > 0) yield last;
    yield cipher.getAuthTag();
  } else yield digest!.digest();
}

export interface DecodedCopy {
  plain: Buffer;
  /**
   * False for an unencrypted copy of format version 1, which carries no check over its
   * content (read as it is; its version's copy should be written again).
   */
  verified: boolean;
}

/** The copy's content, checked (see the format above); DamagedCopyError when it fails. */
export function decodeMetaObject(name: string, obj: Buffer, spec: MetaCodecSpec): Buffer {
  return decodeMetaCopy(name, obj, spec).plain;
}

export function decodeMetaCopy(name: string, obj: Buffer, spec: MetaCodecSpec): DecodedCopy {
  if (obj.length < HEADER || !obj.subarray(0, 4).equals(MAGIC)) {
    throw new DamagedCopyError('not a backy metadata copy (bad header)');
  }
  const format = obj[4];
  if (format !== 1 && format !== FORMAT) throw new DamagedCopyError(`unknown copy format version ${format}`);
  const comp = obj[5];
  const enc = obj[6];
  const length = Number(obj.readBigUInt64LE(8));
  if (comp > 1 || enc > 1 || obj[7] !== 0 || length > MAX_PLAIN) {
    throw new DamagedCopyError('bad header');
  }
  let body = obj.subarray(HEADER);
  let verified = enc === 1;
  if (enc === 0 && format === FORMAT) {
    if (body.length < TRAILER) throw new DamagedCopyError('truncated (no checksum trailer)');
    const payload = body.subarray(0, body.length - TRAILER);
    const want = body.subarray(body.length - TRAILER);
    const got = trailerDigest(obj.subarray(0, HEADER)).update(payload).digest();
    if (!timingSafeEqual(got, want)) {
      throw new DamagedCopyError('checksum mismatch (damaged or truncated)');
    }
    body = payload;
    verified = true;
  }
  if (enc === 1) {
    if (!spec.key) throw new DamagedCopyError('encrypted, but this store has no key configured');
    if (body.length < NONCE + TAG) throw new DamagedCopyError('truncated');
    const d = createDecipheriv('aes-256-gcm', spec.key, body.subarray(0, NONCE));
    d.setAAD(Buffer.concat([obj.subarray(0, HEADER), Buffer.from(name, 'ascii')]));
    d.setAuthTag(body.subarray(body.length - TAG));
    try {
      body = Buffer.concat([d.update(body.subarray(NONCE, body.length - TAG)), d.final()]);
    } catch {
      throw new DamagedCopyError('authentication failed (tampered, truncated, moved, or another key)');
    }
  } else if (spec.key) {
    // An encrypted store writes encrypted copies only: a plaintext one was put there by someone else.
    throw new DamagedCopyError('not encrypted, but this store is');
  }
  let plain: Buffer;
  if (comp === 1) {
    try {
      // A decompressor of its own: a streamed copy's frame has no content size, so it is
      // decoded as a stream, and a damaged one would leave a shared decompressor mid-frame
      // (every later copy would then fail to decode).
      plain = new Decompressor().decompress(body);
    } catch {
      throw new DamagedCopyError('cannot be decompressed (truncated or damaged)');
    }
  } else plain = body;
  if (plain.length !== length) {
    throw new DamagedCopyError(`holds ${plain.length} bytes, its header says ${length} (truncated?)`);
  }
  return { plain, verified };
}
