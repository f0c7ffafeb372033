/**
 * The NBD server of `backy nbd`: the listener and each connection's life, from accept through
 * the handshake (negotiation.ts) and transmission (transmission.ts) to giving back what it held
 * (session.ts); and what connections share (block cache, block tables, budgets).
 * Export names are version uids. Each connection holds an 'nbd' lease on the version it
 * serves (rm and cleanup keep it), and with `writable` writes into a new version of its own
 * (ExportWriter), completed when the connection ends, with NBD_CMD_DISC or without (what the
 * client saw acknowledged is kept), or removed with `discard`. With TLS credentials the
 * handshake offers NBD_OPT_STARTTLS (tls.ts), and with `tlsOnly` requires it.
 *
 * Hostile clients: anything malformed gets the protocol's error where the protocol has one
 * (unknown options and commands, reads past the end, oversized requests) and a dropped
 * connection where it cannot continue (bad magic, unknown client flags); other connections
 * never notice. Memory, whatever the number of connections and whatever they do: per
 * connection at most MAX_IN_FLIGHT requests; replies are sent from the cached blocks, whose
 * buffers never exceed BLOCK_BUFFERS (BlockCache) - a read waits for a buffer rather than
 * allocate one; each read is charged to its connection until its reply has left (ReadAccount):
 * at most READ_SHARE per connection and READ_BUDGET for all, below BLOCK_BUFFERS, so a read
 * that has its charge always gets its buffers, and a client that does not read its replies
 * spends only its own share. Write payloads are applied as they arrive (WRITE_CHUNK at a time)
 * into modified blocks, whose buffers never exceed DIRTY_BUDGET for all writers (DirtyPool);
 * at most STORE_SLOTS of them are encoded at once. A connection that makes no progress (replies
 * it does not read, a request cut off midway) is closed after the stall timeout (StallWatch).
 *
 * Stalled handshakes (a port scanner, a stuck client) hold nothing for long: a connection that
 * has not entered transmission within the handshake timeout is closed, and at most
 * MAX_HANDSHAKES connections are in the handshake at once, at most MAX_HANDSHAKES_PER_PEER of
 * them from one TCP peer address (others are closed at once), so that one peer cannot lock
 * the others out.
 * The bounds are in limits.ts.
 */
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { errorMessage } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import type { BlockStore } from '../storage/block-store.js';
import type { CopyKeeper } from '../core/copy-keeper.js';
import { ENCODE_ROOM } from '../storage/block-store.js';
import { BufferPool } from '../util/buffer-pool.js';
import { Budget } from './budget.js';
import { DirtyPool } from './dirty-pool.js';
import { ConnectionClosed } from './chunk-reader.js';
import { DropConnection, Wire } from './connection.js';
import type { Log, LogLevel } from './connection.js';
import { BlockCache } from './block-cache.js';
import { BlockTable } from './block-table.js';
import {
  BLOCK_BUFFERS,
  DIRTY_BUDGET,
  HANDSHAKE_TIMEOUT_MS,
  MAX_HANDSHAKES,
  MAX_HANDSHAKES_PER_PEER,
  MAX_REQUEST,
  READ_BUDGET,
  STALL_TIMEOUT_MS,
  STORE_SLOTS,
} from './limits.js';
import { Negotiation } from './negotiation.js';
import * as P from './protocol.js';
import { ExportSession } from './session.js';
import type { NbdTls } from './tls.js';
import { Transmission } from './transmission.js';

export { HANDSHAKE_TIMEOUT_MS, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER, MAX_REQUEST, STALL_TIMEOUT_MS };
export type { LogLevel };

