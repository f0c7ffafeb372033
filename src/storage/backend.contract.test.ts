/**
 * The StorageBackend contract (src/storage/backend.ts), one suite run against every backend:
 * DirBackend on a temp dir and S3Backend on a real Ceph RADOS Gateway (test/lib/rgw.ts).
 * Then what only S3 has: a missing bucket, bad credentials, a bad endpoint, a stalled server.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import type { Server } from 'node:http';
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { rootCertificates } from 'node:tls';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BackyError, MissingBlockError } from '../errors.js';
import {
  newBucket,
  putObject,
  rgwServer,
  rgwSkipReason,
  rgwTlsServer,
  rgwTlsSkipReason,
  s3Client,
} from '../../test/lib/rgw.js';
import type { S3Server } from '../../test/lib/rgw.js';
import type { StorageBackend } from './backend.js';
import { DirBackend } from './dir-backend.js';
import { S3Backend } from './s3-backend.js';
import type { S3Options } from './s3-backend.js';

const s3Skip = rgwSkipReason();
const tlsSkip = rgwTlsSkipReason();
let server: (S3Server & { stop(): Promise<void> }) | undefined;
let tlsServer: (S3Server & { caFile: string; stop(): Promise<void> }) | undefined;

function s3Options(s: S3Server, bucket: string, extra: Partial<S3Options> = {}): S3Options {
  return {
    endpoint: s.endpoint,
    ca: s.caFile ? [readFileSync(s.caFile, 'utf8')] : undefined,
    bucket,
    prefix: 'p/',
    region: 'us-east-1',
    pathStyle: true,
    accessKeyId: s.accessKeyId,
    secretAccessKey: s.secretAccessKey,
    maxConnections: 8,
    timeoutMs: 10_000,
    ...extra,
  };
}

const key = (n: number) => n.toString(16).padStart(64, 'a');

interface Case {
  name: string;
  skip?: string;
  open(): Promise<{ backend: StorageBackend; done(): Promise<void> }>;
}

const cases: Case[] = [
  {
    name: 'DirBackend',
    async open() {
      const dir = await mkdtemp(join(tmpdir(), 'backy-contract-'));
      return { backend: new DirBackend(join(dir, 'data')), done: () => rm(dir, { recursive: true }) };
    },
  },
  {
    name: 'S3Backend on radosgw',
    skip: s3Skip,
    async open() {
      server ??= await rgwServer();
      return { backend: new S3Backend(s3Options(server, newBucket('contract'))), done: async () => {} };
    },
  },
  {
    name: 'S3Backend on radosgw over HTTPS',
    skip: tlsSkip,
    async open() {
      tlsServer ??= await rgwTlsServer();
      return {
        backend: new S3Backend(s3Options(tlsServer, newBucket('contract-tls'))),
        done: async () => {},
      };
    },
  },
];

after(async () => {
  await server?.stop();
  await tlsServer?.stop();
});

for (const c of cases) {
  describe(`StorageBackend contract: ${c.name}`, { skip: c.skip }, () => {
    let backend: StorageBackend;
    let done: () => Promise<void>;
    before(async () => ({ backend, done } = await c.open()));
    after(async () => {
      await backend?.close();
      await done?.();
    });

    it('put stores the concatenated chunks; get and getInto return them', async () => {
      const t0 = Date.now();
      await backend.put(key(1), [Buffer.from('head'), Buffer.alloc(0), Buffer.from('-body')]);
      assert.deepEqual(await backend.get(key(1)), Buffer.from('head-body'));
      if (backend.getInto) {
        const big = Buffer.alloc(64, 0xee);
        const got = await backend.getInto(key(1), big);
        assert.deepEqual(got, Buffer.from('head-body'));
        assert.equal(got.buffer, big.buffer, 'a fitting object is read into the given buffer');
        assert.deepEqual(await backend.getInto(key(1), Buffer.alloc(3)), Buffer.from('head-body'));
      }
      const st = await backend.stat(key(1));
      assert.equal(st?.key, key(1));
      assert.equal(st?.size, 9);
      // Second-granular clocks (S3's Last-Modified) and a little skew.
      assert.ok(st!.mtimeMs >= t0 - 2000 && st!.mtimeMs <= Date.now() + 2000, `mtime ${st!.mtimeMs}`);
    });

    it('a 4 MiB object round-trips byte for byte', async () => {
      const data = Buffer.alloc(4 << 20);
      for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
      await backend.put(key(2), [data.subarray(0, 16), data.subarray(16)]);
      assert.ok((await backend.get(key(2))).equals(data));
      if (backend.getInto) assert.ok((await backend.getInto(key(2), Buffer.alloc(5 << 20))).equals(data));
    });

    it('a missing key: get rejects with MissingBlockError, stat is undefined, delete is fine', async () => {
      await assert.rejects(backend.get(key(3)), MissingBlockError);
      if (backend.getInto) await assert.rejects(backend.getInto(key(3), Buffer.alloc(16)), MissingBlockError);
      assert.equal(await backend.stat(key(3)), undefined);
      await backend.delete(key(3));
    });

    it('statMany, where a backend has it, answers like stat for each key, in order', async (t) => {
      if (!backend.statMany) return t.skip('this backend has no statMany');
      await backend.put(key(20), [Buffer.from('twenty')]);
      await backend.put(key(22), [Buffer.from('22')]);
      const keys = [key(21), key(20), key(22), key(23), key(20)];
      const many = await backend.statMany(keys);
      assert.equal(many.length, keys.length);
      for (const [i, k] of keys.entries()) {
        const one = await backend.stat(k);
        assert.equal(many[i]?.key, one?.key, k);
        assert.equal(many[i]?.size, one?.size, k);
      }
      assert.deepEqual(
        many.map((st) => st?.size),
        [undefined, 6, 2, undefined, 6],
      );
      assert.deepEqual(await backend.statMany([]), []);
      await assert.rejects(backend.statMany(['not-hex']));
      // Later cases list the whole store.
      await backend.delete(key(20));
      await backend.delete(key(22));
    });

    it('put over an existing key replaces it', async () => {
      await backend.put(key(4), [Buffer.from('old old old')]);
      await backend.put(key(4), [Buffer.from('new')]);
      assert.deepEqual(await backend.get(key(4)), Buffer.from('new'));
      assert.equal((await backend.stat(key(4)))?.size, 3);
    });

    it('a deferred put is done with its buffer when it resolves, and readable after sync', async () => {
      const data = Buffer.from('deferred');
      await backend.put(key(5), [data], { defer: true });
      data.fill(0); // the caller reuses its buffer (a BufferPool does)
      await backend.sync?.();
      assert.deepEqual(await backend.get(key(5)), Buffer.from('deferred'));
    });

    it('delete removes; list yields every key once with its size', async () => {
      await backend.put(key(6), [Buffer.from('six')]);
      await backend.delete(key(6));
      assert.equal(await backend.stat(key(6)), undefined);
      const listed = new Map<string, number>();
      for await (const o of backend.list()) {
        assert.ok(!listed.has(o.key), `${o.key} listed twice`);
        listed.set(o.key, o.size);
      }
      assert.deepEqual(
        [...listed].sort(),
        [
          [key(1), 9],
          [key(2), 4 << 20],
          [key(4), 3],
          [key(5), 8],
        ].sort(),
      );
    });

    it('stat and list never date an object before its write (cleanup keeps what is newer than its start)', async () => {
      // Kernel file times are coarse by a few ms; S3's Last-Modified by up to a second.
      for (let i = 0; i < 3; i++) {
        const t0 = Date.now();
        await backend.put(key(7), [Buffer.from(`t${i}`)]);
        const st = await backend.stat(key(7));
        assert.ok(st!.mtimeMs >= t0 - 20, `stat: mtime ${st!.mtimeMs} < write start ${t0}`);
        for await (const o of backend.list()) {
          if (o.key === key(7))
            assert.ok(o.mtimeMs >= t0 - 20, `list: mtime ${o.mtimeMs} < write start ${t0}`);
        }
        await new Promise((r) => setTimeout(r, 150));
      }
      await backend.delete(key(7));
    });

    it('refuses a key that is not plain hex', async () => {
      await assert.rejects(backend.put('../../etc/passwd', [Buffer.from('x')]));
      await assert.rejects(backend.get('ab/../../cd'));
    });

    it('the meta namespace: put, get, replace, list, delete; never seen by list() nor by block keys', async () => {
      assert.equal(await backend.getMeta('descriptor'), undefined);
      await backend.putMeta('descriptor', Buffer.from('d1'));
      await backend.putMeta('descriptor', Buffer.from('d22'));
      await backend.putMeta(`version-${key(9).slice(0, 8)}`, Buffer.from('copy'));
      assert.deepEqual(await backend.getMeta('descriptor'), Buffer.from('d22'));
      const metas = new Map<string, number>();
      for await (const o of backend.listMeta()) metas.set(o.key, o.size);
      assert.deepEqual(
        [...metas].sort(),
        [
          ['descriptor', 3],
          [`version-${key(9).slice(0, 8)}`, 4],
        ].sort(),
      );
      for await (const o of backend.list())
        assert.match(o.key, /^[0-9a-f]+$/, 'list() yields block keys only');
      // A block key that spells a meta name's letters stays apart from it.
      await backend.put('deadbeef', [Buffer.from('block')]);
      assert.deepEqual(await backend.get('deadbeef'), Buffer.from('block'));
      assert.equal(await backend.getMeta('deadbeef'), undefined);
      await backend.delete('deadbeef');
      await backend.deleteMeta(`version-${key(9).slice(0, 8)}`);
      await backend.deleteMeta('never-written');
      const left: string[] = [];
      for await (const o of backend.listMeta()) left.push(o.key);
      assert.deepEqual(left, ['descriptor']);
      await assert.rejects(backend.putMeta('../x', Buffer.from('x')));
      await assert.rejects(backend.getMeta('meta/../../x'));
    });

    it('putMeta takes a stream of chunks (a big copy); one that fails mid-way leaves the old object', async () => {
      const piece = Buffer.alloc(256 << 10, 7);
      async function* chunks(n: number, fail = false): AsyncGenerator<Buffer> {
        for (let i = 0; i < n; i++) {
          if (fail && i === 2) throw new Error('the source failed');
          yield Buffer.from(piece.map((b) => b + i));
        }
      }
      const expected = Buffer.concat(
        Array.from({ length: 12 }, (_, i) => Buffer.from(piece.map((b) => b + i))),
      );
      await backend.putMeta('version-streamed', chunks(12));
      assert.deepEqual(await backend.getMeta('version-streamed'), expected);
      await assert.rejects(backend.putMeta('version-streamed', chunks(12, true)), /the source failed/);
      assert.deepEqual(await backend.getMeta('version-streamed'), expected, 'the old object is whole');
      await backend.deleteMeta('version-streamed');
    });
  });
}

describe('S3Backend: failures against the real gateway', { skip: s3Skip }, () => {
  let s: S3Server;
  before(async () => {
    server ??= await rgwServer();
    s = server;
  });

  it('list follows continuation pages and skips keys outside its prefix or not hex', async () => {
    const bucket = newBucket('list');
    const b = new S3Backend(s3Options(s, bucket, { listPageSize: 7 }));
    try {
      const keys = Array.from({ length: 30 }, (_, i) => key(1000 + i));
      const queue = [...keys];
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          for (let k = queue.pop(); k; k = queue.pop()) await b.put(k, [Buffer.from('x')]);
        }),
      );
      const c = s3Client(s);
      await putObject(c, bucket, 'other/' + key(1), Buffer.from('not ours'));
      await putObject(c, bucket, 'p/README', Buffer.from('not a block'));
      c.destroy();
      const listed: string[] = [];
      for await (const o of b.list()) listed.push(o.key);
      assert.deepEqual(listed.sort(), keys.sort());
    } finally {
      await b.close();
    }
  });

  it('getInto reads a block into the caller buffer without leaving block-sized garbage', () =>
    getIntoLeavesNoGarbage(s));

  it('a missing bucket: reads fail with one line naming it (never MissingBlockError); a put creates it', async () => {
    const bucket = newBucket('missing');
    const b = new S3Backend(s3Options(s, bucket));
    try {
      for (const op of [
        () => b.get(key(1)),
        () => b.stat(key(1)),
        async () => b.list()[Symbol.asyncIterator]().next(),
      ]) {
        await assert.rejects(op(), (err: Error) => {
          assert.ok(!(err instanceof MissingBlockError), err.message);
          assert.ok(err instanceof BackyError);
          assert.match(err.message, new RegExp(`bucket ${bucket} does not exist at ${s.endpoint}`));
          assert.doesNotMatch(err.message, /\n/);
          return true;
        });
      }
      await b.put(key(1), [Buffer.from('first')]);
      assert.deepEqual(await b.get(key(1)), Buffer.from('first'));
    } finally {
      await b.close();
    }
  });

  it('parallel 4 MiB puts into a missing bucket (refused before their bodies are read) create it, no crash', async () => {
    // radosgw answers NoSuchBucket and hangs up without reading the body: the unread rest of
    // the upload meets a closed socket (EPIPE), which once crashed the process.
    const big = Buffer.alloc(4 << 20, 9);
    for (let round = 0; round < 3; round++) {
      const b = new S3Backend(s3Options(s, newBucket('fresh')));
      try {
        await Promise.all(Array.from({ length: 8 }, (_, i) => b.put(key(100 + i), [big])));
        for (let i = 0; i < 8; i++) assert.equal((await b.stat(key(100 + i)))?.size, big.length);
      } finally {
        await b.close();
      }
    }
  });

  it('wrong credentials fail at once, naming endpoint and bucket, never the secret', async () => {
    const secret = 'wrong-secret-' + 'x'.repeat(20);
    const b = new S3Backend(s3Options(s, newBucket('creds'), { secretAccessKey: secret, timeoutMs: 20_000 }));
    try {
      const t0 = performance.now();
      await assert.rejects(b.put(key(1), [Buffer.from('x')]), (err: Error) => {
        assert.ok(err instanceof BackyError);
        assert.match(err.message, /^cannot reach bucket s3:\/\/backy-creds-\w+\/p\/ at /);
        assert.ok(err.message.includes(s.endpoint), err.message);
        assert.match(err.message, /403.*check the credentials/);
        assert.ok(!err.message.includes(secret) && !err.message.includes(s.secretAccessKey));
        return true;
      });
      assert.ok(performance.now() - t0 < 5000, 'a 403 is not retried');
    } finally {
      await b.close();
    }
  });

  it('a bad endpoint (nothing listening) fails at once', async () => {
    const port = await freePort();
    const b = new S3Backend(
      s3Options({ ...s, endpoint: `http://127.0.0.1:${port}` }, newBucket('noep'), { timeoutMs: 20_000 }),
    );
    try {
      const t0 = performance.now();
      await assert.rejects(b.get(key(1)), (err: Error) => {
        assert.ok(err instanceof BackyError && !(err instanceof MissingBlockError));
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}.*ECONNREFUSED`));
        return true;
      });
      assert.ok(performance.now() - t0 < 5000);
    } finally {
      await b.close();
    }
  });
});

// Node allocates a buffer per socket read and the HTTP parser a copy per body chunk: 8 MiB of
// garbage per 4 MiB block, resident until V8 collects it. Socket reads into one reused
// buffer and body chunks freed once copied leave nothing behind: checked through
// process.memoryUsage().arrayBuffers (exact byte counts, garbage not yet collected included).
async function getIntoLeavesNoGarbage(s: S3Server): Promise<void> {
  const b = new S3Backend(s3Options(s, newBucket('garbage')));
  try {
    const block = randomBytes(4 << 20);
    await b.put(key(7), [block]);
    const into = Buffer.alloc(block.length + 64);
    await b.getInto(key(7), into); // the first request sets up the client and its socket
    let grown = 0;
    for (let i = 0; i < 6; i++) {
      into.fill(0);
      const before = process.memoryUsage().arrayBuffers;
      const got = await b.getInto(key(7), into);
      // A collection in between can only lower the count.
      grown += Math.max(0, process.memoryUsage().arrayBuffers - before);
      assert.ok(got.equals(block));
    }
    assert.ok(grown < 2 << 20, `ArrayBuffers grew by ${grown} bytes over 6 blocks of 4 MiB`);
  } finally {
    await b.close();
  }
}

describe(
  'S3Backend over HTTPS (radosgw serving TLS, a certificate from a CA of the test)',
  { skip: tlsSkip },
  () => {
    let s: S3Server & { caFile: string };
    before(async () => {
      tlsServer ??= await rgwTlsServer();
      s = tlsServer;
    });

    it('getInto reads a block into the caller buffer without leaving block-sized garbage', () =>
      getIntoLeavesNoGarbage(s));

    it('a certificate no trusted CA signed fails at once with one line naming ca_file', async () => {
      const b = new S3Backend(s3Options(s, newBucket('untrusted'), { ca: undefined, timeoutMs: 20_000 }));
      try {
        const t0 = performance.now();
        await assert.rejects(b.get(key(1)), (err: Error) => {
          assert.ok(err instanceof BackyError && !(err instanceof MissingBlockError));
          assert.ok(err.message.includes(s.endpoint), err.message);
          assert.match(err.message, /certificate.*ca_file/);
          assert.doesNotMatch(err.message, /\n/);
          return true;
        });
        assert.ok(performance.now() - t0 < 5000, 'not retried');
      } finally {
        await b.close();
      }
    });

    it('a ca_file of another CA is not trusted either', async () => {
      const b = new S3Backend(s3Options(s, newBucket('otherca'), { ca: [rootCertificates[0]] }));
      try {
        await assert.rejects(b.get(key(1)), /certificate.*ca_file/);
      } finally {
        await b.close();
      }
    });
  },
);

describe(
  'S3Backend: transient errors from a fault-injecting proxy in front of the real gateway',
  { skip: s3Skip },
  () => {
    // The gateway cannot be made to answer 503 or reset a connection on demand; the proxy
    // forwards everything else to it unchanged.
    let proxy: Server;
    let port: number;
    /** What the next requests get instead of the gateway's answer. */
    let faults: ('503' | 'reset' | 'answer-early')[] = [];
    let always: '503' | undefined;
    let requests = 0;
    before(async () => {
      server ??= await rgwServer();
      const target = new URL(server.endpoint);
      proxy = createHttpServer((req, res) => {
        requests++;
        const fault = always ?? faults.shift();
        if (fault === 'reset') {
          req.socket.destroy();
          return;
        }
        if (fault === 'answer-early') {
          // As a gateway that refuses a request before reading its body (full, overloaded):
          // answer, then close while the client is still sending.
          res.writeHead(503, { 'content-type': 'application/xml', connection: 'close' });
          res.end('<?xml version="1.0"?><Error><Code>ServiceUnavailable</Code></Error>', () =>
            req.socket.destroy(),
          );
          return;
        }
        if (fault === '503') {
          req.resume();
          res.writeHead(503, { 'content-type': 'application/xml' });
          res.end('<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>slow down</Message></Error>');
          return;
        }
        const up = httpRequest(
          {
            host: target.hostname,
            port: target.port,
            method: req.method,
            path: req.url,
            headers: req.headers,
          },
          (upRes) => {
            res.writeHead(upRes.statusCode ?? 502, upRes.headers);
            upRes.pipe(res);
          },
        );
        up.on('error', () => res.destroy());
        req.pipe(up);
      });
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      port = (proxy.address() as { port: number }).port;
    });
    after(() => proxy?.close());

    it('503 SlowDown and connection resets are retried; the operation succeeds', async () => {
      const b = new S3Backend(
        s3Options({ ...server!, endpoint: `http://127.0.0.1:${port}` }, newBucket('retry')),
      );
      try {
        await b.put(key(1), [Buffer.from('warm-up')]); // creates the bucket; the client has now reached the gateway
        faults = ['503', 'reset', '503'];
        requests = 0;
        await b.put(key(2), [Buffer.from('after faults')]);
        assert.equal(requests, 4, 'three failed attempts, then the one that worked');
        faults = ['reset', '503'];
        assert.deepEqual(await b.get(key(2)), Buffer.from('after faults'));
        faults = ['503'];
        assert.equal((await b.stat(key(2)))?.size, 12);
      } finally {
        await b.close();
      }
    });

    it('a gateway that answers and hangs up before reading a 4 MiB body: retried, no crash', async () => {
      const b = new S3Backend(
        s3Options({ ...server!, endpoint: `http://127.0.0.1:${port}` }, newBucket('early')),
      );
      try {
        await b.put(key(1), [Buffer.from('warm-up')]);
        const big = Buffer.alloc(4 << 20, 7);
        for (let i = 0; i < 5; i++) {
          faults = ['answer-early', 'answer-early'];
          await b.put(key(2 + i), [big]);
          assert.ok((await b.get(key(2 + i))).equals(big));
        }
      } finally {
        faults = [];
        await b.close();
      }
    });

    it('a gateway that keeps failing: one line after the bounded retries, within the timeout', async () => {
      const b = new S3Backend(
        s3Options({ ...server!, endpoint: `http://127.0.0.1:${port}` }, newBucket('retry'), {
          timeoutMs: 2000,
        }),
      );
      always = '503';
      try {
        const t0 = performance.now();
        await assert.rejects(b.get(key(1)), (err: Error) => {
          assert.ok(!(err instanceof MissingBlockError));
          assert.match(
            err.message,
            /^cannot read block \w+ from s3:\/\/backy-retry-\w+\/p\/ at http:\/\/127\.0\.0\.1:\d+: .*SlowDown.*\(after \d+ attempts\)$/,
          );
          return true;
        });
        const ms = performance.now() - t0;
        // Bounded by timeoutMs (2 s), with room for a loaded CI machine; unbounded retries would
        // run until the test's own timeout.
        assert.ok(ms < 10_000, `gave up after ${ms} ms`);
      } finally {
        always = undefined;
        await b.close();
      }
    });
  },
);

