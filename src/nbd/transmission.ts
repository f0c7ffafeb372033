/**
 * The NBD server's transmission phase: the request loop (at most MAX_IN_FLIGHT requests of a
 * connection in flight, payloads and multi-block reads under the server-wide budgets) and the
 * commands: reads answered from cached blocks (simple or structured replies, holes as hole
 * chunks, damaged blocks as errors), copy-on-write writes, trim, zeroes, flush, block status.
 */
import { errorMessage } from '../errors.js';
import { objectBufferSize } from '../storage/block-store.js';
import type { Budget } from './budget.js';
import type { Log, Wire } from './connection.js';
import type { ExportReader, Piece } from './export.js';
import { releasePieces } from './export.js';
import { MAX_IN_FLIGHT, MAX_REQUEST } from './limits.js';
import { BASE_ALLOCATION_ID } from './negotiation.js';
import type { Negotiated } from './negotiation.js';
import * as P from './protocol.js';
import type { NbdServer } from './server.js';
import type { ExportSession } from './session.js';

export class Transmission {
  readonly #server: NbdServer;
  readonly #wire: Wire;
  readonly #session: ExportSession;
  readonly #structured: boolean;
  readonly #meta: Negotiated['meta'];
  readonly #log: Log;
  /** The request loop, waiting for one of MAX_IN_FLIGHT requests to finish. */
  #slotFreed: (() => void) | undefined;

  constructor(server: NbdServer, wire: Wire, session: ExportSession, negotiated: Negotiated, log: Log) {
    this.#server = server;
    this.#wire = wire;
    this.#session = session;
    this.#structured = negotiated.structured;
    this.#meta = negotiated.meta;
    this.#log = log;
  }

  async run(): Promise<void> {
    const device = this.#session.device!;
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
      let payload: Buffer | undefined;
      let budget: Budget | undefined;
      let cost = 0;
      if (req.type === P.CMD.WRITE) {
        if (req.length > MAX_REQUEST) {
          // The payload follows whatever we answer: skip it to stay in step with the client.
          await this.#wire.reader.skip(req.length);
          this.#error(req, P.NBD_ERR.EINVAL, `write of ${req.length} bytes is larger than ${MAX_REQUEST}`);
          continue;
        }
        budget = budgets.writes;
        cost = await budget.take(req.length);
        try {
          payload = await this.#wire.reader.read(req.length);
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
    if (this.#structured) this.#wire.send(P.encodeErrorChunk(req.cookie, P.REPLY_FLAG_DONE, error, message));
    else this.#wire.send(P.encodeSimpleReply(req.cookie, error));
  }

  #ok(req: P.Request): void {
    if (this.#structured) this.#wire.send(P.encodeNoneChunk(req.cookie));
    else this.#wire.send(P.encodeSimpleReply(req.cookie, 0));
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
    const w = this.#session.writer;
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
        this.#session.wrote = true;
        try {
          if (req.type === CMD.WRITE) await w.write(req.offset, payload!);
          else await w.zero(req.offset, req.length);
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
        return this.#wire.send(
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
      if (errors.length > 0) return this.#wire.send([P.encodeSimpleReply(req.cookie, P.NBD_ERR.EIO)], sent);
      const bufs: Buffer[] = [P.encodeSimpleReply(req.cookie, 0)];
      for (const p of pieces) bufs.push(p.kind === 'data' ? p.data : Buffer.alloc(p.length));
      return this.#wire.send(bufs, sent);
    }
    if (req.flags & P.CMD_FLAG.DF) {
      if (errors.length > 0) {
        const e = errors[0] as Piece & { kind: 'error' };
        return this.#wire.send(
          [P.encodeErrorChunk(req.cookie, P.REPLY_FLAG_DONE, P.NBD_ERR.EIO, e.reason)],
          sent,
        );
      }
      const bufs: Buffer[] = [P.encodeDataChunkHeader(req.cookie, P.REPLY_FLAG_DONE, req.offset, req.length)];
      for (const p of pieces)
        bufs.push(p.kind === 'data' ? p.data : Buffer.alloc(p.kind === 'hole' ? p.length : 0));
      return this.#wire.send(bufs, sent);
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
    this.#wire.send(bufs, sent);
  }
}
