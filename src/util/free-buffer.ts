/**
 * Frees a buffer's memory now instead of at V8's next full collection. Buffers that Node
 * allocates for us (an HTTP body chunk, a cipher's output) are garbage once copied, but V8
 * counts their memory only as external pressure: tens of MB of them pile up between
 * collections, all resident. Posting a buffer on a closed port still transfers (detaches) it
 * and then drops the message at once, which frees the memory then and there.
 *
 * Only a buffer that is the whole of its ArrayBuffer is freed (a view of a larger one, e.g. of
 * Buffer's shared pool, may share it with others); the caller must hold the only reference.
 * codec.ts has the same few lines in its worker source, which cannot import this module.
 */
import { MessageChannel } from 'node:worker_threads';

let sink: MessageChannel['port1'] | undefined;

export function freeBuffer(b: Uint8Array): void {
  if (b.length === 0 || b.byteOffset !== 0 || b.length !== b.buffer.byteLength) return;
  if (b.buffer instanceof SharedArrayBuffer) return;
  if (!sink) {
    sink = new MessageChannel().port1;
    sink.close();
  }
  sink.postMessage(null, [b.buffer]);
}
