import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { restoreThinPool, thinDelta, thinToolsMissing } from '../../test/lib/thin-pool.js';
import { InputError } from '../errors.js';
import { parseThinDelta } from './thin-delta.js';
import type { HintExtent } from './rbd-diff.js';

async function parse(text: string, pieces = 1): Promise<HintExtent[]> {
  const step = Math.ceil(text.length / pieces);
  const chunks = Array.from({ length: pieces }, (_, i) => Buffer.from(text.slice(i * step, (i + 1) * step)));
  const out: HintExtent[] = [];
  for await (const h of parseThinDelta(chunks, 'thin delta file d.xml')) out.push(h);
  return out;
}

const KiB64 = 128 * 512;
const plain = `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same begin="0" length="2"/>
    <different begin="2" length="1"/>
    <left_only begin="10" length="1"/>
    <right_only begin="20" length="2"/>
  </diff>
</superblock>
`;
const expected: HintExtent[] = [
  { offset: 2 * KiB64, length: KiB64, exists: true },
  { offset: 10 * KiB64, length: KiB64, exists: false },
  { offset: 20 * KiB64, length: 2 * KiB64, exists: true },
];

describe('parseThinDelta', () => {
  it('reads the plain form, whatever the chunking', async () => {
    for (const pieces of [1, 2, 7, plain.length]) assert.deepEqual(await parse(plain, pieces), expected);
  });

  it('reads the --verbose form', async () => {
    const verbose = `<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same>
      <range begin="0" data_begin="0" length="2"/>
    </same>
    <different>
      <range begin="2" left_data_begin="2" right_data_begin="4" length="1"/>
    </different>
    <left_only>
      <range begin="10" data_begin="3" length="1"/>
    </left_only>
    <right_only>
      <range begin="20" data_begin="5" length="2"/>
    </right_only>
  </diff>
</superblock>`;
    assert.deepEqual(await parse(verbose, 3), expected);
  });

  const bad: [string, string, RegExp][] = [
    ['empty', '', /empty/],
    ['not XML', 'hello', /not valid/],
    ['truncated', plain.slice(0, 150), /not valid/],
    ['no diff', '<superblock data_block_size="128"></superblock>', /no <diff>/],
    ['zero block size', '<superblock data_block_size="0"><diff/></superblock>', /data_block_size is 0/],
    ['bad number', plain.replace('begin="2"', 'begin="-2"'), /whole number begin/],
    ['missing length', plain.replace(' length="1"/>', '/>'), /whole number length/],
    ['zero length', plain.replace('begin="2" length="1"', 'begin="2" length="0"'), /length 0/],
    ['unordered', plain.replace('begin="20"', 'begin="5"'), /out of order/],
    ['unknown element', plain.replace('<same', '<sane'), /unexpected element <sane>/],
    ['two diffs', plain.replace('</diff>', '</diff><diff left="1" right="3"></diff>'), /more than one/],
    ['text', plain.replace('<same', 'x<same'), /unexpected text/],
    ['bad device id', plain.replace('left="1"', 'left="x"'), /whole number left/],
    ['left without right', plain.replace(' right="2"', ''), /whole number right/],
    ['rbd diff JSON', '[{"offset":0,"length":1,"exists":"true"}]', /not valid/],
  ];
  for (const [what, text, re] of bad) {
    it(`refuses ${what} with one line`, async () => {
      await assert.rejects(parse(text), (e: unknown) => {
        assert.ok(e instanceof InputError, String(e));
        assert.match(e.message, re);
        assert.match(e.message, /^thin delta file d\.xml /);
        assert.ok(!e.message.includes('\n'));
        return true;
      });
    });
  }
});

describe('parseThinDelta device ids', () => {
  const devices = async (text: string) => {
    const seen: { left: number; right: number }[] = [];
    for await (const e of parseThinDelta([text], 'd.xml', (d) => seen.push(d))) assert.ok(e);
    return seen;
  };
  it("gives <diff>'s left and right device ids", async () => {
    assert.deepEqual(await devices(plain), [{ left: 1, right: 2 }]);
  });
  it('a diff naming no devices (hand-made) gives none', async () => {
    assert.deepEqual(await devices(plain.replace(' left="1" right="2"', '')), []);
  });
});

describe(
  'parseThinDelta on real thin_delta output',
  {
    skip: thinToolsMissing ?? false,
  },
  () => {
    const dirs: string[] = [];
    after(async () => {
      for (const d of dirs) await rm(d, { recursive: true, force: true });
    });
    it('thin_restore + thin_delta, plain and --verbose', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'backy-thin-'));
      dirs.push(dir);
      const bin = await restoreThinPool(dir);
      for (const extra of [[], ['--verbose']]) {
        const xml = thinDelta(bin, { extra });
        assert.deepEqual(await parse(xml, 5), expected, extra.join(' '));
        const seen: { left: number; right: number }[] = [];
        for await (const e of parseThinDelta([xml], 'd.xml', (d) => seen.push(d))) assert.ok(e);
        assert.deepEqual(seen, [{ left: 1, right: 2 }]);
      }
    });
  },
);
