import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../errors.js';
import { ExportParser, versionOf } from './export-format.js';

const header = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    format: 'backy-export',
    version: 1,
    hash_function: 'blake3',
    uid: '11111111-1111-4111-8111-111111111111',
    name: 'vm@1',
    snapshot_name: '',
    date: 1,
    size_bytes: 0,
    block_size: 4096,
    status: 'valid',
    base_uid: null,
    protected: false,
    hostname: 'h',
    ...extra,
  });

describe('export header: tracking (optional)', () => {
  const parse = (line: string) => {
    const p = new ExportParser('f');
    p.line(line);
    p.line('{"end":"backy-export","blocks":0}');
    return p.finish().header;
  };

  it('absent (an older export): none recorded', () => {
    assert.equal(versionOf(parse(header())).tracking, null);
  });

  it('each kind is read back as written', () => {
    for (const t of [
      { kind: 'thin', device_id: 2, base_device_id: 1 },
      { kind: 'rbd-diff', snapshot: 's2', base_snapshot: null },
      { kind: 'rbd-export-diff', snapshot: 's2', base_snapshot: 's1' },
      { kind: 'dirty-bitmap', bitmap: 'b1' },
    ]) {
      assert.deepEqual(versionOf(parse(header({ tracking: t }))).tracking, t);
    }
  });

  for (const [what, t] of [
    ['an unknown kind', { kind: 'zfs', device_id: 1 }],
    ['an unknown field', { kind: 'thin', device_id: 2, base_device_id: 1, extra: 1 }],
    ['a negative device id', { kind: 'thin', device_id: -2, base_device_id: 1 }],
    ['a missing field', { kind: 'dirty-bitmap' }],
    ['not an object', 'thin'],
  ] as const) {
    it(`refuses ${what} with one line`, () => {
      assert.throws(
        () => parse(header({ tracking: t })),
        (e: unknown) => e instanceof InputError && /tracking/.test(e.message) && !e.message.includes('\n'),
      );
    });
  }
});
