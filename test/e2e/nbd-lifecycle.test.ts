/**
 * `backy nbd` connection and server lifecycle: writes of a client that leaves without
 * NBD_CMD_DISC (nbdfuse never sends it; a killed client cannot) are kept; a version removed
 * under a writer and a client resetting its connection are logged as what they are; one peer
 * cannot fill every handshake place; a socket left by a killed server is reused. Every
 * version read back is compared byte for byte with what was written.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import {
  GUARD_MS,
  RawClient,
  logged,
  mustRun,
  nbdClientsMissing,
  run,
  servedImage,
  startServer,
  stopClean,
} from '../lib/nbd.js';
import { MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER } from '../../src/nbd/server.js';
import * as P from '../../src/nbd/protocol.js';

const BS = 64 * 1024;
const BLOCKS = 16;

/** Writes `data` at `offset` of a file (the expected image, or nbdfuse's device file). */
async function pwrite(path: string, offset: number, data: Buffer, sync = false): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
}

describe('backy nbd -w: a client that leaves without NBD_CMD_DISC', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: BLOCKS,
      blockSize: BS,
      seed: 'disc',
      kinds: (i) => (i % 4 === 3 ? 'zero' : 'random'),
    }));
  });
  after(async () => sb?.remove());

  it(
    'keeps what it wrote, flushed or only acknowledged: the version is completed and valid',
    { skip },
    async () => {
      const srv = await startServer(sb, ['-w']);
      const flushed = randomBytesSeeded('flushed', BS + 300);
      const unflushed = Buffer.alloc(5000, 0x3c);
      try {
        const c = await RawClient.connect(srv.socket);
        await c.open(uid);
        assert.equal(await c.write(1n, BS - 100, flushed), 0);
        c.request(P.CMD.FLUSH, 2n, 0, 0);
        assert.equal((await c.reply()).error, 0);
        assert.equal(await c.write(3n, 7 * BS + 10, unflushed), 0);
        c.end(); // no NBD_CMD_DISC
        await logged(
          srv,
          /client left without NBD_CMD_DISC: new version [0-9a-f-]{36} .*is complete and valid/,
        );
      } finally {
        await stopClean(srv);
      }
      const m =
        /client left without NBD_CMD_DISC: new version ([0-9a-f-]{36}) \(vm1\+nbd, base ([0-9a-f-]{36})\)/.exec(
          srv.stderr(),
        );
      assert.ok(m, srv.stderr());
      assert.equal(m[2], uid);
      const created = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).find((v) => v.uid === m[1]);
      assert.ok(created?.valid, 'the new version is valid');
      const expected = sb.path('expected-raw.img');
      await writeFile(expected, await readFile(image));
      await pwrite(expected, BS - 100, flushed);
      await pwrite(expected, 7 * BS + 10, unflushed);
      await sb.ok(['restore', m[1], sb.path('raw.out')]);
      await assertSameBytes(expected, sb.path('raw.out'));
      await sb.ok(['restore', uid, sb.path('orig.out')]);
      await assertSameBytes(image, sb.path('orig.out'));
    },
  );

  it(
    'a write cut off mid-payload leaves each block old or new, never zeros; acknowledged writes stay',
    { skip },
    async () => {
      // Blocks of 1 MiB: a write's payload is applied 256 KiB at a time, so a block can be
      // half-received when the client goes (with 64 KiB blocks a piece spans whole blocks).
      const MB = 1024 * 1024;
      const big = await Sandbox.create({ defaults: `block_size = ${MB}` });
      try {
        const img = big.path('disk.img');
        await writeImage(img, { blocks: 8, blockSize: MB, seed: 'torn', kinds: () => 'random' });
        const base = await big.backup([img, 'vm1']);
        const srv = await startServer(big, ['-w']);
        const acked = randomBytesSeeded('acked', MB); // block 2, flushed (stored)
        const pending = Buffer.alloc(1000, 0x5a); // block 5, acknowledged, not flushed (in memory)
        const cut = randomBytesSeeded('cut', 4 * MB); // blocks 2..5; its payload stops in block 4
        try {
          const c = await RawClient.connect(srv.socket);
          await c.open(base);
          assert.equal(await c.write(1n, 2 * MB, acked), 0);
          c.request(P.CMD.FLUSH, 2n, 0, 0);
          assert.equal((await c.reply()).error, 0);
          assert.equal(await c.write(3n, 5 * MB + 10, pending), 0);
          c.request(P.CMD.WRITE, 4n, 2 * MB, cut.length);
          c.send(cut.subarray(0, 2 * MB + MB / 2)); // never acknowledged: the client goes
          await new Promise((r) => setTimeout(r, 500));
          c.end();
          await logged(
            srv,
            /client left without NBD_CMD_DISC: new version [0-9a-f-]{36} .*is complete and valid/,
          );
        } finally {
          await stopClean(srv);
        }
        const m = /client left without NBD_CMD_DISC: new version ([0-9a-f-]{36})/.exec(srv.stderr());
        assert.ok(m, srv.stderr());
        await big.ok(['restore', m[1], big.path('cut.out')]);
        const got = await readFile(big.path('cut.out'));
        const old = Buffer.from(await readFile(img));
        acked.copy(old, 2 * MB);
        pending.copy(old, 5 * MB + 10);
        const block = (b: Buffer, i: number) => b.subarray(i * MB, (i + 1) * MB);
        // Blocks whose part of the cut write arrived whole hold the new bytes (2, 3); block 4 got
        // half of its part and keeps what it held (the write was never acknowledged); block 5 got
        // nothing of it and keeps the acknowledged, unflushed write.
        assert.ok(block(got, 2).equals(block(cut, 0)), 'block 2: new');
        assert.ok(block(got, 3).equals(block(cut, 1)), 'block 3: new');
        assert.ok(block(got, 4).equals(block(old, 4)), 'block 4: old, not new bytes and zeros');
        assert.ok(block(got, 5).equals(block(old, 5)), 'block 5: the acknowledged write');
        for (const i of [0, 1, 6, 7]) assert.ok(block(got, i).equals(block(old, i)), `block ${i} untouched`);
      } finally {
        await big.remove();
      }
    },
  );

  it('--discard still throws the writes away', { skip }, async () => {
    const before = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
    const srv = await startServer(sb, ['-w', '--discard']);
    try {
      const c = await RawClient.connect(srv.socket);
      await c.open(uid);
      assert.equal(await c.write(1n, 0, Buffer.alloc(4096, 7)), 0);
      c.end();
      await logged(srv, /writes discarded: version [0-9a-f-]+ removed/);
    } finally {
      await stopClean(srv);
    }
    const now = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
    assert.deepEqual(now, before);
  });

  it(
    'rm --force of the new version under a writer: the log says it was removed, once, and no version is left',
    { skip },
    async () => {
      const before = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
      const srv = await startServer(sb, ['-w']);
      try {
        const c = await RawClient.connect(srv.socket);
        await c.open(uid);
        assert.equal(await c.write(1n, 0, Buffer.alloc(4096, 9)), 0);
        const newUid = (await logged(srv, /copy-on-write into new version ([0-9a-f-]{36})/))[1];
        await sb.ok(['rm', '--force', newUid]);
        for (let i = 0; i < 3; i++) {
          c.request(P.CMD.WRITE, BigInt(10 + i), (2 + i * 3) * BS, BS);
          c.send(Buffer.alloc(BS, 1));
          c.request(P.CMD.FLUSH, BigInt(20 + i), 0, 0);
          // The write may land in memory (acknowledged); the flush must fail.
          await c.reply();
          assert.equal((await c.reply()).error, P.NBD_ERR.EIO);
        }
        c.request(P.CMD.DISC, 99n, 0, 0);
        await c.closed();
        await logged(srv, /was removed \(rm --force\) while in use: nothing kept/);
      } finally {
        await stopClean(srv);
      }
      const err = srv.stderr();
      assert.doesNotMatch(err, /FOREIGN KEY|constraint/i);
      assert.equal(err.match(/was removed \(rm --force\): writes to it fail from now on/g)?.length, 1, err);
      const now = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
      assert.deepEqual(now, before);
    },
  );

  it(
    'clients resetting their connection while replies are queued are logged as disconnects, not internal errors',
    { skip },
    async () => {
      // TCP: only a TCP socket can be reset (RST) rather than closed.
      const srv = await startServer(sb, [], { tcp: true });
      const n = 6;
      try {
        const clients = await Promise.all(
          Array.from({ length: n }, () => RawClient.connect({ port: srv.port!, host: '127.0.0.1' })),
        );
        for (const c of clients) {
          await c.open(uid);
          // Replies far larger than the socket buffers, never read: the server waits to drain.
          for (let i = 0; i < 16; i++) c.request(P.CMD.READ, BigInt(i), 0, BLOCKS * BS);
        }
        await new Promise((r) => setTimeout(r, 500));
        for (const c of clients) c.socket.resetAndDestroy();
        const deadline = Date.now() + GUARD_MS;
        while ((srv.stderr().match(/: disconnected/g)?.length ?? 0) < n) {
          assert.ok(Date.now() < deadline, srv.stderr());
          await new Promise((r) => setTimeout(r, 50));
        }
        await mustRun('nbdcopy', [srv.uri(uid), sb.path('after-reset.out')]);
        await assertSameBytes(image, sb.path('after-reset.out'));
      } finally {
        await stopClean(srv);
      }
      assert.doesNotMatch(srv.stderr(), /ERROR/);
    },
  );
});

