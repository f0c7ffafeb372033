/**
 * The NBD server's transmission phase: the request loop (at most MAX_IN_FLIGHT requests of a
 * connection in flight; reads charged to the connection until their reply is sent, write
 * payloads applied as they arrive; a connection that stops making progress closed) and the
 * commands: reads answered from cached blocks (simple or structured replies, holes as hole
 * chunks, damaged blocks as errors), copy-on-write writes, trim, zeroes, flush, block status.
 */
import { errorMessage } from '../errors.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { Log, Wire } from './connection.js';
import { DropConnection } from './connection.js';
import type { ExportReader } from './export.js';
import { MAX_IN_FLIGHT, MAX_REQUEST, READ_SHARE, STALL_TIMEOUT_MS, WRITE_CHUNK } from './limits.js';
import { BASE_ALLOCATION_ID } from './negotiation.js';
import type { Negotiated } from './negotiation.js';
import * as P from './protocol.js';
import { ReadAccount } from './read-account.js';
import { ReadReplies } from './read-reply.js';
import type { ReplyWire, Send } from './read-reply.js';
import type { NbdServer } from './server.js';
import type { ExportSession } from './session.js';
import { StallWatch } from './stall-watch.js';

export class Transmission {
  readonly #server: NbdServer;
  readonly #wire: Wire;
  readonly #session: ExportSession;
  readonly #structured: boolean;
  readonly #meta: Negotiated['meta'];
  readonly #log: Log;
  readonly #stallTimeoutMs: number;
  /** The request loop, waiting for one of MAX_IN_FLIGHT requests to finish. */
  #slotFreed: (() => void) | undefined;
  /** A write's payload is being received. */
  #midPayload = false;
  /** Why the connection was closed from this side (stall timeout, a reply that cannot end). */
  #dropped: string | undefined;
  /** Replies held back while one that must go out in one piece streams. */
  #heldBack: (() => void)[] | undefined;

  constructor(
    server: NbdServer,
    wire: Wire,
    session: ExportSession,
    negotiated: Negotiated,
    log: Log,
    stallTimeoutMs = STALL_TIMEOUT_MS,
  ) {
    this.#server = server;
    this.#wire = wire;
    this.#session = session;
    this.#structured = negotiated.structured;
    this.#meta = negotiated.meta;
    this.#log = log;
    this.#stallTimeoutMs = stallTimeoutMs;
  }

  readonly #send: Send = (reply, sent) => {
    if (this.#heldBack) this.#heldBack.push(() => this.#wire.send(reply, sent));
    else this.#wire.send(reply, sent);
  };

  readonly #replyWire: ReplyWire = {
    send: this.#send,
    exclusive: async (fn) => {
      // Only one at a time: ReadAccount.exclusive runs them in turn.
      this.#heldBack = [];
      try {
        await fn((reply, sent) => this.#wire.send(reply, sent));
      } finally {
        const held = this.#heldBack;
        this.#heldBack = undefined;
        for (const f of held) f();
      }
    },
    drop: (reason) => this.#drop(reason),
    closed: () => this.#wire.socket.destroyed,
  };

