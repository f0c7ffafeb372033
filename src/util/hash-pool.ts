/**
 * Block hashing on worker threads, so that reading, writing and SQLite on the main thread
 * overlap with hashing and every core is busy (BLAKE3 ~5 GB/s, SHA-256 ~1.5 GB/s per core:
 * on one thread the hash alone would cap a backup or restore).
 *
 * Buffers backed by a SharedArrayBuffer (see BufferPool) reach a worker without a copy; the
 * caller must not change them until the promise settles. Any other buffer is copied once (just
 * the view's bytes).
 *
 * Workers are unref'd while idle, so a pool that is never closed does not keep the process
 * alive; close() terminates them. A worker that dies fails only its own pending hashes and is
 * replaced on the next call.
 */
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { HashFunction } from '../config/config.js';
import { BackyError } from '../errors.js';

// CommonJS source evaluated in each worker: no file to locate next to the compiled output,
// and no TypeScript loader needed in tests.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
let hash;
if (workerData.fn === 'blake3') {
  const { blake3 } = require(workerData.blake3Path);
  hash = (data) => blake3(data).toString('hex');
} else {
  const { createHash } = require('node:crypto');
  hash = (data) => createHash(workerData.fn).update(data).digest('hex');
}
parentPort.on('message', ({ id, data }) => {
  let reply;
  try {
    reply = { id, digest: hash(data) };
  } catch (err) {
    reply = { id, error: String((err && err.message) || err) };
  }
  parentPort.postMessage(reply);
});
`;

interface Task {
  resolve: (digest: string) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Task>;
}

export class HashPool {
  readonly fn: HashFunction;
  readonly size: number;
  readonly #slots: (Slot | undefined)[];
  #nextId = 0;
  #closed = false;

  /**
   * `threads` defaults to one per core but one (the main thread and libuv's threads keep a core
   * busy with reads, writes and SQLite; each worker costs ~13 MB), at least 1, at most 8.
   */
  constructor(fn: HashFunction, threads = Math.min(8, Math.max(1, availableParallelism() - 1))) {
    this.fn = fn;
    this.size = threads;
    this.#slots = new Array<Slot | undefined>(threads).fill(undefined);
  }

  /** Hex digest of `data`, computed on a worker thread. */
  hash(data: Uint8Array): Promise<string> {
    if (this.#closed) return Promise.reject(new BackyError('hash pool is closed'));
    const slot = this.#leastBusy();
    const id = this.#nextId++;
    return new Promise<string>((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      if (slot.pending.size === 1) slot.worker.ref();
      try {
        if (data.buffer instanceof SharedArrayBuffer) slot.worker.postMessage({ id, data });
        else {
          // Cloning a view would copy its whole backing store (maybe far larger): copy just the
          // view, once, and hand that copy over.
          const copy = new Uint8Array(data);
          slot.worker.postMessage({ id, data: copy }, [copy.buffer]);
        }
      } catch (err) {
        this.#settle(slot, id);
        reject(err as Error);
      }
    });
  }

  /** Terminates the workers; pending hashes reject. */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.filter((s): s is Slot => s !== undefined);
    this.#slots.fill(undefined);
    await Promise.all(
      slots.map(async (s) => {
        this.#failAll(s, new BackyError('hash pool closed'));
        await s.worker.terminate();
      }),
    );
  }

  #leastBusy(): Slot {
    let best = -1;
    for (let i = 0; i < this.#slots.length; i++) {
      const s = this.#slots[i];
      if (!s) {
        this.#slots[i] = this.#spawn(i);
        return this.#slots[i]!;
      }
      if (best < 0 || s.pending.size < this.#slots[best]!.pending.size) best = i;
    }
    return this.#slots[best]!;
  }

  #spawn(index: number): Slot {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      execArgv: [],
      workerData: {
        fn: this.fn,
        blake3Path: this.fn === 'blake3' ? createRequire(import.meta.url).resolve('@napi-rs/blake-hash') : '',
      },
    });
    const slot: Slot = { worker, pending: new Map() };
    worker.unref();
    worker.on('message', (m: { id: number; digest?: string; error?: string }) => {
      const task = this.#settle(slot, m.id);
      if (!task) return;
      if (m.digest !== undefined) task.resolve(m.digest);
      else task.reject(new BackyError(`hashing failed: ${m.error}`));
    });
    const gone = (err: Error) => {
      if (this.#slots[index] === slot) this.#slots[index] = undefined;
      this.#failAll(slot, err);
    };
    worker.on('error', (err) => gone(new BackyError(`hash worker failed: ${err.message}`)));
    worker.on('exit', (code) => gone(new BackyError(`hash worker exited (code ${code})`)));
    return slot;
  }

  #settle(slot: Slot, id: number): Task | undefined {
    const task = slot.pending.get(id);
    slot.pending.delete(id);
    if (slot.pending.size === 0) slot.worker.unref();
    return task;
  }

  #failAll(slot: Slot, err: Error): void {
    const tasks = [...slot.pending.values()];
    slot.pending.clear();
    slot.worker.unref();
    for (const t of tasks) t.reject(err);
  }
}
