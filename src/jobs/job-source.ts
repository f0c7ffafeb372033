/**
 * What a job's source does in one run (rbd-job.ts, qcow2-job.ts, read-job.ts): pick its base
 * among the job's versions, capture the image (snapshot, or read it while it is not in use),
 * back it up through backy's core, and afterwards keep only the change tracking (snapshot,
 * bitmap) that belongs to the newest version.
 */
import type { BackupResult } from '../core/backup.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { JobConfig } from './job-config.js';

export interface JobLog {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
}

export interface SourceRun {
  job: JobConfig;
  meta: MetaStore;
  store: BlockStore;
  blockSize: number;
  hintCheckBlocks: number;
  /** The job's versions (label backy.job), oldest first, with their labels. */
  versions: readonly JobVersion[];
  /** This run reads what the change tracking calls unchanged and compares it with the base. */
  verify: boolean;
  signal?: AbortSignal;
  log: JobLog;
  /** Called once the image is captured (snapshot made, or read): the post hook runs then. */
  captured(): Promise<void>;
  /** Called with the new version as soon as it exists. */
  onVersion(v: Version): void;
}

export interface JobVersion extends Version {
  labels: Record<string, string>;
}

export interface SourceBackup extends BackupResult {
  /** Labels the source records with the version (what the next run's base choice reads). */
  labels: Record<string, string>;
  /**
   * What a verify run found wrong with the older versions (the new one is sound): the job
   * fails with this line, though its version is kept and used like any other.
   */
  problem?: string;
  /** After the version is valid and labelled: drop the change tracking older versions used. */
  finish(): Promise<void>;
}

export interface JobSourceHandler {
  /**
   * Backs the source up. On failure, whatever this run made in the source (a new snapshot) is
   * removed again before it throws.
   */
  backup(run: SourceRun): Promise<SourceBackup>;
}

/** Label naming the job a version belongs to. */
export const JOB_LABEL = 'backy.job';

/** The youngest valid version among `versions` for which `usable` holds. */
export function youngestValid(
  versions: readonly JobVersion[],
  usable: (v: JobVersion) => boolean = () => true,
): JobVersion | undefined {
  for (let i = versions.length - 1; i >= 0; i--) {
    const v = versions[i];
    if (v.status === 'valid' && usable(v)) return v;
  }
  return undefined;
}
