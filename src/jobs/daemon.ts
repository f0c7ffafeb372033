/**
 * `backy daemon`: runs the jobs when due (schedule.ts), `max_parallel` at a time, cleanup
 * every `cleanup_every`, and each job's scrubs (`scrub_percent` of the blocks of every version
 * not scrubbed within `scrub_every`, longest-unscrubbed first), and keeps the metrics
 * (metrics.ts) current. It does not daemonize: systemd (or any supervisor) runs it.
 *
 * Two handles on the database: `records` (opened for reading, never touching the store) for
 * the schedule, the metrics and /jobs, and recording a job as failed when the store cannot be
 * reached; `work` (opened as a writing command on the store's owner) for jobs, scrubs and
 * cleanup, opened when first needed and again after a failure. Before starting jobs the store
 * gets one quick probe: unreachable, every due job fails at once with one line (and is tried
 * again at its next slot), instead of each waiting out the S3 timeout.
 *
 * Jobs come first: housekeeping (one cleanup or one version's scrub at a time) takes a free
 * slot only while no job waits. stop(): nothing new starts; running work gets `graceMs` to
 * finish, then is stopped as Ctrl-C stops a command (its signal aborts). reload() swaps in a
 * new config for what starts from then on; the old work handle closes once idle.
 */
import type { Config } from '../config/config.js';
import { scrubQueue, scrubRecorded } from '../core/batch-scrub.js';
import type { CopyKeeper } from '../core/copy-keeper.js';
import type { ProbeResult } from '../core/store-probe.js';
import { errorMessage } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';
import { nowMicros } from '../meta/meta-store.js';
import { scrubTimes } from '../meta/scrub-times.js';
import type { Logger } from '../util/log.js';
import type { JobConfig } from './job-config.js';
import type { JobContext } from './job-context.js';
import { readJobRecords, recordJobResult } from './job-records.js';
import type { JobRecord } from './job-records.js';
import type { JobResult } from './job-result.js';
import { jobVersions } from './job-versions.js';
import { buildMetrics, renderMetrics } from './metrics.js';
import type { JobMetricsInput } from './metrics.js';
import { runJobs } from './run-jobs.js';
import { dueJobs, nextRunAt } from './schedule.js';
import type { ScheduleInput } from './schedule.js';

/** What the daemon does its work through (the CLI's Context has all of it). */
export interface WorkHandle extends JobContext {
  copies(): Promise<CopyKeeper>;
  /** One cleanup, as `backy cleanup` does it. */
  cleanup(): Promise<void>;
  close(): Promise<void>;
}

export interface RecordsHandle {
  meta(): Promise<MetaStore>;
  close(): Promise<void>;
}

export interface DaemonHost {
  log: Logger;
  /** The config file read again (SIGHUP); throws a ConfigError when it is bad. */
  loadConfig(): Config;
  openRecords(config: Config): RecordsHandle;
  /** `signal` stops the work (jobs, scrubs, cleanup) as Ctrl-C does. */
  openWork(config: Config, signal: AbortSignal): WorkHandle;
  probe(config: Config): Promise<ProbeResult>;
  /** The metrics text changed (write metrics_file, serve /metrics). */
  onMetrics(text: string): Promise<void>;
}

/** How often the daemon looks at the schedule. */
const TICK_MS = 1000;
/** How often the metrics are refreshed when nothing finishes. */
const METRICS_EVERY_MS = 15_000;

interface Gen {
  config: Config;
  records: RecordsHandle;
  work?: WorkHandle;
  /** The work handle being opened. */
  opening?: Promise<WorkHandle>;
  /** Work running on this generation's handle. */
  busy: number;
}

export class Daemon {
  readonly #host: DaemonHost;
  readonly #graceMs: number;
  #gen: Gen;
  readonly #old = new Set<Gen>();
  readonly #running = new Map<string, Promise<void>>();
  #housekeeping: Promise<void> | undefined;
  /** When each job was last tried by this daemon (busy elsewhere, store unreachable). */
  readonly #tried = new Map<string, number>();
  readonly #abort = new AbortController();
  #stopping = false;
  #lastCleanup: number | undefined;
  #cleanupTried: number;
  #lastScrub: number | undefined;
  #metricsAt = 0;
  #metricsText = '';
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;

