/**
 * The contract every data backend fulfils (a directory today; S3 later). Keys are opaque
 * strings made by the block store ([0-9a-f]+); a backend maps them to its own layout.
 *
 * - put: stores `data` (the concatenation of the chunks) under `key` durably and atomically:
 *   when put resolves the object survives a crash, and no reader ever sees a partial object
 *   under its final name. Overwriting an existing key replaces it atomically.
 *   With `{ defer: true }` put may resolve as soon as it is done with `data` (the caller may
 *   reuse its buffers); the object is complete under its name, and durable, once the next
 *   sync() resolves, which also reports a deferred put that failed after put resolved. A
 *   backend may so batch or overlap its flushes.
 * - sync (optional; required if deferred puts are not durable at once): makes every deferred
 *   put durable.
 * - get: the whole object; rejects with MissingBlockError when the key does not exist.
 * - getInto (optional): like get, but reads into `buf` when the object fits and returns the
 *   filled view of it (a new Buffer when it does not fit); saves an allocation per block.
 * - stat: size and modification time, or undefined when the key does not exist.
 * - statMany (optional): stat of each key, in order; for a backend that answers a batch faster
 *   than one stat at a time (import and recover look up every object a version names).
 * - delete: removes the key; deleting a missing key is not an error.
 * - list: every key with its size and modification time, in no particular order.
 *
 * A second, separate namespace holds what describes the store (its descriptor, one metadata
 * copy per version), named by META_NAME_RE. Backends keep them apart from block objects (a
 * `meta/` directory beside the two-hex-digit fan-out directories; keys under `PREFIX meta/` in
 * a bucket), so no block key can collide with one, and list() never yields them: cleanup,
 * import's adoption and scrub never see them.
 * - putMeta: like put (durable, atomic, replaces). `data` may be a stream of chunks (a large
 *   metadata copy), which a backend takes without holding it whole in memory.
 * - getMeta: the whole object, or undefined when it, or the whole store, does not exist.
 * - listMeta: every meta name with size and modification time.
 * - deleteMeta: removes the name; a missing one is not an error.
 */
export interface ObjectInfo {
  key: string;
  size: number;
  /** Last modification, milliseconds since the epoch. */
  mtimeMs: number;
}

export interface PutOptions {
  /** Durability may wait for the next sync() (see above). */
  defer?: boolean;
}

export interface StorageBackend {
  readonly url: string;
  /** Bytes of blocks a pipeline keeps in flight on this backend (blocksInFlight); default 16 MiB. */
  readonly inFlightBytes?: number;
  put(key: string, data: readonly Buffer[], opts?: PutOptions): Promise<void>;
  sync?(): Promise<void>;
  get(key: string): Promise<Buffer>;
  getInto?(key: string, buf: Buffer): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  statMany?(keys: readonly string[], signal?: AbortSignal): Promise<(ObjectInfo | undefined)[]>;
  delete(key: string): Promise<void>;
  list(): AsyncIterable<ObjectInfo>;
  putMeta(name: string, data: Buffer | AsyncIterable<Buffer>): Promise<void>;
  getMeta(name: string): Promise<Buffer | undefined>;
  listMeta(): AsyncIterable<ObjectInfo>;
  deleteMeta(name: string): Promise<void>;
  close(): Promise<void>;
}

/** Names in the meta namespace: a lower-case letter, then letters, digits and '-'. */
export const META_NAME_RE = /^[a-z][a-z0-9-]{0,99}$/;

export function checkMetaName(name: string): string {
  if (!META_NAME_RE.test(name)) throw new Error(`invalid meta object name '${name}'`);
  return name;
}
