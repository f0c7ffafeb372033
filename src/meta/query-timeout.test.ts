import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from '../errors.js';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { MetaStore, queryTimeoutMs } from './meta-store.js';

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

describe('a PostgreSQL server that accepts and never answers', () => {
  it('fails opening within query_timeout with the same line as a stalled query, without the password', async () => {
    // A real listening socket that never speaks: the pg handshake gets no answer.
    const sockets: Socket[] = [];
    const server = createServer((s) => sockets.push(s));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const engine = `postgresql://u:s3cret@127.0.0.1:${port}/db?query_timeout=300`;
    try {
      await assert.rejects(MetaStore.open(engine), (err: unknown) => {
        const msg = (err as Error).message;
        assert.match(
          msg,
          new RegExp(
            `^metadata database postgresql://u:\\*\\*\\*@127\\.0\\.0\\.1:${port}/db\\?query_timeout=300 did not answer within 0\\.3 s`,
          ),
        );
        assert.ok(!msg.includes('s3cret'));
        return true;
      });
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    }
  });
});
