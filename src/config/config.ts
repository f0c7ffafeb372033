/**
 * Finds, parses and validates backy.cfg (INI, backy2 style: `key = value` or `key: value`).
 * Search order: -c FILE, $BACKY_CONFIG, ./backy.cfg, ~/.config/backy/backy.cfg, /etc/backy.cfg;
 * with none, the embedded default: SQLite and a data directory under $XDG_DATA_HOME/backy
 * (~/.local/share/backy). Unknown sections and keys, and bad values, are errors that name them.
 * $BACKY_DATABASE_URL, when set, replaces [MetaBackend] engine (so a PostgreSQL password
 * need not be written into the config file).
 */
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseIni } from 'ini';
import { ConfigError, ioReason } from '../errors.js';
import { DEFAULT_COMPRESSION, ZSTD_MAX_LEVEL, ZSTD_MIN_LEVEL, parseCompression } from '../storage/codec.js';
import type { Compression } from '../storage/codec.js';
import { TooLargeError, readTextLimitedSync } from '../util/read-limited.js';
import { defaultScheduler, parseJobSection, parseSchedulerSection } from '../jobs/job-config.js';
import type { JobConfig, SchedulerConfig } from '../jobs/job-config.js';

const MAX_CONFIG_FILE = 2 ** 20;

export type HashFunction = 'blake3' | 'sha256';
export const HASH_FUNCTIONS: readonly HashFunction[] = ['blake3', 'sha256'];

export interface Config {
  /** Where the config came from, or 'embedded default'. */
  source: string;
  logfile?: string;
  blockSize: number;
  hintCheckBlocks: number;
  /** Hash function for a new store; an existing store keeps the one it was created with. */
  hashFunction?: HashFunction;
  /** Metadata engine URL, e.g. sqlite:////var/lib/backy/backy.sqlite or postgresql://... */
  engine: string;
  dataBackend: (FileBackendConfig | S3BackendConfig) & CodecConfig;
  /** `[job NAME]` sections, in the file's order. */
  jobs: JobConfig[];
  /** `[scheduler]`, or its defaults. */
  scheduler: SchedulerConfig;
}

/** Codec settings of [DataBackend], whatever the backend type. */
export interface CodecConfig {
  /** For new objects; objects keep the codec they were written with. */
  compression: Compression;
  /** Fixed when the store is created: the store refuses a config that differs. */
  encryption?: { codec: 'aes-256-gcm'; keyFile: string };
}

export interface FileBackendConfig {
  type: 'file';
  path: string;
}

/** [DataBackend] type = s3; credentials may be missing here and come from the environment. */
export interface S3BackendConfig {
  type: 's3';
  endpoint?: string;
  bucket: string;
  /** '' or ending in '/'. */
  prefix: string;
  region: string;
  pathStyle: boolean;
  accessKeyId?: string;
  secretAccessKey?: string;
  maxConnections: number;
  /** Seconds one object operation may take, retries included. */
  timeout: number;
  /** PEM file of extra certificate authorities for an https endpoint (absolute). */
  caFile?: string;
}

export const S3_KEYS = [
  'endpoint',
  'bucket',
  'prefix',
  'region',
  'path_style',
  'access_key_id',
  'secret_access_key',
  'max_connections',
  'timeout',
  'ca_file',
] as const;

/** One word for logs: the directory, or the bucket and endpoint (never a credential). */
export function describeDataBackend(b: Config['dataBackend']): string {
  return b.type === 'file' ? b.path : `s3://${b.bucket}/${b.prefix} at ${b.endpoint ?? 'AWS S3'}`;
}

export const DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024;

export function defaultDataHome(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_DATA_HOME;
  const base = xdg && isAbsolute(xdg) ? xdg : join(env.HOME || homedir(), '.local', 'share');
  return join(base, 'backy');
}

export function embeddedDefault(env: NodeJS.ProcessEnv = process.env): Config {
  const home = defaultDataHome(env);
  return {
    source: 'embedded default',
    blockSize: DEFAULT_BLOCK_SIZE,
    hintCheckBlocks: 10,
    engine: `sqlite:///${join(home, 'backy.sqlite')}`,
    dataBackend: { type: 'file', path: join(home, 'data'), compression: DEFAULT_COMPRESSION },
    jobs: [],
    scheduler: defaultScheduler(),
  };
}

