import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../errors.js';
import type { Version } from '../meta/meta-store.js';
import { checkBase, checkTracking, imageOf } from './base-check.js';

const version = (name: string, extra: Partial<Version> = {}): Version => ({
  uid: '11111111-1111-4111-8111-111111111111',
  name,
  snapshotName: '',
  date: 1,
  sizeBytes: 0,
  blockSize: 4096,
  status: 'valid',
  baseUid: null,
  protected: false,
  hostname: 'h',
  ...extra,
});

describe('checkBase', () => {
  it('the image is NAME up to its first @', () => {
    assert.equal(imageOf('vm1@backup1'), 'vm1');
    assert.equal(imageOf('vm1'), 'vm1');
    assert.equal(imageOf('pool/vm1@a@b'), 'pool/vm1');
  });

  it('accepts the same image, refuses another in one line unless forced (then warns)', () => {
    checkBase(version('vm1@b1'), 'vm1@b2', false);
    checkBase(version('vm1'), 'vm1', false);
    for (const [base, name] of [
      ['vm1@b1', 'vm2@b1'],
      ['vm1', 'vm2'],
      ['vm1', 'vm1x@a'],
    ]) {
      assert.throws(
        () => checkBase(version(base), name, false),
        (e: unknown) =>
          e instanceof InputError && /--force-base/.test(e.message) && !e.message.includes('\n'),
      );
      const warnings: string[] = [];
      checkBase(version(base), name, true, (m) => warnings.push(m));
      assert.equal(warnings.length, 1);
    }
  });

  it('refuses an invalid or incomplete base whatever the name', () => {
    for (const status of ['invalid', 'incomplete'] as const) {
      assert.throws(() => checkBase(version('vm1', { status }), 'vm1', true), /cannot be the base/);
    }
  });
});

describe('checkTracking', () => {
  const thin = (device_id: number, base_device_id: number) =>
    ({ kind: 'thin', device_id, base_device_id }) as const;

  it('a delta from the base thin device passes; from another is refused unless forced', () => {
    const base = version('lv', { tracking: thin(2, 1) });
    checkTracking(base, thin(3, 2), false);
    assert.throws(() => checkTracking(base, thin(2, 1), false), /compares device 1 with 2, .*device 2/);
    const warnings: string[] = [];
    checkTracking(base, thin(2, 1), true, (m) => warnings.push(m));
    assert.equal(warnings.length, 1);
  });

  it('a base without a thin device recorded: a warning, no refusal', () => {
    for (const tracking of [null, undefined, { kind: 'dirty-bitmap', bitmap: 'b' } as const]) {
      const warnings: string[] = [];
      checkTracking(version('lv', { tracking }), thin(2, 1), false, (m) => warnings.push(m));
      assert.match(warnings.join(), /no thin device id recorded/);
    }
  });

  it('other kinds are not checked here', () => {
    checkTracking(version('lv', { tracking: thin(9, 8) }), { kind: 'dirty-bitmap', bitmap: 'b' }, false);
    checkTracking(version('lv'), null, false);
  });
});
