/**
 * A job's pre, post and on_failure commands: run by /bin/sh with BACKY_JOB, BACKY_SOURCE,
 * BACKY_UID and BACKY_STATUS in the environment, each with a time limit.
 */
import { runTool } from './tool.js';
import type { JobConfig } from './job-config.js';

export const HOOK_TIMEOUT_MS = 10 * 60_000;

export type HookName = 'pre' | 'post' | 'on_failure';

export async function runHook(
  job: JobConfig,
  hook: HookName,
  env: { uid?: string; status: string; error?: string },
  signal?: AbortSignal,
): Promise<void> {
  const cmd = hook === 'pre' ? job.pre : hook === 'post' ? job.post : job.onFailure;
  if (cmd === undefined) return;
  await runTool('/bin/sh', ['-c', cmd], {
    timeoutMs: HOOK_TIMEOUT_MS,
    signal,
    what: `[job ${job.job}] ${hook} command`,
    passthrough: true,
    env: {
      ...process.env,
      BACKY_JOB: job.job,
      BACKY_SOURCE: job.sourceText,
      BACKY_UID: env.uid ?? '',
      BACKY_STATUS: env.status,
      ...(env.error !== undefined ? { BACKY_ERROR: env.error } : {}),
    },
  });
}
