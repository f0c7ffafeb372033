/** What every command gets: logger, output mode, and lazily opened config, metadata and store. */
import { describeDataBackend, loadConfig, redactUrl } from '../config/config.js';
import type { Config } from '../config/config.js';
import { BackyError, ConfigError, InputError, errorMessage } from '../errors.js';
import { NO_COPIES, copyKeeper } from '../core/copy-keeper.js';
import type { CopyKeeper } from '../core/copy-keeper.js';
import { settleEncryption } from '../meta/encryption-setting.js';
import { MetaStore } from '../meta/meta-store.js';
import { BlockStore } from '../storage/block-store.js';
import { formatCompression } from '../storage/codec.js';
import type { CodecSpec } from '../storage/codec.js';
import type { StorageBackend } from '../storage/backend.js';
import {
  DESCRIPTOR_NAME,
  DamagedDescriptorError,
  checkDescriptor,
  encodeDescriptor,
  readDescriptor,
} from '../core/store-descriptor.js';
import {
  absentStoreError,
  claimStore,
  describeStore,
  lostDescriptorError,
  notOwnerError,
  ownership,
  rebuildDescriptor,
  storeHoldsData,
  tombstoneName,
  writeTombstone,
} from '../core/store-authority.js';
import type { Ownership } from '../core/store-authority.js';
import { databaseHoldsData, readStoreId } from '../meta/store-identity.js';
import type { Descriptor } from '../core/store-descriptor.js';
import { DirBackend } from '../storage/dir-backend.js';
import { readKeyFile } from '../storage/keyfile.js';
import { passphraseSource } from './passphrase.js';
import type { StoreKeys } from '../storage/keyfile.js';
import { CodecPool } from '../util/codec-pool.js';
import { openBackend } from '../storage/open-backend.js';
import { writePendingTombstones } from '../core/pending-removals.js';
import { probeBackend, storeUnreachableMessage } from '../core/store-probe.js';
import { clearRemovalPending, markRemovalPending } from '../meta/removal-pending.js';
import type { Logger } from '../util/log.js';
import { setMigrationReporter } from '../meta/block-list-migration.js';

export class Context {
  readonly log: Logger;
  readonly machine: boolean;
  /** --json: results as JSON on stdout (one document per command). */
  readonly json: boolean;
  /** Aborted by SIGINT or SIGTERM; its reason is an InterruptedError. */
  readonly signal: AbortSignal;
  readonly #configPath: string | undefined;
  #config: Config | undefined;
  #meta: MetaStore | undefined;
  #store: BlockStore | undefined;
  #codecPool: CodecPool | undefined;
  #keys: StoreKeys | undefined;
  #backend: StorageBackend | undefined;
  #descriptor: Descriptor | undefined;
  #copies: CopyKeeper | undefined;
  #ownership: Ownership | undefined;
  /** Set when a `withoutStore` command found the store unreachable: why. */
  #storeDown: string | undefined;
  #tombstonesWritten = false;

  constructor(
    log: Logger,
    opts: { machine: boolean; json?: boolean; config?: string; signal?: AbortSignal },
  ) {
    this.log = log;
    // A database from before block-list pages is converted when first opened (once).
    let last = 0;
    setMigrationReporter((done, total) => {
      const now = Date.now();
      if (done === total || now - last > 2000) {
        last = now;
        log.notice(`converting block lists to pages: ${done} of ${total} versions`);
      }
    });
    this.machine = opts.machine;
    this.json = opts.json ?? false;
    this.signal = opts.signal ?? new AbortController().signal;
    this.#configPath = opts.config;
  }

  loadConfig(): Config {
    return this.config;
  }

