/**
 * The NBD client's URI parsing, and its answer to servers that break the protocol. No real
 * server reports extents past the end of its export or answers a read with garbage, so those
 * faults come from a scripted server built on the same protocol module (the only fake here);
 * it also stays silent or idle for the timeout tests, which pass the client a 300 ms timeout
 * instead of the real 120 s. Everything a real server can do is tested against qemu-nbd and
 * nbdkit in test/e2e/nbd-source.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { NbdSource } from '../source/nbd-source.js';
import { ByteReader } from './byte-reader.js';
import { NbdClient, parseNbdUri } from './client.js';
import * as P from './protocol.js';

describe('parseNbdUri', () => {
  it("accepts libnbd's nbd:// and nbd+unix:// forms", () => {
    assert.deepEqual(parseNbdUri('nbd+unix:///?socket=/run/x.sock'), {
      uri: 'nbd+unix:///?socket=/run/x.sock',
      exportName: '',
      socket: '/run/x.sock',
    });
    assert.equal(parseNbdUri('nbd+unix:///vda?socket=/s').exportName, 'vda');
    assert.equal(parseNbdUri('nbd+unix:///a%20b?socket=/s').exportName, 'a b');
    const tcp = parseNbdUri('nbd://example.test/disk');
    assert.equal(tcp.host, 'example.test');
    assert.equal(tcp.port, 10809);
    assert.equal(tcp.exportName, 'disk');
    const v6 = parseNbdUri('nbd://[::1]:10810/');
    assert.equal(v6.host, '::1');
    assert.equal(v6.port, 10810);
    assert.equal(v6.exportName, '');
  });

  it('refuses what it cannot use, naming the URI', () => {
    for (const [uri, msg] of [
      ['nbd+unix:///disk', /needs \?socket=PATH/],
      ['nbd+unix://host/disk?socket=/s', /takes no host/],
      ['nbds://host/disk', /only nbd:\/\/ and nbd\+unix:\/\//],
      ['nbd+vsock:///disk', /only nbd:\/\/ and nbd\+unix:\/\//],
    ] as const) {
      assert.throws(
        () => parseNbdUri(uri),
        (e: Error) => e instanceof InputError && msg.test(e.message) && e.message.includes(uri),
      );
    }
  });
});

type Misbehaviour = 'extents-past-end' | 'garbage-read' | 'silent' | 'none';
const SIZE = 4 << 20;

/** Handshake like a real server (structured replies, base:allocation, GO), then misbehaves. */
async function scripted(socket: Socket, how: Misbehaviour): Promise<void> {
  const r = new ByteReader(socket);
  socket.write(P.encodeHandshake(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
  await r.read(4);
  for (;;) {
    const h = P.decodeOptionHeader(await r.read(P.OPTION_HEADER_SIZE));
    await r.read(h.length);
    if (h.option === P.OPT.SET_META_CONTEXT) {
      socket.write(
        P.encodeOptionReply(h.option, P.REP.META_CONTEXT, P.encodeMetaContextReply(1, P.BASE_ALLOCATION)),
      );
    }
    if (h.option === P.OPT.GO)
      socket.write(P.encodeOptionReply(h.option, P.REP.INFO, P.encodeInfoExport(SIZE, 0)));
    socket.write(P.encodeOptionReply(h.option, P.REP.ACK));
    if (h.option === P.OPT.GO) break;
  }
  for (;;) {
    const req = P.decodeRequest(await r.read(P.REQUEST_SIZE));
    if (req.type === P.CMD.BLOCK_STATUS && how === 'extents-past-end') {
      socket.write(
        P.encodeBlockStatusChunk(req.cookie, P.REPLY_FLAG_DONE, 1, [
          { length: 1 << 20, flags: 0 },
          { length: SIZE, flags: 0 },
        ]),
      );
    } else if (req.type === P.CMD.READ && how === 'none') {
      socket.write(P.encodeDataChunkHeader(req.cookie, P.REPLY_FLAG_DONE, req.offset, req.length));
      socket.write(Buffer.alloc(req.length, 7));
    } else if (req.type === P.CMD.READ && how === 'garbage-read') {
      socket.write(Buffer.from('this is not an NBD reply at all'));
    }
  }
}

describe('NbdClient against a server that breaks the protocol', () => {
  let dir: string;
  const servers: Server[] = [];
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-nbd-client-'));
  });
  after(async () => {
    for (const s of servers) s.close();
    await rm(dir, { recursive: true, force: true });
  });
  const serve = async (how: Misbehaviour): Promise<string> => {
    const path = join(dir, `${how}.sock`);
    const server = createServer((s) => {
      s.on('error', () => {});
      scripted(s, how).catch(() => s.destroy());
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(path, resolve));
    return `nbd+unix:///?socket=${path}`;
  };

  it('extents past the end of the export: one InputError naming the URI', async () => {
    const uri = await serve('extents-past-end');
    const source = await NbdSource.open(uri);
    try {
      await assert.rejects(
        (async () => {
          for await (const e of source.dataExtents!()) void e;
        })(),
        (e: Error) =>
          e instanceof InputError &&
          /extents past the end of the export/.test(e.message) &&
          e.message.includes(uri),
      );
      // The connection is dead from then on: no read waits for a reply that cannot come.
      await assert.rejects(source.read(0, 4096), /past the end of the export/);
    } finally {
      await source.close();
    }
  });

  it(
    'a server that stops answering fails the pending reads after the timeout, never hangs',
    { timeout: 10_000 },
    async () => {
      const uri = await serve('silent');
      const client = await NbdClient.connect(parseNbdUri(uri), [], 300);
      try {
        const t0 = Date.now();
        await assert.rejects(
          client.read(0, 4096),
          (e: Error) =>
            e instanceof InputError &&
            /no reply from the server for 0.3 s/.test(e.message) &&
            e.message.includes(uri),
        );
        assert.ok(Date.now() - t0 < 5000);
      } finally {
        await client.close();
      }
    },
  );

  it('an idle connection outlasts the timeout: only requests without a reply time out', async () => {
    const uri = await serve('none');
    const client = await NbdClient.connect(parseNbdUri(uri), [], 300);
    try {
      await new Promise((r) => setTimeout(r, 800));
      assert.deepEqual(await client.read(4096, 8192), Buffer.alloc(8192, 7));
    } finally {
      await client.close();
    }
  });

  it('a garbage reply to a read: one InputError naming the URI, every pending read fails', async () => {
    const uri = await serve('garbage-read');
    const source = await NbdSource.open(uri);
    try {
      const reads = [source.read(0, 4096), source.read(1 << 20, 4096)];
      for (const r of reads) {
        await assert.rejects(
          r,
          (e: Error) =>
            e instanceof InputError &&
            /not a valid NBD reply: bad reply magic/.test(e.message) &&
            e.message.includes(uri),
        );
      }
    } finally {
      await source.close();
    }
  });
});
