/**
 * NBD URIs as backup and deep-scrub sources, against real servers: qemu-nbd serving qcow2 and
 * raw files (Unix socket and loopback TCP), nbdkit (its log filter records every request the
 * server got; its error and delay filters make real failures), and backy's own `backy nbd`.
 * Every restore is compared byte for byte with `qemu-img convert -O raw` of the image or with
 * the file served.
 */
import assert from 'node:assert/strict';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded } from '../lib/image.js';
import { mustRun, startServer } from '../lib/nbd.js';
import { freePort, nbdServersMissing, nbdkit, qemuNbd, qemuNbdTcp } from '../lib/nbd-servers.js';
import type { Served } from '../lib/nbd-servers.js';

const MiB = 1 << 20;
const BS = MiB;
const skip = nbdServersMissing() ?? false;

/** The one ERROR line of a failed command, checked to be the only line that is not INFO. */
function oneErrorLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.trim() !== '' && !l.includes('INFO:'));
  const errors = lines.filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, stderr);
  assert.ok(!/^\s+at /m.test(stderr), `stack trace:\n${stderr}`);
  return errors[0];
}

function unixUri(socket: string, exportName = ''): string {
  return `nbd+unix:///${exportName}?socket=${socket}`;
}

/** nbdkit log filter: the bytes of every Read the server was asked for. */
async function bytesReadInLog(log: string): Promise<number> {
  let total = 0;
  for (const m of (await readFile(log, 'utf8')).matchAll(
    / Read id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)/g,
  ))
    total += Number(m[1]);
  return total;
}

