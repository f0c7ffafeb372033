/**
 * Durations in job and scheduler settings: `30s`, `30m`, `6h`, `1d`, `1w`, or several parts
 * such as `1h30m`. Seconds exist for tests and short daemon intervals; months and years do
 * not (their length varies, and a schedule must be a fixed period).
 */
const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/** Seconds, or undefined when `text` is not a duration. Pure. */
export function parseDurationSeconds(text: string): number | undefined {
  if (!/^(\d{1,7}[smhdw])+$/.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(/(\d+)([smhdw])/g)) total += Number(m[1]) * UNIT_SECONDS[m[2]];
  return total > 0 ? total : undefined;
}

/** A duration for messages: the largest units that divide it, e.g. 5400 -> `1h30m`. */
export function formatDuration(seconds: number): string {
  if (seconds <= 0) return '0s';
  let rest = Math.round(seconds);
  let out = '';
  for (const [unit, size] of [
    ['w', 604_800],
    ['d', 86_400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) {
      out += `${n}${unit}`;
      rest -= n * size;
    }
  }
  return out;
}
