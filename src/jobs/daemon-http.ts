/**
 * The daemon's HTTP endpoint: GET /metrics (Prometheus text format) and GET /jobs (JSON),
 * nothing else. Loopback by default (`listen`), or a Unix socket created 0600. Every request
 * is small and answered from what the daemon already holds, so a client gets short timeouts
 * and small limits: one that sends garbage or stalls is cut off and stalls no one else.
 */
import { lstat, unlink } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { BackyError } from '../errors.js';
import type { ListenAddress } from './job-config.js';

export interface HttpRoutes {
  metrics(): string;
  jobs(): Promise<unknown>;
}

export interface HttpEndpoint {
  /** http://HOST:PORT or unix:PATH */
  where: string;
  close(): Promise<void>;
}

const LIMITS = { headersTimeout: 5000, requestTimeout: 10_000, maxHeaderSize: 8192 };

export async function serveHttp(
  listen: Exclude<ListenAddress, null>,
  routes: HttpRoutes,
  onError: (msg: string) => void,
): Promise<HttpEndpoint> {
  const server = createServer(LIMITS, (req, res) => {
    handle(req, res, routes).catch((err: unknown) => {
      onError(`HTTP ${req.url ?? ''}: ${(err as Error)?.message ?? String(err)}`);
      if (!res.headersSent) send(res, 500, 'text/plain', 'internal error\n');
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  server.maxConnections = 64;
  server.on('clientError', (_err, socket) => socket.destroy());
  if ('socket' in listen) {
    // A stale socket of an earlier run is replaced; any other file is not.
    const st = await lstat(listen.socket).catch(() => undefined);
    if (st?.isSocket()) await unlink(listen.socket);
    // 0600 from the moment it exists: the umask is narrowed around listen().
    const umask = process.umask(0o177);
    try {
      await listenOn(server, listen.socket);
    } finally {
      process.umask(umask);
    }
  } else {
    await listenOn(server, listen.port, listen.host);
  }
  const addr = server.address();
  const where =
    'socket' in listen
      ? `unix:${listen.socket}`
      : `http://${(addr as AddressInfo).family === 'IPv6' ? `[${(addr as AddressInfo).address}]` : (addr as AddressInfo).address}:${(addr as AddressInfo).port}`;
  return {
    where,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function listenOn(
  server: ReturnType<typeof createServer>,
  port: number | string,
  host?: string,
): Promise<void> {
  const where = typeof port === 'string' ? port : `${host}:${port}`;
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new BackyError(
          `cannot listen on ${where} ([scheduler] listen): ${err.code === 'EADDRINUSE' ? 'the address is in use (another backy daemon?)' : err.message}`,
        ),
      ),
    );
    const done = () => {
      server.removeAllListeners('error');
      resolve();
    };
    if (typeof port === 'string') server.listen(port, done);
    else server.listen(port, host, done);
  });
}

async function handle(req: IncomingMessage, res: ServerResponse, routes: HttpRoutes): Promise<void> {
  // The body of a request is never needed: whatever comes is drained, never buffered.
  req.resume();
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    return send(res, 405, 'text/plain', 'only GET and HEAD\n');
  }
  const path = (req.url ?? '/').split('?')[0];
  if (path === '/metrics')
    return send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', routes.metrics());
  if (path === '/jobs') return send(res, 200, 'application/json', `${JSON.stringify(await routes.jobs())}\n`);
  if (path === '/') return send(res, 200, 'text/plain', 'backy daemon: /metrics /jobs\n');
  return send(res, 404, 'text/plain', 'not found: /metrics or /jobs\n');
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
