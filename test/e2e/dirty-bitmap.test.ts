/**
 * qemu dirty bitmaps as change hints: a qcow2 image with a persistent bitmap, written through
 * qemu-io, served by the real qemu-nbd with `-B NAME` on a Unix socket. The README's cycle runs
 * as written; every restore is compared byte for byte with `qemu-img convert -O raw`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BIN, REPO, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { mustRun } from '../lib/nbd.js';
import { nbdServersMissing, qemuNbd } from '../lib/nbd-servers.js';
import type { Served } from '../lib/nbd-servers.js';

const MiB = 1 << 20;
const skip = nbdServersMissing() ?? false;

function oneErrorLine(stderr: string): string {
  const errors = stderr.split('\n').filter((l) => l.includes('ERROR:'));
  assert.equal(errors.length, 1, stderr);
  assert.ok(!/^\s+at /m.test(stderr), `stack trace:\n${stderr}`);
  return errors[0];
}

describe('backup --dirty-bitmap', { skip }, () => {
  const sandboxes: Sandbox[] = [];
  const servers: Served[] = [];
  after(async () => {
    for (const s of servers) await s.stop('SIGKILL');
    for (const sb of sandboxes) await sb.remove();
  });
  const sandbox = async (defaults: string) => {
    const sb = await Sandbox.create({ defaults: `block_size = ${MiB}\n${defaults}` });
    sandboxes.push(sb);
    return sb;
  };
  const serve = async (socket: string, img: string, extra: string[] = []) => {
    const s = await qemuNbd(socket, img, 'qcow2', extra);
    servers.push(s);
    return s;
  };
  const uri = (socket: string) => `nbd+unix:///?socket=${socket}`;
  const qemuIo = (img: string, ...cmds: string[]) =>
    mustRun('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), img]);
  const toRaw = async (img: string, out: string) => {
    await mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', img, out]);
    return out;
  };
  /** 32 MiB qcow2 holding data in blocks 0-3 and 20, with bitmap b1 started empty (unless `bitmap` is false). */
  const image = async (sb: Sandbox, bitmap = true) => {
    const img = sb.path('vm1.qcow2');
    await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', img, '32M']);
    await qemuIo(img, 'write -P 0x11 0 4M', 'write -P 0x22 20M 1M');
    if (bitmap) await mustRun('qemu-img', ['bitmap', '--add', img, 'b1']);
    return img;
  };

  let sb: Sandbox;
  before(async () => {
    sb = await sandbox('');
  });

  it("the README's cycle works as written: the incremental reads only the dirty blocks", async () => {
    const readme = await readFile(join(REPO, 'README.md'), 'utf8');
    const section = /^### qemu dirty bitmaps\n([\s\S]*?)\nFor a running VM/m.exec(readme)?.[1];
    assert.ok(section, 'README has a qemu dirty bitmaps section');
    const script = [...section.matchAll(/^ {4}(\S.*)$/gm)].map((m) => m[1]).join('\n');
    assert.match(script, /backup --dirty-bitmap b1 -f "\$full"/);
    const rsb = await sandbox('');
    await image(rsb, false); // the README adds the bitmap
    const bin = rsb.path('bin');
    await mkdir(bin);
    await writeFile(
      join(bin, 'backy'),
      `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(BIN)} -v -c ${JSON.stringify(rsb.config)} "$@"\n`,
    );
    await chmod(join(bin, 'backy'), 0o755);
    const run = spawnSync('bash', ['-c', `set -euo pipefail\n${script}`], {
      cwd: rsb.dir,
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
    assert.equal(run.status, 0, `README script failed:\n${run.stderr}`);
    // The full backup read the 5 data blocks; the qemu-io write dirtied block 8 only.
    assert.match(run.stderr, / 5 read, .* 27 sparse, 0 kept from base/);
    assert.match(run.stderr, / 1 read, .* 31 kept from base/);
    const versions = parseLsMachine((await rsb.ok(['-m', 'ls', 'vm1'])).stdout);
    assert.equal(versions.length, 2);
    assert.ok(versions.every((v) => v.valid));
    const incr = versions.sort((a, b) => a.date.localeCompare(b.date))[1];
    await rsb.ok(['restore', incr.uid, rsb.path('restored.img')]);
    await assertSameBytes(await toRaw(rsb.path('vm1.qcow2'), rsb.path('vm1.raw')), rsb.path('restored.img'));
  });

  it('reads only dirty extents and keeps the rest from the base; restores exactly', async () => {
    const img = await image(sb);
    const socket = sb.path('a.sock');
    let s = await serve(socket, img);
    const full = await sb.backup([uri(socket), 'vm@full']);
    await s.stop();
    // 64 KiB in block 1, 2 MiB over blocks 10-11, 4 KiB straddling blocks 25/26.
    await qemuIo(img, 'write -P 0x55 1M 64k', 'write -P 0x66 10M 2M', `write -P 0x77 ${26 * MiB - 2048} 4k`);
    s = await serve(socket, img, ['-B', 'b1']);
    const r = await sb.ok(['-v', 'backup', '--dirty-bitmap', 'b1', '-f', full, uri(socket), 'vm@incr']);
    await s.stop();
    assert.match(r.stderr, / 5 read, .* 27 kept from base/);
    assert.match(r.stderr, /hint check: 10 unhinted/);
    const uid = r.stdout.trim().split('\n').pop()!;
    await sb.ok(['restore', uid, sb.path('incr.img')]);
    await assertSameBytes(await toRaw(img, sb.path('incr.raw')), sb.path('incr.img'));
  });

  it('honours the bitmap: a change made while it was disabled keeps its old content (hint check off), and the hint check catches it (on)', async () => {
    const off = await sandbox('hint_check_blocks = 0');
    const img = await image(off);
    const socket = off.path('d.sock');
    let s = await serve(socket, img);
    const full = await off.backup([uri(socket), 'vm@full']);
    await s.stop();
    const before = await toRaw(img, off.path('before.raw'));
    await mustRun('qemu-img', ['bitmap', '--disable', img, 'b1']);
    await qemuIo(img, 'write -P 0x99 16M 1M'); // block 16: not tracked
    await mustRun('qemu-img', ['bitmap', '--enable', img, 'b1']);
    await qemuIo(img, 'write -P 0x55 5M 1M'); // block 5: tracked
    const afterRaw = await toRaw(img, off.path('after.raw'));
    s = await serve(socket, img, ['-B', 'b1']);
    const r = await off.ok(['-v', 'backup', '--dirty-bitmap', 'b1', '-f', full, uri(socket), 'vm@incr']);
    const uid = r.stdout.trim().split('\n').pop()!;
    assert.match(r.stderr, / 1 read, .* 31 kept from base/);
    // Expected: the image now, with block 16 as it was at the full backup.
    const expected = await readFile(afterRaw);
    (await readFile(before)).copy(expected, 16 * MiB, 16 * MiB, 17 * MiB);
    await off.ok(['restore', uid, off.path('incr.img')]);
    await assertSameBytes(off.path('incr.img'), expected);

    // With the check on for every unhinted block, the wrong bitmap fails the backup.
    await writeFile(
      off.path('strict.cfg'),
      (await readFile(off.config, 'utf8')).replace('hint_check_blocks = 0', 'hint_check_blocks = 1000'),
    );
    const bad = await off.run([
      '-c',
      off.path('strict.cfg'),
      'backup',
      '--dirty-bitmap',
      'b1',
      '-f',
      full,
      uri(socket),
      'vm@checked',
    ]);
    await s.stop();
    assert.equal(bad.code, 1);
    assert.match(oneErrorLine(bad.stderr), /hints are wrong: block 16 .*differs from base/);
  });

  it('a bitmap the export does not offer is one line, exit 1, before any version exists', async () => {
    const img = sb.path('vm1.qcow2');
    const socket = sb.path('w.sock');
    const s = await serve(socket, img, ['-B', 'b1']);
    const [full] = parseLsMachine((await sb.ok(['-m', 'ls', 'vm@full'])).stdout);
    const count = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).length;
    const r = await sb.run(['backup', '--dirty-bitmap', 'nosuch', '-f', full.uid, uri(socket), 'vm@x']);
    await s.stop();
    assert.equal(r.code, 1);
    const line = oneErrorLine(r.stderr);
    assert.match(line, /does not offer the dirty bitmap "nosuch" \(qemu:dirty-bitmap:nosuch\)/);
    assert.ok(line.includes(uri(socket)), line);
    assert.equal(parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).length, count);
  });

  it('usage: --dirty-bitmap needs an NBD source and -f, and excludes -r and --thin-delta', async () => {
    const uid = '00000000-0000-4000-8000-000000000000';
    const cases: [string[], RegExp][] = [
      [['--dirty-bitmap', 'b1', '-f', uid, sb.path('vm1.qcow2'), 'x'], /needs an NBD SOURCE/],
      [['--dirty-bitmap', 'b1', uri(sb.path('s')), 'x'], /needs -f UID/],
      [
        ['--dirty-bitmap', 'b1', '-r', 'h.json', '-f', uid, uri(sb.path('s')), 'x'],
        /-r and --dirty-bitmap exclude each other/,
      ],
      [
        ['--dirty-bitmap', 'b1', '--thin-delta', 'd.xml', '-f', uid, uri(sb.path('s')), 'x'],
        /--thin-delta and --dirty-bitmap exclude each other/,
      ],
    ];
    for (const [args, msg] of cases) {
      const r = await sb.run(['backup', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(oneErrorLine(r.stderr), msg);
    }
  });
});
