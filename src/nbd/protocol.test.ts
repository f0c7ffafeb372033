import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as P from './protocol.js';

describe('NBD protocol codec', () => {
  it('round-trips the handshake, options and option replies', () => {
    const hs = P.encodeHandshake(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES);
    assert.equal(hs.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT');
    assert.deepEqual(P.decodeHandshake(hs), { flags: 3 });
    assert.equal(P.decodeClientFlags(P.encodeClientFlags(3)), 3);

    const go = P.encodeOption(P.OPT.GO, P.encodeInfoRequest('disk', [P.INFO.BLOCK_SIZE, P.INFO.NAME]));
    const h = P.decodeOptionHeader(go);
    assert.deepEqual(h, { option: P.OPT.GO, length: go.length - P.OPTION_HEADER_SIZE });
    assert.deepEqual(P.decodeInfoRequest(go.subarray(P.OPTION_HEADER_SIZE)), { name: 'disk', infos: [3, 1] });

    const meta = P.encodeMetaContextRequest('disk', ['base:allocation', 'qemu:dirty-bitmap:b']);
    assert.deepEqual(P.decodeMetaContextRequest(meta), {
      name: 'disk',
      queries: ['base:allocation', 'qemu:dirty-bitmap:b'],
    });

    const rep = P.encodeOptionReply(P.OPT.INFO, P.REP.INFO, P.encodeInfoExport(2 ** 40 + 5, 0x10b));
    const rh = P.decodeOptionReplyHeader(rep);
    assert.deepEqual(rh, { option: P.OPT.INFO, type: P.REP.INFO, length: 12 });
    assert.deepEqual(P.decodeInfoReply(rep.subarray(P.OPTION_REPLY_HEADER_SIZE)), {
      type: P.INFO.EXPORT,
      size: 2 ** 40 + 5,
      flags: 0x10b,
    });
    assert.deepEqual(P.decodeInfoReply(P.encodeInfoBlockSize(1, 4096, 1 << 25)), {
      type: P.INFO.BLOCK_SIZE,
      minimum: 1,
      preferred: 4096,
      maximum: 1 << 25,
    });
    assert.ok(P.isOptionError(P.REP.ERR_UNSUP));
    assert.ok(!P.isOptionError(P.REP.ACK));
    assert.equal(P.decodeOptionReplyHeader(P.encodeOptionReply(1, P.REP.ERR_UNKNOWN)).type, 0x80000006);
    assert.deepEqual(P.decodeServerReply(P.encodeServerReply('uid', 'vm1')), {
      name: 'uid',
      description: 'vm1',
    });
    assert.deepEqual(P.decodeMetaContextReply(P.encodeMetaContextReply(7, 'base:allocation')), {
      id: 7,
      name: 'base:allocation',
    });
    assert.equal(P.encodeExportNameReply(1, 1, false).length, 134);
    assert.equal(P.encodeExportNameReply(1, 1, true).length, 10);
  });

  it('round-trips requests and replies', () => {
    const req = {
      flags: P.CMD_FLAG.DF,
      type: P.CMD.READ,
      cookie: 0xdeadbeefcafen,
      offset: 2 ** 33,
      length: 65536,
    };
    assert.deepEqual(P.decodeRequest(P.encodeRequest(req)), req);
    assert.deepEqual(P.decodeReplyHeader(P.encodeSimpleReply(9n, P.NBD_ERR.EIO)), {
      kind: 'simple',
      error: 5,
      cookie: 9n,
    });
    const data = P.encodeDataChunkHeader(3n, 0, 4096, 10);
    const dh = P.decodeReplyHeader(data);
    assert.deepEqual(dh, {
      kind: 'structured',
      flags: 0,
      type: P.REPLY_TYPE.OFFSET_DATA,
      cookie: 3n,
      length: 18,
    });
    const payload = Buffer.concat([data.subarray(P.STRUCTURED_REPLY_HEADER_SIZE), Buffer.alloc(10, 7)]);
    assert.deepEqual(P.decodeDataChunk(payload), { offset: 4096, data: Buffer.alloc(10, 7) });
    const hole = P.encodeHoleChunk(3n, P.REPLY_FLAG_DONE, 8192, 4096);
    assert.deepEqual(P.decodeHoleChunk(hole.subarray(P.STRUCTURED_REPLY_HEADER_SIZE)), {
      offset: 8192,
      length: 4096,
    });
    const err = P.encodeErrorChunk(4n, P.REPLY_FLAG_DONE, P.NBD_ERR.EIO, 'bad block', 12345);
    const eh = P.decodeReplyHeader(err);
    assert.equal(eh.kind === 'structured' && eh.type, P.REPLY_TYPE.ERROR_OFFSET);
    assert.deepEqual(P.decodeErrorChunk(err.subarray(P.STRUCTURED_REPLY_HEADER_SIZE), true), {
      error: 5,
      message: 'bad block',
      offset: 12345,
    });
    const bs = P.encodeBlockStatusChunk(5n, P.REPLY_FLAG_DONE, 1, [
      { length: 65536, flags: 0 },
      { length: 131072, flags: P.STATE_HOLE | P.STATE_ZERO },
    ]);
    assert.deepEqual(P.decodeBlockStatusChunk(bs.subarray(P.STRUCTURED_REPLY_HEADER_SIZE)), {
      contextId: 1,
      extents: [
        { length: 65536, flags: 0 },
        { length: 131072, flags: 3 },
      ],
    });
    const none = P.decodeReplyHeader(P.encodeNoneChunk(6n));
    assert.deepEqual(none, { kind: 'structured', flags: 1, type: 0, cookie: 6n, length: 0 });
  });

  it('refuses malformed input with NbdProtocolError, never a RangeError or a long loop', () => {
    const bad: [string, () => unknown][] = [
      ['short handshake', () => P.decodeHandshake(Buffer.alloc(5))],
      ['bad magic', () => P.decodeHandshake(Buffer.alloc(18))],
      ['bad option magic', () => P.decodeOptionHeader(Buffer.alloc(16))],
      ['bad request magic', () => P.decodeRequest(Buffer.alloc(28))],
      ['bad reply magic', () => P.decodeReplyHeader(Buffer.alloc(20))],
      ['name past the end', () => P.decodeInfoRequest(Buffer.from([0, 0, 0, 9, 65]))],
      ['name too long', () => P.decodeInfoRequest(Buffer.from([0, 1, 0, 0]))],
      ['info count mismatch', () => P.decodeInfoRequest(Buffer.from([0, 0, 0, 0, 0, 5, 0, 1]))],
      ['query count huge', () => P.decodeMetaContextRequest(Buffer.from([0, 0, 0, 0, 255, 255, 255, 255]))],
      [
        'query past the end',
        () => P.decodeMetaContextRequest(Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 50])),
      ],
      ['trailing bytes', () => P.decodeMetaContextRequest(Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 1]))],
      ['block status length', () => P.decodeBlockStatusChunk(Buffer.alloc(7))],
      [
        'offset beyond 2^53',
        () =>
          P.decodeRequest(
            Buffer.concat([
              P.encodeRequest({ flags: 0, type: 0, cookie: 0n, offset: 0, length: 0 }).subarray(0, 16),
              Buffer.alloc(12, 0xff),
            ]),
          ),
      ],
    ];
    for (const [what, fn] of bad) assert.throws(fn, P.NbdProtocolError, what);
  });
});
