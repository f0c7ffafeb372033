/**
 * `backy nbd` against clients that would stall or bloat it: a reader that never reads its
 * replies to large reads, a writer that announces a large write and stops, forty writers at
 * once. Real clients (nbdcopy, qemu-img, qemu-io) are served meanwhile, every copy compared byte
 * for byte; the stalled ones are closed after --stall-timeout with one log line naming the
 * peer; the server's memory stays under its bound. Times are asserted only as generous bounds.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import {
  RawClient,
  closedWithin,
  mustRun,
  nbdClientsMissing,
  servedImage,
  startServer,
  stopClean,
} from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { drainedUntilClosed, memoryOf, stalledReader, stalledWriter } from '../lib/nbd-hostile.js';
import * as P from '../../src/nbd/protocol.js';

const BS = 4 << 20;
const BLOCKS = 40;
const SIZE = BLOCKS * BS;
const MiB = 1 << 20;
const kind = (i: number): BlockKind => (i % 7 === 3 ? 'zero' : i % 3 ? 'random' : 'text');
/** How long a real client may take on this loaded machine; today's server hangs it forever. */
const CLIENT_MS = 90_000;
/** How long a server with --stall-timeout 2 may take to close a stalled client. */
const GUARD_MS = 30_000;

/** The server's log lines about the connection from our local `port`. */
function linesOf(srv: ServerHandle, port: number | undefined): string[] {
  return srv
    .stderr()
    .split('\n')
    .filter((l) => l.includes(`(127.0.0.1:${port})`));
}

/** Waits for the line that ends the connection from `port` (the log may trail the close). */
async function endLines(srv: ServerHandle, port: number | undefined): Promise<string[]> {
  const ends = () => linesOf(srv, port).filter((l) => /dropped|disconnected/.test(l));
  for (const deadline = Date.now() + GUARD_MS; ends().length === 0 && Date.now() < deadline;)
    await new Promise((r) => setTimeout(r, 50));
  // A second line would come at once: give it a moment to show.
  await new Promise((r) => setTimeout(r, 300));
  return ends();
}

/** True when the socket is still open (the server has not closed it). */
function isOpen(c: RawClient): boolean {
  return !c.socket.destroyed && !c.socket.readableEnded;
}

