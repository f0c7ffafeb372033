/**
 * Writes a large `rbd diff --format=json` hint file (and a sparse image it fits) to measure
 * what a backup with it costs: peak RSS and time of `backup -r` with millions of extents.
 *
 *   node --import tsx bench/hint-file.ts EXTENTS DIR
 *   /usr/bin/time -v bin/backy.js -c CFG backup -r DIR/hints.json DIR/disk.img vm@hints
 *
 * One extent per 4 KiB (1000 bytes each, alternately exists true and false), as rbd prints
 * them: `{"offset":N,"length":N,"exists":"true"}`. The image is a sparse file of
 * EXTENTS * 4 KiB, so reading it costs little next to the hints.
 */
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const STRIDE = 4096;
export const EXTENT = 1000;

export async function writeHintFile(path: string, extents: number): Promise<void> {
  const out = createWriteStream(path);
  out.write('[');
  for (let i = 0; i < extents; i++) {
    const line = `${i ? ',' : ''}{"offset":${i * STRIDE},"length":${EXTENT},"exists":"${i % 2 ? 'false' : 'true'}"}`;
    if (!out.write(line)) await once(out, 'drain');
  }
  out.end(']');
  await once(out, 'finish');
}

async function main(): Promise<void> {
  const [count, dir] = process.argv.slice(2);
  const extents = Number(count);
  if (!Number.isSafeInteger(extents) || extents < 1 || !dir) {
    throw new Error('usage: node --import tsx bench/hint-file.ts EXTENTS DIR');
  }
  await writeHintFile(join(dir, 'hints.json'), extents);
  await writeFile(join(dir, 'disk.img'), '');
  await truncate(join(dir, 'disk.img'), extents * STRIDE);
}

if (import.meta.url === `file://${process.argv[1]}`) await main();