describe('NBD URIs as sources', { skip }, () => {
  let sb: Sandbox;
  const servers: Served[] = [];
  const start = async (p: Promise<Served>) => {
    const s = await p;
    servers.push(s);
    return s;
  };
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(async () => {
    for (const s of servers) await s.stop('SIGKILL');
    await sb?.remove();
  });

  /** A 64 MiB qcow2: 1 MiB at 0, 2 MiB across blocks 20-22, 8 MiB written as zeros (allocated, zero-flagged). */
  async function sparseQcow2(name: string): Promise<string> {
    const img = sb.path(name);
    await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M']);
    await mustRun('qemu-io', [
      '-f',
      'qcow2',
      '-c',
      'write -P 0x11 0 1M',
      '-c',
      `write -P 0x22 ${20 * MiB + 512 * 1024} 2M`,
      '-c',
      'write -z 40M 8M',
      img,
    ]);
    return img;
  }

  async function raw(qcow2: string, name: string): Promise<string> {
    const out = sb.path(name);
    await mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, out]);
    return out;
  }

  it('backs up a sparse qcow2 from nbd+unix:// reading only allocated blocks; restores it exactly; deep scrub over NBD', async () => {
    const img = await sparseQcow2('sparse.qcow2');
    const socket = sb.path('q1.sock');
    await start(qemuNbd(socket, img, 'qcow2'));
    const r = await sb.ok(['-v', 'backup', unixUri(socket), 'vm@1']);
    const uid = r.stdout.trim().split('\n').pop()!;
    // Blocks 0, 20, 21, 22 hold data; the holes and the zero-flagged 8 MiB are never read.
    assert.match(r.stderr, / 4 read, .* 60 sparse, 0 kept from base/);
    await sb.ok(['restore', uid, sb.path('sparse.restored')]);
    await assertSameBytes(await raw(img, 'sparse.raw'), sb.path('sparse.restored'));
    const scrub = await sb.run(['scrub', '-s', unixUri(socket), uid]);
    assert.equal(scrub.code, 0, scrub.stderr);
  });

  it('reads nbd:// over TCP on loopback, with an export name', async () => {
    const file = sb.path('tcp.raw');
    await writeFile(file, '');
    await truncate(file, 16 * MiB);
    await writeFile(file, randomBytesSeeded('tcp', 3 * MiB + 4096), { flag: 'r+' });
    const port = await freePort();
    await start(qemuNbdTcp(port, file, 'raw', ['-x', 'disk']));
    const r = await sb.ok(['-v', 'backup', `nbd://127.0.0.1:${port}/disk`, 'tcp@1']);
    const uid = r.stdout.trim().split('\n').pop()!;
    assert.match(r.stderr, / 4 read, .* 12 sparse/);
    await sb.ok(['restore', uid, sb.path('tcp.restored')]);
    await assertSameBytes(file, sb.path('tcp.restored'));
  });

  it('never asks the server for a hole (nbdkit log filter), and keeps several reads in flight', async () => {
    const file = sb.path('kit.raw');
    await writeFile(file, '');
    await truncate(file, 32 * MiB);
    const fh = await import('node:fs/promises').then((m) => m.open(file, 'r+'));
    for (const idx of [2, 3, 4, 5, 6, 7, 8, 9, 30])
      await fh.write(randomBytesSeeded(`k${idx}`, BS), 0, BS, idx * BS);
    await fh.close();
    const socket = sb.path('kit.sock');
    const log = sb.path('kit.log');
    // Each read takes 200 ms in the server, so reads overlap in its log when pipelined.
    const kit = await start(
      nbdkit(socket, ['--filter=log', '--filter=delay', 'file', file, `logfile=${log}`, 'rdelay=200ms']),
    );
    const r = await sb.ok(['-v', 'backup', unixUri(socket), 'kit@1']);
    await kit.stop();
    assert.match(r.stderr, / 9 read, .* 23 sparse/);
    assert.equal(await bytesReadInLog(log), 9 * BS);
    // Pipelined: some read starts before an earlier one has returned.
    const events = [...(await readFile(log, 'utf8')).matchAll(/(\.\.\.)?Read id=(\d+)/g)];
    let open = 0;
    let most = 0;
    for (const e of events) {
      open += e[1] ? -1 : 1;
      most = Math.max(most, open);
    }
    assert.ok(most >= 2, `at most ${most} read in flight`);
    const uid = r.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid, sb.path('kit.restored')]);
    await assertSameBytes(file, sb.path('kit.restored'));
  });

  it("splits reads at the server's maximum request size", async () => {
    const file = sb.path('small-max.raw');
    await writeFile(file, randomBytesSeeded('small-max', 3 * MiB + 8192));
    const socket = sb.path('small-max.sock');
    const log = sb.path('small-max.log');
    // The server advertises 256 KiB as its maximum and fails any larger request (EINVAL).
    await start(
      nbdkit(socket, [
        '--filter=log',
        '--filter=blocksize-policy',
        'file',
        file,
        `logfile=${log}`,
        'blocksize-maximum=256K',
        'blocksize-error-policy=error',
      ]),
    );
    const r = await sb.ok(['backup', unixUri(socket), 'small-max@1']);
    const uid = r.stdout.trim().split('\n').pop()!;
    const counts = [
      ...(await readFile(log, 'utf8')).matchAll(/ Read id=\d+ offset=0x[0-9a-f]+ count=(0x[0-9a-f]+)/g),
    ].map((m) => Number(m[1]));
    assert.ok(counts.length >= 13 && counts.every((c) => c <= 256 * 1024), counts.join(' '));
    await sb.ok(['restore', uid, sb.path('small-max.restored')]);
    await assertSameBytes(file, sb.path('small-max.restored'));
  });

  it('works with a server without structured replies (nbdkit --no-sr): simple replies, no holes known', async () => {
    const file = sb.path('nosr.raw');
    await writeFile(file, '');
    await truncate(file, 8 * MiB);
    await writeFile(file, randomBytesSeeded('nosr', 2 * MiB + 4096), { flag: 'r+' });
    const socket = sb.path('nosr.sock');
    await start(nbdkit(socket, ['--no-sr', 'file', file]));
    // Without structured replies there is no base:allocation: every block is read, and the
    // zero ones are found sparse by looking at them.
    const r = await sb.ok(['-v', 'backup', unixUri(socket), 'nosr@1']);
    assert.match(r.stderr, / 8 read, .* 5 sparse/);
    const uid = r.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid, sb.path('nosr.restored')]);
    await assertSameBytes(file, sb.path('nosr.restored'));
  });

  it('copies a version served by backy nbd (round trip)', async () => {
    const file = sb.path('own.raw');
    await writeFile(file, '');
    await truncate(file, 12 * MiB);
    await writeFile(file, randomBytesSeeded('own', 5 * MiB), { flag: 'r+' });
    const uid = await sb.backup([file, 'own@1']);
    const server = await startServer(sb);
    try {
      const r = await sb.ok(['-v', 'backup', server.uri(uid), 'own@copy']);
      assert.match(r.stderr, / 5 read, .* 7 sparse/);
      const copy = r.stdout.trim().split('\n').pop()!;
      await sb.ok(['restore', copy, sb.path('own.restored')]);
      await assertSameBytes(file, sb.path('own.restored'));
    } finally {
      assert.equal(await server.stop(), 0);
    }
  });

  it('an export the server refuses is one line naming the URI, exit 1, and no version', async () => {
    const img = await sparseQcow2('refuse.qcow2');
    const socket = sb.path('refuse.sock');
    await start(qemuNbd(socket, img, 'qcow2', ['-x', 'disk']));
    const before = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).length;
    const r = await sb.run(['backup', unixUri(socket, 'other'), 'refused@1']);
    assert.equal(r.code, 1);
    const line = oneErrorLine(r.stderr);
    assert.ok(line.includes(unixUri(socket, 'other')), line);
    assert.match(line, /refused export "other"/);
    assert.equal(parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).length, before);
  });

  it('a read error from the server is one line; the version is left incomplete', async () => {
    const socket = sb.path('err.sock');
    const file = sb.path('err.raw');
    await writeFile(file, randomBytesSeeded('err', 8 * MiB));
    await start(nbdkit(socket, ['--filter=error', 'file', file, 'error-pread=EIO', 'error-pread-rate=1']));
    const r = await sb.run(['backup', unixUri(socket), 'err@1']);
    assert.equal(r.code, 1);
    const line = oneErrorLine(r.stderr);
    assert.match(line, /failed a read at offset \d+ .*EIO/);
    assert.ok(line.includes(unixUri(socket)), line);
    const v = parseLsMachine((await sb.ok(['-m', 'ls', 'err@1'])).stdout);
    assert.equal(v.length, 1);
    assert.equal(v[0].valid, false);
  });

  it('a server that disconnects mid-backup is one line; the version is left incomplete', async () => {
    const socket = sb.path('drop.sock');
    const file = sb.path('drop.raw');
    // 32 blocks read at 1 s each, at most 8 in flight: at least 4 s, so the kill at 1.5 s lands
    // mid-backup however fast the machine is.
    await writeFile(file, randomBytesSeeded('drop', 128 * MiB));
    const kit = await start(nbdkit(socket, ['--filter=delay', 'file', file, 'rdelay=1000ms']));
    const running = sb.run(['backup', unixUri(socket), 'drop@1']);
    await new Promise((r) => setTimeout(r, 1500));
    await kit.stop('SIGKILL');
    const r = await running;
    assert.equal(r.code, 1);
    const line = oneErrorLine(r.stderr);
    assert.match(line, /closed the connection/);
    assert.ok(line.includes(unixUri(socket)), line);
    const v = parseLsMachine((await sb.ok(['-m', 'ls', 'drop@1'])).stdout);
    assert.equal(v.length, 1);
    assert.equal(v[0].valid, false);
  });

  it('an unreachable server or a malformed URI is one line', async () => {
    const r = await sb.run(['backup', unixUri(sb.path('nobody.sock')), 'none@1']);
    assert.equal(r.code, 1);
    assert.match(oneErrorLine(r.stderr), /cannot connect to NBD source .*nobody\.sock.*ENOENT/);
    const bad = await sb.run(['backup', 'nbd+unix:///disk', 'none@1']);
    assert.equal(bad.code, 1);
    assert.match(oneErrorLine(bad.stderr), /needs \?socket=PATH/);
  });
});
