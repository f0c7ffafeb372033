/**
 * PostgreSQL for tests: a real server, never a mock.
 *
 * `pgServer()` uses $BACKY_TEST_PG_URL (a superuser URL; `.ci/run` and `npm run pg:start` set
 * it) or else starts a throwaway cluster for this test file (test/pg/pg-cluster.sh) and stops
 * it when the process exits. Without PostgreSQL binaries the PostgreSQL tests are skipped with
 * a message, unless $BACKY_REQUIRE_PG=1 (CI), which makes that a failure.
 * Every caller gets its own database (`createDatabase`), so test files can run in parallel.
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { REPO } from './cli.js';

const SCRIPT = join(REPO, 'test', 'pg', 'pg-cluster.sh');
const run = promisify(execFile);

export const PG_INSTALL_HINT =
  'PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql) or set BACKY_TEST_PG_URL';

/** A cluster this process started: can be killed and restarted (fault tests). */
export interface PgCluster {
  url: string;
  dir: string;
  /** pg_ctl stop -m immediate: the server goes away as in a crash. */
  kill(): Promise<void>;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

function binariesInstalled(): boolean {
  if (process.env.BACKY_PG_BINDIR) return existsSync(join(process.env.BACKY_PG_BINDIR, 'initdb'));
  try {
    if (readdirSync('/usr/lib/postgresql').some((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`))) {
      return true;
    }
  } catch {
    // not Debian's layout; try $PATH
  }
  try {
    execFileSync('sh', ['-c', 'command -v initdb'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Why the PostgreSQL tests cannot run here, or undefined when they can. Pass it as node:test's
 * `skip` option. Throws under BACKY_REQUIRE_PG=1 so that CI never silently skips them.
 */
export function pgSkipReason(opts: { ownCluster?: boolean } = {}): string | undefined {
  if (!opts.ownCluster && process.env.BACKY_TEST_PG_URL) return undefined;
  if (binariesInstalled()) return undefined;
  if (process.env.BACKY_REQUIRE_PG === '1') throw new Error(`BACKY_REQUIRE_PG=1: ${PG_INSTALL_HINT}`);
  return PG_INSTALL_HINT;
}

const started: PgCluster[] = [];
process.on('exit', () => {
  for (const c of started) {
    try {
      execFileSync('bash', [SCRIPT, 'stop', c.dir], { stdio: 'ignore' });
    } catch {
      // best effort: the temp dir is all that is left
    }
  }
});

/** Starts a throwaway cluster owned by this process (stopped at exit at the latest). */
export async function startCluster(): Promise<PgCluster> {
  const { stdout } = await run('bash', [SCRIPT, 'start']);
  const url = /BACKY_TEST_PG_URL=(\S+)/.exec(stdout)?.[1];
  const dir = /BACKY_TEST_PG_DIR=(\S+)/.exec(stdout)?.[1];
  if (!url || !dir) throw new Error(`pg-cluster.sh start printed no URL:\n${stdout}`);
  const cluster: PgCluster = {
    url,
    dir,
    kill: async () => void (await run('bash', [SCRIPT, 'kill', dir])),
    restart: async () => void (await run('bash', [SCRIPT, 'restart', dir])),
    stop: async () => {
      started.splice(started.indexOf(cluster), 1);
      await run('bash', [SCRIPT, 'stop', dir]);
    },
  };
  started.push(cluster);
  return cluster;
}

let shared: Promise<string> | undefined;

/** A superuser URL: $BACKY_TEST_PG_URL, or a cluster started for this process. */
export function pgServer(): Promise<string> {
  if (process.env.BACKY_TEST_PG_URL) return Promise.resolve(process.env.BACKY_TEST_PG_URL);
  shared ??= startCluster().then((c) => c.url);
  return shared;
}

/** Creates a database with a unique name on the server; returns its URL. */
export async function createDatabase(serverUrl: string, prefix = 'backy_test'): Promise<string> {
  const name = `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE "${name}"`);
  } finally {
    await client.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Drops a database made by createDatabase (connections to it are terminated first). */
export async function dropDatabase(serverUrl: string, dbUrl: string): Promise<void> {
  const name = decodeURIComponent(new URL(dbUrl).pathname.slice(1));
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/** A fresh database on the test server: the engine URL for one test (file). */
export async function pgDatabase(prefix?: string): Promise<string> {
  return createDatabase(await pgServer(), prefix);
}
