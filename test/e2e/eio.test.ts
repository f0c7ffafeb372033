/**
 * Real I/O errors while reading the source: the image is served through a small FUSE file
 * system (test/fixtures/eio-fs.py, python3-fusepy) whose reads of one 64 KiB range fail with
 * EIO in the kernel, as a bad sector would (this kernel has no device-mapper `error` target).
 * Needs root, /dev/fuse and python3-fusepy (.ci/run installs it); skipped with a message
 * otherwise. The backup fails with one clear line, its version stays incomplete and is
 * refused as a base, and the earlier version still restores byte for byte.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { REPO, Sandbox, assertSameBytes, parseLsMachine } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

const BS = 64 * 1024;
const PYTHON = '/usr/bin/python3';
const BAD_BLOCK = 16;

function unavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: FUSE mounts need root';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  try {
    execFileSync(PYTHON, ['-c', 'import fusepy'], { stdio: 'pipe' });
  } catch {
    return 'python3-fusepy missing (apt-get install python3-fusepy)';
  }
  return undefined;
}

describe('EIO from the source, for real (FUSE)', () => {
  let sb: Sandbox;
  let mnt: string;
  let fs: ChildProcess | undefined;
  let skip: string | undefined = unavailable();

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    if (skip) return;
    await writeImage(sb.path('disk.img'), { blocks: 32, blockSize: BS, kinds: () => 'random' });
    mnt = sb.path('mnt');
    await mkdir(mnt);
    fs = spawn(
      PYTHON,
      [
        join(REPO, 'test', 'fixtures', 'eio-fs.py'),
        sb.path('disk.img'),
        mnt,
        String(BAD_BLOCK * BS),
        String((BAD_BLOCK + 1) * BS),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const deadline = Date.now() + 10_000;
    while (!(await stat(join(mnt, 'disk.img')).catch(() => undefined))) {
      if (Date.now() > deadline || fs.exitCode !== null) {
        skip = 'the FUSE file system did not come up';
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  });

  after(async () => {
    if (fs) {
      try {
        execFileSync('umount', [mnt], { stdio: 'pipe' });
      } catch {
        fs.kill('SIGKILL');
      }
      if (fs.exitCode === null) await new Promise((r) => fs!.once('exit', r));
    }
    await sb?.remove();
  });

  it('a backup that meets a bad sector fails cleanly and damages nothing', async (t) => {
    if (skip) {
      t.skip(skip);
      return;
    }
    const good = await sb.backup([sb.path('disk.img'), 'vm@good']);
    const r = await sb.run(['backup', join(mnt, 'disk.img'), 'vm@eio']);
    assert.equal(r.code, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /^ {4}at /m);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('   ERROR: '));
    assert.equal(errors.length, 1, r.stderr);
    assert.match(errors[0], /cannot read .*disk\.img at offset 1048576: .*\(EIO\)$/);
    t.diagnostic(`backup of a source with a bad sector -> exit 1: ${errors[0].trim()}`);

    const versions = parseLsMachine((await sb.ok(['-m', 'ls'])).stdout);
    const eio = versions.find((v) => v.name === 'vm@eio');
    assert.ok(eio, 'the version was created');
    assert.equal(eio.valid, false, 'and is not valid');
    const f = await sb.run(['backup', '-f', eio.uid, sb.path('disk.img'), 'vm@x']);
    assert.equal(f.code, 1);
    assert.match(f.stderr, /incomplete and cannot be the base/);

    const out = sb.path('good.out');
    await sb.ok(['restore', good, out]);
    await assertSameBytes(sb.path('disk.img'), out);
  });
});
