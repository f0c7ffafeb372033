/**
 * `[job NAME]` and `[scheduler]` sections of backy.cfg: the types the runner, `jobs`, `check`
 * and the daemon use, and their validation. config/config.ts finds the sections and hands each
 * one here; every error is a ConfigError naming the file, section and key.
 */
import { dirname, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { parseLabel } from '../meta/catalog.js';
import { isNbdUri } from '../nbd/client.js';
import { parseRetentionRules } from '../core/retention.js';
import type { RetentionRules } from '../core/retention.js';
import { parseDurationSeconds } from './duration.js';

/** Job names: what `[job NAME]` may say, and what `run`, `check` and metrics labels carry. */
export const JOB_NAME_RE = /^[A-Za-z0-9_.-]+$/;

/** Ceph pool, namespace and image names as backy accepts them (they end up in argv and snapshot specs). */
const RBD_PART_RE = /^[A-Za-z0-9_.-]{1,255}$/;

export type JobSource =
  | { kind: 'rbd'; pool: string; namespace?: string; image: string }
  | { kind: 'file'; path: string }
  | { kind: 'qcow2'; path: string }
  | { kind: 'nbd'; uri: string };

export interface JobConfig {
  /** The section's NAME. */
  job: string;
  /** The versions' name (`name = …`, default the job's). */
  name: string;
  source: JobSource;
  /** `source` as written (file paths resolved), for output and BACKY_SOURCE. */
  sourceText: string;
  /** Seconds between runs; undefined: only run by hand (never due, `check` knows no staleness). */
  every?: number;
  retention?: RetentionRules;
  /** `retention` as written, for output. */
  retentionText?: string;
  labels: Record<string, string>;
  /** Every Nth successful backup of the job is protected. */
  protectEvery?: number;
  /** Every Nth backup of the job reads what the change tracking calls unchanged (--verify-unhinted). */
  verifyEvery?: number;
  scrubPercent?: number;
  /** Seconds between scrubs of each version. */
  scrubEvery?: number;
  pre?: string;
  post?: string;
  onFailure?: string;
}

/** Where the daemon serves /metrics and /jobs over HTTP; null: nowhere. */
export type ListenAddress = { host: string; port: number } | { socket: string } | null;

export interface SchedulerConfig {
  /** Jobs running at once (`run`, `daemon`). */
  maxParallel: number;
  /** Seconds between the daemon's cleanups; undefined: the daemon does not clean up. */
  cleanupEvery?: number;
  metricsFile?: string;
  listen: ListenAddress;
}

export const JOB_KEYS = [
  'source',
  'name',
  'every',
  'retention',
  'labels',
  'protect_every',
  'verify_every',
  'scrub_percent',
  'scrub_every',
  'pre',
  'post',
  'on_failure',
] as const;

export const SCHEDULER_KEYS = ['max_parallel', 'cleanup_every', 'metrics_file', 'listen'] as const;

export const DEFAULT_MAX_PARALLEL = 2;
export const DEFAULT_LISTEN = { host: '127.0.0.1', port: 9750 } as const;

export function defaultScheduler(): SchedulerConfig {
  return { maxParallel: DEFAULT_MAX_PARALLEL, listen: { ...DEFAULT_LISTEN } };
}

type Section = Record<string, string>;

/** One `[job NAME]` section; `file` is the config file (relative paths are relative to it). */
export function parseJobSection(job: string, s: Section, file: string): JobConfig {
  const what = (k: string) => `${file}: [job ${job}] ${k}`;
  if (!JOB_NAME_RE.test(job)) {
    throw new ConfigError(`${file}: [job ${job}]: a job name may hold only A-Z a-z 0-9 _ . -`);
  }
  for (const key of Object.keys(s)) {
    if (!(JOB_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(`${file}: unknown key '${key}' in [job ${job}] (known: ${JOB_KEYS.join(', ')})`);
    }
  }
  if (s.source === undefined || s.source === '') {
    throw new ConfigError(
      `${what('source')} is missing: rbd:POOL/IMAGE, rbd:POOL/NAMESPACE/IMAGE, file:PATH, qcow2:PATH or nbd:URI`,
    );
  }
  const source = parseJobSource(s.source, what('source'), dirname(file));
  const name = s.name ?? job;
  if (name === '' || name.length > 255 || /[\s\p{Cc}]/u.test(name)) {
    throw new ConfigError(
      `${what('name')} must be 1-255 characters without whitespace or control characters`,
    );
  }
  const cfg: JobConfig = { job, name, source, sourceText: sourceText(source), labels: {} };
  if (s.every !== undefined) cfg.every = duration(s.every, what('every'));
  if (s.retention !== undefined) {
    try {
      cfg.retention = parseRetentionRules(s.retention);
    } catch (err) {
      throw new ConfigError(`${what('retention')}: ${(err as Error).message}`);
    }
    cfg.retentionText = s.retention;
  }
  if (s.labels !== undefined && s.labels !== '') {
    for (const part of s.labels.split(',')) {
      try {
        const [k, v] = parseLabel(part.trim());
        cfg.labels[k] = v;
      } catch (err) {
        throw new ConfigError(`${what('labels')}: ${(err as Error).message} (labels = KEY=VALUE,KEY=VALUE)`);
      }
    }
  }
  if (s.protect_every !== undefined) cfg.protectEvery = count(s.protect_every, what('protect_every'));
  if (s.verify_every !== undefined) cfg.verifyEvery = count(s.verify_every, what('verify_every'));
  if (s.scrub_percent !== undefined) {
    const p = Number(s.scrub_percent);
    if (!/^\d+(\.\d+)?$/.test(s.scrub_percent) || !(p > 0 && p <= 100)) {
      throw new ConfigError(
        `${what('scrub_percent')} must be a number above 0 and at most 100, got '${s.scrub_percent}'`,
      );
    }
    cfg.scrubPercent = p;
  }
  if (s.scrub_every !== undefined) cfg.scrubEvery = duration(s.scrub_every, what('scrub_every'));
  if (cfg.scrubPercent !== undefined && cfg.scrubEvery === undefined) {
    throw new ConfigError(
      `${what('scrub_percent')} needs scrub_every = DURATION (how often each version is scrubbed)`,
    );
  }
  for (const [key, field] of [
    ['pre', 'pre'],
    ['post', 'post'],
    ['on_failure', 'onFailure'],
  ] as const) {
    const cmd = s[key];
    if (cmd === undefined) continue;
    if (cmd === '') throw new ConfigError(`${what(key)} is empty; give a command or leave the key out`);
    cfg[field] = cmd;
  }
  return cfg;
}

export function parseJobSource(text: string, what: string, configDir: string): JobSource {
  const colon = text.indexOf(':');
  const kind = colon < 0 ? '' : text.slice(0, colon);
  const rest = colon < 0 ? '' : text.slice(colon + 1);
  switch (kind) {
    case 'rbd': {
      const parts = rest.split('/');
      if ((parts.length !== 2 && parts.length !== 3) || !parts.every((p) => RBD_PART_RE.test(p))) {
        throw new ConfigError(
          `${what} must be rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE (names of A-Z a-z 0-9 _ . -), got '${text}'`,
        );
      }
      return parts.length === 2
        ? { kind: 'rbd', pool: parts[0], image: parts[1] }
        : { kind: 'rbd', pool: parts[0], namespace: parts[1], image: parts[2] };
    }
    case 'file':
    case 'qcow2':
      if (rest === '')
        throw new ConfigError(`${what}: ${kind}: needs a path, e.g. ${kind}:/var/lib/images/vm1`);
      // Relative to the config file, as key_file is: cron and a shell must find the same image.
      return { kind, path: resolve(configDir, rest) };
    case 'nbd':
      if (!isNbdUri(rest)) {
        throw new ConfigError(
          `${what} must be nbd:URI with URI nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH, got '${text}'`,
        );
      }
      return { kind: 'nbd', uri: rest };
    default:
      throw new ConfigError(
        `${what} must be rbd:POOL/IMAGE, rbd:POOL/NAMESPACE/IMAGE, file:PATH, qcow2:PATH or nbd:URI, got '${text}'`,
      );
  }
}

/** The source as `source =` would say it, paths absolute. */
export function sourceText(s: JobSource): string {
  switch (s.kind) {
    case 'rbd':
      return `rbd:${rbdImageSpec(s)}`;
    case 'file':
    case 'qcow2':
      return `${s.kind}:${s.path}`;
    case 'nbd':
      return `nbd:${s.uri}`;
  }
}

/** POOL/IMAGE or POOL/NAMESPACE/IMAGE, as the rbd tool takes an image spec. */
export function rbdImageSpec(s: { pool: string; namespace?: string; image: string }): string {
  return s.namespace === undefined ? `${s.pool}/${s.image}` : `${s.pool}/${s.namespace}/${s.image}`;
}

/** The `[scheduler]` section. */
export function parseSchedulerSection(s: Section, file: string): SchedulerConfig {
  const what = (k: string) => `${file}: [scheduler] ${k}`;
  for (const key of Object.keys(s)) {
    if (!(SCHEDULER_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(
        `${file}: unknown key '${key}' in [scheduler] (known: ${SCHEDULER_KEYS.join(', ')})`,
      );
    }
  }
  const cfg = defaultScheduler();
  if (s.max_parallel !== undefined) {
    if (!/^\d+$/.test(s.max_parallel) || Number(s.max_parallel) < 1 || Number(s.max_parallel) > 256) {
      throw new ConfigError(
        `${what('max_parallel')} must be a whole number from 1 to 256, got '${s.max_parallel}'`,
      );
    }
    cfg.maxParallel = Number(s.max_parallel);
  }
  if (s.cleanup_every !== undefined) cfg.cleanupEvery = duration(s.cleanup_every, what('cleanup_every'));
  if (s.metrics_file !== undefined) {
    if (s.metrics_file === '') throw new ConfigError(`${what('metrics_file')} must not be empty`);
    cfg.metricsFile = resolve(dirname(file), s.metrics_file);
  }
  if (s.listen !== undefined) cfg.listen = parseListen(s.listen, what('listen'), dirname(file));
  return cfg;
}

/**
 * `listen = PORT` (on 127.0.0.1), `HOST:PORT`, `[IPV6]:PORT`, `unix:PATH`, or `none`.
 * Any host may be named; the loopback default is what a config that says nothing gets.
 */
export function parseListen(text: string, what: string, configDir: string): ListenAddress {
  if (text === 'none' || text === 'off') return null;
  if (text.startsWith('unix:')) {
    const path = text.slice('unix:'.length);
    if (path === '') throw new ConfigError(`${what}: unix: needs a socket path`);
    return { socket: resolve(configDir, path) };
  }
  const m = /^(?:(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):)?(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new ConfigError(`${what} must be PORT, HOST:PORT, [IPV6]:PORT, unix:PATH or none, got '${text}'`);
  }
  return { host: m[1] ?? m[2] ?? DEFAULT_LISTEN.host, port };
}

function duration(text: string, what: string): number {
  const s = parseDurationSeconds(text);
  if (s === undefined) {
    throw new ConfigError(`${what} must be a duration such as 30m, 6h, 1d, 1w or 1h30m, got '${text}'`);
  }
  return s;
}

function count(text: string, what: string): number {
  if (!/^\d{1,9}$/.test(text) || Number(text) < 1) {
    throw new ConfigError(`${what} must be a whole number of at least 1, got '${text}'`);
  }
  return Number(text);
}
