/** Output helpers: human tables, machine lines, sizes, dates and the TTY progress bar. */
import { createRequire } from 'node:module';
import type cliProgress from 'cli-progress';
import type { BackupStats } from '../core/backup.js';
import type { ProgressReporter } from '../core/progress.js';
import type { Version } from '../meta/meta-store.js';
import type { Logger } from '../util/log.js';
import { textTable } from './text-table.js';

/** `YYYY-MM-DD HH:MM:SS.ffffff`, UTC, from microseconds since the epoch. */
export function formatDate(micros: number): string {
  const d = new Date(Math.floor(micros / 1000));
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
  const frac = String(micros % 1_000_000).padStart(6, '0');
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}.${frac}`;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

export function versionBlocks(v: Version): number {
  return Math.ceil(v.sizeBytes / v.blockSize);
}

/**
 * `version DATE TIME NAME SIZE SIZE_BYTES UID VALID SNAPSHOT PROTECTED LABELS` (README numbers
 * the fields); fields added later go at the end. SNAPSHOT is `-` when none, PROTECTED `1` or
 * `0`, LABELS `key=value` pairs joined by commas or `-` (names, snapshot names and labels never
 * contain whitespace; label values no commas).
 */
export function machineVersionLine(v: Version, labels: Record<string, string> = {}): string {
  return [
    'version',
    formatDate(v.date),
    v.name,
    versionBlocks(v),
    v.sizeBytes,
    v.uid,
    v.status === 'valid' ? 1 : 0,
    v.snapshotName === '' ? '-' : v.snapshotName,
    v.protected ? 1 : 0,
    formatLabels(labels, ',') || '-',
  ].join(' ');
}

export function formatLabels(labels: Record<string, string>, sep: string): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(sep);
}

/** A date for --json output: ISO 8601 UTC with microseconds (`date_us` carries the number). */
export function jsonDate(micros: number): string {
  return `${formatDate(micros).replace(' ', 'T')}Z`;
}

/** A backup's statistics for --json output (snake_case, as every --json key). */
export function statsJsonFields(s: BackupStats) {
  return {
    blocks: s.blocks,
    read: s.read,
    sparse: s.sparse,
    kept: s.kept,
    stored: s.stored,
    deduplicated: s.deduplicated,
    bytes_read: s.bytesRead,
    bytes_stored: s.bytesStored,
    verified: s.verified,
  };
}

/** A version's fields for --json output (dates as ISO 8601 UTC and as microseconds). */
export function versionJsonFields(v: Version, labels: Record<string, string> = {}) {
  return {
    uid: v.uid,
    name: v.name,
    snapshot: v.snapshotName === '' ? null : v.snapshotName,
    date: jsonDate(v.date),
    date_us: v.date,
    size_bytes: v.sizeBytes,
    block_size: v.blockSize,
    blocks: versionBlocks(v),
    status: v.status,
    valid: v.status === 'valid',
    protected: v.protected,
    base: v.baseUid,
    tracking: v.tracking ?? null,
    labels,
  };
}

// Loaded on first use: each costs start-up time and memory that most runs never need.
const load = createRequire(import.meta.url);

export function versionTable(
  versions: Version[],
  labels: Map<string, Record<string, string>> = new Map(),
): string {
  const tty = process.stdout.isTTY;
  return textTable(
    ['date', 'name', 'snapshot', 'size', 'size_bytes', 'uid', 'valid', 'status', 'protected', 'labels'],
    versions.map((v) => [
      formatDate(v.date),
      v.name,
      v.snapshotName === '' ? '-' : v.snapshotName,
      String(versionBlocks(v)),
      String(v.sizeBytes),
      v.uid,
      v.status === 'valid' ? '1' : '0',
      v.status,
      v.protected ? 'yes' : '',
      formatLabels(labels.get(v.uid) ?? {}, '\n'),
    ]),
    tty ? { head: (s) => `\x1b[36m${s}\x1b[39m`, border: (s) => `\x1b[90m${s}\x1b[39m` } : {},
  );
}

/** A progress bar with throughput and ETA on a TTY; nothing otherwise. */
export function progressBar(log: Logger): ProgressReporter {
  if (!process.stderr.isTTY) return { start() {}, advance() {}, stop() {} };
  const progress = load('cli-progress') as typeof cliProgress;
  let bar: cliProgress.SingleBar | undefined;
  let started = 0;
  let done = 0;
  return {
    start(label, total) {
      started = Date.now();
      done = 0;
      bar = new progress.SingleBar(
        {
          stream: process.stderr,
          format: total
            ? `${label} [{bar}] {percentage}% | {done} of {all} | {rate}/s | ETA {eta_formatted}`
            : `${label} {done} | {rate}/s`,
          hideCursor: true,
          clearOnComplete: true,
          etaBuffer: 50,
        },
        progress.Presets.shades_classic,
      );
      bar.start(total ?? 0, 0, { done: formatBytes(0), all: formatBytes(total ?? 0), rate: formatBytes(0) });
      log.beforeWrite = () => {
        // Keep log lines off the bar: clear the line first; the next update redraws it.
        process.stderr.write('\r\x1b[K');
      };
    },
    advance(bytes) {
      done += bytes;
      const secs = Math.max((Date.now() - started) / 1000, 0.001);
      bar?.increment(bytes, { done: formatBytes(done), rate: formatBytes(Math.round(done / secs)) });
    },
    stop() {
      bar?.stop();
      bar = undefined;
      log.beforeWrite = undefined;
    },
  };
}
