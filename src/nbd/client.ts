/**
 * The client side of NBD, for backup and deep-scrub sources: fixed newstyle handshake,
 * structured replies, NBD_OPT_SET_META_CONTEXT (base:allocation, qemu:dirty-bitmap:NAME),
 * NBD_OPT_GO (with NBD_OPT_EXPORT_NAME for servers without it), and pipelined NBD_CMD_READ and
 * NBD_CMD_BLOCK_STATUS: any number of requests in flight on one connection, their replies
 * matched by cookie. The wire codec is protocol.ts, shared with the server.
 *
 * Memory: read data lands straight in the caller's buffer (no copy per reply); the only other
 * buffers are block-status payloads (bounded by MAX_STATUS_PAYLOAD) and option replies
 * (bounded by MAX_OPTION_REPLY), so what a hostile server sends cannot grow memory.
 *
 * Every failure (refused export, disconnect, garbage, an error reply, silence for TIMEOUT_MS)
 * is an InputError whose one line names the URI; after a transport or protocol failure every
 * pending and later request fails with it, and the connection is closed.
 */
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { InputError } from '../errors.js';
import { ConnectionClosed } from './chunk-reader.js';
import { DirectReader } from './direct-reader.js';
import * as P from './protocol.js';

/** Where an NBD URI points: a Unix socket or a TCP address, and the export name. */
export interface NbdAddress {
  uri: string;
  exportName: string;
  socket?: string;
  host?: string;
  port?: number;
}

const DEFAULT_PORT = 10809;
/** What a client may send in one request when the server names no maximum (the spec's rule). */
const DEFAULT_MAX_REQUEST = 32 << 20;
/** Block status asked for in pieces this long (the request length field is 32 bits). */
const STATUS_REQUEST = 1 << 30;
const MAX_OPTION_REPLY = 64 << 10;
/** A block-status chunk is 8 bytes per extent: 16 MiB is 2M extents, far beyond a real reply. */
const MAX_STATUS_PAYLOAD = 16 << 20;
const MAX_ERROR_PAYLOAD = 64 << 10;
/** A request without any reply for this long fails the source: a stalled server never hangs backy. */
export const TIMEOUT_MS = 120_000;

export function isNbdUri(s: string): boolean {
  return /^nbds?(\+[a-z]+)?:\/\//i.test(s);
}

/** libnbd's URI forms: nbd://HOST[:PORT]/EXPORT and nbd+unix:///EXPORT?socket=PATH. */
export function parseNbdUri(uri: string): NbdAddress {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new InputError(
      `${uri} is not a valid NBD URI (nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)`,
    );
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  const scheme = u.protocol.toLowerCase();
  if (scheme === 'nbd+unix:') {
    const socket = u.searchParams.get('socket');
    if (!socket) throw new InputError(`NBD URI ${uri} needs ?socket=PATH (nbd+unix:///EXPORT?socket=PATH)`);
    if (u.host !== '')
      throw new InputError(`NBD URI ${uri}: nbd+unix:// takes no host (nbd+unix:///EXPORT?socket=PATH)`);
    return { uri, exportName, socket };
  }
  if (scheme === 'nbd:') {
    if (u.hostname === '') throw new InputError(`NBD URI ${uri} needs a host (nbd://HOST[:PORT]/EXPORT)`);
    const port = u.port === '' ? DEFAULT_PORT : Number(u.port);
    return { uri, exportName, host: u.hostname.replace(/^\[(.*)\]$/, '$1'), port };
  }
  throw new InputError(
    `NBD URI ${uri}: only nbd:// and nbd+unix:// are supported (no TLS or vsock transports)`,
  );
}