describe('backy nbd -w through nbdfuse, written directly', () => {
  let skip = nbdClientsMissing();
  if (!skip && process.getuid?.() !== 0) skip = 'not root: FUSE mounts need root here';
  if (!skip && !existsSync('/dev/fuse')) skip = 'no /dev/fuse';
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: BLOCKS,
      blockSize: BS,
      seed: 'fuse',
      kinds: () => 'random',
    }));
  });
  after(async () => sb?.remove());

  it('a write into the nbdfuse device, then unmount: the new version restores to it', { skip }, async () => {
    const srv = await startServer(sb, ['-w']);
    const fuseDir = sb.path('fuse');
    await mkdir(fuseDir);
    const fuse = spawn('nbdfuse', [fuseDir, srv.uri(uid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let fuseErr = '';
    fuse.stderr.on('data', (b: Buffer) => (fuseErr += b.toString()));
    const exited = new Promise((r) => fuse.once('exit', r));
    const patch = randomBytesSeeded('through-fuse', 3 * BS + 123);
    const at = 2 * BS + 77;
    try {
      const deadline = Date.now() + 15_000;
      while (!(await stat(`${fuseDir}/nbd`).catch(() => undefined))) {
        if (Date.now() > deadline || fuse.exitCode !== null)
          throw new Error(`nbdfuse did not come up: ${fuseErr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await pwrite(`${fuseDir}/nbd`, at, patch, true);
      await mustRun('umount', [fuseDir]);
      await exited;
      await logged(srv, /new version [0-9a-f-]{36} .*is complete and valid/);
    } finally {
      await run('umount', [fuseDir]);
      if (fuse.exitCode === null) {
        fuse.kill('SIGTERM');
        await exited;
      }
      await stopClean(srv);
    }
    const m = /new version ([0-9a-f-]{36}) \(vm1\+nbd, base [0-9a-f-]{36}\) is complete and valid/.exec(
      srv.stderr(),
    );
    assert.ok(m, srv.stderr());
    const expected = sb.path('expected.img');
    await writeFile(expected, await readFile(image));
    await pwrite(expected, at, patch);
    await sb.ok(['restore', m[1], sb.path('fuse.out')]);
    await assertSameBytes(expected, sb.path('fuse.out'));
  });
});

describe('backy nbd -w through nbdfuse and a read-write loop mount (the README recipe)', () => {
  let skip = nbdClientsMissing(['mkfs.ext4', 'mount', 'umount', 'debugfs']);
  if (!skip && process.getuid?.() !== 0) skip = 'not root: loop mounts need root';
  if (!skip && !existsSync('/dev/fuse')) skip = 'no /dev/fuse';
  let sb: Sandbox;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  it('mount, write a file, unmount: the new version holds the file', { skip }, async () => {
    const tree = sb.path('tree');
    await mkdir(tree);
    await writeFile(`${tree}/old.txt`, 'old\n');
    const img = sb.path('fs.img');
    await mustRun('mkfs.ext4', ['-q', '-F', '-d', tree, img, '16M']);
    const fsUid = await sb.backup([img, 'fs']);
    const srv = await startServer(sb, ['-w']);
    const fuseDir = sb.path('fuse');
    const mnt = sb.path('mnt');
    await mkdir(fuseDir);
    await mkdir(mnt);
    const fuse = spawn('nbdfuse', [fuseDir, srv.uri(fsUid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let fuseErr = '';
    fuse.stderr.on('data', (b: Buffer) => (fuseErr += b.toString()));
    const exited = new Promise((r) => fuse.once('exit', r));
    const content = randomBytesSeeded('new-file', 300_000 + 17);
    let mounted = false;
    try {
      const deadline = Date.now() + 15_000;
      while (!(await stat(`${fuseDir}/nbd`).catch(() => undefined))) {
        if (Date.now() > deadline || fuse.exitCode !== null)
          throw new Error(`nbdfuse did not come up: ${fuseErr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await mustRun('mount', ['-o', 'loop', '-t', 'ext4', `${fuseDir}/nbd`, mnt]);
      mounted = true;
      await writeFile(`${mnt}/new.bin`, content);
      await mustRun('umount', [mnt]);
      mounted = false;
      await mustRun('umount', [fuseDir]);
      await exited;
      await logged(srv, /new version [0-9a-f-]{36} .*is complete and valid/);
    } finally {
      if (mounted) await run('umount', [mnt]);
      await run('umount', [fuseDir]);
      if (fuse.exitCode === null) {
        fuse.kill('SIGTERM');
        await exited;
      }
      await stopClean(srv);
    }
    const m = /new version ([0-9a-f-]{36}) \(fs\+nbd, base [0-9a-f-]{36}\) is complete and valid/.exec(
      srv.stderr(),
    );
    assert.ok(m, srv.stderr());
    const restored = sb.path('fs.out');
    await sb.ok(['restore', m[1], restored]);
    await mustRun('debugfs', ['-R', `dump /new.bin ${sb.path('new.bin')}`, restored]);
    assert.deepEqual(await readFile(sb.path('new.bin')), content);
    await mustRun('debugfs', ['-R', `dump /old.txt ${sb.path('old.txt')}`, restored]);
    assert.equal(await readFile(sb.path('old.txt'), 'utf8'), 'old\n');
  });
});

describe('backy nbd: handshake places per peer', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: 4,
      blockSize: BS,
      seed: 'peer',
      kinds: () => 'random',
    }));
  });
  after(async () => sb?.remove());

  it(
    `one address holding idle sockets takes at most ${MAX_HANDSHAKES_PER_PEER} places: a client from another address is served`,
    { skip },
    async () => {
      const srv = await startServer(sb, ['--handshake-timeout', '600'], { tcp: true });
      const idle: Socket[] = [];
      try {
        // As many idle sockets as there are places in all, all from 127.0.0.1.
        for (let i = 0; i < MAX_HANDSHAKES; i++) {
          const s = connect({ port: srv.port!, host: '127.0.0.1', localAddress: '127.0.0.1' });
          s.on('error', () => {});
          idle.push(s);
        }
        await logged(
          srv,
          new RegExp(
            `refused: ${MAX_HANDSHAKES_PER_PEER} connections from 127\\.0\\.0\\.1 are already in the handshake`,
          ),
        );
        // Another loopback address does the whole handshake and reads the version.
        const c = await RawClient.connect({ port: srv.port!, host: '127.0.0.1', localAddress: '127.0.0.2' });
        const { size } = await c.open(uid);
        assert.equal(size, 4 * BS);
        c.request(P.CMD.READ, 1n, 0, 4 * BS);
        const r = await c.reply(0, 4 * BS);
        assert.equal(r.error, 0);
        await assertSameBytes(image, r.data);
        c.request(P.CMD.DISC, 2n, 0, 0);
        await c.closed();
        assert.match(srv.stderr(), /connection \d+ \(127\.0\.0\.2:\d+\): serving/);
      } finally {
        for (const s of idle) s.destroy();
        await stopClean(srv);
      }
    },
  );
});

