/**
 * Ending PostgreSQL connections without hanging: a clean end sends Terminate and waits for the
 * server to close the socket, which a frozen server (SIGSTOP, a host gone silent) never does.
 * After `ms` the socket is destroyed instead; the session is lost either way.
 */
import type pg from 'pg';

function destroySocket(client: pg.Client | pg.PoolClient): void {
  (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/** Resolves when `p` settles or `ms` passes, whichever is first; true if `p` settled. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      p.then(
        () => true as const,
        () => true as const,
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

export async function endClient(client: pg.Client, ms: number): Promise<void> {
  if (!(await within(client.end(), ms))) destroySocket(client);
}

/** pool.end(), destroying the sockets of the clients it tracks when the server does not answer. */
export async function endPool(pool: pg.Pool, clients: Set<pg.PoolClient>, ms: number): Promise<void> {
  const ended = pool.end();
  if (await within(ended, ms)) return;
  for (const c of clients) destroySocket(c);
  await within(ended, 1000);
}
