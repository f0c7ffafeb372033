import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hasCommand, missingCommands } from './tools.js';

describe('test/lib/tools', () => {
  let dir: string;
  const saved = { PATH: process.env.PATH, CI: process.env.CI };
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'backy-tools-'));
    await writeFile(join(dir, 'backy-tool-x'), '#!/bin/sh\n');
    await chmod(join(dir, 'backy-tool-x'), 0o755);
    await writeFile(join(dir, 'backy-tool-not-exec'), '');
    process.env.PATH = `${dir}${delimiter}${saved.PATH}`;
  });
  after(async () => {
    process.env.PATH = saved.PATH;
    if (saved.CI === undefined) delete process.env.CI;
    else process.env.CI = saved.CI;
    await rm(dir, { recursive: true, force: true });
  });

  it('hasCommand finds executables on PATH only', () => {
    assert.equal(hasCommand('backy-tool-x'), true);
    assert.equal(hasCommand('backy-tool-not-exec'), false);
    assert.equal(hasCommand('backy-tool-nowhere'), false);
  });

  it('missingCommands: a skip reason outside CI, a failure in CI, nothing when all exist', () => {
    delete process.env.CI;
    assert.equal(missingCommands(['backy-tool-x'], 'apt-get install x'), undefined);
    assert.equal(
      missingCommands(['backy-tool-x', 'backy-tool-nowhere'], 'apt-get install x'),
      'needs backy-tool-nowhere (install: apt-get install x)',
    );
    process.env.CI = 'true';
    assert.throws(() => missingCommands(['backy-tool-nowhere'], 'apt-get install x'), /CI=true/);
    assert.equal(missingCommands(['backy-tool-x'], 'apt-get install x'), undefined);
  });
});
