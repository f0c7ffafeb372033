/**
 * The export file format and its parsing (pure: no I/O).
 *
 * Format "backy-export" version 1: JSON Lines (UTF-8, one JSON object per line, '\n'):
 *   line 1   header  {"format":"backy-export","version":1,"hash_function":"blake3",
 *                     "uid":"<uuid>","name":"vm1@b1","snapshot_name":"","date":<µs since epoch, UTC>,
 *                     "size_bytes":<n>,"block_size":<n>,"status":"valid"|"invalid",
 *                     "base_uid":<uuid>|null,"protected":false,"hostname":"<host>"}
 *   then     one line per block, idx 0, 1, 2, ... without gaps:
 *                    {"idx":0,"checksum":"<64 lower-case hex>"|null,"size":<bytes>,"valid":true}
 *            (checksum null: a sparse, all-zero block; size is the block's length in the image)
 *   last     trailer {"end":"backy-export","blocks":<number of block lines>}
 * The trailer makes a truncated file detectable. Readers reject unknown keys and versions.
 * Two optional header fields: "labels":{"key":"value",...} (the version's labels, when it has
 * any; import sets them) and, in the store's own metadata copies only (version-copy.ts),
 * "store_id":"<uuid>" (the store the copy belongs to; recover refuses another store's).
 * A third, "tracking":{"kind":"thin","device_id":2,"base_device_id":1} (or another kind, see
 * meta/tracking.ts), is what the version's change tracking is relative to, when recorded;
 * files without it (older ones) import with none recorded.
 */
import * as z from 'zod';
import { blockCount, blockLength } from '../blocks/blocks.js';
import { CHECKSUM_RE } from '../blocks/hash.js';
import { HASH_FUNCTIONS } from '../config/config.js';
import type { HashFunction } from '../config/config.js';
import { InputError } from '../errors.js';
import { parseLabel } from '../meta/catalog.js';
import type { BlockRow, Version } from '../meta/meta-store.js';
import { trackingSchema } from '../meta/tracking.js';

export const EXPORT_FORMAT = 'backy-export';
export const EXPORT_VERSION = 1;
/** Longest line accepted on import; real lines are under 400 bytes. */
export const MAX_LINE = 64 * 1024;
/** Largest image size accepted on import: 1 PiB. */
export const MAX_SIZE_BYTES = 2 ** 50;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const uid = z.string().regex(UUID_RE, 'must be a lower-case UUID');
const count = z.int('must be an integer').min(0, 'must not be negative');

const headerSchema = z.strictObject({
  format: z.literal(EXPORT_FORMAT, `must be "${EXPORT_FORMAT}"`),
  version: z.literal(
    EXPORT_VERSION,
    `unsupported format version (this backy reads version ${EXPORT_VERSION})`,
  ),
  hash_function: z.enum(HASH_FUNCTIONS, `must be one of ${HASH_FUNCTIONS.join(', ')}`),
  uid,
  name: z
    .string()
    .min(1, 'must not be empty')
    .max(255, 'is longer than 255 characters')
    .regex(/^\S+$/, 'must not contain whitespace'),
  snapshot_name: z
    .string()
    .max(255, 'is longer than 255 characters')
    .regex(/^[^\n\r]*$/, 'must be one line'),
  date: count.max(Number.MAX_SAFE_INTEGER, 'is too large'),
  size_bytes: count.max(MAX_SIZE_BYTES, `is larger than ${MAX_SIZE_BYTES} (1 PiB)`),
  block_size: z
    .int('must be an integer')
    .min(4096, 'must be at least 4096')
    .max(2 ** 30, 'must be at most 1 GiB')
    .refine((n) => n % 512 === 0, 'must be a multiple of 512'),
  status: z.enum(['valid', 'invalid'], 'must be "valid" or "invalid"'),
  base_uid: uid.nullable(),
  protected: z.boolean('must be true or false'),
  hostname: z
    .string()
    .max(255, 'is longer than 255 characters')
    .regex(/^[^\n\r]*$/, 'must be one line'),
  labels: z.record(z.string().max(63), z.string().max(255)).optional(),
  store_id: uid.optional(),
  tracking: trackingSchema.optional(),
});

const blockSchema = z.strictObject({
  idx: count,
  checksum: z.string().regex(CHECKSUM_RE, 'must be 64 lower-case hex characters or null').nullable(),
  size: count,
  valid: z.boolean('must be true or false'),
});

/**
 * A block line in the exact form export writes; its numbers have at most 15 digits, so they are
 * safe integers like the schema's.
 */
const CANONICAL_BLOCK_RE =
  /^\{"idx":(0|[1-9][0-9]{0,14}),"checksum":(?:"([0-9a-f]{64})"|null),"size":(0|[1-9][0-9]{0,14}),"valid":(true|false)\}$/;

