/**
 * `rbd diff --format=json` output -> validated extents, parsed as a stream: a hint file of
 * millions of extents is never held whole in memory (nor as millions of objects).
 * `exists` is accepted as the strings "true"/"false" (what rbd prints) and as booleans.
 *
 * Why a small scanner and not a streaming JSON library: the format is one top-level array of
 * small flat objects. The scanner only finds where each element of that array begins and ends
 * (tracking strings, escapes and bracket depth) and checks the array's own syntax (`[`, `,`,
 * `]`, whitespace); each element's text then goes through JSON.parse and the same zod schema
 * as before. So every element is judged by exactly the rules the whole-file parser applied
 * (numbers, escapes, duplicate keys, extra fields), with no dependency and little code to
 * trust. Elements are delimited on bytes: every delimiter is ASCII, so cutting UTF-8 there
 * decodes each element exactly as decoding the whole file would.
 *
 * Differences from reading the file whole, all on input that is refused anyway or absurd:
 * the first error in file order is reported (a syntax error late in the file no longer wins
 * over a bad extent early in it), and one element may be at most MAX_ELEMENT bytes.
 */
import * as z from 'zod';
import { InputError } from '../errors.js';

export interface HintExtent {
  offset: number;
  length: number;
  exists: boolean;
}

const extentSchema = z
  .object({
    offset: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    length: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
    exists: z.union([z.boolean(), z.enum(['true', 'false'])], {
      error: 'expected true, false, "true" or "false"',
    }),
  })
  .loose();

const hintsSchema = z.array(extentSchema);

/** One extent of rbd diff is ~45 bytes; anything this long is not one. */
export const MAX_ELEMENT = 1 << 20;
/** A document that is not an array is kept up to this much, to say what is wrong with it. */
const MAX_NON_ARRAY = 1 << 20;

const EXPECTED = 'not rbd diff JSON (expected [{"offset":N,"length":N,"exists":"true"|"false"}, ...])';

// Byte values the scanner looks at.
const SPACE = 0x20;
const TAB = 0x09;
const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;

const isSpace = (c: number) => c === SPACE || c === LF || c === CR || c === TAB;

type State =
  | 'start' // before the first non-whitespace byte
  | 'first' // after '[': an element or ']'
  | 'value' // after ',': an element
  | 'sep' // after an element: ',' or ']'
  | 'done' // after ']': whitespace only
  | 'other'; // the document is not an array: kept to describe it at the end

/**
 * Push-based parser: `push` chunks of the file, then `end()`. Each valid extent is handed to
 * `onExtent` with its index in the array as soon as its element ends; the first problem
 * throws an InputError naming `what` and the extent index.
 */
export class RbdDiffParser {
  #state: State = 'start';
  #index = 0;
  // The element being scanned: its bytes so far, and where the scanner is inside it.
  #parts: Buffer[] = [];
  #partsLength = 0;
  #inElement = false;
  #depth = 0;
  #inString = false;
  #escaped = false;
  #scalar = false;
  #other: Buffer[] = [];
  #otherLength = 0;

  constructor(
    readonly what: string,
    readonly onExtent: (extent: HintExtent, index: number) => void,
  ) {}

