/**
 * The rbd command-line tool, as jobs use it: image identity, snapshots, and `export-diff`
 * streams. Every call has a time limit (rbd waits forever on a down OSD); an export-diff
 * stream is killed when it delivers nothing for RBD_STALL_MS. The cluster is the one the
 * environment names (CEPH_CONF, CEPH_ARGS), as for rbd run by hand.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { ToolError, lastLine, runTool } from './tool.js';

/** Time limit of one rbd metadata call (info, snap ls/create/rm). */
export const RBD_TIMEOUT_MS = 120_000;
/** An export-diff stream that delivers no data for this long is killed. */
export const RBD_STALL_MS = 300_000;

async function rbd(args: string[], signal?: AbortSignal): Promise<string> {
  return (await runTool('rbd', args, { timeoutMs: RBD_TIMEOUT_MS, signal, what: `rbd ${args.join(' ')}` }))
    .stdout;
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new ToolError(`${what} printed no JSON: ${lastLine(text)}`);
  }
}

/** The image's id (`rbd info` "id"): stable for the image's life, new for an image recreated under the same name. */
export async function rbdImageId(spec: string, signal?: AbortSignal): Promise<string> {
  const info = parseJson(await rbd(['info', '--format', 'json', spec], signal), `rbd info ${spec}`) as {
    id?: unknown;
  };
  if (typeof info.id !== 'string' || !/^[0-9a-f]{1,64}$/.test(info.id)) {
    throw new ToolError(`rbd info ${spec} names no image id (format 1 images are not supported)`);
  }
  return info.id;
}

/** The names of the image's snapshots. */
export async function rbdSnapshots(spec: string, signal?: AbortSignal): Promise<string[]> {
  const list = parseJson(await rbd(['snap', 'ls', '--format', 'json', spec], signal), `rbd snap ls ${spec}`);
  if (!Array.isArray(list)) throw new ToolError(`rbd snap ls ${spec} printed no list`);
  return list.map((s: { name?: unknown }) => String(s.name));
}

export async function rbdSnapCreate(spec: string, snap: string, signal?: AbortSignal): Promise<void> {
  await rbd(['snap', 'create', '--no-progress', `${spec}@${snap}`], signal);
}

export async function rbdSnapRemove(spec: string, snap: string, signal?: AbortSignal): Promise<void> {
  await rbd(['snap', 'rm', '--no-progress', `${spec}@${snap}`], signal);
}

/**
 * `rbd export-diff [--from-snap FROM] SPEC@SNAP -`: the stream, and `done`, which resolves
 * when rbd exited 0 and rejects otherwise (exit code, stall, abort). `kill` ends it early.
 */
export function rbdExportDiff(
  spec: string,
  snap: string,
  fromSnap: string | undefined,
  opts: { stallMs?: number } = {},
): { stream: AsyncIterable<Buffer>; done: Promise<void>; kill(): void } {
  const args = [
    'export-diff',
    '--no-progress',
    ...(fromSnap ? ['--from-snap', fromSnap] : []),
    `${spec}@${snap}`,
    '-',
  ];
  const what = `rbd ${args.join(' ')}`;
  const child: ChildProcess = spawn('rbd', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (err.length < 65536) err += b.toString();
  });
  const stallMs = opts.stallMs ?? RBD_STALL_MS;
  let failure: Error | undefined;
  let timer = setTimeout(stalled, stallMs);
  function stalled() {
    failure = new ToolError(`${what} delivered nothing for ${Math.round(stallMs / 1000)} s; killed it`);
    child.kill('SIGKILL');
  }
  child.stdout!.on('data', () => {
    clearTimeout(timer);
    timer = setTimeout(stalled, stallMs);
  });
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', (e: NodeJS.ErrnoException) => {
      failure ??= new ToolError(
        e.code === 'ENOENT' ? `${what}: rbd is not installed (not on PATH)` : `${what}: ${e.message}`,
      );
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      if (failure) reject(failure);
      else if (code === 0) resolve();
      else
        reject(new ToolError(`${what} failed (${code !== null ? `exit ${code}` : sig}): ${lastLine(err)}`));
    });
  });
  done.catch(() => {}); // observed by the caller; never an unhandled rejection
  return {
    stream: child.stdout! as AsyncIterable<Buffer>,
    done,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
