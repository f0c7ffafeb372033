import type { MetaStore } from '../meta/meta-store.js';

const HEARTBEAT_MS = 30_000;

/**
 * Keeps a lease's heartbeat fresh until the returned function is called. Other hosts' cleanups
 * judge a lease by its heartbeat (same-host ones by pid, PostgreSQL by advisory lock).
 */
export function keepLeaseAlive(meta: MetaStore, leaseId: string): () => void {
  const timer = setInterval(() => void meta.heartbeat(leaseId).catch(() => {}), HEARTBEAT_MS);
  timer.unref();
  return () => clearInterval(timer);
}
