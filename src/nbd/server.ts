/**
 * The NBD server of `backy nbd`: fixed newstyle handshake, option haggling, transmission.
 * Export names are version uids. Each connection holds an 'nbd' lease on the version it
 * serves (rm and cleanup keep it), and with `writable` writes into a new version of its own
 * (ExportWriter), completed on a clean disconnect (NBD_CMD_DISC) or removed with `discard`.
 *
 * Hostile clients: anything malformed gets the protocol's error where the protocol has one
 * (unknown options and commands, reads past the end, oversized requests) and a dropped
 * connection where it cannot continue (bad magic, unknown client flags); other connections
 * never notice. Memory, whatever the number of connections: per connection at most
 * MAX_IN_FLIGHT requests; replies are sent from the cached blocks, whose buffers never exceed
 * BLOCK_BUFFERS (BlockCache) - a read waits for a buffer rather than allocate one; reads that
 * span several blocks (and so hold some while waiting for others) hold at most SPANNING_BUDGET
 * of them together, well below BLOCK_BUFFERS, so some buffer always comes back; writes hold at
 * most WRITE_BUDGET bytes of payload together: 80 MiB of buffers at most in all.
 *
 * Stalled handshakes (a port scanner, a stuck client) hold nothing for long: a connection that
 * has not entered transmission within the handshake timeout is closed, and at most
 * MAX_HANDSHAKES connections are in the handshake at once (others are closed at once).
 */
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { blockCount } from '../blocks/blocks.js';
import { keepLeaseAlive } from '../core/lease.js';
import { errorMessage } from '../errors.js';
import type { MetaStore, Version } from '../meta/meta-store.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { BlockStore } from '../storage/block-store.js';
import { Budget } from './budget.js';
import { ByteReader, ConnectionClosed } from './byte-reader.js';
import { BlockCache, BlockTable, ExportReader, ExportWriter } from './export.js';
import { releasePieces } from './export.js';
import type { Piece } from './export.js';
import * as P from './protocol.js';

/** Largest read or write a client may ask for (advertised as the maximum block size). */
export const MAX_REQUEST = 32 << 20;
/** Option data longer than this is refused (names are at most 4096 bytes). */
const MAX_OPTION_DATA = 64 << 10;
/** A client haggling longer than this many options is dropped. */
const MAX_OPTIONS = 1024;
const MAX_IN_FLIGHT = 64;
/** All verified blocks, cached or being sent, across connections (12 blocks of 4 MiB). */
const BLOCK_BUFFERS = 48 << 20;
/**
 * Blocks held by reads spanning several blocks, across connections: those of the largest read
 * (MAX_REQUEST over two 4 MiB blocks more); a read costing more runs alone.
 */
const SPANNING_BUDGET = MAX_REQUEST + (8 << 20);
const WRITE_BUDGET = 32 << 20;
const BASE_ALLOCATION_ID = 1;
/** Default time from connect to the start of transmission (`--handshake-timeout`). */
export const HANDSHAKE_TIMEOUT_MS = 30_000;
/**
 * Connections in the handshake at once. Honest clients finish it in milliseconds and open few
 * connections (nbdcopy 4, qemu 1 per drive), so 32 covers several clients starting together;
 * only a flood or stuck clients fill it, and then each can make the server hold about 1.1 MiB
 * (ByteReader's high water of unread input, 64 KiB of option data): ~35 MiB for all of them,
 * less than the block buffers, until the timeout frees them.
 */
