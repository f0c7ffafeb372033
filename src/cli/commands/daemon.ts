import { dirname } from 'node:path';
import { loadConfig } from '../../config/config.js';
import type { Config } from '../../config/config.js';
import { probeStore } from '../../core/store-probe.js';
import { UsageError, errorMessage } from '../../errors.js';
import { Daemon } from '../../jobs/daemon.js';
import type { DaemonHost, RecordsHandle, WorkHandle } from '../../jobs/daemon.js';
import { serveHttp } from '../../jobs/daemon-http.js';
import type { HttpEndpoint } from '../../jobs/daemon-http.js';
import { jobResultJson } from '../../jobs/job-result.js';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { mkdirp } from '../../util/mkdirp.js';
import { Context } from '../context.js';
import { jsonDate } from '../render.js';
import { cleanupCommand } from './cleanup.js';
import { jobViews } from './jobs.js';

/** How long SIGTERM waits for running jobs before stopping them as Ctrl-C does. */
export const STOP_GRACE_S = 60;

/** --stop-timeout SECONDS: a whole number, 0 to 3600. */
export function parseStopTimeout(value: string | undefined): number {
  if (value === undefined) return STOP_GRACE_S;
  const n = /^\d{1,4}$/.test(value) ? Number(value) : NaN;
  if (!(n >= 0 && n <= 3600))
    throw new UsageError(`--stop-timeout must be whole seconds from 0 to 3600, got '${value}'`);
  return n;
}

/**
 * `daemon`: runs the jobs on their schedule until SIGTERM or SIGINT (then exits 0); SIGHUP
 * reads the config again. See jobs/daemon.ts.
 */
export async function daemonCommand(ctx: Context, opts: { graceSeconds?: number } = {}) {
  const first = ctx.config;
  if (first.jobs.length === 0) {
    throw new UsageError(`${first.source} has no [job NAME] sections: the daemon would have nothing to run`);
  }
  const path = first.source;
  const log = ctx.log;
  let endpoint: HttpEndpoint | undefined;
  let metricsFile = first.scheduler.metricsFile;
  /** The current generation's handle on the database (its config is the one in force). */
  let records: Context | undefined;
  const host: DaemonHost = {
    log,
    loadConfig: () => loadConfig(path),
    openRecords: (): RecordsHandle => {
      const c = new Context(log, { machine: false, config: path });
      c.loadConfig(); // now: the file as it is at this (re)load
      records = c;
      return { meta: () => c.meta({ databaseOnly: true }), close: () => c.close() };
    },
    openWork: (_config: Config, signal: AbortSignal): WorkHandle => {
      const c = new Context(log, { machine: false, config: path, signal });
      return {
        get config() {
          return c.config;
        },
        log,
        meta: (o) => c.meta(o),
        store: (o) => c.store(o),
        updateCopies: (uids) => c.updateCopies(uids),
        recordRemoval: (uid, by) => c.recordRemoval(uid, by),
        copies: () => c.copies(),
        cleanup: () => cleanupCommand(c, {}),
        close: () => c.close(),
      };
    },
    probe: (config) => probeStore(config.dataBackend),
    onMetrics: async (text) => {
      if (!metricsFile) return;
      try {
        await mkdirp(dirname(metricsFile));
        await writeFileAtomic(metricsFile, text, { mode: 0o644, dirSync: 'best-effort' });
      } catch (err) {
        log.warn(`metrics file ${metricsFile} not written: ${errorMessage(err)}`);
      }
    },
  };
  const daemon = new Daemon(host, first, { graceMs: (opts.graceSeconds ?? STOP_GRACE_S) * 1000 });
  const listen = first.scheduler.listen;
  if (listen) {
    endpoint = await serveHttp(
      listen,
      {
        metrics: () => daemon.metricsText,
        jobs: async () => {
          {
            const next = await daemon.nextRuns();
            const running = daemon.running;
            return (await jobViews(records!)).map((v) => ({
              job: v.job.job,
              name: v.job.name,
              source: v.job.sourceText,
              state: running.has(v.job.job) || v.running ? 'running' : v.status.state,
              reasons: v.status.reasons,
              last_result: v.record.last ? jobResultJson(v.record.last) : null,
              last_success: v.record.lastSuccess ? jsonDate(v.record.lastSuccess.started) : null,
              last_success_us: v.record.lastSuccess?.started ?? null,
              next_run: next.get(v.job.job) === undefined ? null : jsonDate(next.get(v.job.job)!),
              next_run_us: next.get(v.job.job) ?? null,
              versions: v.status.versions,
            }));
          }
        },
      },
      (msg) => log.warn(msg),
    );
    log.notice(`Serving /metrics and /jobs on ${endpoint.where}`);
  }
  const onHup = () => {
    daemon.reload();
    const next = daemon.config.scheduler;
    metricsFile = next.metricsFile;
    if (JSON.stringify(next.listen) !== JSON.stringify(listen))
      log.warn('listen changed: it takes effect when the daemon is restarted');
  };
  process.on('SIGHUP', onHup);
  const onStop = () => void daemon.stop();
  ctx.signal.addEventListener('abort', onStop, { once: true });
  log.notice(
    `backy daemon started: ${first.jobs.length} job(s), max_parallel ${first.scheduler.maxParallel}` +
      (metricsFile ? `, metrics in ${metricsFile}` : ''),
  );
  try {
    await daemon.start();
  } finally {
    process.off('SIGHUP', onHup);
    ctx.signal.removeEventListener('abort', onStop);
    await endpoint?.close();
  }
  log.notice('backy daemon stopped');
}
