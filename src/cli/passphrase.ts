/**
 * Where the passphrase of a sealed key file comes from. Never the command line: argv is
 * readable by every user in /proc. In order:
 *   1. BACKY_PASSPHRASE (for scripts; the environment of a process is readable by its owner only);
 *   2. BACKY_PASSCOMMAND, run with sh -c: its standard output, less one trailing newline, is the
 *      passphrase (a secret manager, `cat /run/secrets/x`); its output is never shown;
 *   3. a prompt on the controlling terminal (/dev/tty), without echo, as ssh and sudo ask.
 * None of them: one line saying what to set. A new passphrase (key create --passphrase, key
 * passphrase) comes from BACKY_NEW_PASSPHRASE or is typed twice at the prompt.
 */
import { spawn } from 'node:child_process';
import { openSync, writeSync } from 'node:fs';
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
  if (command !== undefined && command !== '') return runPassCommand(command, what);
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

function runPassCommand(command: string, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    // stderr passes through: the command's own complaints are the operator's best clue.
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'pipe', 'inherit'] });
    const out: Buffer[] = [];
    let size = 0;
    child.stdout.on('data', (b: Buffer) => {
      size += b.length;
      if (size <= MAX_PASSCOMMAND_OUTPUT) out.push(b);
    });
    child.on('error', (err) =>
      reject(new ConfigError(`BACKY_PASSCOMMAND for ${what} could not run: ${err.message}`)),
    );
    child.on('close', (code, signal) => {
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
