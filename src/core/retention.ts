/**
 * Retention rules in Benji's syntax: `latest3,hours24,days7,weeks4,months12,years3`.
 *
 * Per version name:
 * - only valid, unprotected versions are candidates; invalid and incomplete ones (a running
 *   backup's version among them) and protected ones are never removed and count for nothing;
 * - `latestN` keeps the N youngest candidates, whatever their age;
 * - each time category keeps, in each of its N most recent calendar buckets counted back from
 *   now (the current hour, day, ISO week starting Monday, month or year is bucket 0), the
 *   oldest candidate in that bucket. Buckets follow calendar boundaries in UTC, or in the local
 *   time zone with `localTime`. Categories are evaluated independently over all candidates and
 *   what any of them keeps is kept;
 * - a candidate dated more than FUTURE_TOLERANCE after now (clock skew, a clock set back, an
 *   imported version) is future-dated: it is kept, and it counts for nothing — not as the
 *   youngest, not toward latestN, not in any bucket. Were it counted, `latest1` would remove
 *   the real newest backup every run until the clock caught up (see futureDated());
 * - the youngest candidate that is not future-dated is always kept, whatever the rules say,
 *   so a name never loses its last good version to enforcement;
 * - every other candidate is removed.
 *
 * Pure: no I/O, no clock (the caller passes `now`).
 */
import { InputError } from '../errors.js';

export const CATEGORIES = ['latest', 'hours', 'days', 'weeks', 'months', 'years'] as const;
export type Category = (typeof CATEGORIES)[number];
export type RetentionRules = Partial<Record<Category, number>>;

const PART_RE = /^(latest|hours|days|weeks|months|years)([1-9][0-9]{0,5})$/;

/** Parses `latest3,days7,...`; one InputError naming the bad part. */
export function parseRetentionRules(text: string): RetentionRules {
  const rules: RetentionRules = {};
  if (text.trim() === '')
    throw new InputError('retention rules are empty; e.g. latest3,days7,weeks4,months12');
  for (const part of text.split(',')) {
    const m = PART_RE.exec(part);
    if (!m) {
      throw new InputError(
        `retention rule ${JSON.stringify(part.slice(0, 40))} is not one of latestN, hoursN, daysN, weeksN, ` +
          'monthsN, yearsN (N a positive whole number, no spaces), e.g. latest3,days7,weeks4,months12',
      );
    }
    const cat = m[1] as Category;
    if (rules[cat] !== undefined) throw new InputError(`retention rule '${cat}' is given twice`);
    rules[cat] = Number(m[2]);
  }
  return rules;
}

export interface RetentionCandidate {
  uid: string;
  /** Microseconds since the epoch. */
  date: number;
}

/** How far past now a date may be before it counts as future-dated: small clock differences between hosts. */
export const FUTURE_TOLERANCE_MICROS = 5 * 60 * 1_000_000;

/** Whether `date` (microseconds) lies in the future beyond the tolerance, at time `now`. */
export function isFutureDated(date: number, now: number): boolean {
  return date > now + FUTURE_TOLERANCE_MICROS;
}

/** The candidates that are future-dated at `now` (kept, and counted for nothing), oldest first. */
export function futureDated<T extends RetentionCandidate>(candidates: readonly T[], now: number): T[] {
  return candidates.filter((v) => isFutureDated(v.date, now)).sort((a, b) => a.date - b.date);
}

/** Calendar bucket numbers: consecutive integers for consecutive hours, days, weeks, months, years. */
function bucketOf(cat: Exclude<Category, 'latest'>, micros: number, localTime: boolean): number {
  const d = new Date(Math.floor(micros / 1000));
  const y = localTime ? d.getFullYear() : d.getUTCFullYear();
  const mo = localTime ? d.getMonth() : d.getUTCMonth();
  const day = localTime ? d.getDate() : d.getUTCDate();
  const h = localTime ? d.getHours() : d.getUTCHours();
  // Days counted on the calendar (not in elapsed time), so DST changes do not shift buckets.
  const dayNo = Math.floor(Date.UTC(y, mo, day) / 86_400_000);
  switch (cat) {
    case 'hours':
      return dayNo * 24 + h;
    case 'days':
      return dayNo;
    case 'weeks':
      // 1970-01-01 was a Thursday: +3 makes weeks start on Monday (ISO 8601).
      return Math.floor((dayNo + 3) / 7);
    case 'months':
      return y * 12 + mo;
    case 'years':
      return y;
  }
}

/**
 * The candidates of ONE version name to remove under `rules` at time `now` (microseconds).
 * Returns their uids, oldest first.
 */
export function selectForRemoval(
  candidates: readonly RetentionCandidate[],
  rules: RetentionRules,
  now: number,
  opts: { localTime?: boolean } = {},
): string[] {
  const localTime = opts.localTime ?? false;
  // Youngest first; uid breaks ties so that the result does not depend on input order.
  // Future-dated candidates are neither counted nor removed: they are simply left out.
  const byAge = candidates
    .filter((v) => !isFutureDated(v.date, now))
    .sort((a, b) => b.date - a.date || (a.uid < b.uid ? -1 : 1));
  const keep = new Set<string>();
  if (byAge.length > 0) keep.add(byAge[0].uid);
  for (const v of byAge.slice(0, rules.latest ?? 0)) keep.add(v.uid);
  for (const cat of CATEGORIES) {
    if (cat === 'latest' || rules[cat] === undefined) continue;
    const n = rules[cat];
    const current = bucketOf(cat, now, localTime);
    const oldestInBucket = new Map<number, RetentionCandidate>();
    for (const v of byAge) {
      const b = bucketOf(cat, v.date, localTime);
      if (current - b >= n) continue;
      // byAge is youngest first: the last one seen in a bucket is its oldest.
      oldestInBucket.set(b, v);
    }
    for (const v of oldestInBucket.values()) keep.add(v.uid);
  }
  return byAge
    .filter((v) => !keep.has(v.uid))
    .reverse()
    .map((v) => v.uid);
}
