import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { buildMetrics, escapeLabel, renderMetrics } from './metrics.js';

describe('metrics text format', () => {
  it('escapes label values', () => {
    assert.equal(escapeLabel('a"b\\c\nd'), 'a\\"b\\\\c\\nd');
  });

  it('renders HELP, TYPE and samples; leaves out what is unknown', () => {
    const text = renderMetrics(
      buildMetrics({
        jobs: [
          {
            job: 'vm1',
            last: { ok: true, started: 10_000_000, finished: 12_500_000, bytes: 4096, bytesStored: 100 },
            lastSuccessStarted: 10_000_000,
            running: false,
            nextRun: 70_000_000,
            versions: { valid: 2, invalid: 1, incomplete: 0 },
          },
          { job: 'new', running: true, versions: { valid: 0, invalid: 0, incomplete: 1 } },
        ],
        store: { objects: 7, storedBytes: 12345 },
      }),
    );
    const lines = text.trimEnd().split('\n');
    for (const want of [
      '# TYPE backy_job_last_success_timestamp_seconds gauge',
      'backy_job_last_success_timestamp_seconds{job="vm1"} 10',
      'backy_job_last_run_success{job="vm1"} 1',
      'backy_job_last_run_duration_seconds{job="vm1"} 2.5',
      'backy_job_last_run_bytes_read{job="vm1"} 4096',
      'backy_job_last_run_bytes_stored{job="vm1"} 100',
      'backy_job_running{job="new"} 1',
      'backy_job_next_run_timestamp_seconds{job="vm1"} 70',
      'backy_versions{job="vm1",status="invalid"} 1',
      'backy_versions{job="new",status="incomplete"} 1',
      'backy_store_objects 7',
      'backy_store_stored_bytes 12345',
    ]) {
      assert.ok(lines.includes(want), `missing: ${want}\n${text}`);
    }
    assert.ok(!lines.some((l) => l.startsWith('backy_job_last_run_success{job="new"}')));
    assert.ok(!lines.some((l) => l.startsWith('backy_cleanup_')));
    // Every sample line: name, optional labels, one value.
    for (const l of lines.filter((x) => !x.startsWith('#'))) {
      assert.match(l, /^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+]+$/);
    }
  });
});
