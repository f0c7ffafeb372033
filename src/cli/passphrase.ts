/**
 * Where the passphrase of a sealed key file comes from. Never the command line: argv is
 * readable by every user in /proc. In order:
 *   1. BACKY_PASSPHRASE (for scripts; the environment of a process is readable by its owner only);
 *   2. BACKY_PASSCOMMAND, run with sh -c: its standard output, less one trailing newline, is the
 *      passphrase (a secret manager, `cat /run/secrets/x`); its output is never shown. It has
 *      BACKY_PASSCOMMAND_TIMEOUT seconds (default 60) to finish: a command waiting on a
 *      locked vault or a network share must not hang a nightly backup;
 *   3. a prompt on the controlling terminal (/dev/tty), without echo, as ssh and sudo ask.
 * None of them: one line saying what to set. A new passphrase (key create --passphrase, key
 * passphrase) comes from BACKY_NEW_PASSPHRASE or is typed twice at the prompt.
 */
import { spawn } from 'node:child_process';
import { openSync, readFileSync, readdirSync, writeSync } from 'node:fs';
import { ReadStream } from 'node:tty';
import { ConfigError, InterruptedError, UsageError } from '../errors.js';
import type { PassphraseSource } from '../storage/keyfile.js';

type Env = NodeJS.ProcessEnv;

/** A passphrase source reading `env` (process.env by default); asks at most once. */
export function passphraseSource(env: Env = process.env): PassphraseSource {
  let cached: Promise<string> | undefined;
  return (what) => (cached ??= currentPassphrase(what, env));
}

async function currentPassphrase(what: string, env: Env): Promise<string> {
  const given = env.BACKY_PASSPHRASE;
  if (given !== undefined && given !== '') return given;
  const command = env.BACKY_PASSCOMMAND;
  if (command !== undefined && command !== '') return runPassCommand(command, what, passCommandTimeout(env));
  const typed = await promptHidden(`Passphrase for ${what}: `);
  if (typed === undefined) {
    throw new ConfigError(
      `${what} is sealed with a passphrase: set BACKY_PASSPHRASE or BACKY_PASSCOMMAND, or run backy on a terminal`,
    );
  }
  return typed;
}

/** A new passphrase: BACKY_NEW_PASSPHRASE, or typed twice on the terminal. Never empty. */
export async function newPassphrase(what: string, env: Env = process.env): Promise<string> {
  const given = env.BACKY_NEW_PASSPHRASE;
  if (given !== undefined && given !== '') return given;
  const first = await promptHidden(`New passphrase for ${what}: `);
  if (first === undefined) {
    throw new ConfigError(
      `a new passphrase for ${what} is needed: set BACKY_NEW_PASSPHRASE or run backy on a terminal`,
    );
  }
  if (first === '')
    throw new UsageError('an empty passphrase protects nothing; leave out --passphrase instead');
  const again = await promptHidden('The same again: ');
  if (again !== first) throw new UsageError('the two passphrases differ; nothing was written');
  return first;
}

/** Output above this is not a passphrase: a command printing a file by mistake, say. */
const MAX_PASSCOMMAND_OUTPUT = 4096;
const DEFAULT_PASSCOMMAND_TIMEOUT_S = 60;

/** BACKY_PASSCOMMAND_TIMEOUT in seconds (default 60); a bad value is a usage error. */
function passCommandTimeout(env: Env): number {
  const v = env.BACKY_PASSCOMMAND_TIMEOUT;
  if (v === undefined || v === '') return DEFAULT_PASSCOMMAND_TIMEOUT_S;
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0) || n > 86_400) {
    throw new UsageError(
      `BACKY_PASSCOMMAND_TIMEOUT must be a number of seconds (0 < N <= 86400), got '${v}'`,
    );
  }
  return n;
}

function runPassCommand(command: string, what: string, timeoutS: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // stderr passes through: the command's own complaints are the operator's best clue.
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'pipe', 'inherit'] });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      // The shell and what it started: a process left behind would hold the pipe, and the
      // stderr a cron job's mail is read from, open until it ends.
      killTree(child.pid);
      child.stdout.destroy();
      reject(
        new ConfigError(
          `BACKY_PASSCOMMAND for ${what} did not finish within ${timeoutS} s; set BACKY_PASSCOMMAND_TIMEOUT to wait longer`,
        ),
      );
    }, timeoutS * 1000);
    const out: Buffer[] = [];
    let size = 0;
    child.stdout.on('data', (b: Buffer) => {
      size += b.length;
      if (size <= MAX_PASSCOMMAND_OUTPUT) out.push(b);
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new ConfigError(`BACKY_PASSCOMMAND for ${what} could not run: ${err.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) return;
      if (code !== 0) {
        reject(
          new ConfigError(
            `BACKY_PASSCOMMAND for ${what} failed (${signal ? `signal ${signal}` : `exit ${code}`}); its output is not shown`,
          ),
        );
        return;
      }
      if (size > MAX_PASSCOMMAND_OUTPUT) {
        reject(
          new ConfigError(`BACKY_PASSCOMMAND for ${what} printed more than ${MAX_PASSCOMMAND_OUTPUT} bytes`),
        );
        return;
      }
      const text = Buffer.concat(out)
        .toString('utf8')
        .replace(/\r?\n$/, '');
      if (text === '') reject(new ConfigError(`BACKY_PASSCOMMAND for ${what} printed nothing`));
      else resolve(text);
    });
  });
}

/**
 * SIGKILLs `pid` and its descendants, found through /proc (the command keeps backy's process
 * group and terminal, so that it can still ask on the terminal: no group to kill at once).
 */
function killTree(pid: number | undefined): void {
  if (pid === undefined) return;
  const children = new Map<number, number[]>();
  try {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses; ppid follows the last ')'.
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        const list = children.get(ppid) ?? [];
        list.push(Number(entry));
        children.set(ppid, list);
      } catch {
        // gone meanwhile
      }
    }
  } catch {
    // no /proc: the shell alone
  }
  const all: number[] = [];
  const walk = (p: number) => {
    all.push(p);
    for (const c of children.get(p) ?? []) walk(c);
  };
  walk(pid);
  for (const p of all) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * Asks on the controlling terminal with echo off; undefined when there is none (a cron job, a
 * service). Ctrl-C interrupts (exit 130), Ctrl-D on an empty line ends with nothing typed.
 */
function promptHidden(question: string): Promise<string | undefined> {
  let fd: number;
  try {
    fd = openSync('/dev/tty', 'r+');
  } catch {
    return Promise.resolve(undefined);
  }
  const input = new ReadStream(fd);
  // Echo goes off before the question shows: whatever is typed after it appears is never echoed.
  input.setRawMode(true);
  writeSync(fd, question);
  return new Promise<string | undefined>((resolve, reject) => {
    let typed = '';
    const finish = (result: () => void) => {
      input.off('data', onData);
      input.setRawMode(false);
      writeSync(fd, '\n');
      input.destroy(); // closes fd
      result();
    };
    const onData = (chunk: Buffer) => {
      for (const ch of chunk.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return finish(() => resolve(typed));
        if (ch === '\u0003') return finish(() => reject(new InterruptedError('SIGINT')));
        if (ch === '\u0004') {
          if (typed === '') return finish(() => resolve(undefined));
        } else if (ch === '\u007f' || ch === '\b') {
          typed = [...typed].slice(0, -1).join('');
        } else if (ch === '\u0015') {
          typed = ''; // Ctrl-U: start over
        } else if (ch >= ' ') {
          typed += ch;
        }
      }
    };
    input.on('data', onData);
  });
}
