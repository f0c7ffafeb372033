/**
 * One job runs once at a time on every host sharing the metadata database: a lease of kind
 * `job:<NAME>` (naming no version). A run inserts its lease, then looks at all live leases of
 * that kind: the oldest (by start time, then id) runs, every other one releases its own and
 * stops, naming the holder. Two runs that insert at the same moment both see both rows, and
 * agree on the same winner. A lease whose holder is gone (kill -9: the pid, or PostgreSQL's
 * session) is not alive and does not count, so a crashed run never blocks the next one.
 */
import { hold } from '../core/lease.js';
import type { Hold } from '../core/lease.js';
import { BackyError } from '../errors.js';
import type { Lease, MetaStore } from '../meta/meta-store.js';

export class JobBusyError extends BackyError {}

export function jobLeaseKind(job: string): string {
  return `job:${job}`;
}

/** Takes job `job`'s lease, or throws JobBusyError naming the run that holds it. */
export async function holdJob(meta: MetaStore, job: string): Promise<Hold> {
  const kind = jobLeaseKind(job);
  const mine = await hold(meta, kind, null);
  try {
    const others: Lease[] = [];
    for (const l of await meta.leases()) {
      if (l.kind !== kind || l.id === mine.lease?.id) continue;
      if (await meta.isLeaseAlive(l)) others.push(l);
    }
    const first = (a: Lease, b: Lease) => a.started - b.started || (a.id < b.id ? -1 : 1);
    const winner = [...others, ...(mine.lease ? [mine.lease] : [])].sort(first)[0];
    if (winner && winner !== mine.lease) {
      throw new JobBusyError(
        `job ${job} is already running (pid ${winner.pid} on ${winner.hostname}, since ${new Date(winner.started / 1000).toISOString()})`,
      );
    }
    return mine;
  } catch (err) {
    await mine.release();
    throw err;
  }
}