export interface StatusExtent {
  offset: number;
  length: number;
  flags: number;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  into?: Buffer;
  /** Bytes of a read covered by data and hole chunks. */
  covered: number;
  contextId?: number;
  extents?: P.Extent[];
  error?: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class NbdClient {
  readonly uri: string;
  readonly size: number;
  readonly maxRequest: number;
  /** Negotiated meta contexts: name -> id. */
  readonly contexts: ReadonlyMap<string, number>;
  readonly #socket: Socket;
  readonly #reader: DirectReader;
  readonly #structured: boolean;
  readonly #pending = new Map<bigint, Pending>();
  #cookie = 0n;
  #broken: Error | undefined;

  private constructor(
    uri: string,
    socket: Socket,
    reader: DirectReader,
    info: { size: number; maxRequest: number; structured: boolean; contexts: Map<string, number> },
    timeoutMs: number,
  ) {
    this.uri = uri;
    this.#socket = socket;
    this.#reader = reader;
    this.size = info.size;
    this.maxRequest = info.maxRequest;
    this.#structured = info.structured;
    this.contexts = info.contexts;
    socket.setTimeout(timeoutMs, () => {
      if (this.#pending.size > 0)
        this.#fail(this.#error(`no reply from the server for ${timeoutMs / 1000} s`));
    });
    this.#receive().catch((err: unknown) => this.#fail(this.#transportError(err)));
  }

  /** Connects, negotiates `metaContexts` (those the server offers; see `contexts`) and opens the export. */
  static async connect(
    address: NbdAddress,
    metaContexts: readonly string[] = [],
    timeoutMs = TIMEOUT_MS,
  ): Promise<NbdClient> {
    const { uri } = address;
    const reader = new DirectReader();
    const socket = address.socket
      ? netConnect({ path: address.socket, onread: reader.onread })
      : netConnect({ host: address.host!, port: address.port!, onread: reader.onread });
    socket.setNoDelay(true);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
    } catch (err) {
      socket.destroy();
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      throw new InputError(`cannot connect to NBD source ${uri}: ${code}`);
    }
    socket.on('error', () => {}); // the reader reports it
    reader.attach(socket);
    // The handshake gets the same bound on silence as requests.
    const silent = () => socket.destroy(new Error(`no answer for ${timeoutMs / 1000} s`));
    socket.setTimeout(timeoutMs, silent);
    try {
      const info = await handshake(socket, reader, address, metaContexts);
      // Idle after the handshake is fine: only requests without a reply time out (below).
      socket.off('timeout', silent);
      return new NbdClient(uri, socket, reader, info, timeoutMs);
    } catch (err) {
      socket.destroy();
      if (err instanceof InputError) throw err;
      throw new InputError(`NBD source ${uri}: ${describe(err)} during the handshake`);
    }
  }

  /** Exactly `length` bytes at `offset`; split at the server's maximum request size, all in flight at once. */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (offset < 0 || offset + length > this.size) {
      throw new InputError(`NBD source ${this.uri}: read past the end (${offset}+${length} > ${this.size})`);
    }
    const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    const parts: Promise<void>[] = [];
    for (let done = 0; done < length; done += this.maxRequest) {
      const n = Math.min(this.maxRequest, length - done);
      parts.push(this.#request(P.CMD.READ, offset + done, n, { into: buf.subarray(done, done + n) }));
    }
    await Promise.all(parts);
    return buf;
  }

  /**
   * Every extent of the export in the meta context `name` (negotiated), ascending and
   * contiguous from 0 to the size. One request at a time: status replies are small.
   */
  async *extents(name: string): AsyncGenerator<StatusExtent> {
    const id = this.contexts.get(name);
    if (id === undefined)
      throw new InputError(`NBD source ${this.uri} does not offer the meta context ${name}`);
    let offset = 0;
    while (offset < this.size) {
      const length = Math.min(STATUS_REQUEST, this.size - offset);
      const p: Partial<Pending> = { contextId: id };
      await this.#request(P.CMD.BLOCK_STATUS, offset, length, p);
      const got = p.extents;
      if (!got || got.length === 0) {
        throw this.#fail(this.#error(`the server sent no ${name} extents for offset ${offset}`));
      }
      const end = offset + length;
      for (const e of got) {
        if (e.length === 0)
          throw this.#fail(this.#error(`the server sent an empty ${name} extent at offset ${offset}`));
        if (offset + e.length > this.size) {
          throw this.#fail(
            this.#error(
              `the server reports ${name} extents past the end of the export (${offset + e.length} > ${this.size})`,
            ),
          );
        }
        // The spec lets the last extent run past the request; only the asked-for range counts.
        const n = Math.min(e.length, end - offset);
        if (n <= 0) break;
        yield { offset, length: n, flags: e.flags };
        offset += n;
      }
    }
  }

  /** Sends NBD_CMD_DISC and closes; pending requests fail. */
  async close(): Promise<void> {
    if (this.#broken) return;
    this.#broken = new InputError(`NBD source ${this.uri} is closed`);
    for (const [cookie, p] of this.#pending) {
      this.#pending.delete(cookie);
      p.reject(this.#broken);
    }
    // destroy() would drop the DISC unsent; the server closes on it, and a server that does
    // not is cut off after a second (unref'd: it never keeps the process alive).
    this.#socket.end(
      P.encodeRequest({ flags: 0, type: P.CMD.DISC, cookie: ++this.#cookie, offset: 0, length: 0 }),
    );
    setTimeout(() => this.#socket.destroy(), 1000).unref();
  }

  #request(type: number, offset: number, length: number, extra: Partial<Pending>): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    const cookie = ++this.#cookie;
    return new Promise<void>((resolve, reject) => {
      // `extra` itself is the record, so a caller's object sees what the reply filled in.
      const p = Object.assign(extra, { type, offset, length, covered: 0, resolve, reject }) as Pending;
      this.#pending.set(cookie, p);
      this.#socket.write(P.encodeRequest({ flags: 0, type, cookie, offset, length }));
    });
  }

  async #receive(): Promise<void> {
    const r = this.#reader;
    for (;;) {
      let head = await r.read(P.SIMPLE_REPLY_SIZE);
      if (head.readUInt32BE(0) === P.STRUCTURED_REPLY_MAGIC) {
        head = Buffer.concat([head, await r.read(P.STRUCTURED_REPLY_HEADER_SIZE - P.SIMPLE_REPLY_SIZE)]);
      }
      const h = P.decodeReplyHeader(head);
      const p = this.#pending.get(h.cookie);
      if (!p) throw new P.NbdProtocolError(`reply for a request never sent (cookie ${h.cookie})`);
      if (h.kind === 'simple') {
        if (this.#structured && p.type === P.CMD.READ && h.error === 0) {
          throw new P.NbdProtocolError('simple reply to a read after structured replies were agreed');
        }
        if (h.error !== 0) p.error = errorName(h.error);
        else if (p.type === P.CMD.READ) {
          await r.readInto(p.into!, 0, p.length);
          p.covered = p.length;
        }
        this.#finish(h.cookie, p);
        continue;
      }
      await this.#chunk(h, p);
      if (h.flags & P.REPLY_FLAG_DONE) this.#finish(h.cookie, p);
    }
  }

  async #chunk(h: Extract<P.ReplyHeader, { kind: 'structured' }>, p: Pending): Promise<void> {
    const r = this.#reader;
    const inRange = (offset: number, length: number) =>
      offset >= p.offset && offset + length <= p.offset + p.length;
    switch (h.type) {
      case P.REPLY_TYPE.NONE:
        if (h.length !== 0) throw new P.NbdProtocolError('NONE chunk with a payload');
        return;
      case P.REPLY_TYPE.OFFSET_DATA: {
        if (p.type !== P.CMD.READ || h.length < 8) throw new P.NbdProtocolError('unexpected data chunk');
        const offset = P.decodeDataChunk(await r.read(8)).offset;
        const n = h.length - 8;
        if (!inRange(offset, n))
          throw new P.NbdProtocolError(`data chunk at ${offset}+${n} outside the read`);
        await r.readInto(p.into!, offset - p.offset, n);
        p.covered += n;
        return;
      }
      case P.REPLY_TYPE.OFFSET_HOLE: {
        if (p.type !== P.CMD.READ || h.length !== 12) throw new P.NbdProtocolError('unexpected hole chunk');
        const hole = P.decodeHoleChunk(await r.read(12));
        if (!inRange(hole.offset, hole.length))
          throw new P.NbdProtocolError(`hole chunk at ${hole.offset}+${hole.length} outside the read`);
        p.into!.fill(0, hole.offset - p.offset, hole.offset - p.offset + hole.length);
        p.covered += hole.length;
        return;
      }
      case P.REPLY_TYPE.BLOCK_STATUS: {
        if (p.type !== P.CMD.BLOCK_STATUS || h.length > MAX_STATUS_PAYLOAD)
          throw new P.NbdProtocolError('unexpected block status chunk');
        const s = P.decodeBlockStatusChunk(await r.read(h.length));
        if (s.contextId === p.contextId) p.extents = s.extents;
        return;
      }
      case P.REPLY_TYPE.ERROR:
      case P.REPLY_TYPE.ERROR_OFFSET: {
        if (h.length > MAX_ERROR_PAYLOAD) throw new P.NbdProtocolError('error chunk too long');
        const e = P.decodeErrorChunk(await r.read(h.length), h.type === P.REPLY_TYPE.ERROR_OFFSET);
        p.error = `${errorName(e.error)}${e.message ? ` (${e.message.slice(0, 200)})` : ''}`;
        return;
      }
      default:
        throw new P.NbdProtocolError(`unknown reply chunk type ${h.type}`);
    }
  }

  #finish(cookie: bigint, p: Pending): void {
    this.#pending.delete(cookie);
    const what = p.type === P.CMD.READ ? 'read' : 'block status';
    if (p.error !== undefined) {
      p.reject(
        this.#error(`the server failed a ${what} at offset ${p.offset} (length ${p.length}): ${p.error}`),
      );
    } else if (p.type === P.CMD.READ && p.covered !== p.length) {
      p.reject(
        this.#fail(
          this.#error(`the server answered ${p.covered} of ${p.length} bytes at offset ${p.offset}`),
        ),
      );
    } else p.resolve();
  }

  #error(what: string): InputError {
    return new InputError(`NBD source ${this.uri}: ${what}`);
  }

  #transportError(err: unknown): InputError {
    if (err instanceof InputError) return err;
    return this.#error(describe(err));
  }

  /** Breaks the connection: every pending and later request fails with `err`. Returns `err`. */
  #fail(err: Error): Error {
    if (!this.#broken) {
      this.#broken = err;
      this.#socket.destroy();
    }
    for (const [cookie, p] of this.#pending) {
      this.#pending.delete(cookie);
      p.reject(this.#broken);
    }
    return this.#broken;
  }
}

