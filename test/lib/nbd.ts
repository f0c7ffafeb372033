/**
 * NBD test helpers: a `backy nbd` server spawned on a Unix socket in the sandbox (stopped
 * with SIGTERM, its exit checked), a check for the real clients (libnbd-bin, qemu-utils), and
 * a raw client on the protocol module for what no real client sends (hostile input).
 *
 * Without the clients the tests are skipped with a message; in CI (CI=true) a missing client
 * is a failure instead, so CI cannot silently stop testing NBD.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import type { NetConnectOpts, Socket } from 'node:net';
import { ByteReader } from '../../src/nbd/byte-reader.js';
import * as P from '../../src/nbd/protocol.js';
import { BIN, Sandbox } from './cli.js';
import { writeImage } from './image.js';
import { hasCommand, skipUnlessCI } from './tools.js';

const CLIENTS = ['nbdinfo', 'nbdcopy', 'nbdfuse', 'qemu-img', 'qemu-io'];

/** Why the NBD client tests cannot run here, or undefined; throws in CI instead. */
export function nbdClientsMissing(extra: string[] = []): string | undefined {
  const missing = [...CLIENTS, ...extra].filter((b) => !hasCommand(b));
  return skipUnlessCI(
    missing,
    `NBD tests need real clients (missing: ${missing.join(', ')}); install them with: apt-get install libnbd-bin qemu-utils fuse3 e2fsprogs`,
  );
}

export interface ServerHandle {
  child: ChildProcess;
  /** The Unix socket path (unused when the server listens on TCP). */
  socket: string;
  /** With `tcp`: the port it listens on, on 127.0.0.1. */
  port: number | undefined;
  /** nbd+unix (or with `tcp` nbd://) URI of an export. */
  uri(uid: string): string;
  stderr(): string;
  /** SIGTERM, then waits; returns the exit code. */
  stop(): Promise<number | null>;
}

let serial = 0;

/**
 * Starts `backy nbd -u SOCKET ...args` (with `tcp`: `-a 127.0.0.1 -p 0`, a free port, or `-a
 * address`; clients connect to 127.0.0.1) and waits until it listens.
 */
