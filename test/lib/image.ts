/**
 * Deterministic test and benchmark images. Random-looking data comes from AES-128-CTR over
 * zeros with a key derived from a seed: fast (GB/s), incompressible and reproducible.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

export function randomBytesSeeded(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()]);
}

/** Text-like, compressible data: words from a small vocabulary, seeded. */
export function textBytesSeeded(seed: string, length: number): Buffer {
  const words = [
    'backup',
    'block',
    'volume',
    'snapshot',
    'kernel',
    'inode',
    'journal',
    'extent',
    'ceph',
    'image',
    'qemu',
    'the',
    'of',
    'and',
  ];
  const rnd = randomBytesSeeded(seed, Math.ceil(length / 4) + 16);
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < length; i++) {
    const w = words[rnd[i % rnd.length] % words.length] + (rnd[(i + 1) % rnd.length] % 13 === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, length);
}

export type BlockKind = 'zero' | 'random' | 'text' | 'dup';

/**
 * Writes an image of `blocks` blocks of `blockSize` bytes (plus an optional short tail) whose
 * block i has kind `kinds(i)`. 'dup' blocks repeat one fixed random block. Zero blocks are
 * left as holes. Streams: memory is one block.
 */
export async function writeImage(
  path: string,
  opts: { blocks: number; blockSize: number; tail?: number; seed?: string; kinds: (i: number) => BlockKind },
): Promise<void> {
  const seed = opts.seed ?? 'backy';
  const fh = await open(path, 'w', 0o644);
  try {
    const dup = randomBytesSeeded(`${seed}/dup`, opts.blockSize);
    const total = opts.blocks + (opts.tail ? 1 : 0);
    for (let i = 0; i < total; i++) {
      const len = i < opts.blocks ? opts.blockSize : opts.tail!;
      const kind = opts.kinds(i);
      let data: Buffer | undefined;
      if (kind === 'random') data = randomBytesSeeded(`${seed}/${i}`, len);
      else if (kind === 'text') data = textBytesSeeded(`${seed}/${i}`, len);
      else if (kind === 'dup') data = dup.subarray(0, len);
      if (data) await fh.write(data, 0, len, i * opts.blockSize);
    }
    await fh.truncate(opts.blocks * opts.blockSize + (opts.tail ?? 0));
  } finally {
    await fh.close();
  }
}

/** The benchmark's mix: 30% zeros, 30% random, 25% text-like, 15% duplicates. */
export function mixedKind(i: number): BlockKind {
  const r = (Math.imul(i + 1, 2654435761) >>> 0) % 100;
  if (r < 30) return 'zero';
  if (r < 60) return 'random';
  if (r < 85) return 'text';
  return 'dup';
}

/** Overwrites `length` bytes at `offset` with seeded random data. */
export async function scribble(path: string, offset: number, length: number, seed: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(randomBytesSeeded(seed, length), 0, length, offset);
  } finally {
    await fh.close();
  }
}