function describe(err: unknown): string {
  if (err instanceof ConnectionClosed) return `the server closed the connection (${err.message})`;
  if (err instanceof P.NbdProtocolError) return `not a valid NBD reply: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(P.NBD_ERR).map(([k, v]) => [v, k]));

function errorName(code: number): string {
  return ERRNO_NAMES.get(code) ?? `error ${code}`;
}

interface Negotiated {
  size: number;
  maxRequest: number;
  structured: boolean;
  contexts: Map<string, number>;
}

async function handshake(
  socket: Socket,
  reader: DirectReader,
  address: NbdAddress,
  metaContexts: readonly string[],
): Promise<Negotiated> {
  const { uri, exportName } = address;
  const fail = (what: string) => new InputError(`NBD source ${uri}: ${what}`);
  const { flags } = P.decodeHandshake(await reader.read(P.HANDSHAKE_SIZE));
  if (!(flags & P.FLAG_FIXED_NEWSTYLE)) throw fail('the server does not speak fixed newstyle NBD');
  const noZeroes = (flags & P.FLAG_NO_ZEROES) !== 0;
  socket.write(P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | (noZeroes ? P.FLAG_NO_ZEROES : 0)));

  const reply = async (option: number) => {
    const h = P.decodeOptionReplyHeader(await reader.read(P.OPTION_REPLY_HEADER_SIZE));
    if (h.option !== option) throw new P.NbdProtocolError(`reply to option ${h.option}, expected ${option}`);
    if (h.length > MAX_OPTION_REPLY) throw new P.NbdProtocolError(`option reply of ${h.length} bytes`);
    return { type: h.type, data: await reader.read(h.length) };
  };
  const refusal = (r: { type: number; data: Buffer }) => {
    const msg = r.data
      .toString('utf8')
      // eslint-disable-next-line no-control-regex -- a server's message goes on one terminal line
      .replace(/[\u0000-\u001f\u007f]/g, ' ')
      .trim()
      .slice(0, 200);
    return msg || `reply 0x${r.type.toString(16)}`;
  };

  socket.write(P.encodeOption(P.OPT.STRUCTURED_REPLY));
  const sr = await reply(P.OPT.STRUCTURED_REPLY);
  const structured = sr.type === P.REP.ACK;

  const contexts = new Map<string, number>();
  if (structured && metaContexts.length > 0) {
    socket.write(
      P.encodeOption(P.OPT.SET_META_CONTEXT, P.encodeMetaContextRequest(exportName, metaContexts)),
    );
    for (;;) {
      const r = await reply(P.OPT.SET_META_CONTEXT);
      if (r.type === P.REP.ACK || P.isOptionError(r.type)) break; // an error: no contexts, reads still work
      if (r.type === P.REP.META_CONTEXT) {
        const c = P.decodeMetaContextReply(r.data);
        if (metaContexts.includes(c.name)) contexts.set(c.name, c.id);
      }
    }
  }

  socket.write(P.encodeOption(P.OPT.GO, P.encodeInfoRequest(exportName, [P.INFO.BLOCK_SIZE])));
  let size = -1;
  let maxRequest = DEFAULT_MAX_REQUEST;
  for (;;) {
    const r = await reply(P.OPT.GO);
    if (r.type === P.REP.ERR_UNSUP) return exportNameFallback(socket, reader, address, noZeroes, structured);
    if (P.isOptionError(r.type))
      throw fail(`the server refused export ${JSON.stringify(exportName)}: ${refusal(r)}`);
    if (r.type === P.REP.ACK) break;
    if (r.type !== P.REP.INFO) continue;
    const info = P.decodeInfoReply(r.data);
    if ('size' in info) size = info.size;
    else if ('maximum' in info && info.maximum >= 512)
      maxRequest = Math.min(info.maximum, DEFAULT_MAX_REQUEST);
  }
  if (size < 0) throw fail('the server did not send the export size');
  return { size, maxRequest, structured, contexts };
}

/** A server without NBD_OPT_GO (old nbd-server): no block sizes, no meta contexts. */
async function exportNameFallback(
  socket: Socket,
  reader: DirectReader,
  address: NbdAddress,
  noZeroes: boolean,
  structured: boolean,
): Promise<Negotiated> {
  socket.write(P.encodeOption(P.OPT.EXPORT_NAME, Buffer.from(address.exportName, 'utf8')));
  let head: Buffer;
  try {
    head = await reader.read(10);
  } catch (err) {
    if (!(err instanceof ConnectionClosed)) throw err;
    throw new InputError(
      `NBD source ${address.uri}: the server closed the connection at export ${JSON.stringify(address.exportName)} (no such export?)`,
    );
  }
  const { size } = P.decodeExportNameReply(head);
  if (!noZeroes) await reader.skip(P.EXPORT_NAME_PADDING);
  return { size, maxRequest: DEFAULT_MAX_REQUEST, structured, contexts: new Map() };
}