describe('S3Backend: a server that accepts connections and never answers', () => {
  // A real listening socket that stays silent: a stalled gateway without stopping the real one.
  it('every operation fails within the timeout, with one line saying so', async () => {
    const sockets: Socket[] = [];
    const silent = createServer((sock) => sockets.push(sock));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as { port: number }).port;
    const b = new S3Backend({
      endpoint: `http://127.0.0.1:${port}`,
      bucket: 'stalled',
      prefix: '',
      region: 'us-east-1',
      pathStyle: true,
      accessKeyId: 'AK',
      secretAccessKey: 'SK',
      maxConnections: 4,
      timeoutMs: 1500,
    });
    try {
      for (const op of [
        () => b.put(key(1), [Buffer.alloc(1 << 20)]),
        () => b.get(key(1)),
        () => b.stat(key(1)),
      ]) {
        const t0 = performance.now();
        await assert.rejects(op(), (err: Error) => {
          assert.ok(!(err instanceof MissingBlockError));
          assert.match(err.message, /no answer within 1\.5 s \(timeout\)/);
          assert.ok(err.message.includes(`127.0.0.1:${port}`));
          return true;
        });
        const ms = performance.now() - t0;
        // Not before the timeout; after it with room for a loaded CI machine (no answer ever comes).
        assert.ok(ms >= 1400 && ms < 10_000, `failed after ${ms} ms`);
      }
    } finally {
      await b.close();
      for (const sock of sockets) sock.destroy();
      silent.close();
    }
  });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}