describe('backy nbd: clients that stall', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, { blocks: BLOCKS, blockSize: BS, kinds: kind }));
  });
  after(async () => sb?.remove());

  /** nbdcopy and qemu-img read the whole export; both byte for byte. */
  async function copyBoth(srv: ServerHandle, tag: string): Promise<void> {
    await mustRun('nbdcopy', [srv.uri(uid), sb.path(`${tag}.nbdcopy`)], CLIENT_MS);
    await assertSameBytes(image, sb.path(`${tag}.nbdcopy`));
    await mustRun(
      'qemu-img',
      ['convert', '-f', 'raw', '-O', 'raw', srv.uri(uid), sb.path(`${tag}.qemu`)],
      CLIENT_MS,
    );
    await assertSameBytes(image, sb.path(`${tag}.qemu`));
  }

  it(
    'a reader that never reads its replies (2 x 32 MiB, 64 x 24 MiB) stalls nobody; it is closed after --stall-timeout, one line naming it',
    { skip },
    async () => {
      const srv = await startServer(sb, ['--stall-timeout', '600'], { tcp: true });
      const stalled: RawClient[] = [];
      try {
        stalled.push(
          await stalledReader(srv, uid, [
            [0, 32 * MiB],
            [32 * MiB + 4096, 32 * MiB],
          ]),
        );
        stalled.push(
          await stalledReader(
            srv,
            uid,
            Array.from({ length: 64 }, (_, i): [number, number] => [
              ((i * 5) % (BLOCKS - 6)) * BS + 512,
              24 * MiB,
            ]),
          ),
        );
        // Let the server take them in and queue what it can.
        await new Promise((r) => setTimeout(r, 1500));
        await copyBoth(srv, 'stalled');
        // A spanning read of another client, unaligned, through a raw client.
        const c = await RawClient.connect({ port: srv.port! });
        await c.open(uid);
        c.request(P.CMD.READ, 1n, 3 * BS - 100, 32 * MiB);
        const r = await c.reply(3 * BS - 100, 32 * MiB);
        assert.equal(r.error, 0);
        assert.deepEqual(r.data, (await readFile(image)).subarray(3 * BS - 100, 3 * BS - 100 + 32 * MiB));
        c.end();
        // All of it while the stalled readers were still connected (their timeout is 600 s).
        for (const s of stalled) assert.ok(isOpen(s), 'the stalled reader is still connected');
      } finally {
        for (const s of stalled) s.end();
        await stopClean(srv);
      }

      const srv2 = await startServer(sb, ['--stall-timeout', '2'], { tcp: true });
      try {
        const s = await stalledReader(srv2, uid, [
          [0, 32 * MiB],
          [32 * MiB, 32 * MiB],
        ]);
        const port = s.socket.localPort;
        // The log first: closed() reads the socket, and a client that reads is not stalled.
        const dropped = await endLines(srv2, port);
        assert.equal(dropped.length, 1, srv2.stderr());
        await closedWithin(drainedUntilClosed(s), GUARD_MS, 'the stalled reader');
        assert.match(
          dropped[0],
          new RegExp(
            `WARN.*connection \\d+ \\(127\\.0\\.0\\.1:${port}\\): dropped: it has not read its replies for 2 s \\(--stall-timeout\\)`,
          ),
        );
        await copyBoth(srv2, 'after');
      } finally {
        await stopClean(srv2);
      }
    },
  );

  it(
    'a writer that announces 32 MiB and sends 1 KiB stalls no other writer; a stalled reader neither; it is closed after --stall-timeout',
    { skip },
    async () => {
      const other = sb.path('other.img');
      await writeImage(other, {
        blocks: 12,
        blockSize: BS,
        seed: 'other',
        kinds: (i) => (i % 4 ? 'random' : 'zero'),
      });
      const srv = await startServer(sb, ['-w', '--stall-timeout', '600'], { tcp: true });
      let writer: RawClient | undefined;
      let reader: RawClient | undefined;
      try {
        writer = await stalledWriter(srv, uid, 32 * MiB, 1024);
        reader = await stalledReader(srv, uid, [
          [0, 32 * MiB],
          [32 * MiB, 32 * MiB],
        ]);
        await new Promise((r) => setTimeout(r, 1500));
        // Another writer: nbdcopy of a whole image into the export (a new version).
        await mustRun('nbdcopy', [other, srv.uri(uid)], CLIENT_MS);
        // qemu-io writes across blocks and reads it back in the same connection.
        await mustRun(
          'qemu-io',
          [
            '-f',
            'raw',
            srv.uri(uid),
            '-c',
            `write -P 0x5a ${BS - 1000} ${BS + 5000}`,
            '-c',
            `read -P 0x5a ${BS - 1000} ${BS + 5000}`,
          ],
          CLIENT_MS,
        );
        // And a reader of the exported version.
        await mustRun('nbdcopy', [srv.uri(uid), sb.path('w.nbdcopy')], CLIENT_MS);
        await assertSameBytes(image, sb.path('w.nbdcopy'));
        assert.ok(isOpen(writer) && isOpen(reader), 'the stalled clients are still connected');
      } finally {
        writer?.end();
        reader?.end();
        await stopClean(srv);
      }
      // nbdcopy's version holds exactly the other image.
      const m = [...srv.stderr().matchAll(/new version ([0-9a-f-]{36}) .* is complete and valid/g)].map(
        (x) => x[1],
      );
      const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      let found = 0;
      for (const v of m) {
        if (!versions.some((x) => x.uid === v)) continue;
        await sb.ok(['restore', v, sb.path('restored.out'), '--force']);
        const got = await readFile(sb.path('restored.out'));
        if (got.subarray(0, BS).equals((await readFile(other)).subarray(0, BS))) {
          const want = Buffer.alloc(SIZE);
          (await readFile(image)).copy(want);
          (await readFile(other)).copy(want);
          await writeFile(sb.path('want-w.out'), want);
          await assertSameBytes(sb.path('want-w.out'), got);
          found++;
        }
      }
      assert.equal(found, 1, srv.stderr());

      const srv2 = await startServer(sb, ['-w', '--stall-timeout', '2'], { tcp: true });
      try {
        const w = await stalledWriter(srv2, uid, 32 * MiB, 1024);
        const port = w.socket.localPort;
        const dropped = await endLines(srv2, port);
        await closedWithin(drainedUntilClosed(w), GUARD_MS, 'the stalled writer');
        assert.equal(dropped.length, 1, srv2.stderr());
        assert.match(
          dropped[0],
          new RegExp(
            `WARN.*connection \\d+ \\(127\\.0\\.0\\.1:${port}\\): dropped: stopped in the middle of a request for 2 s \\(--stall-timeout\\)`,
          ),
        );
        // A client idle between requests is left alone.
        const idle = await RawClient.connect({ port: srv2.port! });
        await idle.open(uid);
        await new Promise((r) => setTimeout(r, 5000));
        assert.ok(isOpen(idle), 'an idle client stays connected');
        idle.request(P.CMD.READ, 1n, BS - 10, 20);
        const r = await idle.reply(BS - 10, 20);
        assert.deepEqual(r.data, (await readFile(image)).subarray(BS - 10, BS + 10));
        idle.request(P.CMD.DISC, 2n, 0, 0);
        await idle.closed();
      } finally {
        await stopClean(srv2);
      }
    },
  );
});

