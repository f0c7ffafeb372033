/**
 * What one NBD connection holds on the version it serves: the 'nbd' lease (rm and cleanup keep
 * the version), the shared block table, and with -w the new version it writes into under a
 * lease of its own. close() finishes the new version (completed, whether or not the client
 * sent NBD_CMD_DISC; removed with --discard) and gives everything back, whatever point opening
 * had reached.
 */
import { blockCount } from '../blocks/blocks.js';
import { keepLeaseAlive } from '../core/lease.js';
import { errorMessage } from '../errors.js';
import type { Version } from '../meta/meta-store.js';
import type { Log } from './connection.js';
import { DropConnection } from './connection.js';
import { ExportReader, ExportWriter } from './export.js';
import type { NbdServer, NbdServerOptions } from './server.js';

export class ExportSession {
  readonly #server: NbdServer;
  readonly #opts: NbdServerOptions;
  readonly #log: Log;
  #device: ExportReader | undefined;
  #writer: ExportWriter | undefined;
  #undo: (() => Promise<void>)[] = [];
  /** The client ended with NBD_CMD_DISC. */
  cleanDisconnect = false;
  /** A write, trim or zero reached the writer: without one no new version is kept. */
  wrote = false;
  #removedReported = false;

  constructor(server: NbdServer, opts: NbdServerOptions, log: Log) {
    this.#server = server;
    this.#opts = opts;
    this.#log = log;
  }

  /** The export being served, once open() has succeeded. */
  get device(): ExportReader | undefined {
    return this.#device;
  }

  /** With -w: the copy-on-write device (the same as `device`). */
  get writer(): ExportWriter | undefined {
    return this.#writer;
  }

  /** Takes the lease, loads the block table, and for -w creates the new version. */
  async open(v: Version): Promise<void> {
    const { meta, store } = this.#opts;
    const lease = await meta.acquireLease('nbd', v.uid);
    const stop = keepLeaseAlive(meta, lease.id);
    this.#undo.push(async () => {
      stop();
      await meta.releaseLease(lease.id);
    });
    // Re-read under the lease: an rm that ran before it took effect must not go unnoticed.
    const version = await this.#server.findExport(v.uid);
    if (!version) throw new DropConnection(`version ${v.uid} was removed`);
    const table = await this.#server.table(version);
    this.#undo.push(async () => this.#server.releaseTable(version.uid));
    const common = {
      meta,
      store,
      version,
      table,
      cache: this.#server.cache,
      events: { onBadBlock: this.#onBad, onValidityChanged: () => this.#server.refreshCopies() },
      copies: this.#opts.copies,
    };
    if (!this.#opts.writable) {
      this.#device = new ExportReader(common);
      this.#log('info', `serving ${version.uid} (${version.name}) read-only`);
      return;
    }
    const created = await meta.createVersionWithLease(
      {
        name: `${version.name}+nbd`.slice(0, 255),
        snapshotName: version.snapshotName,
        sizeBytes: version.sizeBytes,
        blockSize: version.blockSize,
        baseUid: version.uid,
      },
      'nbd',
    );
    const stopNew = keepLeaseAlive(meta, created.lease.id);
    this.#undo.push(async () => {
      stopNew();
      await meta.releaseLease(created.lease.id);
    });
    await meta.copyBlocks(version.uid, created.version.uid, blockCount(version.sizeBytes, version.blockSize));
    const storeBuffers = this.#server.storeBuffers(version.blockSize);
    this.#writer = new ExportWriter({
      ...common,
      newVersion: created.version,
      dirty: this.#server.dirtyPool,
      storeBuffers,
    });
    this.#device = this.#writer;
    this.#log(
      'info',
      `serving ${version.uid} (${version.name}) copy-on-write into new version ${created.version.uid}` +
        (this.#opts.discard ? ' (discarded at disconnect)' : ''),
    );
  }

  /**
   * Logs a failed write or flush, and returns the reason for the client. A version removed
   * under the writer (rm --force) fails every later write on a database constraint: that is
   * said once, in words, rather than as one constraint error per request.
   */
  async writeFailed(what: string, err: unknown): Promise<string> {
    const uid = this.#writer?.newVersion.uid;
    if (uid && !(await this.#opts.meta.findVersion(uid).catch(() => true))) {
      if (!this.#removedReported)
        this.#log('warn', `new version ${uid} was removed (rm --force): writes to it fail from now on`);
      this.#removedReported = true;
      return `version ${uid} was removed`;
    }
    this.#log('error', `${what} failed: ${errorMessage(err)}`);
    return errorMessage(err);
  }

  #onBad = (idx: number, reason: string) => {
    this.#log('error', `block ${idx} of ${this.#device?.version.uid}: ${reason}; the read fails with EIO`);
  };

  /**
   * Finishes the new version or throws it away, then releases leases and the table. What the
   * client wrote is kept whether or not it said goodbye: nbdfuse and a killed qemu never send
   * NBD_CMD_DISC, and their writes were acknowledged. Only --discard, a connection that wrote
   * nothing, or a version removed meanwhile (rm --force) keep no version.
   */
  async close(): Promise<void> {
    const w = this.#writer;
    try {
      if (w) await this.#finish(w);
    } finally {
      // Modified blocks not stored (a version removed, or one that failed) give their buffers back.
      await w?.dispose().catch(() => {});
      for (const undo of this.#undo.reverse()) await undo().catch(() => {});
      this.#undo = [];
    }
  }

  async #finish(w: ExportWriter): Promise<void> {
    const uid = w.newVersion.uid;
    const meta = this.#opts.meta;
    if (this.#opts.discard) {
      await meta.removeVersion(uid);
      this.#log('info', `writes discarded: version ${uid} removed`);
      return;
    }
    if (!this.wrote) {
      await meta.removeVersion(uid);
      this.#log('info', 'no writes: no new version kept');
      return;
    }
    if (!(await meta.findVersion(uid))) {
      this.#log('warn', `new version ${uid} was removed (rm --force) while in use: nothing kept`);
      return;
    }
    const how = this.cleanDisconnect ? '' : 'client left without NBD_CMD_DISC: ';
    try {
      // The same completion as after NBD_CMD_DISC: every write received in full is stored.
      await w.complete();
      this.#log(
        'info',
        `${how}new version ${uid} (${w.newVersion.name}, base ${w.version.uid}) is complete and valid`,
      );
    } catch (err) {
      this.#log('error', `${how}new version ${uid} could not be completed: ${errorMessage(err)}`);
    }
  }
}
