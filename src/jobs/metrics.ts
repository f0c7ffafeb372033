/**
 * The daemon's metrics in the Prometheus text format (version 0.0.4): what `metrics_file`
 * holds and `/metrics` serves. A small renderer of our own (no prom-client: a handful of
 * gauges read from the database, no in-process histograms). collectMetrics reads the
 * database; renderMetrics is pure.
 *
 * Every value comes from the database, so a metrics file written by one host agrees with
 * `ls`, `du` and `jobs` run anywhere:
 * - backy_job_last_success_timestamp_seconds{job}: start of the last successful run (absent
 *   until one succeeded);
 * - backy_job_last_run_success{job}: 1 or 0 (absent until the job ran);
 * - backy_job_last_run_duration_seconds{job}, backy_job_last_run_bytes_read{job},
 *   backy_job_last_run_bytes_stored{job}: of the last run;
 * - backy_job_running{job}: 1 while this daemon runs it;
 * - backy_job_next_run_timestamp_seconds{job}: when this daemon runs it next (absent without `every`);
 * - backy_versions{job,status}: the job's versions by status (valid, invalid, incomplete);
 * - backy_store_objects, backy_store_stored_bytes: objects recorded in the database and their
 *   stored bytes (`du`'s recorded_objects and recorded_bytes);
 * - backy_cleanup_last_success_timestamp_seconds, backy_scrub_last_timestamp_seconds: the
 *   daemon's own housekeeping (absent until it did some).
 */
import type { VersionStatus } from '../meta/meta-store.js';

export interface Metric {
  name: string;
  help: string;
  samples: { labels?: Record<string, string>; value: number }[];
}

/** A label value escaped as the text format wants it: backslash, double quote, newline. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** The text format: HELP and TYPE (all gauges) per metric, one line per sample. */
export function renderMetrics(metrics: readonly Metric[]): string {
  const out: string[] = [];
  for (const m of metrics) {
    out.push(`# HELP ${m.name} ${m.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`);
    out.push(`# TYPE ${m.name} gauge`);
    for (const s of m.samples) {
      const labels = Object.entries(s.labels ?? {});
      const l =
        labels.length === 0 ? '' : `{${labels.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`;
      out.push(`${m.name}${l} ${formatValue(s.value)}`);
    }
  }
  return `${out.join('\n')}\n`;
}

export interface JobMetricsInput {
  job: string;
  last?: { ok: boolean; started: number; finished: number; bytes: number; bytesStored: number };
  lastSuccessStarted?: number;
  running: boolean;
  /** Microseconds; undefined: never. */
  nextRun?: number;
  versions: Record<VersionStatus, number>;
}

export interface MetricsInput {
  jobs: readonly JobMetricsInput[];
  store: { objects: number; storedBytes: number };
  /** Microseconds. */
  lastCleanup?: number;
  lastScrub?: number;
}

const s = (us: number) => us / 1e6;

/** The metrics of `input`, in a fixed order. Pure. */
export function buildMetrics(input: MetricsInput): Metric[] {
  const per = (name: string, help: string, value: (j: JobMetricsInput) => number | undefined): Metric => ({
    name,
    help,
    samples: input.jobs.flatMap((j) => {
      const v = value(j);
      return v === undefined ? [] : [{ labels: { job: j.job }, value: v }];
    }),
  });
  const metrics: Metric[] = [
    per(
      'backy_job_last_success_timestamp_seconds',
      'Start of the last successful run of the job (Unix time).',
      (j) => (j.lastSuccessStarted === undefined ? undefined : s(j.lastSuccessStarted)),
    ),
    per('backy_job_last_run_success', 'Whether the last run of the job succeeded (1) or failed (0).', (j) =>
      j.last === undefined ? undefined : j.last.ok ? 1 : 0,
    ),
    per('backy_job_last_run_duration_seconds', 'Duration of the last run of the job.', (j) =>
      j.last === undefined ? undefined : s(j.last.finished - j.last.started),
    ),
    per(
      'backy_job_last_run_bytes_read',
      'Bytes read from the source by the last run of the job.',
      (j) => j.last?.bytes,
    ),
    per(
      'backy_job_last_run_bytes_stored',
      'Bytes written to the store (after dedup and compression) by the last run of the job.',
      (j) => j.last?.bytesStored,
    ),
    per('backy_job_running', 'Whether this daemon is running the job now.', (j) => (j.running ? 1 : 0)),
    per('backy_job_next_run_timestamp_seconds', 'When this daemon runs the job next (Unix time).', (j) =>
      j.nextRun === undefined ? undefined : s(j.nextRun),
    ),
    {
      name: 'backy_versions',
      help: "The job's versions by status.",
      samples: input.jobs.flatMap((j) =>
        (['valid', 'invalid', 'incomplete'] as const).map((status) => ({
          labels: { job: j.job, status },
          value: j.versions[status],
        })),
      ),
    },
    {
      name: 'backy_store_objects',
      help: 'Objects recorded in the metadata database.',
      samples: [{ value: input.store.objects }],
    },
    {
      name: 'backy_store_stored_bytes',
      help: 'Stored bytes of the recorded objects (after compression, with headers).',
      samples: [{ value: input.store.storedBytes }],
    },
  ];
  if (input.lastCleanup !== undefined) {
    metrics.push({
      name: 'backy_cleanup_last_success_timestamp_seconds',
      help: "End of the daemon's last successful cleanup (Unix time).",
      samples: [{ value: s(input.lastCleanup) }],
    });
  }
  if (input.lastScrub !== undefined) {
    metrics.push({
      name: 'backy_scrub_last_timestamp_seconds',
      help: "End of the daemon's last scrub of a version (Unix time).",
      samples: [{ value: s(input.lastScrub) }],
    });
  }
  return metrics;
}
