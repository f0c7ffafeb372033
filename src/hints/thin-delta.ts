/**
 * LVM thin change hints: the XML that `thin_delta --snap1 OLD --snap2 NEW METADATA` prints
 * (thin-provisioning-tools), compared between the thin snapshot of the base backup (left) and
 * the one being backed up (right):
 *
 *   <superblock ... data_block_size="128" ...>          (sectors of 512 bytes per pool block)
 *     <diff left="1" right="2">
 *       <same begin="0" length="2"/>                    unchanged: kept from the base
 *       <different begin="2" length="1"/>               changed: read
 *       <right_only begin="20" length="2"/>             new data: read
 *       <left_only begin="10" length="1"/>              discarded: zeros now
 *     </diff>
 *   </superblock>
 *
 * With --verbose each kind holds <range begin=.. length=.. .../> elements instead; both forms
 * are read. begin and length count pool blocks. The result is the same hint extents as
 * `rbd diff` gives (offset, length, exists), in the order thin_delta prints them (ascending),
 * so they go through the same planner and the same sanity check.
 *
 * The diff's left and right are thin device ids (--snap1, --snap2): backy records right with
 * the new version and checks left against the base's (core/base-check.ts).
 *
 * Parsed as a stream (saxes): memory stays bounded whatever the number of ranges. Anything
 * unexpected (unknown elements, missing or non-integer attributes, overlapping or unordered
 * ranges, several diffs) is one InputError naming the file and what is wrong.
 */
import { StringDecoder } from 'node:string_decoder';
import { SaxesParser } from 'saxes';
import type { SaxesTagPlain } from 'saxes';
import { InputError } from '../errors.js';
import type { HintExtent } from './rbd-diff.js';

const SECTOR = 512;
const KINDS = new Set(['same', 'different', 'left_only', 'right_only']);

/** The two thin devices a delta compares: `left` (--snap1, the base's) and `right` (--snap2). */
export interface ThinDevices {
  left: number;
  right: number;
}

/**
 * `onDiff` gets the devices of `<diff left=".." right="..">` before the first extent (not
 * called when the diff names none, as hand-made files may not).
 */
export async function* parseThinDelta(
  input: AsyncIterable<Buffer | string> | Iterable<Buffer | string>,
  name: string,
  onDiff?: (devices: ThinDevices) => void,
): AsyncGenerator<HintExtent> {
  const parser = new SaxesParser({ xmlns: false, position: true });
  const out: HintExtent[] = [];
  let blockBytes = 0;
  let diffs = 0;
  let kind: string | undefined; // verbose form: the kind whose <range> elements follow
  let end = 0; // end of the last range, in pool blocks
  const stack: string[] = [];

  const fail = (what: string): never => {
    throw new InputError(`${name} is not valid thin_delta output: ${what} (line ${parser.line})`);
  };
  const int = (tag: SaxesTagPlain, attr: string): number => {
    const v = tag.attributes[attr];
    if (typeof v !== 'string' || !/^(0|[1-9][0-9]{0,15})$/.test(v)) {
      fail(`<${tag.name}> needs a whole number ${attr}= (got ${JSON.stringify(v ?? null)})`);
    }
    return Number(v);
  };
  const range = (tag: SaxesTagPlain, k: string) => {
    const begin = int(tag, 'begin');
    const length = int(tag, 'length');
    if (length === 0) fail(`<${tag.name}> at block ${begin} has length 0`);
    if (begin < end) fail(`ranges overlap or are out of order at block ${begin}`);
    end = begin + length;
    if (!Number.isSafeInteger(end * blockBytes)) fail(`range at block ${begin} is too large`);
    if (k === 'same') return;
    out.push({ offset: begin * blockBytes, length: length * blockBytes, exists: k !== 'left_only' });
  };

  parser.on('opentag', (tag) => {
    const parent = stack[stack.length - 1];
    stack.push(tag.name);
    if (tag.name === 'superblock') {
      if (parent !== undefined) fail('<superblock> inside another element');
      blockBytes = int(tag, 'data_block_size') * SECTOR;
      if (blockBytes === 0) fail('data_block_size is 0');
    } else if (tag.name === 'diff') {
      if (parent !== 'superblock') fail('<diff> outside <superblock>');
      if (++diffs > 1) fail('more than one <diff>; compare two devices at a time');
      if (tag.attributes.left !== undefined || tag.attributes.right !== undefined) {
        const devices = { left: int(tag, 'left'), right: int(tag, 'right') };
        onDiff?.(devices);
      }
    } else if (KINDS.has(tag.name)) {
      if (parent !== 'diff') fail(`<${tag.name}> outside <diff>`);
      if (tag.isSelfClosing || tag.attributes.begin !== undefined) range(tag, tag.name);
      else kind = tag.name;
    } else if (tag.name === 'range') {
      if (!parent || !KINDS.has(parent) || kind === undefined)
        fail('<range> outside same/different/left_only/right_only');
      range(tag, kind!);
    } else {
      fail(`unexpected element <${tag.name.slice(0, 40)}>`);
    }
  });
  parser.on('closetag', (tag) => {
    stack.pop();
    if (KINDS.has(tag.name)) kind = undefined;
  });
  parser.on('text', (t) => {
    if (t.trim() !== '') fail('unexpected text');
  });
  parser.on('error', (err) => {
    throw new InputError(`${name} is not valid XML: ${err.message.split('\n')[0]}`);
  });

  let bytes = 0;
  const utf8 = new StringDecoder('utf8'); // a character split between two chunks stays whole
  for await (const chunk of input) {
    parser.write(typeof chunk === 'string' ? chunk : utf8.write(chunk));
    bytes += chunk.length;
    yield* out.splice(0);
  }
  if (bytes === 0) fail('the file is empty');
  parser.write(utf8.end());
  parser.close();
  yield* out.splice(0);
  if (blockBytes === 0) fail('no <superblock>');
  if (diffs === 0) fail('no <diff>');
}
