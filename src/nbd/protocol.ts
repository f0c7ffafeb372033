/**
 * The NBD wire protocol (doc/proto.md of the NBD project): fixed newstyle handshake, option
 * haggling, transmission requests, simple and structured replies. Pure encoders and decoders
 * on Buffers, for both sides: the server (server.ts) and a client reading backup sources
 * over NBD. Every decoder checks lengths and throws NbdProtocolError on malformed input;
 * nothing here does I/O.
 *
 * All integers are big endian. 64-bit offsets and sizes are returned as numbers: images are
 * far below 2^53 bytes, and a larger value is refused as malformed.
 */

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags (server) and client flags. */
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_KNOWN = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

export const OPT = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERR = 0x80000000;
export const REP = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

export function isOptionError(replyType: number): boolean {
  return (replyType & REP_ERR) !== 0;
}

export const INFO = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags. */
export const TFLAG = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

export const CMD = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

export const CMD_FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16, PAYLOAD_LEN: 32 } as const;

export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** Error values on the wire (not the host's errno numbers, which may differ). */
export const NBD_ERR = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** base:allocation status flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
export const BASE_ALLOCATION = 'base:allocation';

/** Sizes of fixed-length parts. */
export const HANDSHAKE_SIZE = 18;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** The zero padding after an EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_PADDING = 124;
/** Strings (export names, queries) longer than this are refused, as the spec allows. */
export const MAX_STRING = 4096;

export class NbdProtocolError extends Error {}

function u64(buf: Buffer, offset: number, what: string): number {
  const v = buf.readBigUInt64BE(offset);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdProtocolError(`${what} ${v} is too large`);
  return Number(v);
}

function need(buf: Buffer, length: number, what: string): void {
  if (buf.length < length) throw new NbdProtocolError(`${what}: ${buf.length} bytes, need ${length}`);
}

// ---- handshake ----

export function encodeHandshake(flags: number): Buffer {
  const b = Buffer.alloc(HANDSHAKE_SIZE);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

export function decodeHandshake(b: Buffer): { flags: number } {
  need(b, HANDSHAKE_SIZE, 'handshake');
  if (b.readBigUInt64BE(0) !== NBD_MAGIC) throw new NbdProtocolError('bad NBDMAGIC');
  if (b.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdProtocolError('not a newstyle server');
  return { flags: b.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function decodeClientFlags(b: Buffer): number {
  need(b, 4, 'client flags');
  return b.readUInt32BE(0);
}

// ---- options ----

export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_SIZE);
  return b;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  need(b, OPTION_HEADER_SIZE, 'option header');
  if (b.readBigUInt64BE(0) !== IHAVEOPT) throw new NbdProtocolError('bad option magic');
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader {
  need(b, OPTION_REPLY_HEADER_SIZE, 'option reply header');
  if (b.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new NbdProtocolError('bad option reply magic');
  return { option: b.readUInt32BE(8), type: b.readUInt32BE(12), length: b.readUInt32BE(16) };
}

/** A length-prefixed (32-bit) string at `offset`; returns it and the offset after it. */
function readString32(b: Buffer, offset: number, what: string): [string, number] {
  need(b, offset + 4, what);
  const len = b.readUInt32BE(offset);
  if (len > MAX_STRING) throw new NbdProtocolError(`${what} is ${len} bytes long (at most ${MAX_STRING})`);
  need(b, offset + 4 + len, what);
  return [b.toString('utf8', offset + 4, offset + 4 + len), offset + 4 + len];
}

function string32(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  const b = Buffer.alloc(4 + body.length);
  b.writeUInt32BE(body.length, 0);
  body.copy(b, 4);
  return b;
}

/** NBD_OPT_INFO / NBD_OPT_GO data: export name and the info types the client asks for. */
export function encodeInfoRequest(name: string, infos: readonly number[]): Buffer {
  const n = Buffer.alloc(2 + 2 * infos.length);
  n.writeUInt16BE(infos.length, 0);
  infos.forEach((t, i) => n.writeUInt16BE(t, 2 + 2 * i));
  return Buffer.concat([string32(name), n]);
}

export function decodeInfoRequest(b: Buffer): { name: string; infos: number[] } {
  const [name, at] = readString32(b, 0, 'export name');
  need(b, at + 2, 'info request count');
  const count = b.readUInt16BE(at);
  if (b.length !== at + 2 + 2 * count)
    throw new NbdProtocolError('info request length does not match its count');
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(b.readUInt16BE(at + 2 + 2 * i));
  return { name, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  return Buffer.concat([string32(name), count, ...queries.map(string32)]);
}

export function decodeMetaContextRequest(b: Buffer): { name: string; queries: string[] } {
  const [name, at] = readString32(b, 0, 'export name');
  need(b, at + 4, 'query count');
  const count = b.readUInt32BE(at);
  let off = at + 4;
  // Each query takes at least 4 bytes: a count beyond that is malformed, not a reason to loop.
  if (count > (b.length - off) / 4) throw new NbdProtocolError('query count exceeds the option length');
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const [q, next] = readString32(b, off, 'query');
    queries.push(q);
    off = next;
  }
  if (off !== b.length) throw new NbdProtocolError('trailing bytes after the queries');
  return { name, queries };
}

/** NBD_REP_SERVER data (a NBD_OPT_LIST entry). */
export function encodeServerReply(name: string, description = ''): Buffer {
  return Buffer.concat([string32(name), Buffer.from(description, 'utf8')]);
}

export function decodeServerReply(b: Buffer): { name: string; description: string } {
  const [name, at] = readString32(b, 0, 'export name');
  return { name, description: b.toString('utf8', at) };
}

export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(INFO.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(INFO.NAME, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  b.writeUInt32BE(minimum, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(maximum, 10);
  return b;
}

export type InfoReply =
  | { type: typeof INFO.EXPORT; size: number; flags: number }
  | { type: typeof INFO.NAME; name: string }
  | { type: typeof INFO.BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { type: number; raw: Buffer };

export function decodeInfoReply(b: Buffer): InfoReply {
  need(b, 2, 'info reply');
  const type = b.readUInt16BE(0);
  if (type === INFO.EXPORT) {
    need(b, 12, 'export info');
    return { type, size: u64(b, 2, 'export size'), flags: b.readUInt16BE(10) };
  }
  if (type === INFO.NAME) return { type, name: b.toString('utf8', 2) };
  if (type === INFO.BLOCK_SIZE) {
    need(b, 14, 'block size info');
    return { type, minimum: b.readUInt32BE(2), preferred: b.readUInt32BE(6), maximum: b.readUInt32BE(10) };
  }
  return { type, raw: b.subarray(2) };
}

export function encodeMetaContextReply(id: number, name: string): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(id, 0);
  return Buffer.concat([b, Buffer.from(name, 'utf8')]);
}

export function decodeMetaContextReply(b: Buffer): { id: number; name: string } {
  need(b, 4, 'meta context reply');
  return { id: b.readUInt32BE(0), name: b.toString('utf8', 4) };
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags, padding unless NO_ZEROES. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** The client's view of an EXPORT_NAME reply: its first 10 bytes (the padding is skipped apart). */
export function decodeExportNameReply(b: Buffer): { size: number; flags: number } {
  need(b, 10, 'export name reply');
  return { size: u64(b, 0, 'export size'), flags: b.readUInt16BE(8) };
}

// ---- transmission ----

export interface Request {
  flags: number;
  type: number;
  /** The client's opaque handle, echoed in the reply. */
  cookie: bigint;
  offset: number;
  length: number;
}

export function encodeRequest(r: Request): Buffer {
  const b = Buffer.alloc(REQUEST_SIZE);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(BigInt(r.offset), 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

export function decodeRequest(b: Buffer): Request {
  need(b, REQUEST_SIZE, 'request');
  if (b.readUInt32BE(0) !== REQUEST_MAGIC) throw new NbdProtocolError('bad request magic');
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: b.readBigUInt64BE(8),
    offset: u64(b, 16, 'request offset'),
    length: b.readUInt32BE(24),
  };
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export type ReplyHeader =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'structured'; flags: number; type: number; cookie: bigint; length: number };

/** Decodes the first 16 bytes of a reply (simple) or all 20 (structured): check `kind` first. */
export function decodeReplyHeader(b: Buffer): ReplyHeader {
  need(b, 4, 'reply');
  const magic = b.readUInt32BE(0);
  if (magic === SIMPLE_REPLY_MAGIC) {
    need(b, SIMPLE_REPLY_SIZE, 'simple reply');
    return { kind: 'simple', error: b.readUInt32BE(4), cookie: b.readBigUInt64BE(8) };
  }
  if (magic === STRUCTURED_REPLY_MAGIC) {
    need(b, STRUCTURED_REPLY_HEADER_SIZE, 'structured reply');
    return {
      kind: 'structured',
      flags: b.readUInt16BE(4),
      type: b.readUInt16BE(6),
      cookie: b.readBigUInt64BE(8),
      length: b.readUInt32BE(16),
    };
  }
  throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
}

/** A structured reply chunk header; the payload (`length` bytes) follows. */
export function encodeChunkHeader(cookie: bigint, flags: number, type: number, length: number): Buffer {
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** OFFSET_DATA chunk: header plus offset; the `dataLength` data bytes follow. */
export function encodeDataChunkHeader(
  cookie: bigint,
  flags: number,
  offset: number,
  dataLength: number,
): Buffer {
  const h = encodeChunkHeader(cookie, flags, REPLY_TYPE.OFFSET_DATA, 8 + dataLength);
  const o = Buffer.alloc(8);
  o.writeBigUInt64BE(BigInt(offset), 0);
  return Buffer.concat([h, o]);
}

export function encodeHoleChunk(cookie: bigint, flags: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(STRUCTURED_REPLY_HEADER_SIZE + 12);
  encodeChunkHeader(cookie, flags, REPLY_TYPE.OFFSET_HOLE, 12).copy(b, 0);
  b.writeBigUInt64BE(BigInt(offset), STRUCTURED_REPLY_HEADER_SIZE);
  b.writeUInt32BE(length, STRUCTURED_REPLY_HEADER_SIZE + 8);
  return b;
}

/** ERROR chunk, or ERROR_OFFSET when `offset` is given. Messages are cut to fit 16 bits. */
export function encodeErrorChunk(
  cookie: bigint,
  flags: number,
  error: number,
  message: string,
  offset?: number,
): Buffer {
  const msg = Buffer.from(message, 'utf8').subarray(0, 4096);
  const payload = Buffer.alloc(6 + msg.length + (offset === undefined ? 0 : 8));
  payload.writeUInt32BE(error, 0);
  payload.writeUInt16BE(msg.length, 4);
  msg.copy(payload, 6);
  if (offset !== undefined) payload.writeBigUInt64BE(BigInt(offset), 6 + msg.length);
  const type = offset === undefined ? REPLY_TYPE.ERROR : REPLY_TYPE.ERROR_OFFSET;
  return Buffer.concat([encodeChunkHeader(cookie, flags, type, payload.length), payload]);
}

export function decodeErrorChunk(
  payload: Buffer,
  withOffset: boolean,
): { error: number; message: string; offset?: number } {
  need(payload, 6, 'error chunk');
  const len = payload.readUInt16BE(4);
  need(payload, 6 + len + (withOffset ? 8 : 0), 'error chunk');
  return {
    error: payload.readUInt32BE(0),
    message: payload.toString('utf8', 6, 6 + len),
    offset: withOffset ? u64(payload, 6 + len, 'error offset') : undefined,
  };
}

export function encodeNoneChunk(cookie: bigint): Buffer {
  return encodeChunkHeader(cookie, REPLY_FLAG_DONE, REPLY_TYPE.NONE, 0);
}

export interface Extent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  cookie: bigint,
  flags: number,
  contextId: number,
  extents: readonly Extent[],
): Buffer {
  const payload = Buffer.alloc(4 + 8 * extents.length);
  payload.writeUInt32BE(contextId, 0);
  extents.forEach((e, i) => {
    payload.writeUInt32BE(e.length, 4 + 8 * i);
    payload.writeUInt32BE(e.flags, 8 + 8 * i);
  });
  return Buffer.concat([encodeChunkHeader(cookie, flags, REPLY_TYPE.BLOCK_STATUS, payload.length), payload]);
}

export function decodeBlockStatusChunk(payload: Buffer): { contextId: number; extents: Extent[] } {
  need(payload, 4, 'block status chunk');
  if ((payload.length - 4) % 8 !== 0) throw new NbdProtocolError('block status chunk length is not 4 + 8n');
  const extents: Extent[] = [];
  for (let off = 4; off < payload.length; off += 8) {
    extents.push({ length: payload.readUInt32BE(off), flags: payload.readUInt32BE(off + 4) });
  }
  return { contextId: payload.readUInt32BE(0), extents };
}

/** OFFSET_HOLE payload. */
export function decodeHoleChunk(payload: Buffer): { offset: number; length: number } {
  need(payload, 12, 'hole chunk');
  return { offset: u64(payload, 0, 'hole offset'), length: payload.readUInt32BE(8) };
}

/** OFFSET_DATA payload: the offset and a view of the data. */
export function decodeDataChunk(payload: Buffer): { offset: number; data: Buffer } {
  need(payload, 8, 'data chunk');
  return { offset: u64(payload, 0, 'data offset'), data: payload.subarray(8) };
}
