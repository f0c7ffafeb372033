import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../errors.js';
import { queryTimeoutMs } from './meta-store.js';

describe('query_timeout in a PostgreSQL engine URL', () => {
  it('defaults to 60 s and takes whole milliseconds', () => {
    assert.equal(queryTimeoutMs('postgresql://u:p@h/db'), 60_000);
    assert.equal(queryTimeoutMs('postgresql://u:p@h/db?sslmode=require&query_timeout=1500'), 1500);
  });
  it('refuses anything else, naming the key and not the password', () => {
    for (const bad of ['0', '-5', '1.5', '10s', '', '99999999999']) {
      assert.throws(
        () => queryTimeoutMs(`postgresql://u:secret@h/db?query_timeout=${bad}`),
        (err: unknown) =>
          err instanceof ConfigError && /query_timeout/.test(err.message) && !err.message.includes('secret'),
        bad,
      );
    }
  });
});
