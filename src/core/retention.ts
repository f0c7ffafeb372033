/**
 * Retention rules in Benji's syntax: `latest3,hours24,days7,weeks4,months12,years3`, applied
 * with Benji's algorithm (benji/retentionfilter.py, RetentionFilter._filter), per version name:
 * - candidates sorted youngest first; `latestN` keeps the N youngest and takes them out: they
 *   are in no time category;
 * - every other candidate gets, per category, its distance from now in whole calendar units
 *   (hours, days, ISO weeks from Monday, months, years: the bucket of now minus its bucket,
 *   so 0 is the current hour, day...), and goes into the FIRST configured category, in the
 *   order hours, days, weeks, months, years, whose distance is at most N: `days7` has the
 *   eight buckets 0..7, as in Benji. A candidate that fits no category is removed;
 * - in each (category, distance) bucket the oldest candidate is kept, the others removed.
 *
 * Where backy differs from Benji, on purpose (the README lists these too):
 * - the youngest candidate that is not future-dated is always kept, whatever the rules say,
 *   so a name never loses its last good version to enforcement (Benji keeps it only if the
 *   rules do: `years1` over versions of this year keeps only the year's oldest);
 * - a candidate dated more than FUTURE_TOLERANCE after now (clock skew, a clock set back, an
 *   imported version) is future-dated: kept, and counted for nothing, not toward latestN
 *   either (Benji skips it in the categories but lets it fill a latestN slot, so `latest1`
 *   would remove the real newest backup every run until the clock caught up). One dated less
 *   than the tolerance after now counts as now (distance 0), where Benji skips any date after
 *   its reference time;
 * - buckets are calendar boundaries in UTC unless `localTime` (Benji: the local time zone).
 * Which versions are candidates is the caller's (enforce: valid and unprotected only).
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

/** Benji's category order: a candidate goes into the first one whose distance fits. */
const TIME_CATEGORIES = ['hours', 'days', 'weeks', 'months', 'years'] as const;

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
  const latest = rules.latest ?? 0;
  for (const v of byAge.slice(0, latest)) keep.add(v.uid);
  const categories = TIME_CATEGORIES.filter((c) => rules[c] !== undefined);
  const current = new Map(categories.map((c) => [c, bucketOf(c, now, localTime)]));
  // "category distance" -> the oldest candidate seen there (byAge is youngest first).
  const oldest = new Map<string, RetentionCandidate>();
  for (const v of byAge.slice(latest)) {
    for (const cat of categories) {
      // Within the tolerance a date may lie in the next bucket: it counts as now.
      const distance = Math.max(0, current.get(cat)! - bucketOf(cat, v.date, localTime));
      if (distance <= rules[cat]!) {
        oldest.set(`${cat} ${distance}`, v);
        break;
      }
    }
  }
  for (const v of oldest.values()) keep.add(v.uid);
  return byAge
    .filter((v) => !keep.has(v.uid))
    .reverse()
    .map((v) => v.uid);
}
