/**
 * The one bounded-concurrency helper: maps `fn` over `items` with at most `limit` calls in
 * flight and yields results in input order. Memory is bounded by `limit` results. When the
 * consumer stops early or `fn` throws, no new calls start; calls already running finish
 * in the background and their results are dropped.
 */
export async function* mapOrdered<T, R>(
  items: Iterable<T> | AsyncIterable<T>,
  limit: number,
  fn: (item: T) => Promise<R>,
  signal?: AbortSignal,
): AsyncGenerator<R> {
  const queue: Promise<R>[] = [];
  const iterator = (
    Symbol.asyncIterator in items ? items[Symbol.asyncIterator]() : items[Symbol.iterator]()
  ) as Iterator<T> | AsyncIterator<T>;
  let done = false;
  const fill = async () => {
    while (!done && queue.length < limit) {
      signal?.throwIfAborted();
      const next = await iterator.next();
      if (next.done) {
        done = true;
        break;
      }
      const p = fn(next.value);
      p.catch(() => {}); // observed when its turn comes; avoids an unhandled rejection meanwhile
      queue.push(p);
    }
  };
  try {
    await fill();
    while (queue.length > 0) {
      const result = await queue.shift()!;
      await fill();
      yield result;
    }
  } finally {
    done = true;
    await iterator.return?.();
  }
}
