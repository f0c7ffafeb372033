/**
 * All metadata access. Every SQL statement lives in src/meta; callers see plain objects and
 * numbers. MetaStore is a facade composing small repositories over one database handle:
 * - MetaDb (meta-db.ts): the kysely handle, dialect, read-only flag, settings, migrations,
 *   write and cleanup transactions; every repository holds it.
 * - Leases (meta-leases.ts): running operations that cleanup must respect.
 * - Versions (meta-versions.ts): versions; takes Leases (a version created with its lease).
 * - BlockLists (meta-blocks.ts): each version's block entries.
 * - Objects (meta-objects.ts): stored objects and their validity.
 * - Garbage (meta-gc.ts): what cleanup removes; the safety argument is in core/cleanup.ts.
 * Versions and Objects share one CopyMarks (copy-pending.ts): the versions whose validity
 * this process changed. A repository reaches another only through its constructor.
 * Queries spanning concerns that need no state of their own stay free functions over the
 * handle: catalog.ts (protection, labels, du), copy-pending.ts, store-identity.ts,
 * encryption-setting.ts, record-import.ts (an import in one transaction).
 *
 * The facade's methods delegate to the repositories, one to one, so callers outside src/meta
 * keep calling meta.getVersion(...) and so on; new code may use the repositories themselves
 * (meta.versions, meta.blockLists, meta.objects, meta.gc, meta.leasing).
 */
import type { HashFunction } from '../config/config.js';
import { CopyMarks } from './copy-pending.js';
import { BlockLists } from './meta-blocks.js';
import { MetaDb } from './meta-db.js';
import type { MetaHandle } from './meta-db.js';
import { Garbage } from './meta-gc.js';
import { Leases } from './meta-leases.js';
import { Objects } from './meta-objects.js';
import { Versions } from './meta-versions.js';
import type { NewVersion } from './meta-versions.js';
import type { BlockRow, Db, Lease, Version } from './meta-types.js';
import type { VersionStatus } from './schema.js';

export type { VersionStatus } from './schema.js';
export type { BlockRow, Lease, Version } from './meta-types.js';
export { ANY_OBJECT_LEASE_KINDS, READER_LEASE_KINDS, nowMicros } from './meta-types.js';
export { MetaDatabaseError, queryTimeoutMs } from './pg-connect.js';
export { LEASE_TIMEOUT_US, leaseAlive } from './meta-leases.js';

export class MetaStore implements MetaHandle {
  readonly #m: MetaDb;
  readonly #marks = new CopyMarks();
  /** The leases repository (named so because leases() lists them). */
  readonly leasing: Leases;
  readonly versions: Versions;
  readonly blockLists: BlockLists;
  readonly objects: Objects;
  readonly gc: Garbage;