export async function startServer(
  sb: Sandbox,
  args: string[] = [],
  opts: { tcp?: boolean; socket?: string; address?: string } = {},
): Promise<ServerHandle> {
  const socket = opts.socket ?? sb.path(`nbd-${++serial}.sock`);
  const listen = opts.tcp ? ['-a', opts.address ?? '127.0.0.1', '-p', '0'] : ['-u', socket];
  const child = spawn(process.execPath, [BIN, '-c', sb.config, 'nbd', ...listen, ...args], {
    cwd: sb.dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  child.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 15_000;
  while (!err.includes('NBD server listening')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`backy nbd did not start:\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const port = opts.tcp ? Number(/NBD server listening on [^\s]*:(\d+) /.exec(err)?.[1]) : undefined;
  return {
    child,
    socket,
    port,
    uri: (uid) => (opts.tcp ? `nbd://127.0.0.1:${port}/${uid}` : `nbd+unix:///${uid}?socket=${socket}`),
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Stops the server: exit 0 (SIGTERM is its normal stop, the README's exception to 143), no stack or internal error logged. */
export async function stopClean(srv: ServerHandle): Promise<void> {
  const code = await srv.stop();
  assert.equal(code, 0, srv.stderr());
  assert.doesNotMatch(srv.stderr(), /unexpected error|internal error|at .*\.(ts|js|mjs):\d+/);
}

/** How long the tests wait for what the server does at once (a log line, a closed socket). */
export const GUARD_MS = 20_000;

/** Waits until the server's log matches `re` `count` times (or fails after GUARD_MS); returns the first match. */
export async function logged(srv: ServerHandle, re: RegExp, count = 1): Promise<RegExpExecArray> {
  const g = new RegExp(re.source, `${re.flags.replace('g', '')}g`);
  const deadline = Date.now() + GUARD_MS;
  for (;;) {
    const m = re.exec(srv.stderr());
    if (m && (srv.stderr().match(g)?.length ?? 0) >= count) return m;
    if (Date.now() > deadline) assert.fail(`log has not ${count}x ${re}:\n${srv.stderr()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves when `closed` does; rejects, naming `what`, if it has not after `ms`. */
export async function closedWithin(closed: Promise<void>, ms: number, what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still open after ${ms / 1000} s`)), ms);
  });
  try {
    await Promise.race([closed, late]);
  } finally {
    clearTimeout(timer);
  }
}

export interface ServedImage {
  sb: Sandbox;
  /** The image's path in the sandbox. */
  image: string;
  /** Its version ('' when skipped). */
  uid: string;
}

/**
 * The fixture of most NBD describes: a sandbox with block_size = the image's block size, an
 * image written into it (`file`, default disk.img) and backed up (as `name`, default vm1). With
 * `skip` only the sandbox is made (the describe's after() removes it either way).
 */
export async function servedImage(
  skip: string | undefined,
  spec: Parameters<typeof writeImage>[1],
  opts: { file?: string; name?: string; engine?: string } = {},
): Promise<ServedImage> {
  const sb = await Sandbox.create({ defaults: `block_size = ${spec.blockSize}`, engine: opts.engine });
  const image = sb.path(opts.file ?? 'disk.img');
  if (skip) return { sb, image, uid: '' };
  await writeImage(image, spec);
  return { sb, image, uid: await sb.backup([image, opts.name ?? 'vm1']) };
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program (no shell); never throws for a non-zero exit. */
export function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export async function mustRun(cmd: string, args: string[], timeoutMs?: number): Promise<ExecResult> {
  const r = await run(cmd, args, timeoutMs);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  return r;
}

/**
 * A bare-hands client on the protocol module: connects, reads the handshake, and then sends
 * whatever the test wants, including what no well-behaved client would.
 */
export class RawClient {
  readonly socket: Socket;
  readonly reader: ByteReader;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.reader = new ByteReader(socket);
  }

  /** A Unix socket path, or where to connect on TCP (host 127.0.0.1 unless given; a `localAddress` picks the peer address). */
  static async connect(where: string | NetConnectOpts): Promise<RawClient> {
    const socket = typeof where === 'string' ? connect(where) : connect({ host: '127.0.0.1', ...where });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => {});
    const c = new RawClient(socket);
    P.decodeHandshake(await c.reader.read(P.HANDSHAKE_SIZE));
    return c;
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  async optionReply(): Promise<{ type: number; data: Buffer }> {
    const h = P.decodeOptionReplyHeader(await this.reader.read(P.OPTION_REPLY_HEADER_SIZE));
    return { type: h.type, data: await this.reader.read(h.length) };
  }

  /** Fixed newstyle, NO_ZEROES, structured replies, base:allocation, GO `name`. */
  async open(name: string): Promise<{ size: number; flags: number }> {
    this.send(P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
    this.send(P.encodeOption(P.OPT.STRUCTURED_REPLY));
    if ((await this.optionReply()).type !== P.REP.ACK) throw new Error('structured replies refused');
    this.send(P.encodeOption(P.OPT.SET_META_CONTEXT, P.encodeMetaContextRequest(name, [P.BASE_ALLOCATION])));
    while ((await this.optionReply()).type !== P.REP.ACK);
    this.send(P.encodeOption(P.OPT.GO, P.encodeInfoRequest(name, [])));
    let size = -1;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (P.isOptionError(r.type)) throw new Error(`GO refused: ${r.type.toString(16)} ${r.data.toString()}`);
      if (r.type === P.REP.ACK) return { size, flags };
      const info = P.decodeInfoReply(r.data);
      if (info.type === P.INFO.EXPORT && 'size' in info) ({ size, flags } = info);
    }
  }

  request(type: number, cookie: bigint, offset: number, length: number, flags = 0): void {
    this.send(P.encodeRequest({ flags, type, cookie, offset, length }));
  }

  /** A WRITE of `data` at `offset`; resolves to the error value of its reply (0 for none). */
  async write(cookie: bigint, offset: number, data: Buffer): Promise<number> {
    this.request(P.CMD.WRITE, cookie, offset, data.length);
    this.send(data);
    return (await this.reply()).error;
  }

  /**
   * Reads structured chunks up to DONE; returns the error value (0 for none) and, for a read
   * of [offset, offset+length), the data assembled from data and hole chunks.
   */
  async reply(offset = 0, length = 0): Promise<{ cookie: bigint; error: number; data: Buffer }> {
    let error = 0;
    const data = Buffer.alloc(length, 0xee);
    for (;;) {
      const h = P.decodeReplyHeader(await this.reader.read(P.STRUCTURED_REPLY_HEADER_SIZE));
      if (h.kind !== 'structured') throw new Error('expected a structured reply');
      const payload = await this.reader.read(h.length);
      if (h.type === P.REPLY_TYPE.ERROR || h.type === P.REPLY_TYPE.ERROR_OFFSET)
        error = P.decodeErrorChunk(payload, h.type === P.REPLY_TYPE.ERROR_OFFSET).error;
      else if (h.type === P.REPLY_TYPE.OFFSET_DATA) {
        const d = P.decodeDataChunk(payload);
        d.data.copy(data, d.offset - offset);
      } else if (h.type === P.REPLY_TYPE.OFFSET_HOLE) {
        const hole = P.decodeHoleChunk(payload);
        data.fill(0, hole.offset - offset, hole.offset - offset + hole.length);
      }
      if (h.flags & P.REPLY_FLAG_DONE) return { cookie: h.cookie, error, data };
    }
  }

  /** Resolves when the server has closed the connection. */
  closed(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || this.socket.readableEnded) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.resume();
    });
  }

  end(): void {
    this.socket.destroy();
  }
}
