/**
 * One LVM thin pool's metadata for the thin_delta tests: device 1 (the old snapshot) maps pool
 * blocks 0-2 and 10; device 2 (the new one) shares 0-1, rewrote 2, dropped 10, added 20-21.
 * The pool's data block is 128 sectors (64 KiB). The real thin_restore makes the binary
 * metadata from it and the real thin_delta prints the delta between the two devices.
 */
import { execFileSync } from 'node:child_process';
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { missingCommands } from './tools.js';

export const thinToolsMissing = missingCommands(
  ['thin_restore', 'thin_delta'],
  'apt-get install thin-provisioning-tools',
);

export const THIN_POOL_METADATA = `<superblock uuid="" time="1" transaction="2" flags="0" version="2" data_block_size="128" nr_data_blocks="1000">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="0" length="3" time="0"/>
    <single_mapping origin_block="10" data_block="3" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="5" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="4" time="1"/>
    <single_mapping origin_block="20" data_block="5" time="1"/>
    <single_mapping origin_block="21" data_block="6" time="1"/>
  </device>
</superblock>`;

/** Writes meta.xml and, by thin_restore, the binary pool metadata meta.bin into `dir`; returns meta.bin's path. */
export async function restoreThinPool(dir: string): Promise<string> {
  await writeFile(join(dir, 'meta.xml'), THIN_POOL_METADATA);
  const bin = join(dir, 'meta.bin');
  await writeFile(bin, '');
  await truncate(bin, 8 << 20);
  execFileSync('thin_restore', ['-i', join(dir, 'meta.xml'), '-o', bin]);
  return bin;
}

/**
 * thin_delta's XML between two devices of the pool metadata `bin`: by default from device 1 to
 * device 2 (`extra`: e.g. --verbose).
 */
export function thinDelta(bin: string, o: { extra?: string[]; from?: number; to?: number } = {}): string {
  const { extra = [], from = 1, to = 2 } = o;
  return execFileSync('thin_delta', [...extra, '--snap1', String(from), '--snap2', String(to), bin], {
    encoding: 'utf8',
  });
}
