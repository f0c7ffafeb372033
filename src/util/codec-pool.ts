/**
 * The block codec (src/storage/codec.ts: naming hash, compression, encryption and their
 * inverse with verification) on worker threads, so that the main thread does I/O and SQL only
 * and every core is busy (BLAKE3 ~5 GB/s, SHA-256 ~1.5 GB/s, zstd -1..3 ~2 GB/s on random data,
 * AES-256-GCM ~0.5-3 GB/s per core: on one thread they would cap a backup or restore).
 *
 * Buffers backed by a SharedArrayBuffer (see BufferPool) reach a worker without a copy; the
 * caller must not change them until the promise settles. Any other buffer is copied once (just
 * the view's bytes). A decoded block is written back into the shared buffer it was read into,
 * so reads cost no allocation on the main thread; an encrypted or compressed object is written
 * into a shared output buffer of the caller's (without one, a compressed object comes back as
 * a buffer of its own, transferred, not copied).
 *
 * Memory: each worker keeps two scratch buffers of at most a block each (decrypted payload,
 * decompressed plaintext), ~13 MB of its own, and nothing per task; the main thread holds at
 * most one encoded object per block in flight (BlockStore's output buffers with encryption).
 * So the bound stays (workers x 2 + blocks in flight x 2) x block size.
 *
 * Workers are unref'd while idle, so a pool that is never closed does not keep the process
 * alive; close() terminates them. A worker that dies fails only its own pending tasks and is
 * replaced on the next call.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { BackyError } from '../errors.js';
import { CODEC_SOURCE, codecModules } from '../storage/codec.js';
import type { CodecSpec, Decoded, Encoded } from '../storage/codec.js';

// CommonJS source evaluated in each worker: no file to locate next to the compiled output,
// and no TypeScript loader needed in tests.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
${CODEC_SOURCE}
let codec, setupError;
try {
  codec = makeCodec(workerData.spec, workerData.modules);
} catch (err) {
  setupError = String((err && err.message) || err);
}
const transferable = (u) => u.buffer instanceof SharedArrayBuffer ? [] : [u.buffer];
// node:crypto's ciphers return a new buffer per call: a block's worth of garbage per block,
// which V8 collects only once tens of MB of it have piled up, in each worker. Collecting the
// young generation every few blocks keeps that off the peak RSS (a scavenge of a heap this
// small takes well under a millisecond).
// (Once the flag is set, workers started later have a global gc already.)
let scavenge = typeof globalThis.gc === 'function' ? globalThis.gc : undefined;
try {
  if (!scavenge) {
    require('node:v8').setFlagsFromString('--expose-gc');
    scavenge = require('node:vm').runInNewContext('gc');
  }
} catch {}
let sinceGc = 0;
const collect = (bytes) => {
  sinceGc += bytes;
  if (scavenge && sinceGc >= 16 * 1024 * 1024) {
    sinceGc = 0;
    scavenge({ type: 'minor' });
  }
};
parentPort.on('message', (m) => {
  let reply, transfer = [];
  try {
    if (setupError) throw new Error(setupError);
    if (m.op === 'name') reply = { id: m.id, name: codec.name(m.data) };
    else if (m.op === 'encode') {
      const chunks = codec.encode(m.name, m.data, m.dst);
      // The block itself, or the caller's output buffer, may be a chunk: never send back what
      // the caller already has.
      const out = chunks.map((c) =>
        c.buffer === m.data.buffer ? null : m.dst && c.buffer === m.dst.buffer ? c.length : new Uint8Array(c.buffer, c.byteOffset, c.length));
      reply = { id: m.id, chunks: out };
      for (const c of out) if (c && typeof c === 'object' && c.byteOffset === 0 && c.length === c.buffer.byteLength) transfer.push(...transferable(c));
    } else {
      const shared = m.obj.buffer instanceof SharedArrayBuffer;
      let d = codec.decode(m.name, m.obj, m.expected, shared ? m.room : 0);
      // A copy sent here is not the caller's buffer: send the plaintext back instead.
      if (d.shared && !shared) d = { shared: false, data: m.obj.subarray(d.offset, d.offset + d.length) };
      reply = { id: m.id, decoded: d };
      if (!d.shared) transfer = transferable(d.data);
    }
  } catch (err) {
    reply = { id: m.id, error: String((err && err.message) || err), corrupt: !!(err && err.corrupt) };
  }
  parentPort.postMessage(reply, transfer);
  if (codec && codec.encrypted) collect((m.data || m.obj).length);
});
`;

/** A damaged object, as the worker found it (the caller turns it into a CorruptBlockError). */
export class CorruptObject extends Error {}