  private constructor(m: MetaDb) {
    this.#m = m;
    this.leasing = new Leases(m);
    this.versions = new Versions(m, this.leasing, this.#marks);
    this.blockLists = new BlockLists(m);
    this.objects = new Objects(m, this.#marks);
    this.gc = new Garbage(m);
  }

  /** Opens (creating and migrating as needed) the metadata database named by an engine URL. */
  static async open(engine: string, opts: { hashFunction?: HashFunction } = {}): Promise<MetaStore> {
    return new MetaStore(await MetaDb.open(engine, opts.hashFunction));
  }

  // The database (meta-db.ts).

  /** The query builder, for src/meta only (catalog.ts and the like): SQL stays in src/meta. */
  get db(): Db {
    return this.#m.db;
  }
  get dialect(): 'sqlite' | 'postgres' {
    return this.#m.dialect;
  }
  get url(): string {
    return this.#m.url;
  }
  get hashFunction(): HashFunction {
    return this.#m.hashFunction;
  }
  /** See MetaDb.readOnly. */
  get readOnly(): boolean {
    return this.#m.readOnly;
  }
  requireWritable(what: string): void {
    this.#m.requireWritable(what);
  }
  write<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
    return this.#m.write(fn);
  }

  /** Ends the leases' sessions, then the database handle. */
  async close(): Promise<void> {
    await this.leasing.close();
    await this.#m.close();
  }

  /**
   * The versions whose validity this process changed since the last call (their copies are
   * out of date), and forgets them (CopyMarks.take).
   */
  takeMarkedCopies(): string[] {
    return this.#marks.take();
  }

  // Leases (meta-leases.ts).

  acquireLease(kind: string, versionUid: string | null): Promise<Lease> {
    return this.leasing.acquireLease(kind, versionUid);
  }
  heartbeat(id: string): Promise<void> {
    return this.leasing.heartbeat(id);
  }
  durableHeartbeat(id: string): Promise<void> {
    return this.leasing.durableHeartbeat(id);
  }
  releaseLease(id: string): Promise<void> {
    return this.leasing.releaseLease(id);
  }
  isLeaseAlive(lease: Lease): Promise<boolean> {
    return this.leasing.isLeaseAlive(lease);
  }
  leases(): Promise<Lease[]> {
    return this.leasing.leases();
  }

  // Versions (meta-versions.ts).

  createVersion(v: NewVersion): Promise<Version> {
    return this.versions.createVersion(v);
  }
  createVersionWithLease(v: NewVersion, kind: string): Promise<{ version: Version; lease: Lease }> {
    return this.versions.createVersionWithLease(v, kind);
  }
  insertVersionWithLease(version: Version, kind: string): Promise<Lease> {
    return this.versions.insertVersionWithLease(version, kind);
  }
  findVersion(uid: string): Promise<Version | undefined> {
    return this.versions.findVersion(uid);
  }
  getVersion(uid: string): Promise<Version> {
    return this.versions.getVersion(uid);
  }
  listVersions(filter: { name?: string } = {}): Promise<Version[]> {
    return this.versions.listVersions(filter);
  }
  setVersionStatus(uid: string, status: VersionStatus): Promise<void> {
    return this.versions.setVersionStatus(uid, status);
  }
  setVersionSize(uid: string, sizeBytes: number): Promise<void> {
    return this.versions.setVersionSize(uid, sizeBytes);
  }
  completeVersion(uid: string, opts: { durable?: boolean } = {}): Promise<string | undefined> {
    return this.versions.completeVersion(uid, opts);
  }
  revalidateVersion(uid: string): Promise<string | undefined> {
    return this.versions.revalidateVersion(uid);
  }
  removeVersionUnlessHeld(uid: string, isLive: (l: Lease) => Promise<boolean>): Promise<Lease[]> {
    return this.versions.removeVersionUnlessHeld(uid, isLive);
  }
  removeVersion(uid: string, opts: { protectedToo?: boolean } = {}): Promise<void> {
    return this.versions.removeVersion(uid, opts);
  }

  // Block lists (meta-blocks.ts).

  copyBlocks(fromUid: string, toUid: string, blockCount: number): Promise<void> {
    return this.blockLists.copyBlocks(fromUid, toUid, blockCount);
  }
  putBlocks(uid: string, rows: readonly BlockRow[]): Promise<void> {
    return this.blockLists.putBlocks(uid, rows);
  }
  blockPage(uid: string, fromIdx: number, limit?: number): Promise<BlockRow[]> {
    return this.blockLists.blockPage(uid, fromIdx, limit);
  }
  blocks(uid: string): AsyncIterable<BlockRow> {
    return this.blockLists.blocks(uid);
  }
  blockPages(uid: string, pageSize?: number): AsyncIterable<BlockRow[]> {
    return this.blockLists.blockPages(uid, pageSize);
  }
  blocksAt(uid: string, indices: readonly number[]): Promise<Map<number, BlockRow>> {
    return this.blockLists.blocksAt(uid, indices);
  }

  // Objects (meta-objects.ts).

  markObjectInvalid(checksum: string): Promise<string[]> {
    return this.objects.markObjectInvalid(checksum);
  }
  touchObject(checksum: string, now: number): Promise<boolean> {
    return this.objects.touchObject(checksum, now);
  }
  recordObjects(objects: readonly { checksum: string; storedSize: number }[], now: number): Promise<void> {
    return this.objects.recordObjects(objects, now);
  }
  objectsSound(checksums: readonly string[]): Promise<string[]> {
    return this.objects.objectsSound(checksums);
  }
  objectStats(): Promise<{ count: number; bytes: number }> {
    return this.objects.objectStats();
  }
  recordedObjects(checksums: readonly string[]): Promise<Map<string, { valid: boolean }>> {
    return this.objects.recordedObjects(checksums);
  }
  adoptObjects(sizes: ReadonlyMap<string, number | undefined>): Promise<Set<string>> {
    return this.objects.adoptObjects(sizes);
  }

  // Garbage (meta-gc.ts).

  orphanedIncompleteVersions(): Promise<Version[]> {
    return this.gc.orphanedIncompleteVersions();
  }
  removeOrphanedIncompleteVersion(uid: string): Promise<boolean> {
    return this.gc.removeOrphanedIncompleteVersion(uid);
  }
  garbageCandidates(
    cutoff: number,
    after: string,
    limit?: number,
    ignoreVersions?: readonly string[],
    dryRun?: boolean,
  ): Promise<{ checksum: string; storedSize: number }[]> {
    return this.gc.garbageCandidates(cutoff, after, limit, ignoreVersions, dryRun);
  }
  deleteGarbage(
    checksums: readonly string[],
    cutoff: number,
    unlink: (checksums: string[]) => Promise<void>,
  ): Promise<{ checksum: string; storedSize: number }[]> {
    return this.gc.deleteGarbage(checksums, cutoff, unlink);
  }
  sweepUnrecorded(keys: readonly string[], fn: (unrecorded: string[]) => Promise<void>): Promise<boolean> {
    return this.gc.sweepUnrecorded(keys, fn);
  }
}
