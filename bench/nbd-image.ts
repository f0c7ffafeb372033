/**
 * What the NBD benchmarks share: their arguments (--size in whole GiB, --reps) and the version
 * they serve, one deterministic mixed image (test/lib/image.ts) in 4 MiB blocks, backed up once.
 */
import { parseArgs } from 'node:util';
import type { Sandbox } from '../test/lib/cli.js';
import { mixedKind, writeImage } from '../test/lib/image.js';

export const BLOCK = 4 << 20;

export interface NbdBenchArgs {
  /** --size as given, e.g. 2G. */
  sizeArg: string;
  /** In bytes. */
  size: number;
  reps: number;
}

/** Parses --size (whole GiB, default `defaultSize`) and --reps (default 3). */
export function nbdBenchArgs(defaultSize: string): NbdBenchArgs {
  const { values: args } = parseArgs({
    options: {
      size: { type: 'string', default: defaultSize },
      reps: { type: 'string', default: '3' },
    },
  });
  const size = Math.round(Number(/^(\d+)G$/i.exec(args.size)?.[1] ?? NaN) * 2 ** 30);
  if (!Number.isFinite(size)) throw new Error(`--size: whole GiB, e.g. ${defaultSize}`);
  return { sizeArg: args.size, size, reps: Number(args.reps) };
}

/** Writes the mixed image (disk.img) of `size` bytes into the sandbox and backs it up as 'bench'. */
export async function benchVersion(
  sb: Sandbox,
  { sizeArg, size }: NbdBenchArgs,
): Promise<{ image: string; uid: string }> {
  const image = sb.path('disk.img');
  console.error(`writing a ${sizeArg} image...`);
  await writeImage(image, { blocks: size / BLOCK, blockSize: BLOCK, kinds: mixedKind });
  return { image, uid: await sb.backup([image, 'bench']) };
}
