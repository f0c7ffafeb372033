import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import type Table from 'cli-table3';
import { displayWidth, textTable } from './text-table.js';

// cli-table3 drew `ls` before and still draws `du`: the formatter must draw the same table.
const Table_ = createRequire(import.meta.url)('cli-table3') as typeof Table;
function cliTable3(head: string[], rows: string[][]): string {
  const t = new Table_({ head, style: { head: [], border: [] } });
  for (const r of rows) t.push(r);
  return t.toString();
}

describe('textTable', () => {
  const cases: [string, string[], string[][]][] = [
    ['no rows', ['a', 'bb'], []],
    ['one row', ['date', 'name'], [['2026-01-01 00:00:00.000000', 'vm']]],
    [
      'empty cells and a long header',
      ['protected', 'x'],
      [
        ['', ''],
        ['yes', ''],
      ],
    ],
    [
      'multi-line cells',
      ['name', 'labels', 'z'],
      [
        ['a', 'k=v\nlonger=value\nx=', '1'],
        ['bbbbbbbbbbbbbbbb', '', '22'],
        ['c', 'one=1', ''],
      ],
    ],
    [
      'wide characters',
      ['name', 'n'],
      [
        ['虚拟机', '1'],
        ['vm', '2'],
        ['café', '3'],
      ],
    ],
  ];
  for (const [what, head, rows] of cases) {
    it(`draws what cli-table3 draws: ${what}`, () => {
      assert.equal(textTable(head, rows), cliTable3(head, rows));
    });
  }

  it('pads every line of a table to the same width, with the borders in the same columns', () => {
    const rows = Array.from({ length: 50 }, (_, i) => [
      String(i ** 3),
      'x'.repeat(i % 7),
      i % 3 ? 'a=1\nbb=2' : '',
    ]);
    const lines = textTable(['n', 'name', 'labels'], rows).split('\n');
    const bars = (l: string) => [...l].flatMap((c, i) => ('│┼┬┴├┤┌┐└┘'.includes(c) ? [i] : []));
    for (const l of lines) assert.deepEqual(bars(l), bars(lines[0]), l);
    // 50 rows, 17 of them two lines high, a rule between rows, the header and 3 outer rules.
    assert.equal(lines.length, 17 + 33 * 2 + 49 + 1 + 3);
  });

  it('paints the header and borders only when asked', () => {
    const t = textTable(['h'], [['v']], { head: (s) => `<${s}>`, border: (s) => `[${s}]` });
    assert.equal(t, ['[┌───┐]', '[│] <h> [│]', '[├───┤]', '[│] v [│]', '[└───┘]'].join('\n'));
  });
});

describe('displayWidth', () => {
  it('counts wide characters twice, combining marks and control characters not at all', () => {
    assert.equal(displayWidth('abc'), 3);
    assert.equal(displayWidth('虚拟机'), 6);
    assert.equal(displayWidth('cafe\u0301'), 4);
    assert.equal(displayWidth('a\tb'), 2);
    assert.equal(displayWidth(''), 0);
  });
});