  #drop(reason: string): void {
    this.#dropped ??= reason;
    this.#wire.socket.destroy();
  }

  async run(): Promise<void> {
    const device = this.#session.device!;
    const inFlight = new Set<Promise<void>>();
    const unit = objectBufferSize(device.blockSize);
    const account = new ReadAccount({
      global: this.#server.readBudget,
      share: Math.max(READ_SHARE, 2 * unit),
      unit,
      // A writer's reads of its modified blocks are copies, one per request.
      perBlock: !this.#session.writer,
    });
    const reads = new ReadReplies(this.#replyWire, device, account, this.#structured);
    const watch = new StallWatch({
      socket: this.#wire.socket,
      reader: this.#wire.reader,
      timeoutMs: this.#stallTimeoutMs,
      midRequest: () => this.#midPayload,
      onStall: (reason) => this.#drop(reason),
    });
    watch.start();
    try {
      await this.#requests(device, inFlight, reads);
    } catch (err) {
      if (this.#dropped) throw new DropConnection(this.#dropped);
      throw err;
    } finally {
      watch.stop();
      // Whatever ended the loop, requests already accepted finish before the new version is
      // completed or removed.
      await Promise.allSettled(inFlight);
    }
  }

  async #requests(device: ExportReader, inFlight: Set<Promise<void>>, reads: ReadReplies): Promise<void> {
    for (;;) {
      await this.#wire.drained();
      // One waiter woken by the next request to finish: Promise.race over all of them here
      // would leave a reaction on every pending request per call (thousands, held until each
      // settles: MBs of heap per busy connection).
      while (inFlight.size >= MAX_IN_FLIGHT) await new Promise<void>((r) => (this.#slotFreed = r));
      const req = P.decodeRequest(await this.#wire.reader.read(P.REQUEST_SIZE));
      if (req.type === P.CMD.DISC) {
        await Promise.allSettled(inFlight);
        this.#session.cleanDisconnect = true;
        return;
      }
      let work: Promise<void>;
      if (req.type === P.CMD.WRITE) {
        if (req.length > MAX_REQUEST) {
          // The payload follows whatever we answer: skip it to stay in step with the client.
          this.#midPayload = true;
          await this.#wire.reader.skip(req.length);
          this.#midPayload = false;
          this.#error(req, P.NBD_ERR.EINVAL, `write of ${req.length} bytes is larger than ${MAX_REQUEST}`);
          continue;
        }
        // Received and applied here, a chunk at a time: the next request follows the payload.
        const failure = await this.#receiveWrite(device, req);
        work = this.#finishWrite(req, failure);
      } else work = this.#handle(device, req, reads);
      const p = work
        .catch((err: unknown) => {
          this.#log('error', `request failed: ${errorMessage(err)}`);
          this.#error(req, P.NBD_ERR.EIO, 'internal error');
        })
        .finally(() => {
          inFlight.delete(p);
          const wake = this.#slotFreed;
          this.#slotFreed = undefined;
          wake?.();
        });
      inFlight.add(p);
    }
  }

  /**
   * Receives a write's payload and applies it as it arrives, WRITE_CHUNK at a time: no write
   * holds its whole payload, so a client that announces 32 MiB and stops holds one chunk (and
   * the stall timeout closes it). Returns the error to answer, if any; the payload is always
   * read to its end, to stay in step with the client.
   */
  async #receiveWrite(
    device: ExportReader,
    req: P.Request,
  ): Promise<{ error: number; message: string } | undefined> {
    const w = this.#session.writer;
    let failure: { error: number; message: string } | undefined;
    if (!w)
      failure = { error: P.NBD_ERR.EPERM, message: 'the export is read-only (serve it with -w to write)' };
    else {
      const bad = this.#checkRange(device, req);
      if (bad)
        failure = {
          error: req.offset + req.length > device.size ? P.NBD_ERR.ENOSPC : P.NBD_ERR.EINVAL,
          message: bad,
        };
    }
    this.#midPayload = true;
    try {
      if (failure || !w) {
        await this.#wire.reader.skip(req.length);
        return failure;
      }
      this.#session.wrote = true;
      for (let done = 0; done < req.length;) {
        const n = Math.min(WRITE_CHUNK, req.length - done);
        const chunk = await this.#wire.reader.read(n);
        if (!failure) {
          try {
            await w.write(req.offset + done, chunk, req);
          } catch (err) {
            this.#log('error', `write at ${req.offset + done} failed: ${errorMessage(err)}`);
            failure = { error: P.NBD_ERR.EIO, message: errorMessage(err) };
          }
        }
        done += n;
      }
      return failure;
    } finally {
      this.#midPayload = false;
    }
  }

  async #finishWrite(req: P.Request, failure: { error: number; message: string } | undefined): Promise<void> {
    if (failure) return this.#error(req, failure.error, failure.message);
    if (req.flags & P.CMD_FLAG.FUA) {
      try {
        await this.#session.writer!.flush();
      } catch (err) {
        this.#log('error', `flush failed: ${errorMessage(err)}`);
        return this.#error(req, P.NBD_ERR.EIO, errorMessage(err));
      }
    }
    return this.#ok(req);
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

  async #handle(device: ExportReader, req: P.Request, reads: ReadReplies): Promise<void> {
    const { CMD, NBD_ERR } = P;
    const w = this.#session.writer;
    switch (req.type) {
      case CMD.READ: {
        const bad = this.#checkRange(device, req);
        if (bad) return this.#error(req, NBD_ERR.EINVAL, bad);
        if (req.length === 0) return this.#ok(req);
        return reads.reply(req);
      }
      case CMD.TRIM:
      case CMD.WRITE_ZEROES: {
        if (!w) return this.#error(req, NBD_ERR.EPERM, 'the export is read-only (serve it with -w to write)');
        const bad = this.#checkRange(device, req, Number.MAX_SAFE_INTEGER);
        if (bad)
          return this.#error(
            req,
            req.offset + req.length > device.size ? NBD_ERR.ENOSPC : NBD_ERR.EINVAL,
            bad,
          );
        this.#session.wrote = true;
        try {
          await w.zero(req.offset, req.length);
          if (req.flags & P.CMD_FLAG.FUA) await w.flush();
        } catch (err) {
          return this.#error(
            req,
            NBD_ERR.EIO,
            await this.#session.writeFailed(`write at ${req.offset}`, err),
          );
        }
        return this.#ok(req);
      }
      case CMD.FLUSH:
        if (w) {
          try {
            await w.flush();
          } catch (err) {
            return this.#error(req, NBD_ERR.EIO, await this.#session.writeFailed('flush', err));
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
}
