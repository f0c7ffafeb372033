/** What one run of one job came to: what `run` prints, `jobs` and `check` read back, the daemon exports. */
export interface JobResult {
  job: string;
  ok: boolean;
  /** The version this run made (also on some failures: a backup left incomplete or invalid). */
  uid?: string;
  /** One line, when !ok. */
  error?: string;
  /** Microseconds since the epoch. */
  started: number;
  finished: number;
  /** Bytes read from the source. */
  bytes: number;
  /** Bytes written to the store (after dedup and compression). */
  bytesStored: number;
}

/** The snake_case JSON of a result (`run --json`, the database record). */
export function jobResultJson(r: JobResult) {
  return {
    job: r.job,
    ok: r.ok,
    uid: r.uid ?? null,
    error: r.error ?? null,
    started_us: r.started,
    finished_us: r.finished,
    bytes_read: r.bytes,
    bytes_stored: r.bytesStored,
  };
}

export function jobResultFromJson(j: unknown): JobResult | undefined {
  if (typeof j !== 'object' || j === null) return undefined;
  const o = j as Record<string, unknown>;
  if (typeof o.job !== 'string' || typeof o.ok !== 'boolean') return undefined;
  if (typeof o.started_us !== 'number' || typeof o.finished_us !== 'number') return undefined;
  return {
    job: o.job,
    ok: o.ok,
    uid: typeof o.uid === 'string' ? o.uid : undefined,
    error: typeof o.error === 'string' ? o.error : undefined,
    started: o.started_us,
    finished: o.finished_us,
    bytes: typeof o.bytes_read === 'number' ? o.bytes_read : 0,
    bytesStored: typeof o.bytes_stored === 'number' ? o.bytes_stored : 0,
  };
}
