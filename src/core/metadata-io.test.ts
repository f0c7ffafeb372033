import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { EXPORT_FORMAT, ExportParser, MAX_LINE, splitLines } from './metadata-io.js';

const UID = '0b9f1a52-3c1e-4b7a-9d55-3f8a0c2e7d11';
const SUM = 'ab'.repeat(32);
const header = {
  format: EXPORT_FORMAT,
  version: 1,
  hash_function: 'blake3',
  uid: UID,
  name: 'vm1@b1',
  snapshot_name: '',
  date: 1_700_000_000_000_000,
  size_bytes: 3 * 4096 + 100,
  block_size: 4096,
  status: 'valid',
  base_uid: null,
  protected: false,
  hostname: 'h',
};
const blocks = [
  { idx: 0, checksum: SUM, size: 4096, valid: true },
  { idx: 1, checksum: null, size: 4096, valid: true },
  { idx: 2, checksum: SUM, size: 4096, valid: false },
  { idx: 3, checksum: SUM, size: 100, valid: true },
];
const end = { end: EXPORT_FORMAT, blocks: 4 };

function parse(lines: unknown[]) {
  const p = new ExportParser('f');
  const out = lines.map((l) => p.line(typeof l === 'string' ? l : JSON.stringify(l)));
  return { out, result: p.finish() };
}

function refused(lines: unknown[], message: RegExp) {
  assert.throws(
    () => parse(lines),
    (err: unknown) => err instanceof InputError && message.test(err.message),
  );
}

describe('ExportParser', () => {
  it('accepts a well-formed file and returns header and rows', () => {
    const { out, result } = parse([header, ...blocks, end]);
    assert.equal(result.blocks, 4);
    assert.deepEqual(out[0], { header });
    assert.deepEqual(out[3], { block: blocks[2] });
    assert.equal(out[5], undefined);
  });

  it('accepts an empty image', () => {
    assert.equal(
      parse([
        { ...header, size_bytes: 0 },
        { end: EXPORT_FORMAT, blocks: 0 },
      ]).result.blocks,
      0,
    );
  });

  const table: [string, unknown[], RegExp][] = [
    ['no header', [], /is empty/],
    ['not JSON', ['{"format":'], /line 1: not a backy export file/],
    ['other JSON', [{ hello: 1 }], /first line needs "format"/],
    ['extra header field', [{ ...header, x: 1 }, ...blocks, end], /line 1: header: unknown field 'x'/],
    ['missing header field', [{ ...header, date: undefined }, ...blocks, end], /field 'date' is missing/],
    ['string number', [{ ...header, block_size: '4096' }, ...blocks, end], /'block_size'/],
    ['fractional', [{ ...header, size_bytes: 1.5 }, ...blocks, end], /'size_bytes'/],
    ['odd block size', [{ ...header, block_size: 4097 }, ...blocks, end], /multiple of 512/],
    ['status incomplete', [{ ...header, status: 'incomplete' }, ...blocks, end], /'status'/],
    ['name with space', [{ ...header, name: 'a b' }, ...blocks, end], /whitespace/],
    ['base is itself', [{ ...header, base_uid: UID }, ...blocks, end], /base_uid/],
    ['checksum too short', [header, { ...blocks[0], checksum: 'abcd' }], /line 2: block: 'checksum'/],
    ['checksum with slash', [header, { ...blocks[0], checksum: `../${SUM.slice(3)}` }], /'checksum'/],
    ['block as array', [header, [0, SUM, 4096, true]], /line 2: expected a JSON object/],
    ['duplicate', [header, blocks[0], blocks[0]], /line 3: block idx 0 repeats/],
    ['gap', [header, blocks[0], blocks[2]], /idx 2 leaves a gap/],
    ['out of range', [header, ...blocks, { ...blocks[0], idx: 4 }], /idx 4 is out of range/],
    ['wrong tail size', [header, ...blocks.slice(0, 3), { ...blocks[3], size: 4096 }], /needs 100/],
    ['too few blocks', [header, ...blocks.slice(0, 3), { end: EXPORT_FORMAT, blocks: 3 }], /need 4/],
    ['count mismatch', [header, ...blocks, { end: EXPORT_FORMAT, blocks: 5 }], /end line says 5/],
    ['no end line', [header, ...blocks], /truncated: it ends after 4 of 4 blocks/],
    ['after end', [header, ...blocks, end, end], /line 7: unexpected content after the end line/],
  ];
  for (const [what, lines, message] of table) {
    it(`refuses: ${what}`, () => refused(lines, message));
  }
});