  push(chunk: Buffer): void {
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      if (this.#inElement) {
        const end = this.#scanElement(chunk, i);
        if (end < 0) {
          this.#keep(chunk.subarray(i));
          return;
        }
        this.#keep(chunk.subarray(i, end));
        this.#finishElement();
        i = end;
        continue;
      }
      const c = chunk[i];
      switch (this.#state) {
        case 'other':
          this.#keepOther(chunk.subarray(i));
          return;
        case 'start':
          if (isSpace(c)) break;
          if (c === OPEN_ARRAY) this.#state = 'first';
          else {
            this.#state = 'other';
            continue;
          }
          break;
        case 'first':
        case 'value':
          if (isSpace(c)) break;
          if (c === CLOSE_ARRAY && this.#state === 'first') {
            this.#state = 'done';
            break;
          }
          if (c === CLOSE_ARRAY || c === COMMA) this.#syntax(`unexpected '${String.fromCharCode(c)}'`);
          this.#startElement(c);
          continue; // the element's first byte is scanned as part of it
        case 'sep':
          if (isSpace(c)) break;
          if (c === COMMA) this.#state = 'value';
          else if (c === CLOSE_ARRAY) this.#state = 'done';
          else this.#syntax(`expected ',' or ']' after extent [${this.#index - 1}], found ${shownByte(c)}`);
          break;
        case 'done':
          if (!isSpace(c)) this.#syntax(`unexpected ${shownByte(c)} after the end of the array`);
          break;
      }
      i++;
    }
  }

  end(): void {
    if (this.#inElement && this.#scalar) this.#finishElement();
    if (this.#inElement) this.#syntax(`unexpected end of input inside extent [${this.#index}]`);
    if (this.#state === 'other') return this.#describeOther();
    if (this.#state !== 'done') this.#syntax('unexpected end of input');
  }

  #startElement(c: number): void {
    this.#inElement = true;
    this.#depth = 0;
    this.#inString = false;
    this.#escaped = false;
    this.#scalar = c !== OPEN_OBJECT && c !== OPEN_ARRAY && c !== QUOTE;
  }

  /** Scans from `i`; returns the index just past the element's end, or -1 if it goes on. */
  #scanElement(chunk: Buffer, i: number): number {
    const n = chunk.length;
    if (this.#scalar) {
      // A number, true, false, null or garbage: JSON.parse judges it; it ends at a delimiter.
      for (; i < n; i++) {
        const c = chunk[i];
        if (isSpace(c) || c === COMMA || c === CLOSE_ARRAY) return i;
      }
      return -1;
    }
    for (; i < n; i++) {
      const c = chunk[i];
      if (this.#inString) {
        if (this.#escaped) this.#escaped = false;
        else if (c === BACKSLASH) this.#escaped = true;
        else if (c === QUOTE) {
          this.#inString = false;
          if (this.#depth === 0) return i + 1; // a string element
        }
      } else if (c === QUOTE) this.#inString = true;
      else if (c === OPEN_OBJECT || c === OPEN_ARRAY) this.#depth++;
      else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
        // Mismatched brackets end the element too; JSON.parse then refuses its text.
        if (--this.#depth === 0) return i + 1;
      }
    }
    return -1;
  }

  #keep(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.#partsLength += bytes.length;
    if (this.#partsLength > MAX_ELEMENT) {
      throw new InputError(
        `${this.what}: extent [${this.#index}] is longer than ${MAX_ELEMENT} bytes; is it rbd diff --format=json output?`,
      );
    }
    // Copied: the caller may reuse the chunk's memory.
    this.#parts.push(Buffer.from(bytes));
  }

  #finishElement(): void {
    const text =
      this.#parts.length === 1
        ? this.#parts[0].toString('utf8')
        : Buffer.concat(this.#parts, this.#partsLength).toString('utf8');
    this.#parts = [];
    this.#partsLength = 0;
    this.#inElement = false;
    this.#state = 'sep';
    const index = this.#index++;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new InputError(`${this.what} is not valid JSON at extent [${index}]: ${oneLine(err)}`);
    }
    const parsed = extentSchema.safeParse(json);
    if (!parsed.success) throw schemaError(this.what, parsed.error.issues[0], [index]);
    const e = parsed.data;
    if (!Number.isSafeInteger(e.offset + e.length)) {
      throw new InputError(
        `${this.what}: extent [${index}] at offset ${e.offset} with length ${e.length} is too large`,
      );
    }
    this.onExtent(
      { offset: e.offset, length: e.length, exists: e.exists === true || e.exists === 'true' },
      index,
    );
  }

  #keepOther(bytes: Buffer): void {
    // Kept only up to a bound; the rest is still read, so that an endless or huge input is
    // reported as such by the reader's size limit.
    if (this.#otherLength < MAX_NON_ARRAY) this.#other.push(Buffer.from(bytes.subarray(0, MAX_NON_ARRAY)));
    this.#otherLength += bytes.length;
  }

  /** Not an array: the same message as parsing the whole text gives, when it is small enough. */
  #describeOther(): never {
    if (this.#otherLength > MAX_NON_ARRAY) {
      throw new InputError(`${this.what} is ${EXPECTED}: it does not start with '['`);
    }
    const text = Buffer.concat(this.#other).toString('utf8');
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new InputError(`${this.what} is not valid JSON: ${oneLine(err)}`);
    }
    const parsed = hintsSchema.safeParse(json);
    // Every array starts with '[', so this document is never one.
    throw schemaError(this.what, parsed.error!.issues[0], []);
  }

  #syntax(problem: string): never {
    throw new InputError(`${this.what} is not valid JSON: ${problem}`);
  }
}

function schemaError(what: string, issue: z.core.$ZodIssue, prefix: PropertyKey[]): InputError {
  const path = [...prefix, ...issue.path];
  const where = path.length
    ? `at ${path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}`
    : '';
  return new InputError(`${what} is ${EXPECTED} ${where}: ${issue.message}`.replace(/\s+:/, ':'));
}

/** JSON.parse quotes the offending text, newlines included: keep the error on one line. */
function oneLine(err: unknown): string {
  return (err as Error).message.replace(/\s*[\r\n]+\s*/g, ' ');
}

function shownByte(c: number): string {
  return c >= 0x20 && c < 0x7f ? `'${String.fromCharCode(c)}'` : `byte 0x${c.toString(16).padStart(2, '0')}`;
}

/** Parses a whole hint text (tests, small inputs). Throws InputError naming the first problem. */
export function parseRbdDiff(text: string, what = 'hint file'): HintExtent[] {
  const out: HintExtent[] = [];
  const parser = new RbdDiffParser(what, (e) => out.push(e));
  parser.push(Buffer.from(text, 'utf8'));
  parser.end();
  return out;
}
