/**
 * The block codec (src/storage/codec.ts: naming hash, compression, encryption and their
 * inverse with verification) on worker threads, so that the main thread does I/O and SQL only
 * and every core is busy (BLAKE3 ~5 GB/s, SHA-256 ~1.5 GB/s, zstd -1..3 ~2 GB/s on random data,
 * AES-256-GCM ~0.5-3 GB/s per core: on one thread they would cap a backup or restore).
 *
 * Buffers backed by a SharedArrayBuffer (see BufferPool) reach a worker without a copy or a
 * transfer; the caller must not change them until the promise settles. Any other buffer is
 * copied once (just the view's bytes) and that copy transferred. A decoded block is written
 * back into the shared buffer it was read into, and a block given up for encoding (`inPlace`)
 * is encoded around itself in its shared buffer: neither allocates on either thread. Any other
 * object comes back as a buffer of its own (transferred, not copied).
 *
 * Memory: each worker keeps two scratch buffers of at most a block each (compressed or
 * decrypted payload, decompressed plaintext) and one CRYPT_PIECE of cipher output (codec.ts),
 * ~13 MB of its own, and nothing per task. The blocks themselves are the callers' buffers
 * (see blocksInFlight in buffer-pool.ts for the whole bound).
 *
 * Workers are unref'd while idle, so a pool that is never closed does not keep the process
 * alive; close() terminates them. A worker that dies fails only its own pending tasks and is
 * replaced on the next call.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { BackyError } from '../errors.js';
import { CODEC_SOURCE, ENCODE_ROOM, codecModules } from '../storage/codec.js';
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
// Each ArrayBuffer at most once (two chunks may share one), never a SharedArrayBuffer.
const transferList = (views) => [...new Set(views.filter((u) => ArrayBuffer.isView(u) && !(u.buffer instanceof SharedArrayBuffer)).map((u) => u.buffer))];
parentPort.on('message', (m) => {
  let reply, transfer = [];
  try {
    if (setupError) throw new Error(setupError);
    if (m.op === 'name') reply = { id: m.id, name: codec.name(m.data) };
    else if (m.op === 'encode') {
      const shared = m.data.buffer instanceof SharedArrayBuffer;
      const chunks = codec.encode(m.name, m.data, m.inPlace);
      // A chunk on the caller's shared buffer goes back as its place in it: no copy.
      const out = chunks.map((c) => shared && c.buffer === m.data.buffer ? [c.byteOffset, c.length] : c);
      reply = { id: m.id, chunks: out };
      transfer = transferList(out);
    } else {
      const shared = m.obj.buffer instanceof SharedArrayBuffer;
      // A copy sent here is ours to write over.
      let d = codec.decode(m.name, m.obj, m.expected, shared ? m.room : m.obj.length);
      // A copy is not the caller's buffer: send the plaintext back instead.
      if (d.shared && !shared) d = { shared: false, data: m.obj.subarray(d.offset, d.offset + d.length) };
      reply = { id: m.id, decoded: d };
      if (!d.shared) transfer = transferList([d.data]);
    }
  } catch (err) {
    reply = { id: m.id, error: String((err && err.message) || err), corrupt: !!(err && err.corrupt) };
  }
  parentPort.postMessage(reply, transfer);
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
  /** [offset, length]: that part of the block's own (shared) buffer. */
  chunks?: (Uint8Array | [number, number])[];
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
   * The object for `data` under `name`, as chunks; `data` itself may be one of them. With
   * `inPlace` (see Codec.encode) an object is written around a block on a SharedArrayBuffer and
   * comes back as a view of it.
   */
  async encode(name: string, data: Uint8Array, inPlace = false): Promise<Encoded> {
    const r = await this.#run({ op: 'encode', name, data, inPlace }, [data]);
    return r.chunks!.map((c) => (Array.isArray(c) ? new Uint8Array(data.buffer, c[0], c[1]) : c));
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
          // view, once, and hand that copy over; with room to encode it in place, as the
          // worker may (the copy is nobody else's).
          const { before, after } = message.op === 'encode' ? ENCODE_ROOM : { before: 0, after: 0 };
          const copy = new Uint8Array(new ArrayBuffer(before + data.length + after), before, data.length);
          copy.set(data);
          message[k] = copy;
          if (message.op === 'encode') message.inPlace = true;
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
