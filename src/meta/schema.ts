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
  /** Interior page ids as a JSON array (meta/page-tree.ts); null: nothing listed yet. */
  root: ColumnType<string | null, string | null | undefined, string | null>;
  /** Entries the root covers; past it only the pending puts count. */
  listed: ColumnType<number, number | undefined, number>;
  /** 1: invalid for a reason a sound object cannot cure (a gap, an import that said so). */
  held: ColumnType<number, number | undefined, number>;
  /** 1: incomplete and possibly reaching a damaged object (check every object on completion). */
  suspect: ColumnType<number, number | undefined, number>;
  /** Bytes of the version's blocks that have an object / are sparse (set when sealed). */
  data_bytes: ColumnType<number, number | undefined, number>;
  sparse_bytes: ColumnType<number, number | undefined, number>;
}

/** A page of a block-list tree (meta/page-tree.ts). */
export interface PagesTable {
  id: Generated<number>;
  hash: string;
  /** 0: a leaf (object ids); 1: an interior (leaf page ids). */
  level: Int;
  /** JSON array of integers. */
  entries: string;
  refs: Int;
  last_seen: Int;
  data_blocks: Int;
  sparse_blocks: Int;
}

/** An incomplete version's entries put since its root was copied (object id; 0 sparse). */
export interface BlockPutsTable {
  version_uid: string;
  idx: Int;
  object_id: Int;
}

/** An incomplete version's whole leaves put at once (page id; 0 all sparse). */
export interface LeafPutsTable {
  version_uid: string;
  leaf: Int;
  page_id: Int;
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
  id: Generated<number>;
  checksum: string;
  /** Leaf pages naming this object (meta/page-tree.ts). */
  refs: ColumnType<number, number | undefined, number>;
  /** Plaintext length, once a block list named it. */
  size: ColumnType<number | null, number | null | undefined, number | null>;
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
  pages: PagesTable;
  block_puts: BlockPutsTable;
  leaf_puts: LeafPutsTable;
  objects: ObjectsTable;
  leases: LeasesTable;
  settings: SettingsTable;
  labels: LabelsTable;
}

export type { Generated };
