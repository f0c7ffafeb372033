/**
 * `backy nbd` against real clients: nbdinfo, nbdcopy, nbdfuse (libnbd-bin), qemu-img and
 * qemu-io (qemu-utils); hostile input through a raw client on the protocol module. Each test
 * starts its own server on a Unix socket in its sandbox and stops it with SIGTERM (exit 0).
 * Every image read back is compared byte for byte with what was backed up.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, stat, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import type { BlockKind } from '../lib/image.js';
import {
  RawClient,
  mustRun,
  nbdClientsMissing,
  run,
  servedImage,
  startServer,
  stopClean,
} from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { blockRows, objectPath } from '../lib/store.js';
import * as P from '../../src/nbd/protocol.js';
import { setEntry } from '../lib/tree-edit.js';

const BS = 64 * 1024;
const BLOCKS = 40;
const TAIL = 1000;
const SIZE = BLOCKS * BS + TAIL;
/** Sparse: every fifth block from 1, and 10..14 (one run). */
const kind = (i: number): BlockKind =>
  i % 5 === 1 || (i >= 10 && i < 15) ? 'zero' : i % 2 ? 'text' : 'random';

/** Bytes [offset, offset+length) of a file. */
async function slice(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

/** The image range [offset, offset+size) of an export, copied by qemu-img (raw driver's window). */
function rangeOpts(srv: ServerHandle, uid: string, offset: number, size: number): string {
  return `driver=raw,offset=${offset},size=${size},file.driver=nbd,file.path=${srv.socket},file.export=${uid}`;
}

describe('backy nbd with real clients', () => {
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
    'nbdinfo --list lists the valid versions; --map shows the sparse blocks as holes',
    { skip },
    async () => {
      const other = sb.path('other.img');
      await writeImage(other, { blocks: 3, blockSize: BS, seed: 'other', kinds: () => 'random' });
      const uid2 = await sb.backup([other, 'vm2']);
      const srv = await startServer(sb);
      try {
        const list = await mustRun('nbdinfo', ['--list', `nbd+unix:///?socket=${srv.socket}`]);
        assert.match(list.stdout, new RegExp(`export="${uid}":\\s+description: vm1\\s+export-size: ${SIZE}`));
        assert.match(list.stdout, new RegExp(`export="${uid2}":\\s+description: vm2`));
        assert.match(list.stdout, /base:allocation/);

        const map = await mustRun('nbdinfo', ['--map', srv.uri(uid)]);
        const got = map.stdout
          .trim()
          .split('\n')
          .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
        const want: number[][] = [];
        for (let i = 0; i <= BLOCKS; i++) {
          const len = i < BLOCKS ? BS : TAIL;
          const type = kind(i) === 'zero' ? 3 : 0;
          const prev = want[want.length - 1];
          if (prev && prev[2] === type) prev[1] += len;
          else want.push([i * BS, len, type]);
        }
        assert.deepEqual(got, want);

        const info = await mustRun('nbdinfo', [srv.uri(uid)]);
        assert.match(info.stdout, /is_read_only: true/);
        assert.match(info.stdout, /can_multi_conn: true/);
        assert.match(info.stdout, /block_size_maximum: 33554432/);
        // An unknown export is an error for the client, not a dropped server.
        const unknown = await run('nbdinfo', [srv.uri('00000000-0000-4000-8000-000000000000')]);
        assert.notEqual(unknown.code, 0);
      } finally {
        await stopClean(srv);
      }
      assert.match(srv.stderr(), /connection \d+ \(unix socket\): serving/);
    },
  );

  it(
    'nbdcopy and qemu-img convert copy the export byte for byte; qemu-img compare says identical',
    { skip },
    async () => {
      const srv = await startServer(sb);
      try {
        await mustRun('nbdcopy', [srv.uri(uid), sb.path('nbdcopy.out')]);
        await assertSameBytes(image, sb.path('nbdcopy.out'));
        await mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', srv.uri(uid), sb.path('qemu.out')]);
        // qemu rounds an NBD export's size up to whole 512-byte sectors (zeros past the end).
        const q = await readFile(sb.path('qemu.out'));
        assert.equal(q.length, Math.ceil(SIZE / 512) * 512);
        await assertSameBytes(image, q.subarray(0, SIZE));
        assert.ok(q.subarray(SIZE).every((b) => b === 0));
        const cmp = await mustRun('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, srv.uri(uid)]);
        assert.match(cmp.stdout, /Images are identical/);
        // qemu-img convert skipped the holes: its output is sparse where the version is.
        const st = await stat(sb.path('qemu.out'));
        assert.ok(st.blocks * 512 < SIZE - 10 * BS, `qemu-img wrote ${st.blocks * 512} bytes of ${SIZE}`);
        // Unaligned reads across block boundaries, through the block cache.
        const part = sb.path('part.out');
        await mustRun('qemu-img', [
          'convert',
          '-O',
          'raw',
          '--image-opts',
          rangeOpts(srv, uid, BS - 512, 3 * BS + 1024),
          part,
        ]);
        assert.deepEqual(await readFile(part), await slice(image, BS - 512, 3 * BS + 1024));
      } finally {
        await stopClean(srv);
      }
    },
  );

  it(
    'holds the served version under a lease: rm refuses it while a client is connected',
    { skip },
    async () => {
      const img = sb.path('leased.img');
      await writeImage(img, { blocks: 2, blockSize: BS, seed: 'leased', kinds: () => 'random' });
      const leased = await sb.backup([img, 'leased']);
      const srv = await startServer(sb);
      const c = await RawClient.connect(srv.socket);
      try {
        await c.open(leased);
        const rm = await sb.run(['rm', leased]);
        assert.equal(rm.code, 1, rm.stderr);
        assert.equal(
          rm.stderr
            .trim()
            .split('\n')
            .filter((l) => l.includes('ERROR')).length,
          1,
        );
        c.request(P.CMD.DISC, 0n, 0, 0);
        await c.closed();
        // The lease went with the connection.
        await sb.ok(['rm', leased]);
      } finally {
        c.end();
        await stopClean(srv);
      }
    },
  );

  it(
    'a damaged block fails its range with EIO in nbdcopy; the rest of the export still reads',
    { skip },
    async () => {
      const img = sb.path('damaged.img');
      await writeImage(img, { blocks: 8, blockSize: BS, seed: 'damaged', kinds: () => 'random' });
      const dUid = await sb.backup([img, 'damaged']);
      const bad = 3;
      const checksum = blockRows(sb, dUid)[bad].checksum!;
      const obj = objectPath(sb, checksum);
      const data = await readFile(obj);
      data[data.length - 1] ^= 0xff;
      await writeFile(obj, data);

      const srv = await startServer(sb);
      try {
        const copy = await run('nbdcopy', [srv.uri(dUid), sb.path('damaged.out')]);
        assert.notEqual(copy.code, 0);
        assert.match(copy.stderr, /Input\/output error/);
        // Before and after the bad block, through qemu-img on windows of the export.
        const before = sb.path('before.out');
        const afterOut = sb.path('after.out');
        await mustRun('qemu-img', [
          'convert',
          '-O',
          'raw',
          '--image-opts',
          rangeOpts(srv, dUid, 0, bad * BS),
          before,
        ]);
        await mustRun('qemu-img', [
          'convert',
          '-O',
          'raw',
          '--image-opts',
          rangeOpts(srv, dUid, (bad + 1) * BS, 4 * BS),
          afterOut,
        ]);
        assert.deepEqual(await readFile(before), await slice(img, 0, bad * BS));
        assert.deepEqual(await readFile(afterOut), await slice(img, (bad + 1) * BS, 4 * BS));
        // A read overlapping the bad block fails, never returns zeros.
        const c = await RawClient.connect(srv.socket);
        await c.open(dUid);
        c.request(P.CMD.READ, 1n, bad * BS - 100, 200);
        assert.equal((await c.reply()).error, P.NBD_ERR.EIO);
        c.request(P.CMD.READ, 2n, (bad - 1) * BS, 100);
        const ok = await c.reply((bad - 1) * BS, 100);
        assert.equal(ok.error, 0);
        assert.deepEqual(ok.data, await slice(img, (bad - 1) * BS, 100));
        c.end();
      } finally {
        await stopClean(srv);
      }
      assert.match(srv.stderr(), new RegExp(`block ${bad} of ${dUid}: .*damaged`));
      // Marked as restore would: the version is invalid now.
      const v = parseLsMachine((await sb.ok(['-m', 'ls', 'damaged'])).stdout)[0];
      assert.equal(v.valid, false);
    },
  );

  it(
    'a block missing from the block list fails its reads with EIO and marks the version invalid',
    { skip },
    async () => {
      const img = sb.path('gap.img');
      await writeImage(img, { blocks: 4, blockSize: BS, seed: 'gap', kinds: () => 'random' });
      const gUid = await sb.backup([img, 'gap']);
      await setEntry(sb.dbPath, gUid, 2, undefined);
      const srv = await startServer(sb);
      try {
        const c = await RawClient.connect(srv.socket);
        await c.open(gUid);
        c.request(P.CMD.READ, 1n, 2 * BS, 10);
        assert.equal((await c.reply(2 * BS, 10)).error, P.NBD_ERR.EIO);
        c.request(P.CMD.READ, 2n, BS, 10);
        const ok = await c.reply(BS, 10);
        assert.equal(ok.error, 0);
        assert.deepEqual(ok.data, await slice(img, BS, 10));
        c.end();
      } finally {
        await stopClean(srv);
      }
      const v = parseLsMachine((await sb.ok(['-m', 'ls', 'gap'])).stdout)[0];
      assert.equal(v.valid, false);
    },
  );

  it('serves old-style clients: NBD_OPT_EXPORT_NAME with padding, simple replies', { skip }, async () => {
    const srv = await startServer(sb);
    try {
      const c = await RawClient.connect(srv.socket);
      c.send(P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE)); // no NO_ZEROES: 124 bytes of padding
      c.send(P.encodeOption(P.OPT.EXPORT_NAME, Buffer.from(uid)));
      const reply = await c.reader.read(10 + P.EXPORT_NAME_PADDING);
      assert.equal(Number(reply.readBigUInt64BE(0)), SIZE);
      assert.ok(reply.readUInt16BE(8) & P.TFLAG.READ_ONLY);
      assert.ok(reply.subarray(10).every((b) => b === 0));
      // Without structured replies a read is a simple reply followed by the data, holes included.
      c.request(P.CMD.READ, 42n, BS - 100, BS + 200);
      const h = P.decodeReplyHeader(await c.reader.read(P.SIMPLE_REPLY_SIZE));
      assert.deepEqual(h, { kind: 'simple', error: 0, cookie: 42n });
      assert.deepEqual(await c.reader.read(BS + 200), await slice(image, BS - 100, BS + 200));
      c.request(P.CMD.READ, 43n, SIZE, 1);
      assert.deepEqual(P.decodeReplyHeader(await c.reader.read(P.SIMPLE_REPLY_SIZE)), {
        kind: 'simple',
        error: P.NBD_ERR.EINVAL,
        cookie: 43n,
      });
      c.request(P.CMD.DISC, 44n, 0, 0);
      await c.closed();

      // An unknown name with EXPORT_NAME: the only answer the protocol allows is a closed connection.
      const d = await RawClient.connect(srv.socket);
      d.send(P.encodeClientFlags(3));
      d.send(P.encodeOption(P.OPT.EXPORT_NAME, Buffer.from('nope')));
      await d.closed();
    } finally {
      await stopClean(srv);
    }
  });

  it('survives hostile clients and still serves a well-behaved one', { skip }, async () => {
    const srv = await startServer(sb);
    try {
      // Garbage instead of client flags (unknown flag bits): dropped.
      let c = await RawClient.connect(srv.socket);
      c.send(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
      await c.closed();

      // Bad option magic: dropped.
      c = await RawClient.connect(srv.socket);
      c.send(P.encodeClientFlags(3));
      c.send(Buffer.alloc(16, 0x41));
      await c.closed();

      // Unknown options, malformed ones and an oversized one: errors, and the connection goes on.
      c = await RawClient.connect(srv.socket);
      c.send(P.encodeClientFlags(3));
      c.send(P.encodeOption(99, Buffer.from('junk')));
      assert.equal((await c.optionReply()).type, P.REP.ERR_UNSUP);
      c.send(P.encodeOption(P.OPT.GO, Buffer.from([0, 0, 0, 200, 1])));
      assert.equal((await c.optionReply()).type, P.REP.ERR_INVALID);
      c.send(P.encodeOption(P.OPT.INFO, P.encodeInfoRequest('no-such-export', [])));
      assert.equal((await c.optionReply()).type, P.REP.ERR_UNKNOWN);
      c.send(P.encodeOption(P.OPT.SET_META_CONTEXT, P.encodeMetaContextRequest(uid, [P.BASE_ALLOCATION])));
      assert.equal((await c.optionReply()).type, P.REP.ERR_INVALID, 'meta context before structured replies');
      c.send(P.encodeOption(P.OPT.LIST, Buffer.alloc(3)));
      assert.equal((await c.optionReply()).type, P.REP.ERR_INVALID);
      c.send(P.encodeOption(P.OPT.STARTTLS));
      assert.ok(P.isOptionError((await c.optionReply()).type));
      const big = Buffer.alloc(P.OPTION_HEADER_SIZE);
      big.writeBigUInt64BE(P.IHAVEOPT, 0);
      big.writeUInt32BE(P.OPT.INFO, 8);
      big.writeUInt32BE(1 << 20, 12);
      c.send(big);
      c.send(Buffer.alloc(1 << 20));
      assert.equal((await c.optionReply()).type, P.REP.ERR_TOO_BIG);
      c.send(P.encodeOption(P.OPT.ABORT));
      assert.equal((await c.optionReply()).type, P.REP.ACK);
      await c.closed();

      // Transmission: unknown command, reads past the end, 64 MiB read and write, write to a
      // read-only export, block status past the end: each an error reply, in order.
      c = await RawClient.connect(srv.socket);
      const { size } = await c.open(uid);
      assert.equal(size, SIZE);
      c.request(77, 1n, 0, 0);
      assert.deepEqual([(await c.reply()).error], [P.NBD_ERR.EINVAL]);
      c.request(P.CMD.READ, 2n, SIZE - 10, 11);
      assert.equal((await c.reply()).error, P.NBD_ERR.EINVAL);
      c.request(P.CMD.READ, 3n, 2 ** 52, 4096);
      assert.equal((await c.reply()).error, P.NBD_ERR.EINVAL);
      c.request(P.CMD.READ, 4n, 0, 64 << 20);
      assert.notEqual((await c.reply()).error, 0);
      assert.equal(await c.write(5n, 0, Buffer.alloc(64 << 20)), P.NBD_ERR.EINVAL);
      assert.equal(await c.write(6n, 0, Buffer.alloc(512, 1)), P.NBD_ERR.EPERM);
      c.request(P.CMD.BLOCK_STATUS, 7n, SIZE, 4096);
      assert.equal((await c.reply()).error, P.NBD_ERR.EINVAL);
      c.request(P.CMD.READ, 8n, BS - 5, 10);
      const r = await c.reply(BS - 5, 10);
      assert.equal(r.cookie, 8n);
      assert.deepEqual(r.data, await slice(image, BS - 5, 10));
      // Then bad request magic: dropped.
      c.send(Buffer.alloc(P.REQUEST_SIZE, 0xee));
      await c.closed();

      // Disconnect in the middle of a request header and of a write's payload.
      c = await RawClient.connect(srv.socket);
      await c.open(uid);
      c.send(
        P.encodeRequest({ flags: 0, type: P.CMD.READ, cookie: 9n, offset: 0, length: 10 }).subarray(0, 10),
      );
      c.end();
      c = await RawClient.connect(srv.socket);
      await c.open(uid);
      c.request(P.CMD.WRITE, 10n, 0, 4096);
      c.send(Buffer.alloc(100));
      c.end();
      // Many at once, left hanging mid-handshake.
      const idle = await Promise.all(Array.from({ length: 20 }, () => RawClient.connect(srv.socket)));
      for (const i of idle) i.end();

      // A well-behaved client still reads the whole export correctly.
      await mustRun('nbdcopy', [srv.uri(uid), sb.path('after-hostile.out')]);
      await assertSameBytes(image, sb.path('after-hostile.out'));
    } finally {
      await stopClean(srv);
    }
  });
});

describe('backy nbd -w (copy-on-write)', () => {
  const skip = nbdClientsMissing();
  let sb: Sandbox;
  let image: string;
  let uid: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: 16,
      blockSize: BS,
      seed: 'cow',
      kinds: (i) => (i % 4 === 3 ? 'zero' : 'random'),
    }));
  });
  after(async () => sb?.remove());

  /** Writes through qemu-io and applies the same changes to a copy of the image. */
  async function writeBoth(srv: ServerHandle, expected: string): Promise<void> {
    await writeFile(expected, await readFile(image));
    const patch = randomBytesSeeded('patch', 3 * BS);
    await writeFile(sb.path('patch.bin'), patch);
    // Unaligned data across three blocks, zeroes over a whole block and part of another, a
    // pattern into a sparse block.
    await mustRun('qemu-io', [
      '-f',
      'raw',
      srv.uri(uid),
      '-c',
      `write -P 0x5a ${3 * BS + 100} 1000`,
      '-c',
      `write -z ${5 * BS} ${BS + 4096}`,
      '-c',
      `write -P 0xc3 ${BS - 10} ${2 * BS + 20}`,
      '-c',
      'flush',
      '-c',
      `read -P 0xc3 ${BS - 10} ${2 * BS + 20}`,
    ]);
    const fh = await open(expected, 'r+');
    try {
      await fh.write(Buffer.alloc(1000, 0x5a), 0, 1000, 3 * BS + 100);
      await fh.write(Buffer.alloc(BS + 4096, 0), 0, BS + 4096, 5 * BS);
      await fh.write(Buffer.alloc(2 * BS + 20, 0xc3), 0, 2 * BS + 20, BS - 10);
    } finally {
      await fh.close();
    }
  }

  it(
    'writes go to a new version that restores to exactly what was written; the original is unchanged',
    { skip },
    async () => {
      const srv = await startServer(sb, ['-w']);
      const expected = sb.path('expected.img');
      try {
        const info = await mustRun('nbdinfo', [srv.uri(uid)]);
        assert.match(info.stdout, /is_read_only: false/);
        assert.match(info.stdout, /can_multi_conn: false/);
        await writeBoth(srv, expected);
        // nbdcopy into the export too: a whole-export write through another real client.
      } finally {
        await stopClean(srv);
      }
      const m = /new version ([0-9a-f-]{36}) \(vm1\+nbd, base ([0-9a-f-]{36})\) is complete and valid/.exec(
        srv.stderr(),
      );
      assert.ok(m, srv.stderr());
      assert.equal(m[2], uid);
      const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
      const created = versions.find((v) => v.uid === m[1]);
      assert.ok(created?.valid);
      assert.equal(created.name, 'vm1+nbd');
      // nbdinfo's connection wrote nothing and left no version.
      assert.equal(versions.length, 2);
      assert.match(srv.stderr(), /no writes: no new version kept/);
      await sb.ok(['restore', m[1], sb.path('new.out')]);
      await assertSameBytes(expected, sb.path('new.out'));
      await sb.ok(['restore', uid, sb.path('orig.out')]);
      await assertSameBytes(image, sb.path('orig.out'));
      await sb.ok(['scrub', m[1]]);
    },
  );

  it('nbdcopy writes a whole image into a -w export', { skip }, async () => {
    const other = sb.path('other.img');
    await writeImage(other, {
      blocks: 16,
      blockSize: BS,
      seed: 'other',
      kinds: (i) => (i % 3 ? 'random' : 'zero'),
    });
    const srv = await startServer(sb, ['-w']);
    try {
      await mustRun('nbdcopy', [other, srv.uri(uid)]);
    } finally {
      await stopClean(srv);
    }
    const m = /new version ([0-9a-f-]{36}) .* is complete and valid/.exec(srv.stderr());
    assert.ok(m, srv.stderr());
    await sb.ok(['restore', m[1], sb.path('nbdcopy-new.out')]);
    await assertSameBytes(other, sb.path('nbdcopy-new.out'));
    await sb.ok(['restore', uid, sb.path('orig2.out')]);
    await assertSameBytes(image, sb.path('orig2.out'));
  });

  it('--discard throws the writes away and leaves no version', { skip }, async () => {
    const before = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
    const srv = await startServer(sb, ['-w', '--discard']);
    try {
      await writeBoth(srv, sb.path('discarded.img'));
    } finally {
      await stopClean(srv);
    }
    assert.match(srv.stderr(), /writes discarded/);
    const now = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
    assert.deepEqual(now, before);
    await sb.ok(['restore', uid, sb.path('orig3.out')]);
    await assertSameBytes(image, sb.path('orig3.out'));
    // What the discarded writes stored is garbage for cleanup; the original still restores.
    await sb.ok(['cleanup']);
    await sb.ok(['restore', uid, sb.path('orig4.out'), '--force']);
    await assertSameBytes(image, sb.path('orig4.out'));
  });
  // A client that leaves without NBD_CMD_DISC: nbd-lifecycle.test.ts.
});