describe("ExportParser: block lines in export's exact form and through JSON agree", () => {
  // Export's exact form is taken apart by a regular expression, anything else by JSON.parse and
  // the schema: a near miss of the exact form must get the same answer the JSON path gives.
  const line0 = `{"idx":0,"checksum":"${SUM}","size":4096,"valid":true}`;
  const variants: [string, string][] = [
    ['exact', line0],
    ['valid false', line0.replace('true', 'false')],
    ['null checksum', line0.replace(`"${SUM}"`, 'null')],
    ['"tfalse"', line0.replace('true', 'tfalse')],
    ['"ttrue"', line0.replace('true', 'ttrue')],
    ['valid as a string', line0.replace('true', '"true"')],
    ['leading zero', line0.replace('"idx":0', '"idx":00')],
    ['negative zero', line0.replace('"idx":0', '"idx":-0')],
    ['16-digit size', line0.replace('4096', '1000000000004096')],
    ['size as a float', line0.replace('4096', '4096.0')],
    ['size with an exponent', line0.replace('4096', '4.096e3')],
    ['upper-case hex', line0.replace(SUM, SUM.toUpperCase())],
    ['63 hex digits', line0.replace(SUM, SUM.slice(1))],
    ['trailing space', `${line0} `],
    ['a field twice', line0.replace('}', ',"valid":false}')],
    ['an unknown field', line0.replace('}', ',"x":1}')],
    ['fields in another order', `{"checksum":"${SUM}","idx":0,"size":4096,"valid":true}`],
  ];
  const outcome = (block: string) => {
    try {
      const p = new ExportParser('f');
      p.line(JSON.stringify(header));
      return { row: p.line(block) };
    } catch (err) {
      assert.ok(err instanceof InputError, String(err));
      return { error: err.message };
    }
  };
  for (const [what, line] of variants) {
    it(what, () => assert.deepEqual(outcome(line), outcome(line.replace(/^\{/, '{ '))));
  }
  it('the exact form parses to its row', () => {
    assert.deepEqual(outcome(line0), { row: { block: blocks[0] } });
    assert.deepEqual(outcome(variants[1][1]).row, { block: { ...blocks[0], valid: false } });
  });
});

describe('splitLines', () => {
  async function* chunks(...parts: string[]) {
    for (const p of parts) yield Buffer.from(p);
  }
  async function collect(it: AsyncIterable<string>) {
    const out: string[] = [];
    for await (const l of it) out.push(l);
    return out;
  }

  it('splits across chunk boundaries, keeps a last line without newline', async () => {
    assert.deepEqual(await collect(splitLines(chunks('ab', 'c\nde', 'f\n\ng', 'h'), 'f')), [
      'abc',
      'def',
      '',
      'gh',
    ]);
    assert.deepEqual(await collect(splitLines(chunks('x\n'), 'f')), ['x']);
    assert.deepEqual(await collect(splitLines(chunks(), 'f')), []);
  });

  it('decodes multi-byte characters split between chunks', async () => {
    const bytes = Buffer.from('é\n');
    async function* split() {
      yield bytes.subarray(0, 1);
      yield bytes.subarray(1);
    }
    assert.deepEqual(await collect(splitLines(split(), 'f')), ['é']);
  });

  it('refuses over-long lines without buffering them whole', async () => {
    async function* endless() {
      for (let i = 0; i < 100; i++) yield Buffer.alloc(4096, 0x61);
    }
    await assert.rejects(
      collect(splitLines(endless(), 'f')),
      new RegExp(`line 1: longer than ${MAX_LINE} bytes`),
    );
  });

  it('refuses invalid UTF-8', async () => {
    async function* bad() {
      yield Buffer.from([0x7b, 0xff, 0x7d, 0x0a]);
    }
    await assert.rejects(collect(splitLines(bad(), 'f')), /line 1: not valid UTF-8/);
  });
});
