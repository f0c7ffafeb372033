/**
 * Whether the external tools a test file needs are installed, and the rule for when they are
 * not: the tests are skipped with a message saying what to install, except in CI (CI=true),
 * where a missing tool is a failure, so CI cannot silently stop testing what needs it.
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** True when `name` is an executable file in a directory of $PATH. */
export function hasCommand(name: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((d) => {
    try {
      accessSync(join(d, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export function inCI(): boolean {
  return process.env.CI === 'true' || process.env.CI === '1';
}

/**
 * `reason` (a skip message) when something is missing, undefined when nothing is; in CI it
 * throws instead of returning a reason.
 */
export function skipUnlessCI(missing: string[], reason: string): string | undefined {
  if (missing.length === 0) return undefined;
  if (inCI()) throw new Error(`${reason} (CI=true: a missing tool fails the run; .ci/run installs it)`);
  return reason;
}

/** The skip reason for tests that need `commands` (see skipUnlessCI), or undefined. */
export function missingCommands(commands: string[], install: string): string | undefined {
  const missing = commands.filter((c) => !hasCommand(c));
  return skipUnlessCI(missing, `needs ${missing.join(', ')} (install: ${install})`);
}
