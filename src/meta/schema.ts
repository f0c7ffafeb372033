import type { ColumnType, Generated } from 'kysely';

/** incomplete: being written or crashed; valid: complete and verified; invalid: damage found. */
export type VersionStatus = 'incomplete' | 'valid' | 'invalid';

/** Integers that PostgreSQL returns as strings (bigint); the store converts them to numbers. */
type Int = ColumnType<number, number, number>;

export interface VersionsTable {
  uid: string;
  name: string;
  snapshot_name: string;
  /** Microseconds since the epoch, UTC. */
  date: Int;
  size_bytes: Int;
  block_size: Int;
  status: VersionStatus;
  base_uid: string | null;
  protected: Int;
  hostname: string;
  /** What the version's change tracking is relative to, as JSON (meta/tracking.ts); null: none recorded. */
  tracking: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface BlocksTable {
  version_uid: string;
  idx: Int;
  /** null for a sparse (all-zero) block, which has no object. */
  checksum: string | null;
  size: Int;
  valid: Int;
}

export interface ObjectsTable {
  checksum: string;
  stored_size: Int;
  valid: Int;
  /** Microseconds since the epoch: when a backup last stored or referenced this object. */
  last_seen: Int;
}

export interface LeasesTable {
  id: string;
  version_uid: string | null;
  kind: string;
  hostname: string;
  pid: Int;
  started: Int;
  heartbeat: Int;
}

/** Free-form KEY=VALUE labels of a version (backup -l, backy label); removed with it. */
export interface LabelsTable {
  version_uid: string;
  key: string;
  value: string;
}

export interface SettingsTable {
  key: string;
  value: string;
}

export interface Database {
  versions: VersionsTable;
  blocks: BlocksTable;
  objects: ObjectsTable;
  leases: LeasesTable;
  settings: SettingsTable;
  labels: LabelsTable;
}

export type { Generated };
