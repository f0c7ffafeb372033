/** rm on valid, invalid and incomplete versions; a running backup's version needs --force. */
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { Sandbox, parseLsMachine } from '../lib/cli.js';
import { randomBytesSeeded, writeImage } from '../lib/image.js';
import { blockRows, objectPath, query, spawnBacky, waitFor } from '../lib/store.js';

const BS = 64 * 1024;

async function uids(sb: Sandbox): Promise<string[]> {
  return parseLsMachine((await sb.ok(['-m', 'ls'])).stdout).map((v) => v.uid);
}

/** Starts a backup from stdin, feeds it two blocks and waits until it holds its lease. */
async function runningBackup(sb: Sandbox, name: string) {
  const run = spawnBacky(sb, ['backup', '-', name]);
  run.child.stdin.write(randomBytesSeeded(name, 2 * BS));
  await waitFor(
    'the backup lease',
    () => query(sb, 'SELECT id FROM leases WHERE pid = ?', run.child.pid).length === 1,
  );
  const [{ uid }] = query<{ uid: string }>(
    sb,
    'SELECT version_uid AS uid FROM leases WHERE pid = ?',
    run.child.pid,
  );
  return { ...run, uid };
}

describe('rm', () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    await writeImage(sb.path('a.img'), { blocks: 4, blockSize: BS, seed: 'rm', kinds: () => 'random' });
  });
  after(() => sb.remove());

  it('removes a valid version', async () => {
    const uid = await sb.backup([sb.path('a.img'), 'vm-valid']);
    await sb.ok(['rm', uid]);
    assert.ok(!(await uids(sb)).includes(uid));
    assert.equal(blockRows(sb, uid).length, 0);
  });

  it('removes an invalid version', async () => {
    const uid = await sb.backup([sb.path('a.img'), 'vm-invalid']);
    await rm(objectPath(sb, blockRows(sb, uid)[0].checksum!));
    assert.equal((await sb.run(['scrub', uid])).code, 3);
    assert.equal(parseLsMachine((await sb.ok(['-m', 'ls', 'vm-invalid'])).stdout)[0].valid, false);
    await sb.ok(['rm', uid]);
    assert.ok(!(await uids(sb)).includes(uid));
  });

  it('refuses a running backup without --force, removes it with --force', async () => {
    const run = await runningBackup(sb, 'vm-running');
    try {
      const r = await sb.run(['rm', run.uid]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /still being written by pid \d+.*--force/);
      assert.equal(r.stderr.split('\n').filter((l) => l.includes('ERROR')).length, 1);
      assert.ok((await uids(sb)).includes(run.uid));
      const scrub = await sb.run(['scrub', run.uid]);
      assert.equal(scrub.code, 1);
      assert.match(scrub.stderr, /is incomplete/);
      await sb.ok(['rm', '--force', run.uid]);
      assert.ok(!(await uids(sb)).includes(run.uid));
    } finally {
      run.child.kill('SIGKILL');
      await run.done;
    }
  });

  it('removes the incomplete version of a crashed backup without --force', async () => {
    const run = await runningBackup(sb, 'vm-crashed');
    run.child.kill('SIGKILL');
    await run.done;
    const v = query<{ status: string }>(sb, 'SELECT status FROM versions WHERE uid = ?', run.uid);
    assert.deepEqual(v, [{ status: 'incomplete' }]);
    await sb.ok(['rm', run.uid]);
    assert.ok(!(await uids(sb)).includes(run.uid));
  });
});
