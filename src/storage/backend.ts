/**
 * The contract every data backend fulfils (a directory today; S3 later). Keys are opaque
 * strings made by the block store ([0-9a-f]+); a backend maps them to its own layout.
 *
 * - put: stores `data` (the concatenation of the chunks) under `key` durably and atomically:
 *   when put resolves the object survives a crash, and no reader ever sees a partial object
 *   under its final name. Overwriting an existing key replaces it atomically.
 *   With `{ defer: true }` the object is complete under its name when put resolves, but may
 *   be lost in a crash until the next sync() resolves; a backend may so batch its flushes.
 * - sync (optional; required if deferred puts are not durable at once): makes every deferred
 *   put durable.
 * - get: the whole object; rejects with MissingBlockError when the key does not exist.
 * - getInto (optional): like get, but reads into `buf` when the object fits and returns the
 *   filled view of it (a new Buffer when it does not fit); saves an allocation per block.
 * - stat: size and modification time, or undefined when the key does not exist.
 * - delete: removes the key; deleting a missing key is not an error.
 * - list: every key with its size and modification time, in no particular order.
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
  put(key: string, data: readonly Buffer[], opts?: PutOptions): Promise<void>;
  sync?(): Promise<void>;
  get(key: string): Promise<Buffer>;
  getInto?(key: string, buf: Buffer): Promise<Buffer>;
  stat(key: string): Promise<ObjectInfo | undefined>;
  delete(key: string): Promise<void>;
  list(): AsyncIterable<ObjectInfo>;
  close(): Promise<void>;
}