/** The config file to use, or undefined for the embedded default. */
export function findConfigFile(
  explicit: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (explicit !== undefined) {
    if (!existsSync(explicit)) throw new ConfigError(`config file ${explicit} does not exist`);
    return explicit;
  }
  if (env.BACKY_CONFIG) {
    if (!existsSync(env.BACKY_CONFIG)) {
      throw new ConfigError(`config file ${env.BACKY_CONFIG} (from $BACKY_CONFIG) does not exist`);
    }
    return env.BACKY_CONFIG;
  }
  const home = env.HOME || homedir();
  for (const candidate of ['backy.cfg', join(home, '.config', 'backy', 'backy.cfg'), '/etc/backy.cfg']) {
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

export function loadConfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): Config {
  const file = findConfigFile(explicit, env);
  let cfg: Config;
  if (file === undefined) cfg = embeddedDefault(env);
  else {
    let text: string;
    try {
      text = readTextLimitedSync(file, MAX_CONFIG_FILE);
    } catch (err) {
      if (err instanceof TooLargeError) {
        throw new ConfigError(`config file ${file} is larger than 1 MiB; is it a backy.cfg?`);
      }
      throw new ConfigError(`cannot read config file ${file}: ${ioReason(err)}`);
    }
    cfg = parseConfig(text, file, env);
  }
  if (env.BACKY_DATABASE_URL) {
    validateEngine(env.BACKY_DATABASE_URL, '$BACKY_DATABASE_URL');
    cfg.engine = env.BACKY_DATABASE_URL;
  }
  return cfg;
}

type Section = Record<string, string>;

/**
 * backy2's files use `key: value`; ini only knows `=`. Rewrite the first `:` of a plain key line.
 * A job section's name may hold '.', which ini would take for a nested section (and escaping
 * it with '\\.' reorders sections): it stands in as DOT until the sections are read.
 * ini also merges a section given twice; a job given twice is an error, found here.
 */
const DOT = '\u0001';

function normaliseColons(text: string, file: string): string {
  const jobs = new Set<string>();
  return text
    .split(/\r?\n/)
    .map((line) => {
      const job = /^\s*\[\s*job\s+([^\]]*?)\s*\]\s*$/.exec(line);
      if (job) {
        if (jobs.has(job[1])) throw new ConfigError(`${file}: [job ${job[1]}] is given twice`);
        jobs.add(job[1]);
        return `[job ${job[1].replaceAll('.', DOT)}]`;
      }
      const m = /^(\s*[A-Za-z_][A-Za-z0-9_.-]*)\s*:\s?(.*)$/.exec(line);
      return m && !line.includes('=') ? `${m[1]} = ${m[2]}` : line;
    })
    .join('\n');
}

