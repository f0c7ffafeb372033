/**
 * A boxed text table, drawn like cli-table3's default style (a rule between rows, cells padded
 * by one space, left aligned, multi-line cells). cli-table3 lays out each cell through generic
 * span and wrap machinery: 17 s for 10,000 versions in `ls`; this is one pass over the cells.
 */

const WIDE =
  /[\u1100-\u115F\u2E80-\u303E\u3041-\u33FF\u3400-\u4DBF\u4E00-\u9FFF\uA000-\uA4CF\uAC00-\uD7A3\uF900-\uFAFF\uFE30-\uFE4F\uFF00-\uFF60\uFFE0-\uFFE6\u{1F300}-\u{1F64F}\u{1F900}-\u{1F9FF}\u{20000}-\u{3FFFD}]/u;
const ZERO = /[\p{Mn}\p{Me}\p{Cf}]/u;

/** Terminal columns of `s`: wide East Asian characters and emoji take two, combining marks none. */
export function displayWidth(s: string): number {
  let w = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (c < 0x7f) w += c >= 0x20 ? 1 : 0;
    else if (ZERO.test(ch)) continue;
    else w += WIDE.test(ch) ? 2 : 1;
  }
  return w;
}

export interface TableStyle {
  /** Wraps header text (e.g. in a colour); identity when absent. */
  head?: (s: string) => string;
  /** Wraps each run of border characters. */
  border?: (s: string) => string;
}

/** The table as one string (no trailing newline); a cell's `\n` starts another line in it. */
export function textTable(head: string[], rows: string[][], style: TableStyle = {}): string {
  const paint = style.border ?? ((s: string) => s);
  const paintHead = style.head ?? ((s: string) => s);
  const split = (cells: string[]) => head.map((_, i) => (cells[i] ?? '').split('\n'));
  const headLines = split(head);
  const bodyLines = rows.map(split);
  const widths = head.map((_, i) => {
    let w = 0;
    for (const cells of [headLines, ...bodyLines])
      for (const line of cells[i]) w = Math.max(w, displayWidth(line));
    return w;
  });
  const rule = (l: string, m: string, r: string) =>
    paint(l + widths.map((w) => '─'.repeat(w + 2)).join(m) + r);
  const bar = paint('│');
  const render = (cells: string[][], wrap: (s: string) => string) => {
    const height = Math.max(...cells.map((c) => c.length));
    const out: string[] = [];
    for (let j = 0; j < height; j++) {
      let line = bar;
      for (let i = 0; i < widths.length; i++) {
        const text = cells[i][j] ?? '';
        const pad = ' '.repeat(widths[i] - displayWidth(text));
        line += ` ${text === '' ? '' : wrap(text)}${pad} ${bar}`;
      }
      out.push(line);
    }
    return out.join('\n');
  };
  const mid = rule('├', '┼', '┤');
  const parts = [rule('┌', '┬', '┐'), render(headLines, paintHead)];
  for (const cells of bodyLines)
    parts.push(
      mid,
      render(cells, (s) => s),
    );
  parts.push(rule('└', '┴', '┘'));
  return parts.join('\n');
}