const trailerSchema = z.strictObject({
  end: z.literal(EXPORT_FORMAT, `must be "${EXPORT_FORMAT}"`),
  blocks: count,
});

export type ExportHeader = z.infer<typeof headerSchema>;

/**
 * Validates an export file line by line (pure: no I/O). `line` returns the header or a block
 * row; `finish` checks that the trailer came. Every problem is an InputError naming the line.
 */
export class ExportParser {
  readonly #name: string;
  #header: ExportHeader | undefined;
  #blocks = 0;
  #expected = 0;
  #ended = false;
  #lineNo = 0;

  constructor(name: string) {
    this.#name = name;
  }

  get header(): ExportHeader | undefined {
    return this.#header;
  }

  #fail(msg: string): never {
    throw new InputError(`${this.#name} line ${this.#lineNo}: ${msg}`);
  }

  #check<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
    const r = schema.safeParse(value);
    if (r.success) return r.data;
    const issue = r.error.issues[0];
    const path = issue.path.join('.');
    if (issue.code === 'unrecognized_keys')
      this.#fail(
        `${what}: unknown field ${issue.keys.map((k) => `'${[...issue.path, k].join('.')}'`).join(', ')}`,
      );
    if (issue.code === 'invalid_type' && issue.input === undefined)
      this.#fail(`${what}: field '${path}' is missing`);
    this.#fail(`${what}: ${path ? `'${path}' ` : ''}${issue.message}`);
  }

  line(text: string): { header: ExportHeader } | { block: BlockRow } | undefined {
    this.#lineNo++;
    if (this.#ended) this.#fail('unexpected content after the end line');
    if (this.#header) {
      // A block line exactly as export writes it (all but a few lines of a file) is taken apart by
      // one regular expression: JSON.parse and the schema cost ~4 µs a line, 1 s a 1 TiB image per
      // pass. It accepts nothing the schema refuses; anything else, bad lines included, takes
      // the general path below and fails with its message.
      const m = CANONICAL_BLOCK_RE.exec(text);
      if (m) {
        const block = {
          idx: Number(m[1]),
          checksum: m[2] ?? null,
          size: Number(m[3]),
          valid: m[4] === 'true',
        };
        this.#checkBlock(block);
        return { block };
      }
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.#fail(
        this.#lineNo === 1 ? 'not a backy export file (not JSON)' : 'not valid JSON (truncated or damaged?)',
      );
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      this.#fail('expected a JSON object');
    if (!this.#header) {
      if ((value as { format?: unknown }).format !== EXPORT_FORMAT) {
        this.#fail(`not a backy export file (the first line needs "format":"${EXPORT_FORMAT}")`);
      }
      const h = this.#check(headerSchema, value, 'header');
      if (h.base_uid === h.uid) this.#fail("header: 'base_uid' must differ from 'uid'");
      for (const [k, v] of Object.entries(h.labels ?? {})) {
        try {
          parseLabel(`${k}=${v}`);
        } catch (err) {
          this.#fail(`header: 'labels': ${(err as Error).message}`);
        }
      }
      this.#header = h;
      this.#expected = blockCount(h.size_bytes, h.block_size);
      return { header: h };
    }
    if ('end' in value) {
      const t = this.#check(trailerSchema, value, 'end line');
      if (t.blocks !== this.#blocks)
        this.#fail(`end line says ${t.blocks} blocks, the file has ${this.#blocks}`);
      if (this.#blocks !== this.#expected) {
        this.#fail(`${this.#blocks} blocks, but size_bytes and block_size need ${this.#expected}`);
      }
      this.#ended = true;
      return undefined;
    }
    const b = this.#check(blockSchema, value, 'block');
    const block = { idx: b.idx, checksum: b.checksum, size: b.size, valid: b.valid };
    this.#checkBlock(block);
    return { block };
  }

  /** The block is the next one, of the length the image needs there. */
  #checkBlock(b: BlockRow): void {
    const header = this.#header!;
    if (b.idx !== this.#blocks) {
      if (b.idx < this.#blocks)
        this.#fail(`block idx ${b.idx} repeats or goes backwards (expected ${this.#blocks})`);
      if (b.idx >= this.#expected)
        this.#fail(`block idx ${b.idx} is out of range (the image has ${this.#expected} blocks)`);
      this.#fail(`block idx ${b.idx} leaves a gap (expected ${this.#blocks})`);
    }
    if (b.idx >= this.#expected)
      this.#fail(`block idx ${b.idx} is out of range (the image has ${this.#expected} blocks)`);
    const want = blockLength(b.idx, header.size_bytes, header.block_size);
    if (b.size !== want) this.#fail(`block ${b.idx} has size ${b.size}, but the image needs ${want}`);
    this.#blocks++;
  }

  /** The file ended: throws unless header, every block and the end line were there. */
  finish(): { header: ExportHeader; blocks: number } {
    if (!this.#header) throw new InputError(`${this.#name} is empty; expected a backy export file`);
    if (!this.#ended) {
      throw new InputError(
        `${this.#name} is truncated: it ends after ${this.#blocks} of ${this.#expected} blocks without its end line`,
      );
    }
    return { header: this.#header, blocks: this.#blocks };
  }
}

/**
 * Splits a byte stream into lines of at most `max` bytes (strict UTF-8). The complete lines of
 * a chunk are decoded in one call and split as a string (a '\n' byte is never part of a
 * multi-byte character): decoding line by line cost more than parsing them. A run that holds
 * invalid UTF-8 or a byte order mark is decoded line by line, as each line on its own would be.
 */
export async function* splitLines(
  chunks: AsyncIterable<Buffer>,
  name: string,
  max = MAX_LINE,
): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const decode = (b: Buffer, lineNo: number) => {
    try {
      return decoder.decode(b);
    } catch {
      throw new InputError(`${name} line ${lineNo}: not valid UTF-8`);
    }
  };
  const tooLong = (lineNo: number) => new InputError(`${name} line ${lineNo}: longer than ${max} bytes`);
  let pending: Buffer[] = [];
  let pendingLength = 0;
  let lineNo = 0;
  for await (const chunk of chunks) {
    const last = chunk.lastIndexOf(10);
    if (last === -1) {
      pendingLength += chunk.length;
      if (pendingLength > max) throw tooLong(lineNo + 1);
      if (chunk.length > 0) pending.push(Buffer.from(chunk));
      continue;
    }
    const head = chunk.subarray(0, last);
    const run = pending.length > 0 ? Buffer.concat([...pending, head]) : head;
    pending = [];
    pendingLength = 0;
    let text: string | undefined;
    try {
      text = decoder.decode(run);
    } catch {
      text = undefined;
    }
    if (text === undefined || text.includes('\uFEFF')) {
      let start = 0;
      for (;;) {
        const nl = run.indexOf(10, start);
        const line = run.subarray(start, nl === -1 ? run.length : nl);
        lineNo++;
        if (line.length > max) throw tooLong(lineNo);
        yield decode(line, lineNo);
        if (nl === -1) break;
        start = nl + 1;
      }
    } else {
      // A string as long as its bytes is ASCII: then a line's length is its length in bytes.
      const ascii = text.length === run.length;
      let start = 0;
      for (;;) {
        const nl = text.indexOf('\n', start);
        const line = text.slice(start, nl === -1 ? text.length : nl);
        lineNo++;
        if ((ascii ? line.length : Buffer.byteLength(line)) > max) throw tooLong(lineNo);
        yield line;
        if (nl === -1) break;
        start = nl + 1;
      }
    }
    const tail = chunk.subarray(last + 1);
    if (tail.length > max) throw tooLong(lineNo + 1);
    if (tail.length > 0) {
      pending.push(Buffer.from(tail));
      pendingLength = tail.length;
    }
  }
  if (pendingLength > 0) yield decode(Buffer.concat(pending), lineNo + 1);
}

/** What only the store's own copies carry (see the format above). */
export interface CopyFields {
  labels: Record<string, string>;
  storeId: string;
}

/** The version a header describes (the inverse of headerOf), with `status` when given. */
export function versionOf(h: ExportHeader, status: Version['status'] = h.status): Version {
  return {
    uid: h.uid,
    name: h.name,
    snapshotName: h.snapshot_name,
    date: h.date,
    sizeBytes: h.size_bytes,
    blockSize: h.block_size,
    status,
    baseUid: h.base_uid,
    protected: h.protected,
    hostname: h.hostname,
    tracking: h.tracking ?? null,
  };
}

export function headerOf(
  v: Version,
  hashFunction: HashFunction,
  copy?: CopyFields,
  labels: Record<string, string> = copy?.labels ?? {},
): ExportHeader {
  const h: ExportHeader = {
    format: EXPORT_FORMAT,
    version: EXPORT_VERSION,
    hash_function: hashFunction,
    uid: v.uid,
    name: v.name,
    snapshot_name: v.snapshotName,
    date: v.date,
    size_bytes: v.sizeBytes,
    block_size: v.blockSize,
    status: v.status === 'valid' ? 'valid' : 'invalid',
    base_uid: v.baseUid,
    protected: v.protected,
    hostname: v.hostname,
  };
  if (Object.keys(labels).length > 0) h.labels = labels;
  if (v.tracking) h.tracking = v.tracking;
  if (copy) h.store_id = copy.storeId;
  return h;
}