export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  const raw = parseIni(normaliseColons(text, file)) as Record<string, unknown>;
  const sections: Record<string, Section> = {};
  for (const [name, value] of Object.entries(raw)) {
    if (typeof value !== 'object' || value === null) {
      throw new ConfigError(`${file}: key '${name}' is outside any section; put it under [DEFAULTS]`);
    }
    const section: Section = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (typeof v === 'object')
        throw new ConfigError(`${file}: [${name}] ${k}: nested sections are not supported`);
      section[k] = String(v).trim();
    }
    sections[name] = section;
  }
  const known: Record<string, readonly string[]> = {
    DEFAULTS: ['logfile', 'block_size', 'hint_check_blocks', 'hash_function'],
    MetaBackend: ['engine'],
    DataBackend: ['type', 'path', 'compression', 'encryption', 'key_file', ...S3_KEYS],
  };
  const jobs: JobConfig[] = [];
  let scheduler = defaultScheduler();
  for (const [name, section] of Object.entries(sections)) {
    const job = /^job\s+(.*)$/.exec(name);
    if (job) {
      jobs.push(parseJobSection(job[1].replaceAll(DOT, '.'), section, file));
      continue;
    }
    if (name === 'scheduler') {
      scheduler = parseSchedulerSection(section, file);
      continue;
    }
    const keys = known[name];
    if (!keys) {
      throw new ConfigError(
        `${file}: unknown section [${name}] (known: ${Object.keys(known)
          .map((s) => `[${s}]`)
          .join(', ')}, [scheduler], [job NAME])`,
      );
    }
    for (const key of Object.keys(section)) {
      if (!keys.includes(key)) {
        throw new ConfigError(`${file}: unknown key '${key}' in [${name}] (known: ${keys.join(', ')})`);
      }
    }
  }
  const cfg = embeddedDefault(env);
  cfg.source = file;
  cfg.jobs = jobs;
  cfg.scheduler = scheduler;
  const d = sections.DEFAULTS ?? {};
  if (d.logfile !== undefined && d.logfile !== '') cfg.logfile = d.logfile;
  if (d.block_size !== undefined) {
    cfg.blockSize = parseInteger(d.block_size, `${file}: [DEFAULTS] block_size`, 4096, 1 << 30);
    if (cfg.blockSize % 512 !== 0) {
      throw new ConfigError(`${file}: [DEFAULTS] block_size must be a multiple of 512, got ${d.block_size}`);
    }
  }
  if (d.hint_check_blocks !== undefined) {
    cfg.hintCheckBlocks = parseInteger(
      d.hint_check_blocks,
      `${file}: [DEFAULTS] hint_check_blocks`,
      0,
      1_000_000,
    );
  }
  if (d.hash_function !== undefined) {
    if (!HASH_FUNCTIONS.includes(d.hash_function as HashFunction)) {
      throw new ConfigError(
        `${file}: [DEFAULTS] hash_function must be one of ${HASH_FUNCTIONS.join(', ')}, got '${d.hash_function}'`,
      );
    }
    cfg.hashFunction = d.hash_function as HashFunction;
  }
  const m = sections.MetaBackend ?? {};
  if (m.engine !== undefined) {
    validateEngine(m.engine, `${file}: [MetaBackend] engine`);
    cfg.engine = m.engine;
  }
  const b = sections.DataBackend ?? {};
  if (b.type !== undefined && b.type !== 'file' && b.type !== 's3') {
    throw new ConfigError(`${file}: [DataBackend] type must be 'file' or 's3', got '${b.type}'`);
  }
  const codec = { compression: cfg.dataBackend.compression };
  if (b.type === 's3') cfg.dataBackend = { ...parseS3(b, file), ...codec };
  else {
    for (const k of S3_KEYS) {
      if (b[k] !== undefined) throw new ConfigError(`${file}: [DataBackend] ${k} needs type = s3`);
    }
    if (b.path !== undefined) {
      if (b.path === '') throw new ConfigError(`${file}: [DataBackend] path must not be empty`);
      cfg.dataBackend = { type: 'file', path: resolve(b.path), ...codec };
    }
  }
  if (b.compression !== undefined) {
    const c = parseCompression(b.compression);
    if (!c) {
      throw new ConfigError(
        `${file}: [DataBackend] compression must be none, lz4, zstd or zstd:LEVEL (LEVEL ${ZSTD_MIN_LEVEL}..-1 or 1..${ZSTD_MAX_LEVEL}), got '${b.compression}'`,
      );
    }
    cfg.dataBackend.compression = c;
  }
  const encryption = b.encryption ?? 'none';
  if (encryption !== 'none' && encryption !== 'aes-256-gcm') {
    throw new ConfigError(
      `${file}: [DataBackend] encryption must be none or aes-256-gcm, got '${b.encryption}'`,
    );
  }
  if (encryption === 'aes-256-gcm') {
    if (!b.key_file) {
      throw new ConfigError(
        `${file}: [DataBackend] encryption = aes-256-gcm needs key_file = PATH (create one with 'backy key create PATH')`,
      );
    }
    // Relative to the config file, as a file that names another file is read: the same config
    // must find the same key from cron's working directory as from a shell's.
    cfg.dataBackend.encryption = { codec: 'aes-256-gcm', keyFile: resolve(dirname(file), b.key_file) };
  } else if (b.key_file !== undefined) {
    throw new ConfigError(
      `${file}: [DataBackend] key_file is set but encryption is not; add encryption = aes-256-gcm`,
    );
  }
  return cfg;
}

