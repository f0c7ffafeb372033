/**
 * A real throwaway Ceph cluster for tests (one mon, one memstore OSD on loopback) through
 * ../shared/tools/mini-ceph.sh, plus helpers to run rbd commands and librbd writes
 * (/usr/bin/python3's rbd module) against it.
 *
 * Without Ceph installed the tests are skipped with a message naming the command that
 * installs it; in CI (CI=true) a missing Ceph is a failure instead, so CI cannot silently
 * stop testing Ceph.
 */
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from './cli.js';
import { spawnCollect } from './spawn.js';
import { hasCommand, skipUnlessCI } from './tools.js';

export const MINI_CEPH = join(REPO, '..', 'shared', 'tools', 'mini-ceph.sh');
const PYTHON = '/usr/bin/python3';
const ENABLE = 'sudo bash ../shared/tools/mini-ceph.sh install';

/**
 * Why the Ceph tests cannot run here, or undefined when they can. In CI this throws instead
 * of returning a reason.
 */
export function cephMissing(): string | undefined {
  const missing = ['ceph-mon', 'ceph-osd', 'ceph', 'rbd', 'ceph-authtool', 'monmaptool', 'uuidgen'].filter(
    (b) => !hasCommand(b),
  );
  if (!existsSync(MINI_CEPH)) missing.push(MINI_CEPH);
  if (!existsSync(PYTHON)) missing.push(PYTHON);
  return skipUnlessCI(
    missing,
    `Ceph tests need a local Ceph (missing: ${missing.join(', ')}); enable them with (from the repository root): ${ENABLE}`,
  );
}

export interface ShResult {
  stdout: string;
  stderr: string;
}

/** Runs a bash command line (pipefail) with the given environment; throws with stderr on failure. */
export async function sh(cmd: string, env: NodeJS.ProcessEnv = {}): Promise<ShResult> {
  const r = await spawnCollect('bash', ['-c', `set -euo pipefail\n${cmd}`], { env });
  if (r.code !== 0) throw new Error(`command failed (exit ${r.code}): ${cmd}\n${r.stderr}`);
  return { stdout: r.stdout.toString(), stderr: r.stderr };
}

/** Single-quotes a value for bash. */
export function q(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export type LibrbdOp =
  | { op: 'write'; offset: number; length: number; seed: number }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'resize'; size: number };

const LIBRBD_SCRIPT = `
import json, os, random, sys, rados, rbd
pool, image, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cluster = rados.Rados(conffile=os.environ['CEPH_CONF'])
cluster.connect()
try:
    ioctx = cluster.open_ioctx(pool)
    with rbd.Image(ioctx, image) as img:
        for o in ops:
            if o['op'] == 'write':
                img.write(random.Random(o['seed']).randbytes(o['length']), o['offset'])
            elif o['op'] == 'discard':
                img.discard(o['offset'], o['length'])
            elif o['op'] == 'resize':
                img.resize(o['size'])
        img.flush()
    ioctx.close()
finally:
    cluster.shutdown()
`;

export class Ceph {
  readonly dir: string;
  readonly env: NodeJS.ProcessEnv;
  readonly pool: string;
  /** Seconds `mini-ceph.sh start` took. */
  readonly startSeconds: number;

  private constructor(dir: string, env: NodeJS.ProcessEnv, startSeconds: number) {
    this.dir = dir;
    this.env = env;
    this.pool = env.MINI_CEPH_POOL ?? 'rbd';
    this.startSeconds = startSeconds;
  }

  /** Starts a new cluster in a fresh temp dir (one per test file: ~9 s). */
  static async start(): Promise<Ceph> {
    const dir = await mkdtemp(join(tmpdir(), 'backy-ceph-'));
    const t0 = performance.now();
    const { stdout } = await sh(`bash ${q(MINI_CEPH)} start ${q(dir)}`);
    const seconds = (performance.now() - t0) / 1000;
    const env: NodeJS.ProcessEnv = {};
    for (const m of stdout.matchAll(/^export (\w+)='([^']*)'$/gm)) env[m[1]] = m[2];
    if (!env.CEPH_CONF) throw new Error(`mini-ceph.sh printed no CEPH_CONF:\n${stdout}`);
    return new Ceph(dir, env, seconds);
  }

  /** Runs a command line with CEPH_CONF set. */
  sh(cmd: string): Promise<ShResult> {
    return sh(cmd, this.env);
  }

  /** `pool/image[@snap]` */
  spec(image: string): string {
    return `${this.pool}/${image}`;
  }

  /** Writes, discards and resizes through librbd, in order. */
  async librbd(image: string, ops: LibrbdOp[]): Promise<void> {
    await sh(
      `${PYTHON} -c ${q(LIBRBD_SCRIPT)} ${q(this.pool)} ${q(image)} ${q(JSON.stringify(ops))}`,
      this.env,
    );
  }

  async destroy(): Promise<void> {
    await sh(`bash ${q(MINI_CEPH)} destroy ${q(this.dir)}`);
  }
}
