/**
 * `backy nbd` against clients that never finish the handshake (a port scanner, a stuck
 * client): closed after --handshake-timeout with a log line naming the peer, at most
 * MAX_HANDSHAKES of them at once, nothing left held; real clients are served meanwhile and
 * afterwards, every copy compared byte for byte with the image. Timing is never asserted
 * tightly (the machine is noisy): "closed" means closed within a generous guard.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import type { BlockKind } from '../lib/image.js';
import {
  RawClient,
  closedWithin,
  logged,
  mustRun,
  nbdClientsMissing,
  run,
  servedImage,
  startServer,
  stopClean,
} from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { pgDatabase, pgSkipReason } from '../lib/pg.js';
import { MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER } from '../../src/nbd/server.js';
import * as P from '../../src/nbd/protocol.js';

const BS = 64 * 1024;
const BLOCKS = 24;
const TAIL = 700;
const kind = (i: number): BlockKind => (i % 4 === 1 ? 'zero' : i % 2 ? 'text' : 'random');
/** How long a server with --handshake-timeout 1 may take to close a stalled socket. */
const GUARD_MS = 20_000;

interface Raw {
  socket: Socket;
  /** Our end's TCP port (what the server's log names), kept: a closed socket forgets it. */
  localPort: number | undefined;
  received: number;
  closed: Promise<void>;
  isClosed: () => boolean;
}

/** A plain socket to the server that reads (and counts) whatever comes, and sends nothing itself. */
async function connectRaw(srv: ServerHandle, localAddress?: string): Promise<Raw> {
  const socket =
    srv.port === undefined
      ? connect(srv.socket)
      : connect({ port: srv.port, host: '127.0.0.1', localAddress });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => {});
  let closed = false;
  const raw: Raw = {
    socket,
    localPort: socket.localPort,
    received: 0,
    closed: new Promise((resolve) => socket.once('close', () => resolve())),
    isClosed: () => closed,
  };
  void raw.closed.then(() => (closed = true));
  socket.on('data', (b: Buffer) => (raw.received += b.length));
  return raw;
}

/** Resolves when the server has closed the socket; fails if it is still open after `ms`. */
/** Client flags, then the first `cut` bytes of an NBD_OPT_GO for `name`. */
function partialGo(name: string, cut: number): Buffer {
  const opt = P.encodeOption(P.OPT.GO, P.encodeInfoRequest(name, []));
  assert.ok(cut < opt.length);
  return Buffer.concat([P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES), opt.subarray(0, cut)]);
}

async function copyAndCompare(sb: Sandbox, srv: ServerHandle, uid: string, image: string, out: string) {
  await mustRun('nbdcopy', [srv.uri(uid), sb.path(out)]);
  await assertSameBytes(image, sb.path(out));
}

describe('backy nbd: stalled handshakes', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: BLOCKS,
      blockSize: BS,
      tail: TAIL,
      kinds: kind,
    }));
  });
  after(async () => sb?.remove());

  it(
    'closes a silent client and one stopped in the middle of an option after --handshake-timeout, naming each peer; others are served meanwhile and afterwards',
    { skip },
    async () => {
      const srv = await startServer(sb, ['--handshake-timeout', '1'], { tcp: true });
      try {
        const silent = await connectRaw(srv);
        const halfHeader = await connectRaw(srv);
        halfHeader.socket.write(partialGo(uid, P.OPTION_HEADER_SIZE / 2));
        const halfData = await connectRaw(srv);
        halfData.socket.write(partialGo(uid, P.OPTION_HEADER_SIZE + 10));
        const stalled = { silent, halfHeader, halfData };
        const allClosed = Promise.all(
          Object.entries(stalled).map(([what, r]) => closedWithin(r.closed, GUARD_MS, what)),
        );

        // Meanwhile, real clients get everything.
        const info = await mustRun('nbdinfo', [srv.uri(uid)]);
        assert.match(info.stdout, new RegExp(`export-size: ${BLOCKS * BS + TAIL}\\b`));
        await copyAndCompare(sb, srv, uid, image, 'meanwhile.out');

        await allClosed;
        for (const r of Object.values(stalled)) {
          assert.ok(r.received > 0, 'the server greeted it before closing');
          await logged(
            srv,
            new RegExp(
              `connection \\d+ \\(127\\.0\\.0\\.1:${r.localPort}\\): dropped: handshake not finished within 1 s`,
            ),
          );
        }

        // A full house of stalled sockets (from as many loopback addresses as it takes, each
        // peer having its own cap): each is closed by the timeout and gives its place back
        // (with the places still taken, these would be refused, and so would nbdcopy).
        const more = await Promise.all(
          Array.from({ length: MAX_HANDSHAKES }, (_, i) =>
            connectRaw(srv, `127.0.0.${2 + Math.floor(i / MAX_HANDSHAKES_PER_PEER)}`),
          ),
        );
        await Promise.all(more.map((r, i) => closedWithin(r.closed, GUARD_MS, `stalled socket ${i}`)));
        await logged(srv, /dropped: handshake not finished within 1 s/, 3 + MAX_HANDSHAKES);
        assert.doesNotMatch(srv.stderr(), /refused/);
        await copyAndCompare(sb, srv, uid, image, 'afterwards.out');
      } finally {
        await stopClean(srv);
      }
    },
  );

  it(
    `closes connections beyond ${MAX_HANDSHAKES} in the handshake at once; places free again when clients leave`,
    { skip },
    async () => {
      const srv = await startServer(sb, ['--handshake-timeout', '600']);
      try {
        // RawClient.connect waits for the greeting: the server has counted each of them.
        const held = await Promise.all(
          Array.from({ length: MAX_HANDSHAKES }, () => RawClient.connect(srv.socket)),
        );
        let heldClosed = 0;
        for (const c of held) c.socket.once('close', () => heldClosed++);
        const extra = await Promise.all(Array.from({ length: 3 }, () => connectRaw(srv)));
        await Promise.all(extra.map((r, i) => closedWithin(r.closed, GUARD_MS, `extra socket ${i}`)));
        for (const r of extra) assert.equal(r.received, 0, 'closed before the greeting');
        await logged(
          srv,
          new RegExp(`refused: ${MAX_HANDSHAKES} connections are already in the handshake`),
          3,
        );
        assert.equal(heldClosed, 0, 'the held connections stay (their timeout is 600 s)');
        // A real client is turned away too while all places are taken...
        assert.notEqual((await run('nbdinfo', [srv.uri(uid)])).code, 0);

        // ...and served once the stalled ones leave.
        for (const c of held) c.end();
        await logged(srv, /disconnected \(connection closed\)/, MAX_HANDSHAKES);
        await copyAndCompare(sb, srv, uid, image, 'after-full.out');
      } finally {
        await stopClean(srv);
      }
    },
  );
});

