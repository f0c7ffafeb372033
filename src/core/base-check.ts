/**
 * Whether a version may be the base (-f) of a new one, checked before anything is stored:
 * only a valid version; only one of the same image (a base of another machine's disk would
 * keep its blocks wherever the hints say "unchanged"); and, where the change source names
 * what it is relative to (thin_delta's device ids), only the version that change source
 * started from. `--force-base` accepts an image or thin device that differs, with a warning.
 *
 * The image is NAME up to its first '@': names follow rbd's IMAGE@SNAPSHOT form
 * (`vm1@backup1`, then `vm1@backup2` from it), so what must agree is the part before '@'; a
 * name without '@' is all image.
 */
import { InputError } from '../errors.js';
import type { Version } from '../meta/meta-store.js';
import type { Tracking } from '../meta/tracking.js';

export function checkBase(
  base: Version,
  name: string,
  force: boolean,
  warn: (message: string) => void = () => {},
): void {
  if (base.status !== 'valid') {
    throw new InputError(
      `version ${base.uid} is ${base.status} and cannot be the base of a backup; choose a valid version (see 'backy ls')`,
    );
  }
  const image = imageOf(name);
  if (imageOf(base.name) === image) return;
  if (!force) {
    throw new InputError(
      `base ${base.uid} is a backup of '${base.name}', another image than '${name}' ('${imageOf(base.name)}' is not '${image}'); give -f a version of '${image}' (see 'backy ls'), or add --force-base if this base is meant`,
    );
  }
  warn(`--force-base: base ${base.uid} is a backup of '${base.name}', the new version is '${name}'`);
}

/** NAME up to its first '@' (all of it without one). */
export function imageOf(name: string): string {
  const at = name.indexOf('@');
  return at === -1 ? name : name.slice(0, at);
}

/**
 * The change source's own idea of its base against the base's record. A thin delta must start
 * from the thin device the base was read from; a base with none recorded (a full backup, or
 * one made before backy recorded it) cannot be checked: a warning.
 */
export function checkTracking(
  base: Version,
  tracking: Tracking | null,
  force: boolean,
  warn: (message: string) => void = () => {},
): void {
  if (tracking?.kind !== 'thin') return;
  const recorded = base.tracking?.kind === 'thin' ? base.tracking.device_id : undefined;
  if (recorded === undefined) {
    warn(
      `base ${base.uid} has no thin device id recorded: cannot check that the thin delta (device ${tracking.base_device_id} -> ${tracking.device_id}) starts from it`,
    );
    return;
  }
  if (recorded === tracking.base_device_id) return;
  if (!force) {
    throw new InputError(
      `the thin delta compares device ${tracking.base_device_id} with ${tracking.device_id}, but base ${base.uid} is a backup of thin device ${recorded}; run thin_delta --snap1 ${recorded}, or give -f the backup of device ${tracking.base_device_id}`,
    );
  }
  warn(
    `--force-base: the thin delta starts from device ${tracking.base_device_id}, base ${base.uid} is a backup of device ${recorded}`,
  );
}