describe('file-level restore: ext4 image through nbdfuse and a read-only loop mount', () => {
  let skip = nbdClientsMissing(['mkfs.ext4', 'mount', 'umount']);
  if (!skip && process.getuid?.() !== 0) skip = 'not root: loop mounts need root';
  if (!skip && !existsSync('/dev/fuse')) skip = 'no /dev/fuse';
  let sb: Sandbox;

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => sb?.remove());

  it('the files read back identical', { skip }, async () => {
    const tree = sb.path('tree');
    await mkdir(`${tree}/etc/deep/er`, { recursive: true });
    const files: Record<string, Buffer> = {
      'etc/hostname': Buffer.from('vm1\n'),
      'etc/deep/er/big.bin': randomBytesSeeded('big', 3 * 1024 * 1024 + 17),
      'small.txt': Buffer.from('hello from backy\n'),
    };
    for (const [name, data] of Object.entries(files)) await writeFile(`${tree}/${name}`, data);
    const img = sb.path('fs.img');
    await mustRun('mkfs.ext4', ['-q', '-F', '-d', tree, img, '16M']);
    const fsUid = await sb.backup([img, 'fs']);

    const srv = await startServer(sb);
    const fuseDir = sb.path('fuse');
    const mnt = sb.path('mnt');
    await mkdir(fuseDir);
    await mkdir(mnt);
    const fuse = spawn('nbdfuse', ['-r', fuseDir, srv.uri(fsUid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let fuseErr = '';
    fuse.stderr.on('data', (b: Buffer) => (fuseErr += b.toString()));
    let mounted = false;
    try {
      const deadline = Date.now() + 15_000;
      while (!(await stat(`${fuseDir}/nbd`).catch(() => undefined))) {
        if (Date.now() > deadline || fuse.exitCode !== null)
          throw new Error(`nbdfuse did not come up: ${fuseErr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await mustRun('mount', ['-o', 'loop,ro', '-t', 'ext4', `${fuseDir}/nbd`, mnt]);
      mounted = true;
      for (const [name, data] of Object.entries(files)) {
        assert.deepEqual(await readFile(`${mnt}/${name}`), data, name);
      }
    } finally {
      if (mounted) await mustRun('umount', [mnt]);
      await run('umount', [fuseDir]);
      if (fuse.exitCode === null) {
        const done = new Promise((r) => fuse.once('exit', r));
        fuse.kill('SIGTERM');
        await done;
      }
      await stopClean(srv);
    }
  });
});

describe('backy nbd command line', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create();
  });
  after(async () => sb?.remove());

  it('refuses bad options with one line and exit 2, an existing socket path with exit 1', async () => {
    for (const args of [['--discard'], ['-u', 's.sock', '-p', '1'], ['-p', '70000'], ['-p', 'x']]) {
      const r = await sb.run(['nbd', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    await writeFile(sb.path('taken'), '');
    const r = await sb.run(['nbd', '-u', sb.path('taken')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /ERROR: .*taken.* exists/);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  });
});