function parseS3(b: Section, file: string): S3BackendConfig {
  const what = (k: string) => `${file}: [DataBackend] ${k}`;
  if (b.path !== undefined)
    throw new ConfigError(`${what('path')} is for type = file; s3 uses bucket and prefix`);
  let endpoint: string | undefined;
  if (b.endpoint !== undefined && b.endpoint !== '') {
    let u: URL;
    try {
      u = new URL(b.endpoint);
    } catch {
      throw new ConfigError(
        `${what('endpoint')} must be a URL such as http://127.0.0.1:7480, got '${b.endpoint}'`,
      );
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') {
      throw new ConfigError(`${what('endpoint')} must be an http:// or https:// URL, got '${b.endpoint}'`);
    }
    if (u.username || u.password) {
      throw new ConfigError(
        `${what('endpoint')} must not hold credentials; use access_key_id and secret_access_key`,
      );
    }
    endpoint = b.endpoint.replace(/\/+$/, '');
  }
  // S3's bucket naming rules (lower case, 3-63 characters); RGW and MinIO follow them.
  if (b.bucket === undefined || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(b.bucket)) {
    throw new ConfigError(
      `${what('bucket')} must be a bucket name (3-63 characters: a-z, 0-9, '.', '-'), got '${b.bucket ?? ''}'`,
    );
  }
  let prefix = b.prefix ?? '';
  if (prefix !== '') {
    if (!/^[A-Za-z0-9._/-]+$/.test(prefix) || prefix.startsWith('/') || prefix.split('/').includes('..')) {
      throw new ConfigError(
        `${what('prefix')} may hold only A-Z a-z 0-9 . _ - / and no leading '/', got '${prefix}'`,
      );
    }
    if (!prefix.endsWith('/')) prefix += '/';
  }
  const region = b.region || 'us-east-1';
  if (!/^[a-z0-9-]+$/.test(region))
    throw new ConfigError(`${what('region')} must look like us-east-1, got '${region}'`);
  // Virtual-hosted style needs DNS for every bucket name; other gateways rarely have it.
  let pathStyle = endpoint === undefined ? false : !/\.amazonaws\.com(:\d+)?$/.test(new URL(endpoint).host);
  if (b.path_style !== undefined) {
    if (!['true', 'false', '1', '0', 'yes', 'no'].includes(b.path_style.toLowerCase())) {
      throw new ConfigError(`${what('path_style')} must be true or false, got '${b.path_style}'`);
    }
    pathStyle = ['true', '1', 'yes'].includes(b.path_style.toLowerCase());
  }
  if ((b.access_key_id === undefined) !== (b.secret_access_key === undefined)) {
    throw new ConfigError(
      `${file}: [DataBackend] access_key_id and secret_access_key go together; give both or neither`,
    );
  }
  let caFile: string | undefined;
  if (b.ca_file !== undefined && b.ca_file !== '') {
    if (endpoint?.startsWith('http:')) {
      throw new ConfigError(`${what('ca_file')} is for an https:// endpoint, not '${endpoint}'`);
    }
    // Relative to the config file, as key_file.
    caFile = resolve(dirname(file), b.ca_file);
  }
  return {
    type: 's3',
    endpoint,
    bucket: b.bucket,
    prefix,
    region,
    pathStyle,
    accessKeyId: b.access_key_id,
    secretAccessKey: b.secret_access_key,
    maxConnections:
      b.max_connections === undefined
        ? 16
        : parseInteger(b.max_connections, what('max_connections'), 1, 1024),
    timeout: b.timeout === undefined ? 30 : parseInteger(b.timeout, what('timeout'), 1, 3600),
    caFile,
  };
}

function parseInteger(value: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw new ConfigError(`${what} must be a whole number, got '${value}'`);
  const n = Number(value);
  if (n < min || n > max) throw new ConfigError(`${what} must be between ${min} and ${max}, got ${value}`);
  return n;
}

function validateEngine(url: string, what: string): void {
  if (url.startsWith('sqlite:///')) {
    if (url.length <= 'sqlite:///'.length) throw new ConfigError(`${what}: sqlite URL has no path`);
    return;
  }
  if (/^postgres(ql)?:\/\//.test(url)) {
    try {
      new URL(url);
    } catch {
      throw new ConfigError(`${what}: not a valid PostgreSQL URL`);
    }
    return;
  }
  throw new ConfigError(
    `${what} must be sqlite:///relative/path, sqlite:////absolute/path or postgresql://user:pass@host:port/db, got '${redactUrl(url)}'`,
  );
}

/** The engine URL with any password replaced, for logs and errors. */
export function redactUrl(url: string): string {
  // Up to the LAST '@': a password may contain '@', ':' or an unescaped '/'. Redacting too much
  // (an '@' in the query) is harmless; `password=` in the query is a password too (pg reads it).
  return url
    .replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/?#@]*:).*@/i, '$1***@')
    .replace(/([?&]password=)[^&#]*/gi, '$1***');
}

/** sqlite:///rel/path -> rel/path, sqlite:////abs/path -> /abs/path (SQLAlchemy's form). */
export function sqlitePath(url: string): string {
  return url.slice('sqlite:///'.length);
}
