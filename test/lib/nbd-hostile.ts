/**
 * Scripted hostile NBD clients, for the tests and the measurements of what they cannot do to
 * `backy nbd`: a reader that asks for large reads and never reads the replies (its socket is
 * paused, so the kernel's buffers fill and the server's replies wait), a writer that announces
 * a large write and stops sending its payload; and the server's memory from /proc.
 */
import { readFile } from 'node:fs/promises';
import * as P from '../../src/nbd/protocol.js';
import { RawClient } from './nbd.js';
import type { ServerHandle } from './nbd.js';

/** Where a raw client reaches the server: its TCP port when it has one (logs name the peer). */
export function rawTarget(srv: ServerHandle): string | { port: number } {
  return srv.port === undefined ? srv.socket : { port: srv.port };
}

/** Opens `uid`, sends READs of [offset, length) and never reads a reply. */
export async function stalledReader(
  srv: ServerHandle,
  uid: string,
  reads: [offset: number, length: number][],
): Promise<RawClient> {
  const c = await RawClient.connect(rawTarget(srv));
  await c.open(uid);
  c.socket.pause();
  reads.forEach(([offset, length], i) => c.request(P.CMD.READ, BigInt(1000 + i), offset, length));
  return c;
}

/** Opens `uid` (a -w server), announces a WRITE of `length` bytes and sends only `sent` of them. */
export async function stalledWriter(
  srv: ServerHandle,
  uid: string,
  length: number,
  sent: number,
): Promise<RawClient> {
  const c = await RawClient.connect(rawTarget(srv));
  await c.open(uid);
  c.request(P.CMD.WRITE, 2000n, 0, length);
  c.send(Buffer.alloc(sent, 0x77));
  return c;
}

/** The server's resident memory now and its peak (VmRSS, VmHWM), in MB. */
export async function memoryOf(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const mb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN) / 1024;
  return { rss: mb('VmRSS'), peak: mb('VmHWM') };
}

/**
 * Resolves when the server has closed a stalled client's connection: reads and drops what the
 * kernel holds for it (RawClient.closed() would stop again at its reader's high water).
 */
export function drainedUntilClosed(c: RawClient): Promise<void> {
  return new Promise((resolve) => {
    if (c.socket.destroyed) return resolve();
    c.socket.once('close', () => resolve());
    c.socket.removeAllListeners('data');
    c.socket.on('data', () => {});
    c.socket.resume();
  });
}
