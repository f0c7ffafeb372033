/** How the core reports progress. The CLI draws a bar on a TTY; the default does nothing. */
export interface ProgressReporter {
  /** A phase starts; `total` is in bytes, undefined when unknown (stdin). */
  start(label: string, total: number | undefined): void;
  advance(bytes: number): void;
  stop(): void;
}

export const noProgress: ProgressReporter = {
  start() {},
  advance() {},
  stop() {},
};
