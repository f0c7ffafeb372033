/**
 * The --json contract: every command run with --json prints exactly one JSON document on
 * stdout, every key (at any depth) is snake_case, dates are `date` (ISO) with `date_us`.
 * Commands that write data to stdout (restore -, export -) print no document there.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, assertSameBytes } from '../lib/cli.js';
import type { RunOptions } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

const BS = 64 * 1024;

/** Every key of a JSON value, recursively, with its path. */
function keysOf(v: unknown, at = '$'): string[] {
  if (Array.isArray(v)) return v.flatMap((x, i) => keysOf(x, `${at}[${i}]`));
  if (v !== null && typeof v === 'object') {
    return Object.entries(v).flatMap(([k, x]) => [`${at}.${k}`, ...keysOf(x, `${at}.${k}`)]);
  }
  return [];
}

describe('--json contract', () => {
  let sb: Sandbox;
  const seen = new Set<string>();
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
  });
  after(() => sb.remove());

  /** Runs `backy --json ARGS`, insists on exit 0 and one JSON document with snake_case keys. */
  async function json(args: string[], opts: RunOptions = {}): Promise<Record<string, unknown>> {
    const r = await sb.ok(['--json', ...args], opts);
    let doc: unknown;
    assert.doesNotThrow(
      () => {
        doc = JSON.parse(r.stdout);
      },
      `backy --json ${args.join(' ')}: stdout is not exactly one JSON document: ${JSON.stringify(r.stdout)}`,
    );
    const bad = keysOf(doc).filter((p) => /[A-Z]/.test(p.slice(p.lastIndexOf('.') + 1)));
    assert.deepEqual(bad, [], `backy --json ${args.join(' ')}: keys not snake_case`);
    seen.add(args[0] === 'key' ? `key ${args[1]}` : args[0]);
    return doc as Record<string, unknown>;
  }

  it('every command prints one snake_case document; the new ones say what was done', async () => {
    const img = sb.path('a.img');
    await writeImage(img, {
      blocks: 4,
      blockSize: BS,
      kinds: (i) => (i === 2 ? 'zero' : 'random'),
      seed: 'jc',
    });

    const k = await json(['key', 'create', sb.path('x.key')]);
    assert.deepEqual(Object.keys(k).sort(), ['fingerprint', 'key_file', 'sealed']);
    assert.equal(k.key_file, sb.path('x.key'));
    assert.match(String(k.fingerprint), /^[0-9a-f]{16,}$/);
    assert.equal(k.sealed, false);
    const p = await json(['key', 'create', '--passphrase', sb.path('y.key')], {
      env: { BACKY_NEW_PASSPHRASE: 'one' },
    });
    assert.equal(p.sealed, true);
    const rewrapped = await json(['key', 'passphrase', '--remove', sb.path('y.key')], {
      env: { BACKY_PASSPHRASE: 'one' },
    });
    assert.deepEqual(rewrapped, { key_file: sb.path('y.key'), fingerprint: p.fingerprint, sealed: false });

    const b = await json(['backup', img, 'vm']);
    const uid = String(b.uid);
    const stats = b.stats as Record<string, number>;
    assert.deepEqual(Object.keys(stats).sort(), [
      'blocks',
      'bytes_read',
      'bytes_stored',
      'deduplicated',
      'kept',
      'read',
      'sparse',
      'stored',
      'verified',
    ]);
    assert.deepEqual(
      [stats.blocks, stats.sparse, stats.stored, stats.kept, stats.deduplicated, stats.verified],
      [4, 1, 3, 0, 0, 0],
    );
    // The zero block is not read where the file system reports it as a hole.
    assert.ok(stats.read === 3 || stats.read === 4, `read ${stats.read}`);
    assert.equal(stats.bytes_read, stats.read * BS);
    assert.ok(stats.bytes_stored > 0);
    assert.match(String(b.date), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.equal(typeof b.date_us, 'number');
    const uid2 = String((await json(['backup', '-f', uid, img, 'vm'])).uid);

    await json(['ls']);
    await json(['du']);
    await json(['scrub', uid]);
    await json(['label', uid, 'team=web']);
    await json(['protect', uid]);
    await json(['unprotect', uid]);

    const out = sb.path('out.img');
    const r = await json(['restore', uid, out]);
    assert.deepEqual(r, {
      uid,
      target: out,
      bytes: 4 * BS,
      blocks_written: 3,
      blocks_skipped: 1,
      blocks_damaged: 0,
    });
    await assertSameBytes(img, out);
    // To stdout the data alone: no document added to it.
    const piped = await sb.ok(['--json', 'restore', uid, '-']);
    await assertSameBytes(img, piped.stdoutBuf);
    seen.add('restore -');

    const file = sb.path('v2.export');
    const e = await json(['export', uid2, file]);
    assert.deepEqual(e, { uid: uid2, file, blocks: 4 });
    const exported = await readFile(file);
    const toStdout = await sb.ok(['--json', 'export', uid2, '-']);
    assert.ok(toStdout.stdoutBuf.equals(exported), 'export - writes the export alone to stdout');

    const removed = await json(['rm', uid2]);
    const v = removed.removed as Record<string, unknown>;
    assert.equal(Object.keys(removed).length, 1);
    assert.deepEqual([v.uid, v.name, v.size_bytes, v.valid], [uid2, 'vm', 4 * BS, true]);
    assert.match(String(v.date), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.equal(typeof v.date_us, 'number');

    await json(['import', file]);
    const en = await json(['enforce', 'latest1', '--dry-run', 'vm']);
    const would = en.removed as Record<string, unknown>[];
    assert.deepEqual(
      would.map((w) => w.uid),
      [uid],
    );
    assert.match(String(would[0]?.date), /^\d{4}-\d\d-\d\dT/);
    await json(['cleanup', '--dry-run']);
    await json(['recover', '--dry-run']);

    assert.deepEqual([...seen].sort(), [
      'backup',
      'cleanup',
      'du',
      'enforce',
      'export',
      'import',
      'key create',
      'key passphrase',
      'label',
      'ls',
      'protect',
      'recover',
      'restore',
      'restore -',
      'rm',
      'scrub',
      'unprotect',
    ]);
  });
});