export const MAX_HANDSHAKES = 32;

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface NbdServerOptions {
  meta: MetaStore;
  store: BlockStore;
  /** Copy-on-write: writes go into a new version per connection. */
  writable: boolean;
  /** With writable: throw the new version away at disconnect instead of completing it. */
  discard: boolean;
  log: (level: LogLevel, msg: string) => void;
  /** Bytes of block buffers for all connections (default BLOCK_BUFFERS). */
  blockBuffers?: number;
  /** Milliseconds from connect to transmission before the connection is closed (default HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
}

class DropConnection extends Error {}

export class NbdServer {
  readonly #opts: NbdServerOptions;
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #connections = new Set<Promise<void>>();
  readonly #cache: BlockCache;
  readonly #tables = new Map<string, { table: Promise<BlockTable>; refs: number }>();
  readonly #reads = new Budget(SPANNING_BUDGET);
  readonly #writes = new Budget(WRITE_BUDGET);
  #nextId = 1;
  #closing = false;
  /** Connections accepted that have not entered transmission (at most MAX_HANDSHAKES). */
  #handshaking = 0;

  constructor(opts: NbdServerOptions) {
    this.#opts = opts;
    this.#cache = new BlockCache({
      // Room beyond what spanning reads may hold, for a buffer always to come back.
      maxBytes: Math.max(opts.blockBuffers ?? BLOCK_BUFFERS, SPANNING_BUDGET + (8 << 20)),
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
    for (const s of this.#sockets) s.destroy();
    await Promise.allSettled([...this.#connections]);
    await closed;
  }

  get connections(): number {
    return this.#sockets.size;
  }

  async #serve(socket: Socket): Promise<void> {
    const id = this.#nextId++;
    const peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    const log = (level: LogLevel, msg: string) => this.#opts.log(level, `connection ${id} (${peer}): ${msg}`);
    socket.on('error', () => {}); // seen by the reader as a closed connection
    if (this.#handshaking >= MAX_HANDSHAKES) {
      log('warn', `refused: ${MAX_HANDSHAKES} connections are already in the handshake`);
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    this.#handshaking++;
    const timeoutMs = this.#opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      socket.destroy(); // the reader fails with ConnectionClosed; #serve cleans up as for any drop
    }, timeoutMs).unref();
    let handshaking = true;
    const handshakeOver = () => {
      if (!handshaking) return;
      handshaking = false;
      clearTimeout(timer);
      this.#handshaking--;
    };
    log('info', 'connected');
    const conn = new Connection(this, this.#opts, socket, log, handshakeOver);
    try {
      await conn.run();
      log('info', 'disconnected');
    } catch (err) {
      if (timedOut)
        log('warn', `dropped: handshake not finished within ${timeoutMs / 1000} s (--handshake-timeout)`);
      else if (err instanceof ConnectionClosed) log('info', `disconnected (${err.message})`);
      else if (err instanceof DropConnection || err instanceof P.NbdProtocolError)
        log('warn', `dropped: ${err.message}`);
      else log('error', `dropped after an internal error: ${errorMessage(err)}`);
    } finally {
      handshakeOver();
      socket.destroy();
      this.#sockets.delete(socket);
      await conn.cleanup().catch((err: unknown) => log('error', errorMessage(err)));
    }
  }

  get closing(): boolean {
    return this.#closing;
  }
  get cache(): BlockCache {
    return this.#cache;
  }
  get budgets(): { reads: Budget; writes: Budget } {
    return { reads: this.#reads, writes: this.#writes };
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

interface MetaSelection {
  name: string;
  baseAllocation: boolean;
}

class Connection {
  readonly #server: NbdServer;
  readonly #opts: NbdServerOptions;
  readonly #socket: Socket;
  readonly #reader: ByteReader;
  readonly #log: (level: LogLevel, msg: string) => void;
  /** Called once negotiation is over and transmission starts. */
  readonly #handshakeOver: () => void;
  #noZeroes = false;
  #structured = false;
  #meta: MetaSelection | undefined;
  #device: ExportReader | undefined;
  #writer: ExportWriter | undefined;
  #cleanDisconnect = false;
  /** The request loop, waiting for one of MAX_IN_FLIGHT requests to finish. */
  #slotFreed: (() => void) | undefined;
  /** A write, trim or zero reached the writer: without one no new version is kept. */
  #wrote = false;
  #undo: (() => Promise<void>)[] = [];

  constructor(
    server: NbdServer,
    opts: NbdServerOptions,
    socket: Socket,
    log: (l: LogLevel, m: string) => void,
    handshakeOver: () => void,
  ) {
    this.#server = server;
    this.#opts = opts;
    this.#socket = socket;
    this.#reader = new ByteReader(socket);
    this.#log = log;
    this.#handshakeOver = handshakeOver;
  }

  /** Writes one reply; `sent` runs once its buffers are no longer needed. */
  #send(reply: Buffer | Buffer[], sent?: () => void): void {
    const bufs = Array.isArray(reply) ? reply : [reply];
    if (this.#socket.destroyed) {
      sent?.();
      return;
    }
    // One reply is written in one go: replies to concurrent requests never interleave.
    this.#socket.cork();
    bufs.forEach((b, i) => this.#socket.write(b, i === bufs.length - 1 && sent ? () => sent() : undefined));
    this.#socket.uncork();
  }

  async #drained(): Promise<void> {
    if (!this.#socket.writableNeedDrain || this.#socket.destroyed) return;
    await Promise.race([once(this.#socket, 'drain'), once(this.#socket, 'close')]);
  }

  async run(): Promise<void> {
    this.#send(P.encodeHandshake(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
    const clientFlags = P.decodeClientFlags(await this.#reader.read(4));
    if ((clientFlags & ~P.CLIENT_FLAGS_KNOWN) !== 0)
      throw new DropConnection(`unknown client flags 0x${clientFlags.toString(16)}`);
    this.#noZeroes = (clientFlags & P.FLAG_NO_ZEROES) !== 0;
    if (!(await this.#haggle())) return;
    this.#handshakeOver();
    await this.#transmission();
  }

  // ---- option haggling ----

  /** Returns true when transmission starts, false when the client aborted. */
  async #haggle(): Promise<boolean> {
    for (let count = 0; count < MAX_OPTIONS; count++) {
      const { option, length } = P.decodeOptionHeader(await this.#reader.read(P.OPTION_HEADER_SIZE));
      if (length > MAX_OPTION_DATA) {
        if (option === P.OPT.EXPORT_NAME) throw new DropConnection(`export name of ${length} bytes`);
        await this.#reader.skip(length);
        this.#reply(option, P.REP.ERR_TOO_BIG, `option data of ${length} bytes is too long`);
        continue;
      }
      const data = await this.#reader.read(length);
      if (this.#server.closing) {
        this.#reply(option, P.REP.ERR_SHUTDOWN, 'the server is shutting down');
        throw new DropConnection('server shutting down');
      }
      try {
        const done = await this.#option(option, data);
        if (done !== undefined) return done;
      } catch (err) {
        if (!(err instanceof P.NbdProtocolError)) throw err;
        this.#reply(option, P.REP.ERR_INVALID, err.message);
      }
    }
    throw new DropConnection(`more than ${MAX_OPTIONS} options`);
  }

  #reply(option: number, type: number, message = ''): void {
    this.#send(P.encodeOptionReply(option, type, Buffer.from(message, 'utf8')));
  }

  /** Handles one option; true: start transmission; false: end; undefined: go on haggling. */
  async #option(option: number, data: Buffer): Promise<boolean | undefined> {
    const { OPT, REP } = P;
    switch (option) {
      case OPT.EXPORT_NAME: {
        const name = data.toString('utf8');
        const v = await this.#server.findExport(name);
        // The only answer this option allows to an unknown name is a closed connection.
        if (!v) throw new DropConnection(`NBD_OPT_EXPORT_NAME: no export '${name.slice(0, 80)}'`);
        await this.#open(v);
        this.#send(P.encodeExportNameReply(v.sizeBytes, this.#flags(), this.#noZeroes));
        return true;
      }
      case OPT.ABORT:
        this.#reply(option, REP.ACK);
        return false;
      case OPT.LIST: {
        if (data.length !== 0) {
          this.#reply(option, REP.ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return undefined;
        }
        for (const v of await this.#server.listExports()) {
          this.#send(P.encodeOptionReply(option, REP.SERVER, P.encodeServerReply(v.uid, v.name)));
          await this.#drained();
        }
        this.#reply(option, REP.ACK);
        return undefined;
      }
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0) this.#reply(option, REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else if (this.#structured) this.#reply(option, REP.ERR_INVALID, 'structured replies are already on');
        else {
          this.#structured = true;
          this.#reply(option, REP.ACK);
        }
        return undefined;
      case OPT.INFO:
      case OPT.GO: {
        const req = P.decodeInfoRequest(data);
        const v = await this.#server.findExport(req.name);
        if (!v) {
          this.#reply(
            option,
            REP.ERR_UNKNOWN,
            `no export '${req.name.slice(0, 80)}' (export names are version uids)`,
          );
          return undefined;
        }
        const infos = [
          P.encodeInfoExport(v.sizeBytes, this.#flags()),
          P.encodeInfoBlockSize(1, 4096, MAX_REQUEST),
        ];
        if (req.infos.includes(P.INFO.NAME)) infos.push(P.encodeInfoName(v.uid));
        if (req.infos.includes(P.INFO.DESCRIPTION)) {
          infos.push(Buffer.concat([Buffer.from([0, P.INFO.DESCRIPTION]), Buffer.from(v.name, 'utf8')]));
        }
        if (option === OPT.GO) await this.#open(v);
        for (const i of infos) this.#send(P.encodeOptionReply(option, REP.INFO, i));
        this.#reply(option, REP.ACK);
        return option === OPT.GO ? true : undefined;
      }
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const set = option === OPT.SET_META_CONTEXT;
        if (set) this.#meta = undefined; // replaced even when this one fails
        if (!this.#structured) {
          this.#reply(option, REP.ERR_INVALID, 'negotiate structured replies first');
          return undefined;
        }
        const req = P.decodeMetaContextRequest(data);
        if (!(await this.#server.findExport(req.name))) {
          this.#reply(option, REP.ERR_UNKNOWN, `no export '${req.name.slice(0, 80)}'`);
          return undefined;
        }
        const match = set
          ? req.queries.includes(P.BASE_ALLOCATION)
          : req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === P.BASE_ALLOCATION);
        if (match) {
          this.#send(
            P.encodeOptionReply(
              option,
              REP.META_CONTEXT,
              P.encodeMetaContextReply(set ? BASE_ALLOCATION_ID : 0, P.BASE_ALLOCATION),
            ),
          );
        }
        if (set) this.#meta = { name: req.name, baseAllocation: match };
        this.#reply(option, REP.ACK);
        return undefined;
      }
      case OPT.STARTTLS:
        this.#reply(option, REP.ERR_POLICY, 'TLS is not supported; use a Unix socket or loopback');
        return undefined;
      default:
        this.#reply(option, REP.ERR_UNSUP, `option ${option} is not supported`);
        return undefined;
    }
  }

  #flags(): number {
    const { TFLAG } = P;
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_DF;
    // Writes go to a new version per connection, so connections do not see each other's
    // writes: multi-conn is safe only read-only.
    if (this.#opts.writable) f |= TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
    else f |= TFLAG.READ_ONLY | TFLAG.CAN_MULTI_CONN;
    return f;
  }

  /** Takes the lease, loads the block table, and for -w creates the new version. */
  async #open(v: Version): Promise<void> {
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
      events: { onBadBlock: this.#onBad },
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
    this.#writer = new ExportWriter({ ...common, newVersion: created.version });
    this.#device = this.#writer;
    this.#log(
      'info',
      `serving ${version.uid} (${version.name}) copy-on-write into new version ${created.version.uid}` +
        (this.#opts.discard ? ' (discarded at disconnect)' : ''),
    );
  }

  #onBad = (idx: number, reason: string) => {
    this.#log('error', `block ${idx} of ${this.#device?.version.uid}: ${reason}; the read fails with EIO`);
  };

  /** Finishes or throws away the new version, then releases leases and the table. */
  async cleanup(): Promise<void> {
    const w = this.#writer;
    try {
      if (w) {
        const uid = w.newVersion.uid;
        if (this.#cleanDisconnect && !this.#opts.discard && !this.#wrote) {
          await this.#opts.meta.removeVersion(uid);
          this.#log('info', `no writes: no new version kept`);
        } else if (this.#cleanDisconnect && !this.#opts.discard) {
          try {
            await w.complete();
            this.#log(
              'info',
              `new version ${uid} (${w.newVersion.name}, base ${w.version.uid}) is complete and valid`,
            );
          } catch (err) {
            this.#log('error', `new version ${uid} could not be completed: ${errorMessage(err)}`);
          }
        } else {
          await this.#opts.meta.removeVersion(uid);
          this.#log(
            this.#opts.discard ? 'info' : 'warn',
            this.#opts.discard
              ? `writes discarded: version ${uid} removed`
              : `the client left without NBD_CMD_DISC: its writes (version ${uid}) were removed`,
          );
        }
      }
    } finally {
      for (const undo of this.#undo.reverse()) await undo().catch(() => {});
      this.#undo = [];
    }
  }

  // ---- transmission ----

  async #transmission(): Promise<void> {
    const device = this.#device!;
    const inFlight = new Set<Promise<void>>();
    const budgets = this.#server.budgets;
    try {
      await this.#requests(device, inFlight, budgets);
    } finally {
      // Whatever ended the loop, requests already accepted finish before the new version is
      // completed or removed.
      await Promise.allSettled(inFlight);
    }
  }

  async #requests(
    device: ExportReader,
    inFlight: Set<Promise<void>>,
    budgets: { reads: Budget; writes: Budget },
  ): Promise<void> {
    for (;;) {
      await this.#drained();
      // One waiter woken by the next request to finish: Promise.race over all of them here
      // would leave a reaction on every pending request per call (thousands, held until each
      // settles: MBs of heap per busy connection).
      while (inFlight.size >= MAX_IN_FLIGHT) await new Promise<void>((r) => (this.#slotFreed = r));
      const req = P.decodeRequest(await this.#reader.read(P.REQUEST_SIZE));
      if (req.type === P.CMD.DISC) {
        await Promise.allSettled(inFlight);
        this.#cleanDisconnect = true;
        return;
      }
      let payload: Buffer | undefined;
      let budget: Budget | undefined;
      let cost = 0;
      if (req.type === P.CMD.WRITE) {
        if (req.length > MAX_REQUEST) {
          // The payload follows whatever we answer: skip it to stay in step with the client.
          await this.#reader.skip(req.length);
          this.#error(req, P.NBD_ERR.EINVAL, `write of ${req.length} bytes is larger than ${MAX_REQUEST}`);
          continue;
        }
        budget = budgets.writes;
        cost = await budget.take(req.length);
        try {
          payload = await this.#reader.read(req.length);
        } catch (err) {
          budget.give(cost);
          throw err;
        }
      } else if (req.type === P.CMD.READ && req.length > 0 && req.length <= MAX_REQUEST) {
        // The reply is sent from the cached blocks it touches; one that spans several holds
        // some of them while it waits for others.
        const bs = device.blockSize;
        const blocks = Math.floor((req.offset + req.length - 1) / bs) - Math.floor(req.offset / bs) + 1;
        if (blocks > 1) {
          budget = budgets.reads;
          cost = await budget.take(blocks * objectBufferSize(bs));
        }
      }
      const p = this.#handle(device, req, payload)
        .catch((err: unknown) => {
          this.#log('error', `request failed: ${errorMessage(err)}`);
          this.#error(req, P.NBD_ERR.EIO, 'internal error');
        })
        .finally(() => {
          budget?.give(cost);
          inFlight.delete(p);
          const wake = this.#slotFreed;
          this.#slotFreed = undefined;
          wake?.();
        });
      inFlight.add(p);
    }
  }

  #error(req: P.Request, error: number, message: string): void {
    if (this.#structured) this.#send(P.encodeErrorChunk(req.cookie, P.REPLY_FLAG_DONE, error, message));
    else this.#send(P.encodeSimpleReply(req.cookie, error));
  }

  #ok(req: P.Request): void {
    if (this.#structured) this.#send(P.encodeNoneChunk(req.cookie));
    else this.#send(P.encodeSimpleReply(req.cookie, 0));
  }

  /** Past the end, or a length the server refuses: the error to answer, if any. */
  #checkRange(device: ExportReader, req: P.Request, max = MAX_REQUEST): string | undefined {
    if (req.offset + req.length > device.size)
      return `offset ${req.offset} + length ${req.length} is past the end (${device.size} bytes)`;
    if (req.length > max) return `length ${req.length} is larger than ${max}`;
    return undefined;
  }

  async #handle(device: ExportReader, req: P.Request, payload: Buffer | undefined): Promise<void> {
    const { CMD, NBD_ERR } = P;
    const w = this.#writer;
    switch (req.type) {
      case CMD.READ: {
        const bad = this.#checkRange(device, req);
        if (bad) return this.#error(req, NBD_ERR.EINVAL, bad);
        if (req.length === 0) return this.#ok(req);
        const pieces = await device.read(req.offset, req.length);
        return this.#replyRead(req, pieces, () => releasePieces(pieces));
      }
      case CMD.WRITE:
      case CMD.TRIM:
      case CMD.WRITE_ZEROES: {
        if (!w) return this.#error(req, NBD_ERR.EPERM, 'the export is read-only (serve it with -w to write)');
        const bad = this.#checkRange(
          device,
          req,
          req.type === CMD.WRITE ? MAX_REQUEST : Number.MAX_SAFE_INTEGER,
        );
        if (bad)
          return this.#error(
            req,
            req.offset + req.length > device.size ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL,
            bad,
          );
        this.#wrote = true;
        try {
          if (req.type === CMD.WRITE) await w.write(req.offset, payload!);
          else await w.zero(req.offset, req.length);
          if (req.flags & P.CMD_FLAG.FUA) await w.flush();
        } catch (err) {
          this.#log('error', `write at ${req.offset} failed: ${errorMessage(err)}`);
          return this.#error(req, NBD_ERR.EIO, errorMessage(err));
        }
        return this.#ok(req);
      }
      case CMD.FLUSH:
        if (w) {
          try {
            await w.flush();
          } catch (err) {
            this.#log('error', `flush failed: ${errorMessage(err)}`);
            return this.#error(req, NBD_ERR.EIO, errorMessage(err));
          }
        }
        return this.#ok(req);
      case CMD.BLOCK_STATUS: {
        if (!this.#structured || !this.#meta?.baseAllocation)
          return this.#error(req, NBD_ERR.EINVAL, 'no metadata context was negotiated (base:allocation)');
        if (req.length === 0 || req.offset + req.length > device.size)
          return this.#error(req, NBD_ERR.EINVAL, 'block status range is empty or past the end');
        const extents = device.status(req.offset, req.length, (req.flags & P.CMD_FLAG.REQ_ONE) !== 0);
        return this.#send(
          P.encodeBlockStatusChunk(req.cookie, P.REPLY_FLAG_DONE, BASE_ALLOCATION_ID, extents),
        );
      }
      default:
        return this.#error(req, NBD_ERR.EINVAL, `command ${req.type} is not supported`);
    }
  }

  #replyRead(req: P.Request, pieces: Piece[], sent: () => void): void {
    const errors = pieces.filter((p) => p.kind === 'error');
    if (!this.#structured) {
      if (errors.length > 0) return this.#send([P.encodeSimpleReply(req.cookie, P.NBD_ERR.EIO)], sent);
      const bufs: Buffer[] = [P.encodeSimpleReply(req.cookie, 0)];
      for (const p of pieces) bufs.push(p.kind === 'data' ? p.data : Buffer.alloc(p.length));
      return this.#send(bufs, sent);
    }
    if (req.flags & P.CMD_FLAG.DF) {
      if (errors.length > 0) {
        const e = errors[0] as Piece & { kind: 'error' };
        return this.#send([P.encodeErrorChunk(req.cookie, P.REPLY_FLAG_DONE, P.NBD_ERR.EIO, e.reason)], sent);
      }
      const bufs: Buffer[] = [P.encodeDataChunkHeader(req.cookie, P.REPLY_FLAG_DONE, req.offset, req.length)];
      for (const p of pieces)
        bufs.push(p.kind === 'data' ? p.data : Buffer.alloc(p.kind === 'hole' ? p.length : 0));
      return this.#send(bufs, sent);
    }
    // Adjacent holes merge into one chunk; content first, then errors (with their offsets).
    const bufs: Buffer[] = [];
    const chunks: { kind: 'data' | 'hole'; offset: number; length: number; data?: Buffer }[] = [];
    for (const p of pieces) {
      if (p.kind === 'error') continue;
      const prev = chunks[chunks.length - 1];
      if (p.kind === 'hole' && prev?.kind === 'hole' && prev.offset + prev.length === p.offset)
        prev.length += p.length;
      else if (p.kind === 'hole') chunks.push({ kind: 'hole', offset: p.offset, length: p.length });
      else chunks.push({ kind: 'data', offset: p.offset, length: p.data.length, data: p.data });
    }
    const total = chunks.length + errors.length;
    let i = 0;
    for (const c of chunks) {
      const flags = ++i === total ? P.REPLY_FLAG_DONE : 0;
      if (c.kind === 'hole') bufs.push(P.encodeHoleChunk(req.cookie, flags, c.offset, c.length));
      else bufs.push(P.encodeDataChunkHeader(req.cookie, flags, c.offset, c.length), c.data!);
    }
    for (const e of errors) {
      const flags = ++i === total ? P.REPLY_FLAG_DONE : 0;
      if (e.kind === 'error')
        bufs.push(P.encodeErrorChunk(req.cookie, flags, P.NBD_ERR.EIO, e.reason, e.offset));
    }
    this.#send(bufs, sent);
  }
}
