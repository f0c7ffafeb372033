/**
 * A streaming parser for `rbd export-diff` output (Ceph's doc/dev/rbd-diff.rst).
 *
 * v1: "rbd diff v1\n", then records: a tag byte and its fields, all integers little endian:
 *   'f' le32 n, n bytes: from-snap    't' le32 n, n bytes: to-snap    's' le64: image size
 *   'w' le64 offset, le64 length, length bytes of data    'z' le64 offset, le64 length    'e': end
 * v2: "rbd diff v2\n", the same records with an le64 record length after every tag but 'e'.
 * v2 streams also carry 'p' (snapshot protection status, one byte): Ceph 16 writes its record
 * length as 8 although one byte follows, so that length is not trusted (rbd import-diff ignores it too).
 * `rbd export-diff` writes v1; v2 diffs are the per-snapshot parts of `rbd export --export-format 2`.
 *
 * Validation is strict: metadata (f, t, s) before data, 's' required, each metadata record at
 * most once, data and zero records in increasing, non-overlapping offset order inside the
 * image, nothing after 'e', no unknown tag. Memory: a data record is yielded in pieces that
 * never cross a multiple of `pieceSize` (a block), so the whole stream is never held.
 */
import { BackyError, InputError } from '../errors.js';

export const HEADER_V1 = 'rbd diff v1\n';
export const HEADER_V2 = 'rbd diff v2\n';
/** Snapshot names longer than this are refused: a hostile length must not allocate gigabytes. */
const MAX_NAME = 4096;

export interface ExportDiffHeader {
  format: 1 | 2;
  /** Absent for a full export-diff (no --from-snap). */
  fromSnap?: string;
  /** Absent when the image head (not a snapshot) was exported. */
  toSnap?: string;
  /** Image size at the to-snap, bytes. */
  size: number;
}

/** A changed piece: `data` at `offset`, or zeros (`data` undefined) over `length` bytes. */
export interface ExportDiffPiece {
  offset: number;
  length: number;
  data: Buffer | undefined;
}

/** Exact-length reads over an async iterable of chunks; zero-copy when a chunk holds the bytes. */
class ByteReader {
  readonly #it: AsyncIterator<Buffer | Uint8Array | string>;
  readonly #name: string;
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  #eof = false;
  /** Bytes consumed so far: the offset named in error messages. */
  consumed = 0;

  constructor(input: AsyncIterable<Buffer | Uint8Array | string>, name: string) {
    this.#it = input[Symbol.asyncIterator]();
    this.#name = name;
  }

  async #pull(): Promise<boolean> {
    if (this.#eof) return false;
    let next: IteratorResult<Buffer | Uint8Array | string>;
    try {
      next = await this.#it.next();
    } catch (err) {
      throw new BackyError(
        `cannot read ${this.#name} at byte ${this.consumed}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
    if (next.done) {
      this.#eof = true;
      return false;
    }
    const v = next.value;
    this.#buf = typeof v === 'string' ? Buffer.from(v) : Buffer.isBuffer(v) ? v : Buffer.from(v);
    this.#pos = 0;
    return true;
  }

  /** Exactly `n` bytes; InputError naming `what` when the stream ends first. */
  async exact(n: number, what: string): Promise<Buffer> {
    if (this.#buf.length - this.#pos >= n) {
      const out = this.#buf.subarray(this.#pos, this.#pos + n);
      this.#pos += n;
      this.consumed += n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      if (this.#pos >= this.#buf.length && !(await this.#pull())) {
        throw new InputError(
          `${this.#name} is truncated: it ends at byte ${this.consumed + filled} inside ${what}; was rbd export-diff interrupted?`,
        );
      }
      const take = Math.min(n - filled, this.#buf.length - this.#pos);
      this.#buf.copy(out, filled, this.#pos, this.#pos + take);
      this.#pos += take;
      filled += take;
    }
    this.consumed += n;
    return out;
  }

  async u8(what: string): Promise<number> {
    return (await this.exact(1, what))[0];
  }

  async u32(what: string): Promise<number> {
    return (await this.exact(4, what)).readUInt32LE(0);
  }

  /** An le64 that must fit a JS safe integer (offsets, lengths, sizes). */
  async u64(what: string): Promise<number> {
    const at = this.consumed;
    const v = (await this.exact(8, what)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER))
      throw new InputError(`${this.#name}: ${what} at byte ${at} is too large (${v})`);
    return Number(v);
  }