  constructor(host: DaemonHost, config: Config, opts: { graceMs: number }) {
    this.#host = host;
    this.#graceMs = opts.graceMs;
    this.#gen = { config, records: host.openRecords(config), busy: 0 };
    this.#cleanupTried = nowMicros();
  }

  get config(): Config {
    return this.#gen.config;
  }

  /** The metrics as last rendered. */
  get metricsText(): string {
    return this.#metricsText;
  }

  /** Jobs this daemon runs now. */
  get running(): ReadonlySet<string> {
    return new Set(this.#running.keys());
  }

  /** Starts the loop; resolves when it has stopped (after stop()). */
  start(): Promise<void> {
    this.#loop ??= this.#run();
    return this.#loop;
  }

  async #run(): Promise<void> {
    await this.#refreshMetrics().catch((err: unknown) => this.#warn('metrics', err));
    while (!this.#stopping) {
      try {
        await this.#tick();
        this.#lastWarning = undefined;
      } catch (err) {
        this.#warn('scheduling', err);
      }
      if (Date.now() - this.#metricsAt >= METRICS_EVERY_MS) {
        await this.#refreshMetrics().catch((err: unknown) => this.#warn('metrics', err));
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, TICK_MS);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
    await this.#drain();
  }

  /** SIGTERM/SIGINT: start nothing more; running work gets the grace period, then is stopped. */
  stop(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    return this.start();
  }

  async #drain(): Promise<void> {
    const all = () => [...this.#running.values(), ...(this.#housekeeping ? [this.#housekeeping] : [])];
    if (all().length > 0) {
      this.#host.log.notice(
        `Stopping: waiting up to ${Math.round(this.#graceMs / 1000)} s for ${[...this.#running.keys()].join(', ') || 'housekeeping'}`,
      );
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        Promise.allSettled(all()).then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(true), this.#graceMs))),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        this.#host.log.warn(
          `Stopping the running work now: ${[...this.#running.keys()].join(', ') || 'housekeeping'}`,
        );
        this.#abort.abort();
        await Promise.allSettled(all());
      }
    }
    await this.#refreshMetrics().catch(() => {});
    for (const g of [this.#gen, ...this.#old]) await this.#closeGen(g);
  }

  /** SIGHUP: the config is read again; a bad one is logged and the old one kept. */
  reload(): void {
    let config: Config;
    try {
      config = this.#host.loadConfig();
    } catch (err) {
      this.#host.log.error(`config not reloaded, the old one stays in force: ${errorMessage(err)}`);
      return;
    }
    const old = this.#gen;
    this.#gen = { config, records: this.#host.openRecords(config), busy: 0 };
    this.#old.add(old);
    void this.#closeIdle();
    this.#host.log.notice(`Reloaded ${config.source}: ${config.jobs.length} job(s)`);
    this.#wake?.();
  }

  async #closeGen(g: Gen): Promise<void> {
    await g.work?.close().catch(() => {});
    g.work = undefined;
    await g.records.close().catch(() => {});
  }

  async #closeIdle(): Promise<void> {
    for (const g of [...this.#old]) {
      if (g.busy > 0) continue;
      this.#old.delete(g);
      await this.#closeGen(g);
    }
  }

  /** The last warning: the same one again (every tick while the database is away) is not repeated. */
  #lastWarning: string | undefined;

  #warn(what: string, err: unknown): void {
    const msg = `daemon ${what}: ${errorMessage(err)}`;
    if (msg === this.#lastWarning) return;
    this.#lastWarning = msg;
    this.#host.log.warn(msg);
  }

  #scheduleInputs(jobs: readonly JobConfig[], records: Map<string, JobRecord>): ScheduleInput[] {
    return jobs.map((j) => {
      const recorded = records.get(j.job)?.last?.started;
      const tried = this.#tried.get(j.job);
      const lastStarted =
        recorded === undefined ? tried : tried === undefined ? recorded : Math.max(recorded, tried);
      return { job: j.job, every: j.every, lastStarted };
    });
  }

  async #tick(): Promise<void> {
    const gen = this.#gen;
    const { config } = gen;
    const meta = await gen.records.meta();
    const records = await readJobRecords(meta);
    const now = nowMicros();
    const running = new Set(this.#running.keys());
    const due = dueJobs(this.#scheduleInputs(config.jobs, records), now, running);
    const slots = () => config.scheduler.maxParallel - this.#running.size - (this.#housekeeping ? 1 : 0);
    if (due.length > 0 && slots() > 0) {
      const probe = await this.#host.probe(config);
      if (!probe.ok) {
        for (const name of due)
          await this.#failUnstarted(meta, name, `the store cannot be reached: ${probe.why}`);
        return;
      }
      let work: WorkHandle;
      try {
        work = await this.#work(gen);
      } catch (err) {
        for (const name of due) await this.#failUnstarted(meta, name, errorMessage(err).split('\n')[0]);
        return;
      }
      for (const name of due) {
        if (slots() <= 0 || this.#stopping) break;
        this.#startJob(gen, work, name);
      }
    }
    if (due.length === 0 && slots() > 0 && !this.#housekeeping && !this.#stopping) {
      const work = await this.#housekeepingDue(gen, meta, now);
      if (work) {
        gen.busy++;
        this.#housekeeping = work().finally(() => {
          gen.busy--;
          this.#housekeeping = undefined;
          void this.#closeIdle();
          void this.#refreshMetrics().catch((err: unknown) => this.#warn('metrics', err));
          this.#wake?.();
        });
      }
    }
  }

  async #failUnstarted(meta: MetaStore, job: string, error: string): Promise<void> {
    const now = nowMicros();
    this.#tried.set(job, now);
    this.#host.log.error(`[job ${job}] not started: ${error}`);
    const r: JobResult = { job, ok: false, error, started: now, finished: now, bytes: 0, bytesStored: 0 };
    await recordJobResult(meta, r).catch((err: unknown) => this.#warn(`record of job ${job}`, err));
  }

  /**
   * The work handle with its database and store open: opened once, before anything runs on
   * it (two first opens at once race for the database's lock).
   */
  async #work(gen: Gen): Promise<WorkHandle> {
    if (gen.work) return gen.work;
    gen.opening ??= (async () => {
      const w = this.#host.openWork(gen.config, this.#abort.signal);
      try {
        await w.meta({ write: 'run' });
        await w.store({ root: 'create' });
      } catch (err) {
        await w.close().catch(() => {});
        throw err;
      }
      gen.work = w;
      return w;
    })().finally(() => (gen.opening = undefined));
    return gen.opening;
  }

  #startJob(gen: Gen, work: WorkHandle, name: string): void {
    this.#tried.set(name, nowMicros());
    gen.busy++;
    const p = runJobs({ ctx: work, jobs: [name], signal: this.#abort.signal, maxParallel: 1 })
      .then(([r]) => {
        if (r.ok)
          this.#host.log.notice(
            `[job ${name}] ok: version ${r.uid}, ${r.bytes} bytes read, ${r.bytesStored} stored`,
          );
        else this.#host.log.error(`[job ${name}] failed: ${r.error}`);
        // A failure to open the database or the store: open it again next time.
        if (!r.ok && r.uid === undefined) void this.#resetWork(gen);
      })
      .catch((err: unknown) => this.#warn(`job ${name}`, err))
      .finally(() => {
        gen.busy--;
        this.#running.delete(name);
        void this.#closeIdle();
        void this.#refreshMetrics().catch((err: unknown) => this.#warn('metrics', err));
        this.#wake?.();
      });
    this.#running.set(name, p);
  }

  async #resetWork(gen: Gen): Promise<void> {
    if (gen.busy > 0 || !gen.work) return;
    const w = gen.work;
    gen.work = undefined;
    await w.close().catch(() => {});
  }

  /** Cleanup when `cleanup_every` has passed; else the longest-unscrubbed version a job wants scrubbed. */
  async #housekeepingDue(gen: Gen, meta: MetaStore, now: number): Promise<(() => Promise<void>) | undefined> {
    const { config } = gen;
    const every = config.scheduler.cleanupEvery;
    if (every !== undefined && now - this.#cleanupTried >= every * 1e6) {
      this.#cleanupTried = now;
      return async () => {
        try {
          await (await this.#work(gen)).cleanup();
          this.#lastCleanup = nowMicros();
          this.#host.log.info('Cleanup done');
        } catch (err) {
          this.#host.log.error(`cleanup failed: ${errorMessage(err)}`);
          await this.#resetWork(gen);
        }
      };
    }
    const scrubbing = config.jobs.filter((j) => j.scrubPercent !== undefined && j.scrubEvery !== undefined);
    if (scrubbing.length === 0) return undefined;
    const times = await scrubTimes(meta);
    let pick: { job: JobConfig; uid: string; last: number } | undefined;
    for (const job of scrubbing) {
      const queue = scrubQueue(await jobVersions(meta, job), times, { before: now - job.scrubEvery! * 1e6 });
      if (queue.length === 0) continue;
      const last = times.get(queue[0].uid)?.at ?? -Infinity;
      if (!pick || last < pick.last) pick = { job, uid: queue[0].uid, last };
    }
    if (!pick) return undefined;
    const { job, uid } = pick;
    return async () => {
      try {
        const work = await this.#work(gen);
        const wmeta = await work.meta({ write: 'scrub' });
        const r = await scrubRecorded({
          meta: wmeta,
          store: await work.store(),
          copies: await work.copies(),
          uid,
          percent: job.scrubPercent!,
          signal: this.#abort.signal,
        });
        this.#lastScrub = nowMicros();
        if ('skipped' in r) this.#host.log.info(`[job ${job.job}] scrub of ${uid} skipped: ${r.skipped}`);
        else if (r.result.bad > 0)
          this.#host.log.error(
            `[job ${job.job}] scrub of ${uid} found ${r.result.bad} damaged or missing blocks; ${r.result.versionsAffected.length} version(s) marked invalid`,
          );
        else
          this.#host.log.info(
            `[job ${job.job}] scrubbed ${uid}: ${r.result.checked} blocks checked, all sound`,
          );
      } catch (err) {
        this.#host.log.error(`[job ${job.job}] scrub of ${uid} failed: ${errorMessage(err)}`);
        await this.#resetWork(gen);
      }
    };
  }

  /** Reads the metrics from the database and hands them to the host. */
  async #refreshMetrics(): Promise<void> {
    this.#metricsAt = Date.now();
    const { config, records: rh } = this.#gen;
    const meta = await rh.meta();
    const records = await readJobRecords(meta);
    const now = nowMicros();
    const inputs = this.#scheduleInputs(config.jobs, records);
    const jobs: JobMetricsInput[] = [];
    for (const [i, job] of config.jobs.entries()) {
      const rec = records.get(job.job);
      const versions = { valid: 0, invalid: 0, incomplete: 0 };
      for (const v of await jobVersions(meta, job)) versions[v.status]++;
      jobs.push({
        job: job.job,
        last: rec?.last,
        lastSuccessStarted: rec?.lastSuccess?.started,
        running: this.#running.has(job.job),
        nextRun: this.#running.has(job.job) ? undefined : nextRunAt(inputs[i], now),
        versions,
      });
    }
    const stats = await meta.objectStats();
    this.#metricsText = renderMetrics(
      buildMetrics({
        jobs,
        store: { objects: stats.count, storedBytes: stats.bytes },
        lastCleanup: this.#lastCleanup,
        lastScrub: this.#lastScrub,
      }),
    );
    await this.#host.onMetrics(this.#metricsText);
  }

  /** For /jobs: when each job runs next (microseconds), from the records. */
  async nextRuns(): Promise<Map<string, number | undefined>> {
    const { config, records: rh } = this.#gen;
    const records = await readJobRecords(await rh.meta());
    const now = nowMicros();
    return new Map(this.#scheduleInputs(config.jobs, records).map((j) => [j.job, nextRunAt(j, now)]));
  }
}