describe('backy nbd -w: forty writers at once', () => {
  const skip = nbdClientsMissing();
  const WRITERS = 40;
  const WBLOCKS = 8;
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(
      skip,
      { blocks: WBLOCKS, blockSize: BS, seed: 'forty', kinds: () => 'random' },
      { file: 'small.img', name: 'small' },
    ));
  });
  after(async () => sb?.remove());

  /** Writer k's 4 KiB into block b, unaligned (a read-modify-write of the block). */
  const at = (k: number, b: number) => b * BS + 1000 + k * 8192;
  const patch = (k: number) => randomBytesSeeded(`writer ${k}`, 4096);

  it(
    `${WRITERS} clients writing 4 KiB into ${WBLOCKS} blocks each keep the server under 256 MB; every version restores to what was written`,
    { skip },
    async () => {
      const srv = await startServer(sb, ['-w']);
      const pid = srv.child.pid!;
      const idle = await memoryOf(pid);
      let peak = NaN;
      try {
        // In turn: at most 32 connections may be in the handshake at once.
        const clients: RawClient[] = [];
        for (let k = 0; k < WRITERS; k++) {
          const c = await RawClient.connect(srv.socket);
          await c.open(uid);
          clients.push(c);
        }
        await Promise.all(
          clients.map(async (c, k) => {
            for (let b = 0; b < WBLOCKS; b++) {
              c.request(P.CMD.WRITE, BigInt(b + 1), at(k, b), 4096);
              c.send(patch(k));
            }
            for (let b = 0; b < WBLOCKS; b++) assert.equal((await c.reply()).error, 0);
          }),
        );
        const held = (await memoryOf(pid)).rss;
        for (const c of clients) c.request(P.CMD.DISC, 99n, 0, 0);
        await Promise.all(clients.map((c) => c.closed()));
        for (const deadline = Date.now() + CLIENT_MS; ;) {
          const n = srv.stderr().match(/is complete and valid/g)?.length ?? 0;
          if (n === WRITERS) break;
          assert.ok(Date.now() < deadline, `${n} of ${WRITERS} versions completed:\n${srv.stderr()}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        await new Promise((r) => setTimeout(r, 1000));
        const left = await memoryOf(pid);
        peak = left.peak;
        console.log(
          `server RSS: idle ${idle.rss.toFixed(0)} MB, ${WRITERS} writers connected ${held.toFixed(0)} MB, ` +
            `peak ${peak.toFixed(0)} MB, after they left ${left.rss.toFixed(0)} MB`,
        );
      } finally {
        await stopClean(srv);
      }
      assert.ok(peak < 256, `peak RSS ${peak.toFixed(0)} MB`);

      // Two of the new versions, byte for byte: which writer made each shows in its bytes.
      const created = [...srv.stderr().matchAll(/new version ([0-9a-f-]{36}) .* is complete and valid/g)].map(
        (x) => x[1],
      );
      assert.equal(created.length, WRITERS);
      const base = await readFile(image);
      for (const v of [created[0], created[WRITERS - 1]]) {
        const out = sb.path('forty.out');
        await sb.ok(['restore', v, out, '--force']);
        const got = await readFile(out);
        const k = (await indexOfPatch(got)) ?? -1;
        assert.ok(k >= 0, `version ${v} holds no writer's bytes`);
        const want = Buffer.from(base);
        for (let b = 0; b < WBLOCKS; b++) patch(k).copy(want, at(k, b));
        await writeFile(sb.path('want.out'), want);
        await assertSameBytes(sb.path('want.out'), got);
      }
      await sb.ok(['scrub', created[0]]);

      async function indexOfPatch(got: Buffer): Promise<number | undefined> {
        for (let k = 0; k < WRITERS; k++)
          if (got.subarray(at(k, 0), at(k, 0) + 4096).equals(patch(k))) return k;
        return undefined;
      }
    },
  );
});