interface Task {
  resolve: (reply: Reply) => void;
  reject: (err: Error) => void;
}

interface Reply {
  id: number;
  name?: string;
  /** null: the block itself; a number: that many bytes of the caller's output buffer. */
  chunks?: (Uint8Array | number | null)[];
  decoded?: Decoded;
  error?: string;
  corrupt?: boolean;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Task>;
}

export class CodecPool {
  readonly spec: CodecSpec;
  readonly size: number;
  readonly #slots: (Slot | undefined)[];
  #nextId = 0;
  #closed = false;

  /**
   * `threads` defaults to one per core but one (the main thread and libuv's threads keep a core
   * busy with reads, writes and SQL; each worker costs ~13 MB), at least 1, at most 8.
   */
  constructor(spec: CodecSpec, threads = Math.min(8, Math.max(1, availableParallelism() - 1))) {
    this.spec = spec;
    this.size = threads;
    this.#slots = new Array<Slot | undefined>(threads).fill(undefined);
  }

  /** The object name (keyed hash with encryption) of `data`, computed on a worker thread. */
  async hash(data: Uint8Array): Promise<string> {
    const r = await this.#run({ op: 'name', data }, [data]);
    return r.name!;
  }

  /**
   * The object for `data` under `name`, as chunks; `data` itself may be one of them, and an
   * encrypted object is written into `dst` (a SharedArrayBuffer view) when it fits.
   */
  async encode(name: string, data: Uint8Array, dst?: Uint8Array): Promise<Encoded> {
    const msg: Record<string, unknown> = { op: 'encode', name, data };
    if (dst && dst.buffer instanceof SharedArrayBuffer) msg.dst = dst;
    const r = await this.#run(msg, [data]);
    return r.chunks!.map((c) => (c === null ? data : typeof c === 'number' ? dst!.subarray(0, c) : c));
  }

  /**
   * Decodes and verifies an object. When `obj` lives on a SharedArrayBuffer a plaintext of at
   * most `room` bytes is written into it, from its start (see Decoded). Rejects with CorruptObject for a damaged object.
   */
  async decode(name: string, obj: Uint8Array, expected: number | undefined, room: number): Promise<Decoded> {
    const r = await this.#run({ op: 'decode', name, obj, expected, room }, [obj]);
    return r.decoded!;
  }

  /** Terminates the workers; pending tasks reject. */
  async close(): Promise<void> {
    this.#closed = true;
    const slots = this.#slots.filter((s): s is Slot => s !== undefined);
    this.#slots.fill(undefined);
    await Promise.all(
      slots.map(async (s) => {
        this.#failAll(s, new BackyError('codec pool closed'));
        await s.worker.terminate();
      }),
    );
  }

  #run(message: Record<string, unknown>, views: Uint8Array[]): Promise<Reply> {
    if (this.#closed) return Promise.reject(new BackyError('codec pool is closed'));
    const slot = this.#leastBusy();
    const id = this.#nextId++;
    return new Promise<Reply>((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      if (slot.pending.size === 1) slot.worker.ref();
      try {
        const transfer: ArrayBuffer[] = [];
        for (const [k, v] of Object.entries(message)) {
          if (!views.includes(v as Uint8Array)) continue;
          const data = v as Uint8Array;
          if (data.buffer instanceof SharedArrayBuffer) continue;
          // Cloning a view would copy its whole backing store (maybe far larger): copy just the
          // view, once, and hand that copy over.
          const copy = new Uint8Array(data);
          message[k] = copy;
          transfer.push(copy.buffer);
        }
        slot.worker.postMessage({ ...message, id }, transfer);
      } catch (err) {
        this.#settle(slot, id);
        reject(err as Error);
      }
    });
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
      workerData: { spec: this.spec, modules: codecModules() },
    });
    const slot: Slot = { worker, pending: new Map() };
    worker.unref();
    worker.on('message', (m: Reply) => {
      const task = this.#settle(slot, m.id);
      if (!task) return;
      if (m.error === undefined) task.resolve(m);
      else if (m.corrupt) task.reject(new CorruptObject(m.error));
      else task.reject(new BackyError(`block codec failed: ${m.error}`));
    });
    const gone = (err: Error) => {
      if (this.#slots[index] === slot) this.#slots[index] = undefined;
      this.#failAll(slot, err);
    };
    worker.on('error', (err) => gone(new BackyError(`codec worker failed: ${err.message}`)));
    worker.on('exit', (code) => gone(new BackyError(`codec worker exited (code ${code})`)));
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
