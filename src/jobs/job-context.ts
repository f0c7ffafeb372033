import type { Config } from '../config/config.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { JobLog } from './job-source.js';

/**
 * What running jobs needs from the command around it (the CLI's Context has all of it): the
 * config, a log, the metadata and block stores, and the store-side bookkeeping of a version's
 * change (its metadata copy) and removal (its tombstone).
 */
export interface JobContext {
  readonly config: Config;
  readonly log: JobLog;
  /** `probe`: a store that does not answer within a few seconds fails the open, in one line. */
  meta(opts?: { write?: string; probe?: boolean }): Promise<MetaStore>;
  store(opts?: { root?: 'create' | 'check' | 'any' }): Promise<BlockStore>;
  updateCopies(uids: readonly string[]): Promise<void>;
  recordRemoval(uid: string, by: string): Promise<() => Promise<void>>;
}