describe('backy nbd -u: a socket left by a killed server', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: 4,
      blockSize: BS,
      seed: 'stale',
      kinds: () => 'random',
    }));
  });
  after(async () => sb?.remove());

  it('is removed and rebound after kill -9; a live server keeps its socket', { skip }, async () => {
    const path = sb.path('stale.sock');
    const first = await startServer(sb, [], { socket: path });
    // A second server on the socket of a live one is refused, and the first one still serves.
    const twice = await sb.run(['nbd', '-u', path]);
    assert.equal(twice.code, 1, twice.stderr);
    assert.match(twice.stderr, /ERROR: .*stale\.sock.*: a server is already listening on it/);
    assert.equal(twice.stderr.match(/ERROR/g)?.length, 1, twice.stderr);
    assert.doesNotMatch(twice.stderr, /\n\s+at /);
    await mustRun('nbdcopy', [first.uri(uid), sb.path('first.out')]);
    await assertSameBytes(image, sb.path('first.out'));

    first.child.kill('SIGKILL');
    assert.equal(await first.stop(), null);
    assert.ok(existsSync(path), 'kill -9 leaves the socket file');
    const second = await startServer(sb, [], { socket: path });
    try {
      assert.match(second.stderr(), /removed the stale socket .*stale\.sock/);
      await mustRun('nbdcopy', [second.uri(uid), sb.path('second.out')]);
      await assertSameBytes(image, sb.path('second.out'));
    } finally {
      await stopClean(second);
    }
  });
});
