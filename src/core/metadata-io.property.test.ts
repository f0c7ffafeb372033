/**
 * Property-based tests (fast-check) for the export parser: whatever the lines, it throws
 * nothing but a one-line InputError; every valid file it accepts describes a version whose
 * checksums are plain hex (never a path) and whose block list covers the image exactly; a
 * generated valid export always parses back to what was written.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { InputError } from '../errors.js';
import { EXPORT_FORMAT, EXPORT_VERSION, ExportParser, blockLine } from './metadata-io.js';

const RUNS = 300;
const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const uuid = fc.uuid().map((u) => u.toLowerCase());

const validExport = fc
  .record({
    uid: uuid,
    blockSize: fc.constantFrom(4096, 8192, 65536),
    blocks: fc.nat(12),
    tail: fc.nat(4095),
    name: fc.stringMatching(/^[a-z0-9@._-]{1,20}$/),
    date: fc.nat(Number.MAX_SAFE_INTEGER),
    status: fc.constantFrom('valid', 'invalid'),
  })
  .chain((v) => {
    const size = v.blocks * v.blockSize + (v.tail % v.blockSize);
    const n = Math.ceil(size / v.blockSize);
    return fc
      .array(fc.record({ checksum: fc.option(hex64, { nil: null }), valid: fc.boolean() }), {
        minLength: n,
        maxLength: n,
      })
      .map((rows) => ({ ...v, size, rows }));
  });

function render(v: {
  uid: string;
  blockSize: number;
  size: number;
  name: string;
  date: number;
  status: string;
  rows: { checksum: string | null; valid: boolean }[];
}): string[] {
  const header = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    hash_function: 'blake3',
    uid: v.uid,
    name: v.name,
    snapshot_name: '',
    date: v.date,
    size_bytes: v.size,
    block_size: v.blockSize,
    status: v.status,
    base_uid: null,
    protected: false,
    hostname: 'host',
  };
  return [
    JSON.stringify(header),
    ...v.rows.map((r, idx) =>
      JSON.stringify({
        idx,
        checksum: r.checksum,
        size: Math.min(v.blockSize, v.size - idx * v.blockSize),
        valid: r.valid,
      }),
    ),
    JSON.stringify({ end: EXPORT_FORMAT, blocks: v.rows.length }),
  ];
}

/** Feeds lines to a parser; returns its result, or the InputError (anything else fails). */
function parse(input: string[]) {
  const p = new ExportParser('export file');
  const blocks: { idx: number; checksum: string | null; size: number }[] = [];
  try {
    for (const l of input) {
      const r = p.line(l);
      if (r && 'block' in r) blocks.push(r.block);
    }
    return { ok: p.finish(), blocks };
  } catch (err) {
    assert.ok(err instanceof InputError, `threw ${String(err)}`);
    assert.doesNotMatch(err.message, /[\r\n]/, 'one line');
    return { err };
  }
}

describe('export parser properties', () => {
  it('parses every generated valid export back to what was written', () => {
    fc.assert(
      fc.property(validExport, (v) => {
        const r = parse(render(v));
        assert.ok(r.ok, String(r.err));
        assert.equal(r.ok.header.uid, v.uid);
        assert.deepEqual(
          r.blocks.map((b) => b.checksum),
          v.rows.map((x) => x.checksum),
        );
      }),
      { numRuns: RUNS },
    );
  });

  it('throws nothing but a one-line InputError on arbitrary lines', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.json(), fc.string({ maxLength: 80 })), { maxLength: 6 }), (input) => {
        parse(input);
      }),
      { numRuns: RUNS },
    );
  });

  it('on a valid export with one field changed to anything: accepts only a sound version, else InputError', () => {
    const anyValue = fc.oneof(
      fc.jsonValue(),
      fc.constantFrom('../../etc/passwd', '/etc/passwd', 'a\nb', -1, 2 ** 53, 1e300, null, '', 'ZZ'),
    );
    fc.assert(
      fc.property(validExport, fc.nat(), fc.nat(), anyValue, (v, lineSel, keySel, value) => {
        const input = render(v);
        const i = lineSel % input.length;
        const obj = JSON.parse(input[i]) as Record<string, unknown>;
        const keys = Object.keys(obj);
        obj[keys[keySel % keys.length]] = value;
        input[i] = JSON.stringify(obj);
        const r = parse(input);
        if (!r.ok) return;
        const { header, blocks } = r.ok;
        assert.match(header.uid, /^[0-9a-f-]{36}$/);
        assert.equal(blocks, Math.ceil(header.size_bytes / header.block_size));
        for (const b of r.blocks) {
          if (b.checksum !== null) assert.match(b.checksum, /^[0-9a-f]{64}$/, 'never a path');
          assert.equal(b.size, Math.min(header.block_size, header.size_bytes - b.idx * header.block_size));
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('a block line as export writes it and the same line spaced out (the JSON path) give the same result', () => {
    // The parser takes export's exact form apart with a regular expression, anything else
    // through JSON.parse and the schema: the two must agree on every line, edits included.
    const edit = fc.record({
      at: fc.nat(),
      text: fc.constantFrom(
        '0',
        '1',
        '9',
        '00',
        '-',
        't',
        'f',
        'e',
        '"',
        'a',
        'A',
        ' ',
        'null',
        '1234567890123456',
      ),
      replace: fc.boolean(),
    });
    fc.assert(
      fc.property(validExport, fc.nat(), fc.array(edit, { maxLength: 3 }), (v, lineSel, edits) => {
        const input = render(v);
        if (input.length > 2) {
          const i = 1 + (lineSel % (input.length - 2));
          let line = input[i];
          for (const e of edits) {
            const at = e.at % (line.length + 1);
            line = line.slice(0, at) + e.text + line.slice(e.replace ? at + 1 : at);
          }
          input[i] = line;
        }
        const spaced = input.map((l, i) => (i === 0 ? l : l.replace(/^\{/, '{ ')));
        const a = parse(input);
        const b = parse(spaced);
        if (a.ok) {
          assert.ok(b.ok, String(b.err));
          assert.deepEqual(a.blocks, b.blocks);
        } else assert.equal(a.err.message, b.err?.message);
      }),
      { numRuns: RUNS * 3 },
    );
  });

  it("export's block lines are exactly JSON.stringify's, whatever the database holds", () => {
    fc.assert(
      fc.property(
        fc.record({
          idx: fc.nat(),
          checksum: fc.oneof(fc.constant(null), hex64, fc.string(), fc.stringMatching(/^[0-9a-f]{0,8}$/)),
          size: fc.nat(),
          valid: fc.boolean(),
        }),
        (b) => {
          const expected = `${JSON.stringify({ idx: b.idx, checksum: b.checksum, size: b.size, valid: b.valid })}\n`;
          assert.equal(blockLine(b), expected);
        },
      ),
      { numRuns: 1000 },
    );
  });
});
