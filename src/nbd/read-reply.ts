/**
 * Replies to NBD_CMD_READ, sent a block at a time: each block is taken from the connection's
 * ReadAccount, read (from the cache, verified), sent, and given back once the kernel has it.
 * However large the read, a connection holds at most its share of blocks, so a client that
 * does not read its replies holds little, and only its own.
 *
 * Structured replies: a chunk per block (data, hole, or error with its offset), DONE on the
 * last. Simple replies, and structured ones with NBD_CMD_FLAG_DF, go out in one piece whose
 * header says whether the read failed: every block is looked at first (and given back), then
 * the reply streams with the connection's other replies held back (ReplyWire.exclusive). A
 * block that fails only on the second look leaves no way to tell the client: the connection
 * is closed, as the protocol requires.
 */
import type { ExportReader, Piece } from './export.js';
import { releasePieces } from './export.js';
import * as P from './protocol.js';
import type { ReadAccount } from './read-account.js';

export type Send = (reply: Buffer | Buffer[], sent?: () => void) => void;

/** The connection's replies, and a way to send one alone (others wait until it is done). */
export interface ReplyWire {
  send: Send;
  exclusive(fn: (send: Send) => Promise<void>): Promise<void>;
  /** Closes the connection for a reason the protocol cannot tell the client. */
  drop(reason: string): void;
  /** The connection is gone: the rest of a reply need not be read. */
  closed(): boolean;
}

/** Zeros for holes in replies that carry them as data: shared, never written to. */
let zeros = Buffer.alloc(0);
function zeroBytes(n: number): Buffer {
  if (zeros.length < n) zeros = Buffer.alloc(n);
  return zeros.subarray(0, n);
}

export class ReadReplies {
  readonly #wire: ReplyWire;
  readonly #device: ExportReader;
  readonly #account: ReadAccount;
  readonly #structured: boolean;

  constructor(wire: ReplyWire, device: ExportReader, account: ReadAccount, structured: boolean) {
    this.#wire = wire;
    this.#device = device;
    this.#account = account;
    this.#structured = structured;
  }

  /** Answers a read already checked to be in range and not empty. */
  async reply(req: P.Request): Promise<void> {
    const bs = this.#device.blockSize;
    const first = Math.floor(req.offset / bs);
    const last = Math.floor((req.offset + req.length - 1) / bs);
    if (!this.#structured || (req.flags & P.CMD_FLAG.DF) !== 0)
      return this.#account.exclusive((acquire) => this.#whole(req, first, last, acquire));
    for (let idx = first; idx <= last && !this.#wire.closed(); idx++) {
      const { pieces, release } = await this.#block(req, idx, (i) => this.#account.acquire(i));
      const p = pieces[0];
      const flags = idx === last ? P.REPLY_FLAG_DONE : 0;
      const bufs =
        p.kind === 'data'
          ? [P.encodeDataChunkHeader(req.cookie, flags, p.offset, p.data.length), p.data]
          : p.kind === 'hole'
            ? [P.encodeHoleChunk(req.cookie, flags, p.offset, p.length)]
            : [P.encodeErrorChunk(req.cookie, flags, P.NBD_ERR.EIO, p.reason, p.offset)];
      this.#wire.send(bufs, () => {
        releasePieces(pieces);
        release();
      });
    }
  }

  /** The part of the read in block `idx`, held until release(). */
  async #block(
    req: P.Request,
    idx: number,
    acquire: (idx: number) => Promise<() => void>,
  ): Promise<{ pieces: Piece[]; release: () => void }> {
    const bs = this.#device.blockSize;
    const start = Math.max(req.offset, idx * bs);
    const end = Math.min(req.offset + req.length, (idx + 1) * bs);
    const release = await acquire(idx);
    try {
      return { pieces: await this.#device.read(start, end - start), release };
    } catch (err) {
      release();
      throw err;
    }
  }

  async #whole(
    req: P.Request,
    first: number,
    last: number,
    acquire: (idx: number) => Promise<() => void>,
  ): Promise<void> {
    for (let idx = first; idx <= last && !this.#wire.closed(); idx++) {
      const { pieces, release } = await this.#block(req, idx, acquire);
      const bad = pieces.find((p) => p.kind === 'error');
      releasePieces(pieces);
      release();
      if (bad?.kind === 'error') {
        if (!this.#structured) return this.#wire.send(P.encodeSimpleReply(req.cookie, P.NBD_ERR.EIO));
        return this.#wire.send(P.encodeErrorChunk(req.cookie, P.REPLY_FLAG_DONE, P.NBD_ERR.EIO, bad.reason));
      }
    }
    await this.#wire.exclusive(async (send) => {
      send(
        this.#structured
          ? P.encodeDataChunkHeader(req.cookie, P.REPLY_FLAG_DONE, req.offset, req.length)
          : P.encodeSimpleReply(req.cookie, 0),
      );
      for (let idx = first; idx <= last && !this.#wire.closed(); idx++) {
        const { pieces, release } = await this.#block(req, idx, acquire);
        const p = pieces[0];
        if (p.kind === 'error') {
          release();
          this.#wire.drop(`a read failed after its reply had begun (${p.reason})`);
          return;
        }
        send(p.kind === 'data' ? p.data : zeroBytes(p.length), () => {
          releasePieces(pieces);
          release();
        });
      }
    });
  }
}