export interface NbdServerOptions {
  meta: MetaStore;
  store: BlockStore;
  /** Copy-on-write: writes go into a new version per connection. */
  writable: boolean;
  /** With writable: throw the new version away at disconnect instead of completing it. */
  discard: boolean;
  log: Log;
  /** Bytes of block buffers for all connections (default BLOCK_BUFFERS). */
  blockBuffers?: number;
  /** Milliseconds from connect to transmission before the connection is closed (default HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  /** Keeps the store's metadata copies in step (a completed -w version, damage met by a read). */
  copies?: CopyKeeper;
  /** NBD_OPT_STARTTLS is served with these credentials (without: refused with ERR_POLICY). */
  tls?: NbdTls;
  /** With tls: every option but STARTTLS and ABORT is refused until TLS is on. */
  tlsOnly?: boolean;
  /** Milliseconds a connection may make no progress in transmission (default STALL_TIMEOUT_MS). */
  stallTimeoutMs?: number;
}

export class NbdServer {
  readonly #opts: NbdServerOptions;
  readonly #server: Server;
  readonly #wires = new Set<Wire>();
  readonly #connections = new Set<Promise<void>>();
  readonly #cache: BlockCache;
  readonly #tables = new Map<string, { table: Promise<BlockTable>; refs: number }>();
  readonly #reads = new Budget(READ_BUDGET);
  readonly #dirty = new DirtyPool(DIRTY_BUDGET);
  /** Buffers modified blocks are stored from, per block size (kept: writers come and go). */
  readonly #storeBuffers = new Map<number, BufferPool>();
  #nextId = 1;
  /** The copy updates refreshCopies queued (CopyKeeper.update never rejects). */
  #copyUpdates: Promise<void> = Promise.resolve();
  #closing = false;
  /** Connections accepted that have not entered transmission (at most MAX_HANDSHAKES). */
  #handshaking = 0;
  /** The same per TCP peer address (a Unix socket is 0600: only this user connects). */
  readonly #handshakingPeers = new Map<string, number>();

