/**
 * What a version's change tracking is relative to: the identity of the change source that
 * named what changed since its base. Recorded with each incremental version (versions.tracking,
 * as JSON), shown by `ls --json`, carried in export files and metadata copies, so that the next
 * backup can check that its change source starts where this version ended.
 *
 * The object is a wire record: its keys are the snake_case ones of `ls --json` and the export
 * format, in the database, in files and on stdout alike.
 *
 * - thin:            `--thin-delta`; thin_delta's `<diff left right>`: device_id is this
 *                    version's thin device (right), base_device_id the base's (left).
 * - rbd-diff:        `-r`; snapshot is --snapshot-name, base_snapshot the base's snapshot name
 *                    (either null when not known: rbd diff JSON names neither).
 * - rbd-export-diff: `--rbd-export-diff`; the stream's to-snap and from-snap.
 * - dirty-bitmap:    `--dirty-bitmap`; the qemu bitmap's name.
 */
import * as z from 'zod';

const snapName = z
  .string()
  .min(1)
  .max(255, 'is longer than 255 characters')
  .regex(/^[^\n\r]*$/, 'must be one line')
  .nullable();
const deviceId = z
  .int('must be an integer')
  .min(0, 'must not be negative')
  .max(2 ** 32, 'is too large');

export const trackingSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('thin'), device_id: deviceId, base_device_id: deviceId }),
  z.strictObject({ kind: z.literal('rbd-diff'), snapshot: snapName, base_snapshot: snapName }),
  z.strictObject({ kind: z.literal('rbd-export-diff'), snapshot: snapName, base_snapshot: snapName }),
  z.strictObject({
    kind: z.literal('dirty-bitmap'),
    bitmap: z
      .string()
      .min(1)
      .max(1023, 'is longer than 1023 characters')
      .regex(/^[^\n\r]*$/, 'must be one line'),
  }),
]);

export type Tracking = z.infer<typeof trackingSchema>;

/** The database column's text for `t`. */
export function trackingText(t: Tracking | null | undefined): string | null {
  return t ? JSON.stringify(t) : null;
}

/**
 * The tracking a database column holds. A value this backy cannot read (written by a newer
 * one, or damaged) is taken as "not recorded": the checks that use it then only warn.
 */
export function parseTrackingText(text: string | null | undefined): Tracking | null {
  if (text === null || text === undefined || text === '') return null;
  try {
    const r = trackingSchema.safeParse(JSON.parse(text));
    return r.success ? r.data : null;
  } catch {
    return null;
  }
}
