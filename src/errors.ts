/**
 * Typed errors. Only the CLI's main turns them into exit codes:
 * 0 success, 1 error (bad input, not found, I/O), 2 usage, 3 integrity problem found.
 */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTEGRITY = 3;

export class BackyError extends Error {
  readonly exitCode: number = EXIT_ERROR;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Wrong command line: unknown option, missing operand, value out of range. */
export class UsageError extends BackyError {
  override readonly exitCode = EXIT_USAGE;
}

/**
 * A command whose outcome is its exit status, said in full on stdout already (`run` with a
 * failed job, `check`'s Nagios states): nothing more is logged.
 */
export class ExitStatus extends BackyError {
  override readonly exitCode: number;
  constructor(code: number) {
    super(`exit status ${code}`);
    this.exitCode = code;
  }
}

/** A config file that cannot be read, or an unknown key or bad value in it. */
export class ConfigError extends BackyError {}

/** Input from outside (hint file, export file, source) that is malformed or does not fit. */
export class InputError extends BackyError {}

/** A version, uid or file that does not exist. */
export class NotFoundError extends BackyError {}

/** A version removed (rm --force) while a restore, scrub or export was reading it. */
export class VersionRemovedError extends BackyError {}

/** Damage found: corrupt or missing blocks. The operation may have completed otherwise. */
export class IntegrityError extends BackyError {
  override readonly exitCode = EXIT_INTEGRITY;
}

/**
 * The command was stopped by SIGINT or SIGTERM. Exit 128 + the signal's number, as a shell
 * reports a process the signal killed, so scripts see the same code whether or not backy
 * caught it.
 */
export class InterruptedError extends BackyError {
  override readonly exitCode: number;
  constructor(
    readonly signal: 'SIGINT' | 'SIGTERM',
    what?: string,
  ) {
    super(`interrupted (${signal})${what ? `: ${what}` : ''}`);
    this.exitCode = signal === 'SIGTERM' ? 143 : 130;
  }

  /** The same interruption, naming what it left behind. */
  leaving(what: string): InterruptedError {
    return new InterruptedError(this.signal, what);
  }
}

/** A stored object failed verification on read. */
export class CorruptBlockError extends BackyError {
  constructor(
    readonly checksum: string,
    readonly reason: string,
  ) {
    super(`block ${printable(checksum)} is damaged: ${reason}`);
  }
}

/** An object that the metadata says exists is not in the data store. */
export class MissingBlockError extends BackyError {
  constructor(readonly checksum: string) {
    super(`block ${printable(checksum)} is missing from the data store`);
  }
}

/** A checksum as it may appear in a message: as is when plain hex, else quoted and cut short. */
function printable(checksum: string): string {
  return /^[0-9a-f]{1,128}$/.test(checksum) ? checksum : JSON.stringify(checksum.slice(0, 80));
}

/** An OS error as one short phrase: "no space left on device (ENOSPC)"; other errors by message. */
export function ioReason(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    const m = /^[A-Z0-9_]+: ([^,]+)/.exec(e.message ?? '');
    return m ? `${m[1]} (${e.code})` : e.code;
  }
  return errorMessage(err).split('\n')[0];
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
