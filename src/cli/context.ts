/** What every command gets: logger, output mode, and lazily opened config, metadata and store. */
import { describeDataBackend, loadConfig, redactUrl } from '../config/config.js';
import type { Config } from '../config/config.js';
import { hasherFor } from '../blocks/hash.js';
import { InputError } from '../errors.js';
import { MetaStore } from '../meta/meta-store.js';
import { BlockStore } from '../storage/block-store.js';
import { openBackend } from '../storage/open-backend.js';
import { HashPool } from '../util/hash-pool.js';
import type { Logger } from '../util/log.js';

export class Context {
  readonly log: Logger;
  readonly machine: boolean;
  readonly #configPath: string | undefined;
  #config: Config | undefined;
  #meta: MetaStore | undefined;
  #store: BlockStore | undefined;
  #hashPool: HashPool | undefined;

  constructor(log: Logger, opts: { machine: boolean; config?: string }) {
    this.log = log;
    this.machine = opts.machine;
    this.#configPath = opts.config;
  }

  loadConfig(): Config {
    return this.config;
  }

  get config(): Config {
    if (!this.#config) {
      this.#config = loadConfig(this.#configPath);
      this.log.setLogfile(this.#config.logfile);
      this.log.debug(
        `config: ${this.#config.source}; metadata: ${redactUrl(this.#config.engine)}; data: ${describeDataBackend(this.#config.dataBackend)}`,
      );
    }
    return this.#config;
  }

  async meta(): Promise<MetaStore> {
    this.#meta ??= await MetaStore.open(this.config.engine, { hashFunction: this.config.hashFunction });
    return this.#meta;
  }

  async store(): Promise<BlockStore> {
    if (!this.#store) {
      const meta = await this.meta();
      const backend = await openBackend(this.config.dataBackend);
      this.#hashPool = new HashPool(meta.hashFunction);
      this.#store = new BlockStore(backend, hasherFor(meta.hashFunction), this.#hashPool);
    }
    return this.#store;
  }

  /** A result line on stdout. */
  out(line: string): void {
    process.stdout.write(`${line}\n`);
  }

  async close(): Promise<void> {
    await this.#store?.backend.close();
    await this.#hashPool?.close();
    await this.#meta?.close();
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A version uid from the command line. */
export function parseUid(value: string): string {
  if (!UUID_RE.test(value)) {
    throw new InputError(
      `'${value}' is not a version uid (expected a UUID such as 3f2b8c1e-...; see 'backy ls')`,
    );
  }
  return value.toLowerCase();
}
