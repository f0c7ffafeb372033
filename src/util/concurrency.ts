/**
 * The one bounded-concurrency helper, and cancellation: everything a command waits on long
 * (a block read, a stdin chunk, a write to a pipe) is raced with the command's AbortSignal,
 * so SIGINT stops it within moments whatever it waits for.
 */

/**
 * `p`, or a rejection with `signal.reason` as soon as the signal aborts. `p` itself goes on in
 * the background (its outcome is dropped): what it holds is released by the caller's cleanup.
 */
export function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) {
    p.catch(() => {});
    return Promise.reject(signal.reason as Error);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      p.catch(() => {});
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}

/** `items`, each step raced with `signal` (for a source that may wait forever: stdin). */
export async function* abortableIterable<T>(
  items: AsyncIterable<T>,
  signal: AbortSignal | undefined,
): AsyncGenerator<T> {
  if (!signal) return yield* items;
  const it = items[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await abortable(it.next(), signal);
      if (next.done) return;
      yield next.value;
    }
  } finally {
    // An iterator still waiting for its next item cannot return until that arrives.
    if (signal.aborted) void it.return?.()?.catch(() => {});
    else await it.return?.();
  }
}

/**
 * Maps `fn` over `items` with at most `limit` calls in flight and yields results in input
 * order. Memory is bounded by `limit` results. When the consumer stops early or `fn` throws,
 * no new calls start; calls already running finish in the background and their results are
 * dropped. When `signal` aborts, the generator throws its reason at once, whether it waits for
 * a call or for the next item.
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
      const next = await abortable(Promise.resolve(iterator.next()), signal);
      if (next.done) {
        done = true;
        break;
      }
      signal?.throwIfAborted();
      const p = fn(next.value);
      p.catch(() => {}); // observed when its turn comes; avoids an unhandled rejection meanwhile
      queue.push(p);
    }
  };
  try {
    await fill();
    while (queue.length > 0) {
      const result = await abortable(queue.shift()!, signal);
      await fill();
      yield result;
    }
  } finally {
    done = true;
    // An items iterator waiting for input (stdin) cannot return until that arrives.
    if (signal?.aborted) void Promise.resolve(iterator.return?.()).catch(() => {});
    else await iterator.return?.();
  }
}
