import { appendFileSync } from 'node:fs';

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;

/**
 * stderr logger in the original backy's format ("    INFO: message"), optionally
 * mirrored to a log file with a timestamp. The core never logs; commands do.
 * Quiet by default, so that a cron mail carries only what needs a look: stderr gets WARNING
 * and ERROR lines, and INFO and DEBUG only with -v. The log file gets every INFO line.
 */
export type Level = 'DEBUG' | 'INFO' | 'WARNING' | 'ERROR';

export class Logger {
  #verbose: boolean;
  #logfile: string | undefined;
  /** Called before writing a line to stderr, so a progress bar can step aside. */
  beforeWrite: (() => void) | undefined;

  constructor(verbose = false, logfile?: string) {
    this.#verbose = verbose;
    this.#logfile = logfile;
  }

  get verbose(): boolean {
    return this.#verbose;
  }

  setLogfile(path: string | undefined): void {
    this.#logfile = path;
  }

  debug(msg: string): void {
    if (this.#verbose) this.#write('DEBUG', msg);
  }
  info(msg: string): void {
    this.#write('INFO', msg, this.#verbose);
  }
  /**
   * An INFO line written without -v too: what a user cannot do without (where a server
   * listens, the uid of a version a server made, advice about a new key file).
   */
  notice(msg: string): void {
    this.#write('INFO', msg);
  }
  warn(msg: string): void {
    this.#write('WARNING', msg);
  }
  error(msg: string): void {
    this.#write('ERROR', msg);
  }

  #write(level: Level, msg: string, toStderr = true): void {
    // Every log line is one line and safe on a terminal, whatever a message quotes (a file name
    // or NAME with a newline or an escape sequence): control characters are shown escaped.
    const safe = msg.replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
    const line = `${level.padStart(8)}: ${safe}\n`;
    if (toStderr) {
      this.beforeWrite?.();
      process.stderr.write(line);
    }
    if (this.#logfile) {
      try {
        appendFileSync(this.#logfile, `${new Date().toISOString()} ${line}`, { mode: 0o600 });
      } catch {
        // A log file that cannot be written must not stop a backup; stderr has the line.
      }
    }
  }
}
