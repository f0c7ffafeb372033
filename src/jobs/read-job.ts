/**
 * file: and nbd: sources: read in full each time (holes skipped: SEEK_DATA for a file,
 * base:allocation over NBD), with the job's youngest valid version as the recorded base;
 * dedup keeps what did not change from being stored again.
 */
import { backup } from '../core/backup.js';
import { NbdSource } from '../source/nbd-source.js';
import { openSource } from '../source/source.js';
import type { Source } from '../source/source.js';
import type { JobSourceHandler, SourceRun } from './job-source.js';
import { youngestValid } from './job-source.js';

export const readJob: JobSourceHandler = {
  async backup(run: SourceRun) {
    const src = run.job.source;
    if (src.kind !== 'file' && src.kind !== 'nbd') throw new Error(`readJob: ${src.kind} source`);
    const base = youngestValid(run.versions);
    let source: Source | undefined;
    try {
      source = src.kind === 'file' ? await openSource(src.path) : await NbdSource.open(src.uri);
      const result = await backup({
        meta: run.meta,
        store: run.store,
        source,
        name: run.job.name,
        blockSize: run.blockSize,
        baseUid: base?.uid,
        hintCheckBlocks: run.hintCheckBlocks,
        signal: run.signal,
        onWarn: (m) => run.log.warn(m),
        onVersion: (v) => run.onVersion(v),
      });
      await source.close();
      source = undefined;
      await run.captured();
      return { ...result, labels: {}, finish: async () => {} };
    } finally {
      await source?.close().catch(() => {});
    }
  },
};