describe(
  'backy nbd -w: a handshake timed out while the export is being opened',
  { skip: pgSkipReason() },
  () => {
    const skip = nbdClientsMissing();
    let sb: Sandbox;
    let engine: string;
    let image: string;
    let uid: string;

    before(async () => {
      if (skip) return;
      engine = await pgDatabase('backy_nbd_handshake');
      ({ sb, image, uid } = await servedImage(
        undefined,
        { blocks: BLOCKS, blockSize: BS, tail: TAIL, kinds: kind },
        { engine },
      ));
    });
    after(async () => sb?.remove());

    it('releases its lease and removes the new version it had begun', { skip }, async () => {
      const srv = await startServer(sb, ['-w', '--handshake-timeout', '1']);
      const db = new pg.Client({ connectionString: engine });
      await db.connect();
      try {
        // Other sessions may still read versions, but creating one (the -w version) waits: a
        // real lock holds the server in the middle of opening the export.
        await db.query('BEGIN');
        await db.query('LOCK TABLE versions IN EXCLUSIVE MODE');
        const c = await RawClient.connect(srv.socket);
        c.send(P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
        c.send(P.encodeOption(P.OPT.GO, P.encodeInfoRequest(uid, [])));
        await closedWithin(c.closed(), GUARD_MS, 'the stalled client');
        // The server goes on opening and waits for the lock: the timeout struck in the middle.
        for (const deadline = Date.now() + GUARD_MS; ;) {
          const waiting = await db.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
          );
          if (waiting.rows[0].n >= 1) break;
          assert.ok(Date.now() < deadline, 'the server never waited for the lock');
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.doesNotMatch(srv.stderr(), /serving/, 'the export was not open yet');
        assert.ok(
          (await db.query('SELECT count(*)::int AS n FROM leases')).rows[0].n >= 1,
          'the open holds a lease',
        );
        await db.query('COMMIT');

        await logged(srv, /dropped: handshake not finished within 1 s/);
        await logged(srv, /no writes: no new version kept/);
        // The leases go last, after the line above: wait for them rather than race them.
        const held = async () =>
          (
            await db.query(
              "SELECT (SELECT count(*) FROM leases)::int AS leases, (SELECT count(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid WHERE l.locktype = 'advisory' AND d.datname = current_database())::int AS locks",
            )
          ).rows[0] as { leases: number; locks: number };
        for (const deadline = Date.now() + GUARD_MS; ;) {
          const h = await held();
          if (h.leases === 0 && h.locks === 0) break;
          assert.ok(Date.now() < deadline, `still held: ${h.leases} lease(s), ${h.locks} advisory lock(s)`);
          await new Promise((r) => setTimeout(r, 50));
        }
        const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
        assert.deepEqual(
          versions.map((v) => v.uid),
          [uid],
        );
        // And the server goes on serving.
        await copyAndCompare(sb, srv, uid, image, 'after-open.out');
      } finally {
        await db.end();
        await stopClean(srv);
      }
    });
  },
);

describe('backy nbd --handshake-timeout on the command line', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(async () => sb?.remove());

  it('refuses what is not a number of seconds with one line and exit 2; --help names the option', async () => {
    for (const bad of ['0', '0.0', 'x', '-1', '1e3', '30s', '', '86401']) {
      const r = await sb.run(['nbd', '-u', sb.path('s.sock'), '--handshake-timeout', bad]);
      assert.equal(r.code, 2, `'${bad}': ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /--handshake-timeout '.*' is not a number of seconds/);
    }
    const help = await sb.ok(['nbd', '--help']);
    assert.match(help.stdout, /--handshake-timeout <seconds>/);
  });
});
