/**
 * All metadata access. Every SQL statement lives in src/meta; callers see plain objects and
 * numbers. MetaStore is a chain of classes, one concern a file, each extending the one before:
 * MetaBase (meta-base.ts: opening, settings, write transactions) -> MetaLeases (meta-leases.ts)
 * -> MetaVersions (meta-versions.ts) -> MetaBlocks (meta-blocks.ts) -> MetaObjects
 * (meta-objects.ts) -> MetaGarbage (meta-gc.ts) -> MetaStore. Their protected members are for
 * src/meta only; everyone else imports from here.
 */
import type { HashFunction } from '../config/config.js';
import { connectMeta } from './meta-base.js';
import { MetaGarbage } from './meta-gc.js';
import type { Db } from './meta-types.js';

export type { VersionStatus } from './schema.js';
export type { BlockRow, Lease, Version } from './meta-types.js';
export { ANY_OBJECT_LEASE_KINDS, READER_LEASE_KINDS, nowMicros } from './meta-types.js';
export { MetaDatabaseError, queryTimeoutMs } from './pg-connect.js';
export { LEASE_TIMEOUT_US, leaseAlive } from './meta-leases.js';

export class MetaStore extends MetaGarbage {
  private constructor(db: Db, dialect: 'sqlite' | 'postgres', url: string) {
    super(db, dialect, url);
  }

  /** Opens (creating and migrating as needed) the metadata database named by an engine URL. */
  static async open(engine: string, opts: { hashFunction?: HashFunction } = {}): Promise<MetaStore> {
    const { db, dialect, readOnly } = await connectMeta(engine);
    const store = new MetaStore(db, dialect, engine);
    await store.init(readOnly, opts.hashFunction);
    return store;
  }
}
