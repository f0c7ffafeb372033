import { findVersions, labelsOf } from '../meta/catalog.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { JobConfig } from './job-config.js';
import { JOB_LABEL } from './job-source.js';
import type { JobVersion } from './job-source.js';

/** The job's versions (its name, and label backy.job = the job), oldest first, with their labels. */
export async function jobVersions(meta: MetaStore, job: JobConfig): Promise<JobVersion[]> {
  const versions = await findVersions(meta, { name: job.name, labels: { [JOB_LABEL]: job.job } });
  const labels = await labelsOf(
    meta,
    versions.map((v) => v.uid),
  );
  return versions.map((v) => ({ ...v, labels: labels.get(v.uid) ?? {} }));
}
