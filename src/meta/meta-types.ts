/**
 * The plain objects MetaStore hands out, their mapping from rows, and what its parts share:
 * batch size, clock, and the lease kinds that keep every object.
 */
import type { Kysely } from 'kysely';
import type { Database, VersionStatus } from './schema.js';
import { parseTrackingText, trackingText } from './tracking.js';
import type { Tracking } from './tracking.js';

export type Db = Kysely<Database>;

export interface Version {
  uid: string;
  name: string;
  snapshotName: string;
  /** Microseconds since the epoch, UTC. */
  date: number;
  sizeBytes: number;
  blockSize: number;
  status: VersionStatus;
  baseUid: string | null;
  protected: boolean;
  hostname: string;
  /** What its change tracking is relative to (meta/tracking.ts); null or absent: not recorded. */
  tracking?: Tracking | null;
}

export interface BlockRow {
  idx: number;
  checksum: string | null;
  size: number;
  valid: boolean;
}

export interface Lease {
  id: string;
  versionUid: string | null;
  kind: string;
  hostname: string;
  pid: number;
  started: number;
  heartbeat: number;
}

/**
 * Lease kinds whose holder may reference any stored object, which it learns only as it reads
 * its input (an import's export file, recover's metadata copies): while one is held, cleanup
 * deletes no object at all.
 */
export const ANY_OBJECT_LEASE_KINDS: readonly string[] = ['import', 'recover'];

/**
 * Lease kinds of readers: a restore, scrub or export, a backup's -f base, an NBD connection's
 * version. A reader needs only the objects its version's block entries name, which those
 * entries keep; it never stores or looks up an object for reuse. So a reader's lease does not
 * hold back cleanup's cutoff (a VM booted over NBD for days must not keep every later
 * garbage object alive). A lease of one of these kinds naming an incomplete version is a
 * writer's (an `nbd -w` connection's new version) and does hold the cutoff, as does any kind
 * not listed here.
 */
export const READER_LEASE_KINDS: readonly string[] = ['restore', 'scrub', 'export', 'base', 'nbd'];

/** Rows per INSERT statement: well under SQLite's 32766 bound parameters and PostgreSQL's 65535. */
export const INSERT_BATCH = 1000;

let lastMicros = 0;
/** Wall-clock microseconds, strictly increasing within this process. */
export function nowMicros(): number {
  let t = Math.floor((performance.timeOrigin + performance.now()) * 1000);
  if (t <= lastMicros) t = lastMicros + 1;
  lastMicros = t;
  return t;
}

export function toLease(r: {
  id: string;
  version_uid: string | null;
  kind: string;
  hostname: string;
  pid: number;
  started: number;
  heartbeat: number;
}): Lease {
  return {
    id: r.id,
    versionUid: r.version_uid,
    kind: r.kind,
    hostname: r.hostname,
    pid: Number(r.pid),
    started: Number(r.started),
    heartbeat: Number(r.heartbeat),
  };
}

/** The versions row of `v` (the inverse of toVersion). */
export function versionRow(v: Version) {
  return {
    uid: v.uid,
    name: v.name,
    snapshot_name: v.snapshotName,
    date: v.date,
    size_bytes: v.sizeBytes,
    block_size: v.blockSize,
    status: v.status,
    base_uid: v.baseUid,
    protected: v.protected ? 1 : 0,
    hostname: v.hostname,
    tracking: trackingText(v.tracking),
  };
}

export function toVersion(r: {
  uid: string;
  name: string;
  snapshot_name: string;
  date: number;
  size_bytes: number;
  block_size: number;
  status: VersionStatus;
  base_uid: string | null;
  protected: number;
  hostname: string;
  tracking?: string | null;
}): Version {
  return {
    uid: r.uid,
    name: r.name,
    snapshotName: r.snapshot_name,
    date: Number(r.date),
    sizeBytes: Number(r.size_bytes),
    blockSize: Number(r.block_size),
    status: r.status,
    baseUid: r.base_uid,
    protected: Number(r.protected) === 1,
    hostname: r.hostname,
    tracking: parseTrackingText(r.tracking),
  };
}