  constructor(opts: NbdServerOptions) {
    this.#opts = opts;
    this.#cache = new BlockCache({
      // Room beyond what reads may hold, for a buffer always to come back.
      maxBytes: Math.max(opts.blockBuffers ?? BLOCK_BUFFERS, READ_BUDGET + (8 << 20)),
    });
    this.#server = createServer({ noDelay: true }, (socket) => {
      const p = this.#serve(socket).finally(() => this.#connections.delete(p));
      this.#connections.add(p);
    });
  }

  /** Listens on TCP (host, port) or a Unix socket path; resolves with a printable address. */
  async listen(where: { host: string; port: number } | { path: string }): Promise<string> {
    const s = this.#server;
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      if ('path' in where) s.listen({ path: where.path, readableAll: false, writableAll: false }, resolve);
      else s.listen({ host: where.host, port: where.port }, resolve);
    });
    s.on('error', (err) => this.#opts.log('error', `server: ${errorMessage(err)}`));
    const a = s.address();
    return typeof a === 'string' || a === null ? String(a) : `${a.address}:${a.port}`;
  }

  /** Stops accepting, ends every connection (writers are left incomplete), waits for them. */
  async close(): Promise<void> {
    this.#closing = true;
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const w of this.#wires) w.destroy();
    await Promise.allSettled([...this.#connections]);
    await closed;
    await this.#copyUpdates;
  }

  /**
   * Brings the metadata copies of versions whose validity changed (damage a read met) in step,
   * in the background, one update at a time: the read that met the damage answers EIO at once
   * instead of waiting for copies to be written (an object many versions share is many copies).
   * close() waits for it.
   */
  refreshCopies(): void {
    const copies = this.#opts.copies;
    if (copies) this.#copyUpdates = this.#copyUpdates.then(() => copies.update([]));
  }

  get connections(): number {
    return this.#wires.size;
  }

  async #serve(socket: Socket): Promise<void> {
    const id = this.#nextId++;
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    const log: Log = (level, msg) => this.#opts.log(level, `connection ${id} (${peer}): ${msg}`);
    socket.on('error', () => {}); // seen by the reader as a closed connection
    if (this.#handshaking >= MAX_HANDSHAKES) {
      log('warn', `refused: ${MAX_HANDSHAKES} connections are already in the handshake`);
      socket.destroy();
      return;
    }
    const address = socket.remoteAddress;
    const fromPeer = address === undefined ? 0 : (this.#handshakingPeers.get(address) ?? 0);
    if (fromPeer >= MAX_HANDSHAKES_PER_PEER) {
      log(
        'warn',
        `refused: ${MAX_HANDSHAKES_PER_PEER} connections from ${address} are already in the handshake`,
      );
      socket.destroy();
      return;
    }
    const wire = new Wire(socket);
    this.#wires.add(wire);
    this.#handshaking++;
    if (address !== undefined) this.#handshakingPeers.set(address, fromPeer + 1);
    const timeoutMs = this.#opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      wire.destroy(); // the reader fails with ConnectionClosed; #serve cleans up as for any drop
    }, timeoutMs).unref();
    let handshaking = true;
    const handshakeOver = () => {
      if (!handshaking) return;
      handshaking = false;
      clearTimeout(timer);
      this.#handshaking--;
      if (address === undefined) return;
      const n = (this.#handshakingPeers.get(address) ?? 1) - 1;
      if (n > 0) this.#handshakingPeers.set(address, n);
      else this.#handshakingPeers.delete(address);
    };
    log('info', 'connected');
    const session = new ExportSession(this, this.#opts, log);
    try {
      const negotiated = await new Negotiation(this, this.#opts, wire, session, log).run();
      if (negotiated) {
        handshakeOver();
        await new Transmission(this, wire, session, negotiated, log, this.#opts.stallTimeoutMs).run();
      }
      log('info', 'disconnected');
    } catch (err) {
      if (timedOut)
        log('warn', `dropped: handshake not finished within ${timeoutMs / 1000} s (--handshake-timeout)`);
      else if (err instanceof ConnectionClosed) log('info', `disconnected (${err.message})`);
      else if (isClientReset(err)) log('info', `disconnected (the client reset the connection)`);
      else if (err instanceof DropConnection || err instanceof P.NbdProtocolError)
        log('warn', `dropped: ${err.message}`);
      else log('error', `dropped after an internal error: ${errorMessage(err)}`);
    } finally {
      handshakeOver();
      wire.destroy();
      this.#wires.delete(wire);
      await session.close().catch((err: unknown) => log('error', errorMessage(err)));
    }
  }

  get closing(): boolean {
    return this.#closing;
  }
  get cache(): BlockCache {
    return this.#cache;
  }
  /** What all connections' reads may hold of the block buffers (see ReadAccount). */
  get readBudget(): Budget {
    return this.#reads;
  }
  /** The buffers of -w connections' modified blocks: all writers' DirtyPool. */
  get dirtyPool(): DirtyPool {
    return this.#dirty;
  }

  /** STORE_SLOTS buffers to store blocks of `blockSize` from, shared by all writers. */
  storeBuffers(blockSize: number): BufferPool {
    let pool = this.#storeBuffers.get(blockSize);
    if (!pool) {
      pool = new BufferPool(STORE_SLOTS, blockSize, ENCODE_ROOM);
      this.#storeBuffers.set(blockSize, pool);
    }
    return pool;
  }

  /** The version named `name` if it can be served (valid, or invalid: damaged parts fail). */
  async findExport(name: string): Promise<Version | undefined> {
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(name)) return undefined;
    const v = await this.#opts.meta.findVersion(name);
    return v && v.status !== 'incomplete' ? v : undefined;
  }

  async listExports(): Promise<Version[]> {
    return (await this.#opts.meta.listVersions()).filter((v) => v.status === 'valid');
  }

  /** The shared block table of a version, loaded once; give it back with releaseTable. */
  async table(v: Version): Promise<BlockTable> {
    let t = this.#tables.get(v.uid);
    if (!t) {
      t = { table: BlockTable.load(this.#opts.meta, v), refs: 0 };
      this.#tables.set(v.uid, t);
    }
    t.refs++;
    try {
      return await t.table;
    } catch (err) {
      this.releaseTable(v.uid);
      throw err;
    }
  }

  releaseTable(uid: string): void {
    const t = this.#tables.get(uid);
    if (t && --t.refs <= 0) this.#tables.delete(uid);
  }
}

/** A socket error that is the client's doing (it reset or closed the connection), not ours. */
function isClientReset(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNABORTED';
}