describe('backy nbd -w: writers that share the modified-block buffers', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let uid: string;

  before(async () => {
    ({ sb, uid } = await servedImage(
      skip,
      { blocks: 12, blockSize: BS, seed: 'base', kinds: () => 'random' },
      { file: 'base.img', name: 'base' },
    ));
  });
  after(async () => sb?.remove());

  it(
    'eight nbdcopy writing at once (blocks stored early and written again) each make a version identical to what they wrote',
    { skip },
    async () => {
      const src = sb.path('src.img');
      await writeImage(src, {
        blocks: 12,
        blockSize: BS,
        seed: 'writers',
        kinds: (i) => (i % 5 ? 'random' : 'text'),
      });
      const srv = await startServer(sb, ['-w']);
      try {
        await Promise.all(
          Array.from({ length: 8 }, () => mustRun('nbdcopy', [src, srv.uri(uid)], CLIENT_MS)),
        );
        const peak = (await memoryOf(srv.child.pid!)).peak;
        assert.ok(peak < 256, `peak RSS ${peak.toFixed(0)} MB`);
      } finally {
        await stopClean(srv);
      }
      const created = [...srv.stderr().matchAll(/new version ([0-9a-f-]{36}) .* is complete and valid/g)].map(
        (x) => x[1],
      );
      assert.equal(created.length, 8, srv.stderr());
      for (const v of [created[0], created[7]]) {
        await sb.ok(['restore', v, sb.path('w8.out'), '--force']);
        await assertSameBytes(src, sb.path('w8.out'));
      }
    },
  );
});

describe('backy nbd --stall-timeout on the command line', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(async () => sb?.remove());

  it('refuses what is not a number of seconds with one line and exit 2; --help names the option', async () => {
    for (const bad of ['0', 'x', '-1', '1e3', '30s', '', '86401']) {
      const r = await sb.run(['nbd', '-u', sb.path('s.sock'), '--stall-timeout', bad]);
      assert.equal(r.code, 2, `'${bad}': ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /--stall-timeout '.*' is not a number of seconds/);
    }
    const help = await sb.ok(['nbd', '--help']);
    assert.match(help.stdout, /--stall-timeout <seconds>/);
  });
});
