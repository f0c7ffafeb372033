import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { hasherFor } from '../blocks/hash.js';
import type { HashFunction } from '../config/config.js';
import { BufferPool } from './buffer-pool.js';
import { CodecPool } from './codec-pool.js';

describe('CodecPool', () => {
  for (const fn of ['blake3', 'sha256'] as const) {
    it(`${fn}: matches the synchronous hash, for shared and ordinary buffers, many at once`, async () => {
      const pool = new CodecPool({ hashFunction: fn, compression: { codec: 'none' } }, 2);
      const sync = hasherFor(fn);
      try {
        const buffers = new BufferPool(3, 1 << 20);
        const inputs: Buffer[] = [Buffer.alloc(0), Buffer.from('abc')];
        for (let i = 0; i < 3; i++) {
          const b = await buffers.acquire();
          randomBytes(b.length).copy(b);
          inputs.push(b, b.subarray(1000, 5000));
        }
        for (let i = 0; i < 20; i++) inputs.push(randomBytes(1 + i * 7919));
        const digests = await Promise.all(inputs.map((b) => pool.hash(b)));
        assert.deepEqual(
          digests,
          inputs.map((b) => sync(b)),
        );
      } finally {
        await pool.close();
      }
    });
  }

  it("passes a worker's error on to the caller, for every call", async () => {
    // A hash function node:crypto does not know makes every call fail inside the worker.
    const pool = new CodecPool(
      { hashFunction: 'no-such-hash' as HashFunction, compression: { codec: 'none' } },
      1,
    );
    try {
      await assert.rejects(pool.hash(Buffer.from('abc')), /block codec failed: .*unknown hash function/i);
      await assert.rejects(pool.hash(Buffer.alloc(100_000)), /block codec failed/);
    } finally {
      await pool.close();
    }
  });

  it('rejects after close, and close rejects what is still pending', async () => {
    const pool = new CodecPool({ hashFunction: 'blake3', compression: { codec: 'none' } }, 1);
    const pending = assert.rejects(pool.hash(randomBytes(8 << 20)), /closed/);
    await pool.close();
    await pending;
    await assert.rejects(pool.hash(Buffer.from('x')), /closed/);
  });

  // A pool that is never closed must not keep the process alive (its workers are unref'd
  // while idle); a real child process shows it. Uses the build in dist/ (npm test builds).
  it('lets the process exit when idle, closed or not', async () => {
    const dist = resolve(
      dirname(fileURLToPath(import.meta.url)),
      '..',
      '..',
      'dist',
      'util',
      'codec-pool.js',
    );
    for (const close of [false, true]) {
      const code = `
        import { CodecPool } from ${JSON.stringify(pathToFileURL(dist).href)};
        const pool = new CodecPool({ hashFunction: 'blake3', compression: { codec: 'none' } }, 2);
        const d = await Promise.all([pool.hash(Buffer.alloc(1 << 20, 1)), pool.hash(Buffer.from('x'))]);
        ${close ? 'await pool.close();' : ''}
        console.log(d.join(' '));`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: 'pipe' });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b));
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const exit = await new Promise<number | null>((r) => child.on('close', (c) => r(c)));
      clearTimeout(timer);
      assert.equal(exit, 0, `child exited on its own (close=${close})`);
      assert.equal(
        out.trim(),
        `${hasherFor('blake3')(Buffer.alloc(1 << 20, 1))} ${hasherFor('blake3')(Buffer.from('x'))}`,
      );
    }
  });
});

describe('BufferPool', () => {
  it('hands out at most its count, waits, and takes views back whole', async () => {
    const pool = new BufferPool(2, 1024);
    const a = await pool.acquire();
    const b = await pool.acquire();
    assert.equal(a.length, 1024);
    assert.ok(a.buffer instanceof SharedArrayBuffer);
    let third: Buffer | undefined;
    const waiting = pool.acquire().then((x) => (third = x));
    await new Promise((r) => setImmediate(r));
    assert.equal(third, undefined, 'waits while both are in use');
    pool.release(a.subarray(10, 20));
    await waiting;
    assert.equal(third!.length, 1024, 'a released view comes back as the whole buffer');
    assert.equal(third!.buffer, a.buffer);
    pool.release(b);
    pool.release(third!);
  });

  it('keeps the room asked for around each buffer, and takes views back whole', async () => {
    const pool = new BufferPool(1, 1000, { before: 28, after: 16 });
    const a = await pool.acquire();
    assert.equal(a.length, 1000);
    assert.equal(a.byteOffset, 28);
    assert.equal(a.buffer.byteLength, 28 + 1000 + 16);
    pool.release(a.subarray(0, 10));
    const b = await pool.acquire();
    assert.equal(b.buffer, a.buffer);
    assert.equal(b.byteOffset, 28);
    assert.equal(b.length, 1000);
  });

  it('with() releases when the function throws', async () => {
    const pool = new BufferPool(1, 16);
    await assert.rejects(
      pool.with(async () => {
        throw new Error('boom');
      }),
      /boom/,
    );
    const again = await Promise.race([
      pool.acquire(),
      new Promise((r) => setTimeout(() => r('stuck'), 1000)),
    ]);
    assert.notEqual(again, 'stuck');
  });
});
