/**
 * A backup or deep-scrub source read over NBD (nbd://, nbd+unix://). Reads are pipelined by
 * the client: the backup pipeline asks for several blocks at once and each goes out at once.
 * The export's base:allocation context (when the server offers it) gives the data extents:
 * holes and zero-flagged extents are not data, so blocks wholly inside them are sparse without
 * a read. With a dirty bitmap (qemu:dirty-bitmap:NAME), its dirty extents are change hints.
 */
import { InputError } from '../errors.js';
import type { HintExtent } from '../hints/rbd-diff.js';
import { NbdClient, parseNbdUri } from '../nbd/client.js';
import { BASE_ALLOCATION, STATE_HOLE, STATE_ZERO } from '../nbd/protocol.js';
import type { Extent } from './extents.js';
import type { RandomSource } from './source.js';

export const DIRTY_BITMAP_PREFIX = 'qemu:dirty-bitmap:';
/** qemu:dirty-bitmap flag: the extent changed since the bitmap was started. */
const STATE_DIRTY = 1;

export class NbdSource implements RandomSource {
  readonly kind = 'random';
  readonly name: string;
  readonly size: number;
  readonly dataExtents?: () => AsyncIterable<Extent>;
  readonly #client: NbdClient;
  readonly #bitmap: string | undefined;

  private constructor(client: NbdClient, bitmap: string | undefined) {
    this.#client = client;
    this.name = client.uri;
    this.size = client.size;
    this.#bitmap = bitmap;
    if (client.contexts.has(BASE_ALLOCATION)) this.dataExtents = () => this.#dataExtents();
  }

  /** Opens `uri`; with `dirtyBitmap`, the server must offer that bitmap (checked here, before any backup starts). */
  static async open(uri: string, opts: { dirtyBitmap?: string } = {}): Promise<NbdSource> {
    const bitmap = opts.dirtyBitmap !== undefined ? DIRTY_BITMAP_PREFIX + opts.dirtyBitmap : undefined;
    const client = await NbdClient.connect(
      parseNbdUri(uri),
      bitmap ? [BASE_ALLOCATION, bitmap] : [BASE_ALLOCATION],
    );
    if (bitmap && !client.contexts.has(bitmap)) {
      await client.close();
      throw new InputError(
        `NBD source ${uri} does not offer the dirty bitmap ${JSON.stringify(opts.dirtyBitmap)} (${bitmap}); export it with qemu-nbd -B ${opts.dirtyBitmap}, or check the name with qemu-img info`,
      );
    }
    return new NbdSource(client, bitmap);
  }

  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.#client.read(offset, length, into);
  }

  async *#dataExtents(): AsyncGenerator<Extent> {
    yield* runs(this.#client.extents(BASE_ALLOCATION), (f) => (f & (STATE_HOLE | STATE_ZERO)) === 0);
  }

  /** The dirty extents of the bitmap given at open, as change hints (exists: read them). */
  async *dirtyExtents(): AsyncGenerator<HintExtent> {
    if (!this.#bitmap) throw new Error('dirtyExtents() without a dirty bitmap');
    for await (const e of runs(this.#client.extents(this.#bitmap), (f) => (f & STATE_DIRTY) !== 0)) {
      yield { ...e, exists: true };
    }
  }

  close(): Promise<void> {
    return this.#client.close();
  }
}

/** The extents whose flags pass `keep`, adjacent ones merged. */
async function* runs(
  extents: AsyncIterable<{ offset: number; length: number; flags: number }>,
  keep: (flags: number) => boolean,
): AsyncGenerator<Extent> {
  let cur: Extent | undefined;
  for await (const e of extents) {
    if (!keep(e.flags)) continue;
    if (cur && cur.offset + cur.length === e.offset) cur.length += e.length;
    else {
      if (cur) yield cur;
      cur = { offset: e.offset, length: e.length };
    }
  }
  if (cur) yield cur;
}
