/**
 * External tools a job calls (rbd, qemu-img, hooks), each with a time limit: a tool that hangs
 * (rbd on a down OSD waits forever) is killed, and the job fails with one line naming it.
 * Children get only stdin/stdout/stderr (node's spawn closes every other descriptor), so no
 * tool inherits backy's files or locks.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { BackyError } from '../errors.js';

/** A tool that failed, timed out or could not be started. */
export class ToolError extends BackyError {}

export interface ToolResult {
  stdout: string;
  stderr: string;
}

/** At most this much of a tool's output is kept (rbd's JSON for thousands of snapshots fits). */
const MAX_OUTPUT = 16 * 2 ** 20;

/**
 * Runs `cmd args`, resolving with its output when it exits 0. Rejects with a ToolError on a
 * non-zero exit (with the last line of stderr), after `timeoutMs` (SIGKILL), or when `signal`
 * aborts (SIGTERM, the signal's reason).
 */
export function runTool(
  cmd: string,
  args: readonly string[],
  opts: {
    timeoutMs: number;
    signal?: AbortSignal;
    env?: NodeJS.ProcessEnv;
    what?: string;
    /** The tool's stdout and stderr go to backy's stderr (hooks: what they say is for the operator). */
    passthrough?: boolean;
  },
): Promise<ToolResult> {
  const what = opts.what ?? `${cmd} ${args.join(' ')}`;
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawn(cmd, args, {
        stdio: opts.passthrough ? ['ignore', 2, 2] : ['ignore', 'pipe', 'pipe'],
        env: opts.env ?? process.env,
        // Its own process group, so that a time limit or an interruption ends what it started
        // too (a hook's `sleep`, a pipeline's other end), not only the shell.
        detached: true,
      });
    } catch (err) {
      reject(new ToolError(`${what}: cannot start ${cmd}: ${(err as Error).message}`));
      return;
    }
    let out = '';
    let err = '';
    child.stdout?.on('data', (b: Buffer) => {
      if (out.length < MAX_OUTPUT) out += b.toString();
    });
    child.stderr?.on('data', (b: Buffer) => {
      if (err.length < MAX_OUTPUT) err += b.toString();
    });
    let failure: Error | undefined;
    const timer = setTimeout(() => {
      failure = new ToolError(
        `${what} did not finish within ${Math.round(opts.timeoutMs / 1000)} s; killed it`,
      );
      killGroup(child, 'SIGKILL');
    }, opts.timeoutMs);
    const onAbort = () => {
      failure = opts.signal!.reason as Error;
      killGroup(child, 'SIGTERM');
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e: NodeJS.ErrnoException) => {
      failure ??= new ToolError(
        e.code === 'ENOENT' ? `${what}: ${cmd} is not installed (not on PATH)` : `${what}: ${e.message}`,
      );
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (failure) reject(failure);
      else if (code === 0) resolve({ stdout: out, stderr: err });
      else
        reject(new ToolError(`${what} failed (${code !== null ? `exit ${code}` : sig}): ${lastLine(err)}`));
    });
  });
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal); // the group is gone already
  }
}

/** The last non-empty line of a tool's stderr, for a one-line error. */
export function lastLine(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
  return (lines.at(-1) ?? 'no message').slice(0, 500);
}
