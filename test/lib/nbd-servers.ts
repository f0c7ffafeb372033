/**
 * Real third-party NBD servers for the NBD-source tests: qemu-nbd (qemu-utils) and nbdkit,
 * each on a Unix socket (or loopback TCP) in the test's sandbox, run in the foreground so
 * that the test owns the process and stops it by its pid.
 *
 * Without them the tests are skipped with a message; in CI (CI=true) a missing server is a
 * failure instead, so CI cannot silently stop testing NBD sources.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

const TOOLS = ['qemu-nbd', 'qemu-img', 'qemu-io', 'nbdkit'];

function onPath(bin: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((d) => {
    try {
      accessSync(join(d, bin), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** Why the NBD-source tests cannot run here, or undefined; throws in CI instead. */
export function nbdServersMissing(): string | undefined {
  const missing = TOOLS.filter((b) => !onPath(b));
  if (missing.length === 0) return undefined;
  const reason = `NBD source tests need real NBD servers (missing: ${missing.join(', ')}); install them with: apt-get install qemu-utils nbdkit`;
  if (process.env.CI === 'true' || process.env.CI === '1') {
    throw new Error(`${reason} (CI=true: a missing server fails the run; .ci/run installs them)`);
  }
  return reason;
}

export interface Served {
  child: ChildProcess;
  stderr(): string;
  /** SIGTERM (or `signal`), then waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts `cmd args` and waits until `ready()` (the socket file exists, or the TCP port
 * accepts). The process is killed if it does not get there in 15 s.
 */
async function serve(cmd: string, args: string[], ready: () => Promise<boolean>): Promise<Served> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const deadline = Date.now() + 15_000;
  while (!(await ready())) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${cmd} ${args.join(' ')} did not start:\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    child,
    stderr: () => err,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
}

const socketReady = (path: string) => async () => existsSync(path);

/** qemu-nbd, read-only, persistent (several connections one after the other), on a Unix socket. */
export function qemuNbd(socket: string, file: string, format: 'raw' | 'qcow2', extra: string[] = []) {
  return serve(
    'qemu-nbd',
    ['-r', '--persistent', '-k', socket, '-f', format, ...extra, file],
    socketReady(socket),
  );
}

/** qemu-nbd on loopback TCP. */
export function qemuNbdTcp(port: number, file: string, format: 'raw' | 'qcow2', extra: string[] = []) {
  return serve(
    'qemu-nbd',
    ['-r', '--persistent', '-b', '127.0.0.1', '-p', String(port), '-f', format, ...extra, file],
    () =>
      new Promise((resolve) => {
        const s = createServer();
        // The port is taken once qemu-nbd listens on it.
        s.once('error', () => resolve(true));
        s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
      }),
  );
}

/** nbdkit in the foreground on a Unix socket: `nbdkit -f -U SOCKET ...args`. */
export function nbdkit(socket: string, args: string[]) {
  return serve('nbdkit', ['-f', '-U', socket, ...args], socketReady(socket));
}

/** A free TCP port on loopback (free when asked; the server takes it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
