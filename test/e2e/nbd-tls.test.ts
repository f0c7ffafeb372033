/**
 * `backy nbd` over TLS with libnbd's clients (GnuTLS) and qemu: pre-shared keys in nbdkit's
 * file format and X.509 certificates made here with openssl; --tls-only refuses plaintext,
 * a wrong key or an unknown user is refused; a non-loopback address needs TLS or --insecure;
 * a PSK file others may read is refused. Every copy is compared byte for byte.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { assertSameBytes } from '../lib/cli.js';
import type { Sandbox } from '../lib/cli.js';
import {
  RawClient,
  mustRun,
  nbdClientsMissing,
  run,
  servedImage,
  startServer,
  stopClean,
} from '../lib/nbd.js';
import type { ServerHandle } from '../lib/nbd.js';
import { hasCommand } from '../lib/tools.js';
import * as P from '../../src/nbd/protocol.js';

const BS = 64 * 1024;
const BLOCKS = 12;
const TAIL = 300;

describe('backy nbd over TLS', () => {
  let skip = nbdClientsMissing();
  if (!skip && !hasCommand('openssl')) skip = 'openssl is needed to make certificates';
  let sb: Sandbox;
  let image: string;
  let uid: string;
  let pskFile: string;
  let key: string;
  let wrongPsk: string;
  let certs: string;
  let clientCerts: string;

  before(async () => {
    ({ sb, image, uid } = await servedImage(skip, {
      blocks: BLOCKS,
      blockSize: BS,
      tail: TAIL,
      kinds: (i) => (i % 3 ? 'random' : 'zero'),
    }));
    key = randomBytes(32).toString('hex');
    pskFile = sb.path('keys.psk');
    await writeFile(pskFile, `# backy test\nalice:${key}\nbob:${randomBytes(32).toString('hex')}\n`, {
      mode: 0o600,
    });
    wrongPsk = sb.path('wrong.psk');
    await writeFile(wrongPsk, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });

    // A CA, a server certificate for localhost / 127.0.0.1 and a client certificate it signed;
    // libnbd reads ca-cert.pem (and client-cert.pem, client-key.pem) from a directory.
    certs = sb.path('pki');
    clientCerts = sb.path('client-pki');
    await mkdir(certs);
    await mkdir(clientCerts);
    const ssl = (args: string[]) => mustRun('openssl', args);
    await ssl(
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=backy test CA'].concat([
        '-keyout',
        `${certs}/ca-key.pem`,
        '-out',
        `${certs}/ca-cert.pem`,
      ]),
    );
    await writeFile(`${certs}/server.ext`, 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
    for (const [who, cn, ext] of [
      ['server', 'localhost', ['-extfile', `${certs}/server.ext`]],
      ['client', 'alice', []],
    ] as const) {
      await ssl([
        'req',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-subj',
        `/CN=${cn}`,
        '-keyout',
        `${certs}/${who}-key.pem`,
        '-out',
        `${certs}/${who}.csr`,
      ]);
      await ssl(
        [
          'x509',
          '-req',
          '-in',
          `${certs}/${who}.csr`,
          '-CA',
          `${certs}/ca-cert.pem`,
          '-CAkey',
          `${certs}/ca-key.pem`,
        ].concat(['-CAcreateserial', '-days', '2', '-out', `${certs}/${who}-cert.pem`, ...ext]),
      );
    }
    for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'])
      await copyFile(`${certs}/${f}`, `${clientCerts}/${f}`);
  });
  after(async () => sb?.remove());

  const psk = (srv: ServerHandle, file: string, user = 'alice') =>
    `nbds+unix://${user}@/${uid}?socket=${srv.socket}&tls-psk-file=${file}`;

  it(
    'PSK with --tls-only: nbdinfo and nbdcopy read the version byte for byte; plaintext, a wrong key and an unknown user are refused',
    { skip },
    async () => {
      const srv = await startServer(sb, ['--tls-psk', pskFile, '--tls-only']);
      try {
        assert.match(srv.stderr(), /TLS PSK required/);
        const info = await mustRun('nbdinfo', [psk(srv, pskFile)]);
        assert.match(info.stdout, new RegExp(`export-size: ${BLOCKS * BS + TAIL}\\b`));
        assert.match(srv.stderr(), /TLS on \(TLSv1\.2, [A-Z0-9_]+PSK[A-Z0-9_]*, PSK user alice\)/);
        await mustRun('nbdcopy', [psk(srv, pskFile), sb.path('psk.out')]);
        await assertSameBytes(image, sb.path('psk.out'));

        // Plaintext: libnbd is refused...
        assert.notEqual((await run('nbdinfo', [srv.uri(uid)])).code, 0);
        // ...every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD...
        const c = await RawClient.connect(srv.socket);
        c.send(P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
        for (const [opt, data] of [
          [P.OPT.LIST, Buffer.alloc(0)],
          [P.OPT.GO, P.encodeInfoRequest(uid, [])],
          [P.OPT.INFO, P.encodeInfoRequest(uid, [])],
          [P.OPT.STRUCTURED_REPLY, Buffer.alloc(0)],
        ] as const) {
          c.send(P.encodeOption(opt, data));
          assert.equal((await c.optionReply()).type, P.REP.ERR_TLS_REQD, `option ${opt}`);
        }
        // ...and NBD_OPT_EXPORT_NAME, which has no error reply, drops the connection.
        c.send(P.encodeOption(P.OPT.EXPORT_NAME, Buffer.from(uid)));
        await c.closed();
        // Bytes sent after STARTTLS before its reply (an injection): dropped without a reply.
        const d = await RawClient.connect(srv.socket);
        d.send(
          Buffer.concat([
            P.encodeClientFlags(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES),
            P.encodeOption(P.OPT.STARTTLS),
            P.encodeOption(P.OPT.LIST),
          ]),
        );
        await d.closed();

        const wrong = await run('nbdinfo', [psk(srv, wrongPsk)]);
        assert.notEqual(wrong.code, 0);
        const unknown = await run('nbdinfo', [psk(srv, pskFile, 'mallory')]);
        assert.notEqual(unknown.code, 0);
        assert.match(srv.stderr(), /dropped: TLS handshake failed/);
        // Still serving.
        await mustRun('nbdcopy', [psk(srv, pskFile), sb.path('psk2.out')]);
        await assertSameBytes(image, sb.path('psk2.out'));
      } finally {
        await stopClean(srv);
      }
      assert.doesNotMatch(srv.stderr(), new RegExp(key, 'i'), 'the key is never logged');
    },
  );

  it('PSK on TCP, -w: qemu-io writes over TLS, the new version restores to it', { skip }, async () => {
    const srv = await startServer(sb, ['-w', '--tls-psk', pskFile, '--tls-only'], { tcp: true });
    const qemuDir = sb.path('qemu-psk');
    await mkdir(qemuDir);
    // qemu's tls-creds-psk reads keys.psk from a directory, in the same format.
    await writeFile(`${qemuDir}/keys.psk`, `alice:${key}\n`, { mode: 0o600 });
    try {
      await mustRun('qemu-io', [
        '--object',
        `tls-creds-psk,id=tls0,endpoint=client,dir=${qemuDir},username=alice`,
        '--image-opts',
        `driver=nbd,host=127.0.0.1,port=${srv.port},export=${uid},tls-creds=tls0`,
        '-c',
        `write -P 0x6b ${BS + 17} 5000`,
        '-c',
        'flush',
      ]);
    } finally {
      await stopClean(srv);
    }
    const m = /new version ([0-9a-f-]{36}) \(vm1\+nbd, base [0-9a-f-]{36}\) is complete and valid/.exec(
      srv.stderr(),
    );
    assert.ok(m, srv.stderr());
    const expected = await readFile(image);
    expected.fill(0x6b, BS + 17, BS + 17 + 5000);
    await sb.ok(['restore', m[1], sb.path('qemu-w.out')]);
    await assertSameBytes(sb.path('qemu-w.out'), expected);
  });

  it(
    'X.509 on TCP: nbdcopy with the CA reads byte for byte; with --tls-ca a client needs its certificate',
    { skip },
    async () => {
      const x509 = [
        '--tls-cert',
        `${certs}/server-cert.pem`,
        '--tls-key',
        `${certs}/server-key.pem`,
        '--tls-only',
      ];
      let srv = await startServer(sb, x509, { tcp: true });
      const uri = (dir: string) => `nbds://localhost:${srv.port}/${uid}?tls-certificates=${dir}`;
      try {
        assert.match(srv.stderr(), /TLS X\.509 required/);
        await mustRun('nbdcopy', [uri(certs), sb.path('x509.out')]);
        await assertSameBytes(image, sb.path('x509.out'));
        assert.match(srv.stderr(), /TLS on \(TLSv1\.[23], /);
      } finally {
        await stopClean(srv);
      }
      srv = await startServer(sb, [...x509, '--tls-ca', `${certs}/ca-cert.pem`], { tcp: true });
      try {
        // A client with the CA but no certificate of its own: the handshake fails.
        const caOnly = sb.path('ca-only');
        await mkdir(caOnly);
        await copyFile(`${certs}/ca-cert.pem`, `${caOnly}/ca-cert.pem`);
        assert.notEqual((await run('nbdinfo', [uri(caOnly)])).code, 0);
        await mustRun('nbdcopy', [uri(clientCerts), sb.path('mutual.out')]);
        await assertSameBytes(image, sb.path('mutual.out'));
        assert.match(srv.stderr(), /TLS on \(TLSv1\.[23], [^)]*client alice\)/);
      } finally {
        await stopClean(srv);
      }
    },
  );

  it(
    'a non-loopback address needs --tls-only or --insecure; a PSK file others may read is refused',
    { skip },
    async () => {
      const bare = await sb.run(['nbd', '-a', '0.0.0.0', '-p', '0']);
      assert.equal(bare.code, 2, bare.stderr);
      assert.equal(bare.stderr.trim().split('\n').length, 1, bare.stderr);
      assert.match(bare.stderr, /0\.0\.0\.0 is not a loopback address.*--insecure/);
      const offered = await sb.run(['nbd', '-a', '0.0.0.0', '-p', '0', '--tls-psk', pskFile]);
      assert.equal(offered.code, 2, offered.stderr);
      for (const args of [['--tls-only'], ['--tls-cert', 'x'], ['--tls-psk', pskFile, '--tls-key', 'k']]) {
        const r = await sb.run(['nbd', '-u', sb.path('u.sock'), ...args]);
        assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      }
      // With TLS required, or with --insecure, it serves.
      for (const args of [['--tls-psk', pskFile, '--tls-only'], ['--insecure']]) {
        const srv = await startServer(sb, args, { tcp: true, address: '0.0.0.0' });
        await stopClean(srv);
      }

      const loose = sb.path('loose.psk');
      await writeFile(loose, `alice:${key}\n`);
      await chmod(loose, 0o644);
      const r = await sb.run(['nbd', '-u', sb.path('l.sock'), '--tls-psk', loose]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /permissions 0644 on TLS PSK file .*loose\.psk.* are too open/);
      assert.equal(r.stderr.match(/ERROR/g)?.length, 1, r.stderr);
      const bad = sb.path('bad.psk');
      await writeFile(bad, `alice=${key}\n`, { mode: 0o600 });
      const b = await sb.run(['nbd', '-u', sb.path('b.sock'), '--tls-psk', bad]);
      assert.equal(b.code, 1, b.stderr);
      assert.match(b.stderr, /bad\.psk.*line 1: not 'username:hexkey'/);
      for (const out of [r.stderr, b.stderr]) assert.doesNotMatch(out, new RegExp(key, 'i'));
    },
  );
});