  get config(): Config {
    if (!this.#config) {
      this.#config = loadConfig(this.#configPath);
      this.log.setLogfile(this.#config.logfile);
      this.log.debug(
        `config: ${this.#config.source}; metadata: ${redactUrl(this.#config.engine)}; data: ${describeDataBackend(this.#config.dataBackend)}`,
      );
    }
    return this.#config;
  }

  /**
   * The metadata store, once the key (if the config asks for encryption) is read and matches
   * the store's: a wrong or missing key fails here, before anything is read or written.
   * `write` names a command that must write (backup, rm...): on a read-only database it is
   * refused at once, naming the store, before anything is done. `databaseOnly` (ls, du): on a
   * database that already belongs to a store, the store gets PROBE_TIMEOUT_S to show its
   * descriptor, and the command goes on without it after that (or without S3 credentials at
   * all). `withoutStore` (label, protect, unprotect, rm, enforce: they change the database
   * only) likewise goes on without a store that does not answer in time: copies are marked
   * pending and removals recorded for their tombstones, both written once the store is back.
   * `probe` (cleanup): a store that does not answer in time fails the command at once, in one
   * line. A writing command runs only on the database that owns the store
   * (core/store-authority.ts; recover is the way to become it); with the store unreachable
   * that cannot be checked, and such a command writes nothing to the store. Without a
   * descriptor, a database with versions stops (absent store, or a lost descriptor over
   * data); `rebuild` (recover) rebuilds a lost or damaged one from the copies.
   */
  async meta(
    opts: {
      write?: string;
      databaseOnly?: boolean;
      rebuild?: boolean;
      withoutStore?: boolean;
      probe?: boolean;
    } = {},
  ): Promise<MetaStore> {
    if (!this.#meta) {
      const enc = this.config.dataBackend.encryption;
      if (enc) this.#keys = await readKeyFile(enc.keyFile, passphraseSource());
      const open = () => MetaStore.open(this.config.engine, { hashFunction: this.config.hashFunction });
      let meta: MetaStore | undefined = await open();
      try {
        // The store's descriptor first: a fresh database takes its settings (hash function,
        // encryption, key fingerprint), one of another store is refused before anything else.
        const known = async () => (await readStoreId(meta!)) !== undefined;
        const readsOnly = opts.databaseOnly === true && opts.write === undefined;
        // A command that may go on without the store, on a database that already belongs to
        // one, still checks the descriptor (a config pointing at another store is refused),
        // but gives the store a short time to answer: ls must work during a store outage.
        const probe = (readsOnly || opts.withoutStore || opts.probe) === true && (await known());
        const cfg = this.config.dataBackend;
        let backend: StorageBackend | undefined;
        let desc: Descriptor | undefined;
        let damaged = false;
        let unread = false;
        try {
          backend = probe ? await probeBackend(cfg, process.env, this.#sdkDebug) : await this.#openBackend();
        } catch (err) {
          // ls and du need only the database: no S3 credentials is no reason to fail them.
          if (!(probe && readsOnly && err instanceof ConfigError)) throw err;
          this.log.debug(`store not opened: ${errorMessage(err)}`);
          unread = true;
        }
        if (backend) {
          try {
            desc = await readDescriptor(backend);
          } catch (err) {
            // A damaged descriptor is what recover rebuilds. An unreachable store (gateway down,
            // directory unmounted) must not stop commands that only read the database, nor
            // those that change only the database: a database that already belongs to a store
            // goes on unchecked; other commands that write, or a fresh database, need it.
            if (err instanceof DamagedDescriptorError && opts.rebuild) damaged = true;
            else if (probe && opts.probe) {
              throw new BackyError(
                storeUnreachableMessage(
                  backend.url,
                  errorMessage(err),
                  `'${opts.write ?? 'this command'}' needs it; nothing was changed`,
                ),
              );
            } else if (probe && opts.withoutStore) {
              this.#storeDown = errorMessage(err);
              this.log.warn(
                `the store at ${backend.url} cannot be reached (${this.#storeDown}): changing the database only; ` +
                  "the store's metadata copies (and removal records) are written by the next command that reaches it, 'backy cleanup' at the latest",
              );
              unread = true;
            } else {
              if (opts.write !== undefined || !(await known())) throw err;
              this.log.debug(`store descriptor not read: ${errorMessage(err)}`);
              unread = true;
            }
          } finally {
            if (backend !== this.#backend) await backend.close().catch(() => {});
          }
        }
        if (!desc && !unread && !readsOnly) {
          desc = await this.#withoutDescriptor(meta, damaged, opts);
        }
        if (desc) {
          const store = await this.#openBackend();
          const adopted = (await checkDescriptor(meta, desc, store.url)) === 'adopted';
          if (adopted) {
            await meta.close();
            meta = undefined;
            meta = await open();
          }
          if (!meta.readOnly) this.#ownership = await ownership(meta, store, desc, adopted);
        }
        this.#descriptor = desc;
        await settleEncryption(
          meta,
          this.#keys ? { codec: 'aes-256-gcm', fingerprint: this.#keys.fingerprint } : { codec: 'none' },
        );
      } catch (err) {
        await meta?.close();
        throw err;
      }
      this.#meta = meta;
    }
    if (opts.write !== undefined) {
      this.#meta.requireWritable(opts.write);
      await this.#requireOwner(opts.write);
      await this.#writePendingTombstones();
    }
    return this.#meta;
  }

  /**
   * Removals made while the store was unreachable get their tombstones now (before cleanup or
   * recover lists the store's copies), by the store's owner only.
   */
  async #writePendingTombstones(): Promise<void> {
    const meta = this.#meta;
    if (!meta || meta.readOnly || this.#storeDown !== undefined || !this.#descriptor || !this.ownsStore)
      return;
    if (this.#tombstonesWritten) return;
    this.#tombstonesWritten = true;
    const written = await writePendingTombstones(meta, await this.#openBackend());
    if (written.length > 0)
      this.log.info(`Recorded in the store ${written.length} removal(s) made while it was unreachable`);
  }

  /** Why the store was not reached (withoutStore), or undefined. */
  get storeDown(): string | undefined {
    return this.#storeDown;
  }

  readonly #sdkDebug = (msg: string) => this.log.debug(msg);

  /**
   * No descriptor where the store should be (store-authority.ts rules 3 and 4): an absent
   * store for a database with versions, a lost one over data; `rebuild` (recover) rebuilds a
   * lost or damaged one from the copies, written only when the command writes.
   */
  async #withoutDescriptor(
    meta: MetaStore,
    damaged: boolean,
    opts: { write?: string; rebuild?: boolean },
  ): Promise<Descriptor | undefined> {
    const backend = await this.#openBackend();
    const storeId = await readStoreId(meta);
    const used = storeId !== undefined && (await databaseHoldsData(meta));
    if (!damaged && !used && !opts.rebuild) return undefined;
    // A data directory that is not there at all says so in its own words.
    if (used && backend instanceof DirBackend) await backend.checkRoot();
    if (!(await storeHoldsData(backend, { missingBucket: used ? 'error' : 'empty' }))) {
      if (used) throw absentStoreError(storeId, backend.url);
      return undefined;
    }
    if (!opts.rebuild) throw lostDescriptorError(backend.url);
    const d = await rebuildDescriptor({
      backend,
      compression: this.config.dataBackend.compression,
      keys: this.#keys && { key: this.#keys.encryption, fingerprint: this.#keys.fingerprint },
      defaults: {
        blockSize: this.config.blockSize,
        compression: formatCompression(this.config.dataBackend.compression),
      },
      expectedStoreId: storeId,
    });
    if (opts.write !== undefined && !meta.readOnly) {
      await backend.putMeta(DESCRIPTOR_NAME, encodeDescriptor(d));
      this.log.info(
        `Rebuilt the store descriptor of ${backend.url} from its metadata copies (store ${d.storeId})`,
      );
    } else this.log.info(`The store descriptor of ${backend.url} would be rebuilt (store ${d.storeId})`);
    return d;
  }

  /** Writing commands run only on the store's owner; recover may run anywhere (it makes the owner). */
  async #requireOwner(what: string): Promise<void> {
    const own = this.#ownership;
    if (!own) return;
    if (!own.owner) {
      if (what.startsWith('recover')) return;
      throw notOwnerError((await this.#openBackend()).url, own.why);
    }
    if (own.claim) await this.takeOwnership();
  }

  /** This database owns the store: the descriptor says so (rewritten when it did not). */
  async takeOwnership(): Promise<void> {
    const meta = this.#meta;
    if (!meta || meta.readOnly || !this.#descriptor) return;
    this.#descriptor = await claimStore(meta, await this.#openBackend(), this.#descriptor);
    this.#ownership = { owner: true, claim: false };
  }

  /** False when the database may not write to the store (another database owns it). */
  get ownsStore(): boolean {
    return this.#ownership?.owner ?? true;
  }

  async #openBackend(): Promise<StorageBackend> {
    this.#backend ??= await openBackend(this.config.dataBackend, process.env, this.#sdkDebug);
    return this.#backend;
  }

  /** The store's descriptor, written now if the store has none yet (see store-descriptor.ts). */
  async descriptor(): Promise<Descriptor> {
    const meta = await this.meta();
    if (!this.#descriptor) {
      this.#descriptor = await describeStore(meta, await this.#openBackend(), {
        blockSize: this.config.blockSize,
        compression: formatCompression(this.config.dataBackend.compression),
      });
    }
    return this.#descriptor;
  }

  /** The descriptor as read when the database was opened; undefined when the store has none. */
  get knownDescriptor(): Descriptor | undefined {
    return this.#descriptor;
  }

  /**
   * The block store. `root`: 'create' (backup) makes the data directory now, so that a store
   * whose versions are all sparse still has one; 'check' (the default: restore, scrub, import)
   * insists that it exists, since a missing or unmounted one is an I/O error, never missing
   * blocks; 'any' (cleanup, which never marks anything invalid) takes it as it is.
   */
  async store(opts: { root?: 'create' | 'check' | 'any' } = {}): Promise<BlockStore> {
    if (!this.#store) {
      const meta = await this.meta();
      const spec: CodecSpec = {
        hashFunction: meta.hashFunction,
        compression: this.config.dataBackend.compression,
        keys: this.#keys && { encryption: this.#keys.encryption, naming: this.#keys.naming },
      };
      const backend = await this.#openBackend();
      // The data root: a directory must exist (an unmounted one is an I/O error, never missing
      // blocks); a bucket is checked by the S3 backend itself on first use.
      if (backend instanceof DirBackend) {
        const root = opts.root ?? 'check';
        if (root === 'create') await backend.createRoot();
        else if (root === 'check') await backend.checkRoot();
      }
      // A store is described when it is created (by its first backup).
      if (opts.root === 'create' && !meta.readOnly) await this.descriptor();
      this.#codecPool = new CodecPool(spec);
      this.#store = new BlockStore(backend, spec, this.#codecPool);
    }
    return this.#store;
  }

  /**
   * Brings the store's metadata copies of these versions in step with the database (written,
   * replaced, or removed for a version that is gone), and those of every version whose validity
   * this command changed (core/copy-keeper.ts). A failure never fails the command, whose
   * change is committed already: one warning line per version, and `backy cleanup` writes
   * every missing copy later (until then `recover` cannot bring that version back).
   */
  async updateCopies(uids: readonly string[]): Promise<void> {
    await (await this.copies()).update(uids);
  }

  /** The command's CopyKeeper (also handed to the NBD server). */
  async copies(): Promise<CopyKeeper> {
    if (!this.#copies) {
      const meta = await this.meta();
      // Another database's view of the store must not overwrite the owner's copies.
      if (!this.ownsStore) return NO_COPIES;
      this.#copies = copyKeeper({
        meta,
        target: async () => {
          if (this.#storeDown !== undefined)
            throw new BackyError(`the store cannot be reached (${this.#storeDown})`);
          const store = await this.store({ root: 'any' });
          if (store.backend instanceof DirBackend) await store.backend.checkRoot();
          const { storeId } = await this.descriptor();
          return { store, storeId };
        },
        onFailure: (uid, err) =>
          // Said once already, when the store did not answer.
          (this.#storeDown !== undefined ? this.log.info.bind(this.log) : this.log.warn.bind(this.log))(
            `the store's metadata copy of version ${uid} was not updated: ${errorMessage(err)}; 'backy cleanup' rewrites it`,
          ),
      });
    }
    return this.#copies;
  }

  /**
   * Writes the store's tombstone of `uid` before its rows go (store-authority.ts rule 2): a
   * removal the store cannot record is refused, since cleanup would then take the version's
   * copy for one its database does not know. Returns an undo for a removal that did not happen.
   */
  async recordRemoval(uid: string, by: string): Promise<() => Promise<void>> {
    const meta = await this.meta();
    if (this.#storeDown !== undefined) {
      // The tombstone is written once the store is back (core/pending-removals.ts); until then
      // the mark says this database removed the version itself.
      await markRemovalPending(meta, uid, by);
      return () => clearRemovalPending(meta, uid).catch(() => {});
    }
    const backend = (await this.store({ root: 'any' })).backend;
    try {
      await writeTombstone(backend, uid, by);
    } catch (err) {
      throw new BackyError(
        `version ${uid} was not removed: the store at ${backend.url} could not record the removal (${errorMessage(err)}); nothing was changed`,
      );
    }
    return () => backend.deleteMeta(tombstoneName(uid)).catch(() => {});
  }

  /** Versions back in the database (import, a named recover): their tombstones would hide them from recover. */
  async clearRemovals(uids: readonly string[]): Promise<void> {
    if (uids.length === 0 || !this.ownsStore) return;
    const backend = (await this.store()).backend;
    for (const uid of uids) {
      await backend.deleteMeta(tombstoneName(uid)).catch((err: unknown) => {
        this.log.warn(
          `the store's record that version ${uid} was removed stays: ${errorMessage(err)}; 'backy cleanup' removes it`,
        );
      });
    }
  }

  /** A result line on stdout. */
  out(line: string): void {
    process.stdout.write(`${line}\n`);
  }

  async close(): Promise<void> {
    await this.#backend?.close();
    await this.#codecPool?.close();
    await this.#meta?.close();
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A version uid from the command line. */
export function parseUid(value: string): string {
  if (!UUID_RE.test(value)) {
    throw new InputError(
      `'${value}' is not a version uid (expected a UUID such as 3f2b8c1e-...; see 'backy ls')`,
    );
  }
  return value.toLowerCase();
}
