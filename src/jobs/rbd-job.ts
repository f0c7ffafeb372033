/**
 * rbd: sources. Each run makes snapshot `backy-<UTC timestamp>` and streams
 * `rbd export-diff --from-snap BASE_SNAP` into backy's export-diff backup (only changed data
 * crosses the wire). The base is the youngest valid version of the job whose snapshot still
 * exists on the same image: each version records the image's id (`rbd info` "id") in label
 * backy.rbd_image_id, so an image deleted and recreated under the same name (new id) never
 * serves as the base of another image's data. Without such a base: a full export-diff (dedup
 * keeps the stored data small). After success the older backy-made snapshots of the image are
 * removed; after a failure the new one. A verify run (verify_every) is a full export-diff,
 * whose blocks are then compared with the chain's youngest version wherever `rbd diff` says
 * nothing changed (rbd-verify.ts).
 */
import { backupExportDiff } from '../core/backup-export-diff.js';
import { errorMessage } from '../errors.js';
import { rbdImageSpec } from './job-config.js';
import type { JobSourceHandler, SourceRun } from './job-source.js';
import { youngestValid } from './job-source.js';
import { verifyAgainstChain } from './rbd-verify.js';
import { rbdExportDiff, rbdImageId, rbdSnapRemove, rbdSnapCreate, rbdSnapshots } from './rbd.js';

export const RBD_IMAGE_ID_LABEL = 'backy.rbd_image_id';

/** Names of the snapshots backy makes: `backy-20261208T021500.123Z`. */
export const BACKY_SNAPSHOT_RE = /^backy-\d{8}T\d{6}\.\d{3}Z$/;

export function backySnapshotName(now: Date = new Date()): string {
  return `backy-${now.toISOString().replace(/[-:]/g, '')}`;
}

export const rbdJob: JobSourceHandler = {
  async backup(run: SourceRun) {
    const src = run.job.source;
    if (src.kind !== 'rbd') throw new Error(`rbdJob: ${src.kind} source`);
    const spec = rbdImageSpec(src);
    const imageId = await rbdImageId(spec, run.signal);
    const snaps = new Set(await rbdSnapshots(spec, run.signal));
    const chain = youngestValid(
      run.versions,
      (v) => v.labels[RBD_IMAGE_ID_LABEL] === imageId && v.snapshotName !== '' && snaps.has(v.snapshotName),
    );
    // A verify run reads everything, then checks the chain against what it read.
    const base = run.verify ? undefined : chain;
    let snap = backySnapshotName();
    // Two runs within one millisecond (never at once: the job's lease) must not collide.
    while (snaps.has(snap)) snap = backySnapshotName(new Date(Date.now() + 1));
    await rbdSnapCreate(spec, snap, run.signal);
    let ok = false;
    try {
      await run.captured();
      run.log.info(
        base
          ? `[job ${run.job.job}] export-diff of ${spec}@${snap} from ${base.snapshotName} (base ${base.uid})`
          : `[job ${run.job.job}] full export-diff of ${spec}@${snap}${run.verify ? ' (verify run)' : ''}`,
      );
      const diff = rbdExportDiff(spec, snap, base?.snapshotName);
      let result;
      try {
        result = await backupExportDiff({
          meta: run.meta,
          store: run.store,
          input: diff.stream,
          inputName: `rbd export-diff of ${spec}@${snap}`,
          name: run.job.name,
          blockSize: run.blockSize,
          baseUid: base?.uid,
          snapshotName: snap,
          signal: run.signal,
          onWarn: (m) => run.log.warn(m),
          onVersion: (v) => run.onVersion(v),
        });
      } catch (err) {
        // rbd's own message (it failed, it hung) says more than "the stream ended early": give
        // it a moment to exit by itself before it is killed.
        const rbdErr = await Promise.race([
          diff.done.then(
            () => undefined,
            (e: unknown) => e,
          ),
          new Promise<undefined>((r) => globalThis.setTimeout(r, 2000)),
        ]);
        diff.kill();
        throw rbdErr ?? err;
      }
      await diff.done;
      const problem =
        run.verify && chain
          ? await verifyAgainstChain(
              run.meta,
              spec,
              snap,
              chain,
              result.version,
              (m) => run.log.info(`[job ${run.job.job}] ${m}`),
              run.signal,
            )
          : undefined;
      ok = true;
      return {
        ...result,
        problem,
        labels: { [RBD_IMAGE_ID_LABEL]: imageId },
        finish: async () => {
          for (const old of snaps) {
            if (old === snap || !BACKY_SNAPSHOT_RE.test(old)) continue;
            await rbdSnapRemove(spec, old, run.signal).catch((err: unknown) =>
              run.log.warn(
                `[job ${run.job.job}] old snapshot ${spec}@${old} was not removed: ${errorMessage(err)}`,
              ),
            );
          }
        },
      };
    } finally {
      if (!ok) {
        await rbdSnapRemove(spec, snap).catch((err: unknown) =>
          run.log.warn(
            `[job ${run.job.job}] snapshot ${spec}@${snap} of the failed run was not removed: ${errorMessage(err)}`,
          ),
        );
      }
    }
  },
};