  async atEnd(): Promise<boolean> {
    while (this.#pos >= this.#buf.length) {
      if (!(await this.#pull())) return true;
    }
    return false;
  }

  async close(): Promise<void> {
    await this.#it.return?.();
  }
}

export class ExportDiffReader {
  readonly header: ExportDiffHeader;
  readonly #r: ByteReader;
  readonly #name: string;
  readonly #pieceSize: number;
  /** The first tag after the metadata, already read. */
  readonly #firstDataTag: number;
  #started = false;

  private constructor(r: ByteReader, name: string, pieceSize: number, header: ExportDiffHeader, tag: number) {
    this.#r = r;
    this.#name = name;
    this.#pieceSize = pieceSize;
    this.header = header;
    this.#firstDataTag = tag;
  }

  /**
   * Reads and checks the header and metadata records (up to the first data record), so the
   * caller can check them before any data arrives. `pieceSize`: data and zero pieces never
   * cross a multiple of it.
   */
  static async open(
    input: AsyncIterable<Buffer | Uint8Array | string>,
    opts: { name: string; pieceSize: number },
  ): Promise<ExportDiffReader> {
    const { name } = opts;
    const r = new ByteReader(input, name);
    if (await r.atEnd()) throw new InputError(`${name} is empty, expected an rbd export-diff stream`);
    const magic = await r.exact(HEADER_V1.length, 'the header').catch(() => {
      throw new InputError(`${name} is not an rbd export-diff stream (too short for the header)`);
    });
    const text = magic.toString('latin1');
    let format: 1 | 2;
    if (text === HEADER_V1) format = 1;
    else if (text === HEADER_V2) format = 2;
    else {
      throw new InputError(
        `${name} is not an rbd export-diff stream: it starts with ${JSON.stringify(text)}, expected "rbd diff v1\\n" or "rbd diff v2\\n"` +
          (text.startsWith('rbd image')
            ? ' (this is an `rbd export --export-format 2` image, not a diff)'
            : ''),
      );
    }
    let fromSnap: string | undefined;
    let toSnap: string | undefined;
    let size: number | undefined;
    const seen = new Set<string>();
    while (true) {
      const at = r.consumed;
      const tag = await r.u8('a record tag');
      const t = String.fromCharCode(tag);
      if (t === 'w' || t === 'z' || t === 'e') {
        if (size === undefined)
          throw new InputError(`${name}: record '${t}' at byte ${at} before the image size ('s')`);
        return new ExportDiffReader(r, name, opts.pieceSize, { format, fromSnap, toSnap, size }, tag);
      }
      if (seen.has(t) && t !== 'p')
        throw new InputError(`${name}: record '${t}' at byte ${at} appears twice`);
      seen.add(t);
      if (t === 'f' || t === 't') {
        const recLen = format === 2 ? await r.u64('a record length') : undefined;
        const n = await r.u32('a snapshot name length');
        if (n > MAX_NAME) throw new InputError(`${name}: snapshot name at byte ${at} is ${n} bytes long`);
        if (recLen !== undefined && recLen !== 4 + n) {
          throw new InputError(
            `${name}: record '${t}' at byte ${at} has length ${recLen}, expected ${4 + n}`,
          );
        }
        const snap = (await r.exact(n, 'a snapshot name')).toString('utf8');
        if (t === 'f') fromSnap = snap;
        else toSnap = snap;
      } else if (t === 's') {
        if (format === 2) await expectLength(r, 8, t, at, name);
        size = await r.u64('the image size');
      } else if (t === 'p' && format === 2) {
        await r.u64('a record length'); // not checked: see the module comment
        await r.u8('the protection status');
      } else {
        throw new InputError(
          `${name}: unknown record tag ${tagName(tag)} at byte ${at}; is this an rbd export-diff stream?`,
        );
      }
    }
  }

  /**
   * The data ('w') and zero ('z') records as pieces, in increasing offset order, then checks
   * that 'e' ends the stream. Call once.
   */
  async *pieces(): AsyncGenerator<ExportDiffPiece> {
    if (this.#started) throw new Error('ExportDiffReader.pieces() called twice');
    this.#started = true;
    const r = this.#r;
    const name = this.#name;
    const { size, format } = this.header;
    let end = 0; // end of the previous record: records come in increasing offset order
    let tag = this.#firstDataTag;
    let at = r.consumed - 1;
    while (true) {
      const t = String.fromCharCode(tag);
      if (t === 'e') break;
      if (t !== 'w' && t !== 'z') {
        if (t === 'f' || t === 't' || t === 's' || t === 'p') {
          throw new InputError(`${name}: metadata record '${t}' at byte ${at} after data records`);
        }
        throw new InputError(
          `${name}: unknown record tag ${tagName(tag)} at byte ${at}; is this an rbd export-diff stream?`,
        );
      }
      const recLen = format === 2 ? await r.u64('a record length') : undefined;
      const offset = await r.u64('a record offset');
      const length = await r.u64('a record length');
      if (recLen !== undefined && recLen !== 16 + (t === 'w' ? length : 0)) {
        throw new InputError(
          `${name}: record '${t}' at byte ${at} has length ${recLen}, expected ${16 + (t === 'w' ? length : 0)}`,
        );
      }
      if (offset + length > size) {
        throw new InputError(
          `${name}: record '${t}' at byte ${at} covers ${offset}+${length}, past the end of the image (${size} bytes)`,
        );
      }
      if (offset < end) {
        throw new InputError(
          `${name}: record '${t}' at byte ${at} (offset ${offset}) overlaps or precedes the previous record (which ends at ${end}); records must come in increasing offset order`,
        );
      }
      end = offset + length;
      let pos = offset;
      while (pos < end) {
        const n = Math.min(end - pos, this.#pieceSize - (pos % this.#pieceSize));
        const data = t === 'w' ? await r.exact(n, `the data of record 'w' at byte ${at}`) : undefined;
        yield { offset: pos, length: n, data };
        pos += n;
      }
      at = r.consumed;
      tag = await r.u8('a record tag (the stream must end with an end record)');
    }
    if (!(await r.atEnd()))
      throw new InputError(`${name}: unexpected data after the end record (byte ${r.consumed})`);
  }

  async close(): Promise<void> {
    await this.#r.close();
  }
}

async function expectLength(r: ByteReader, want: number, t: string, at: number, name: string): Promise<void> {
  const got = await r.u64('a record length');
  if (got !== want)
    throw new InputError(`${name}: record '${t}' at byte ${at} has length ${got}, expected ${want}`);
}

function tagName(tag: number): string {
  return tag >= 0x21 && tag < 0x7f
    ? `'${String.fromCharCode(tag)}'`
    : `0x${tag.toString(16).padStart(2, '0')}`;
}

/**
 * Encodes an export-diff stream (the inverse of the reader), for tests and tools. Records are
 * written as given, so tests can also build malformed streams.
 */
export function encodeExportDiff(
  format: 1 | 2,
  records: (
    | { tag: 'f' | 't'; name: string }
    | { tag: 's'; size: number }
    | { tag: 'w'; offset: number; data: Buffer }
    | { tag: 'z'; offset: number; length: number }
    | { tag: 'p'; status: number }
    | { tag: 'e' }
  )[],
): Buffer {
  const parts: Buffer[] = [Buffer.from(format === 1 ? HEADER_V1 : HEADER_V2, 'latin1')];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    return b;
  };
  const u64 = (v: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    return b;
  };
  const rec = (tag: string, body: Buffer[], len = body.reduce((s, b) => s + b.length, 0)) => {
    parts.push(Buffer.from(tag, 'latin1'));
    if (format === 2 && tag !== 'e') parts.push(u64(len));
    parts.push(...body);
  };
  for (const r of records) {
    if (r.tag === 'f' || r.tag === 't') {
      const name = Buffer.from(r.name, 'utf8');
      rec(r.tag, [u32(name.length), name]);
    } else if (r.tag === 's') rec('s', [u64(r.size)]);
    else if (r.tag === 'w') rec('w', [u64(r.offset), u64(r.data.length), r.data]);
    else if (r.tag === 'z') rec('z', [u64(r.offset), u64(r.length)]);
    else if (r.tag === 'p')
      rec('p', [Buffer.from([r.status])], 8); // as Ceph 16 writes it
    else rec('e', []);
  }
  return Buffer.concat(parts);
}
