import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError } from '../errors.js';
import { embeddedDefault, findConfigFile, loadConfig, parseConfig, redactUrl, sqlitePath } from './config.js';

describe('config', () => {
  it('embedded default honours XDG_DATA_HOME', () => {
    const c = embeddedDefault({ HOME: '/home/x', XDG_DATA_HOME: '/xdg' });
    assert.equal(c.engine, 'sqlite:////xdg/backy/backy.sqlite');
    assert.deepEqual(c.dataBackend, {
      type: 'file',
      path: '/xdg/backy/data',
      compression: { codec: 'lz4' },
    });
    assert.equal(c.blockSize, 4 * 1024 * 1024);
    assert.equal(c.hintCheckBlocks, 10);
  });
  it('embedded default falls back to ~/.local/share', () => {
    const c = embeddedDefault({ HOME: '/home/x' });
    assert.deepEqual(c.dataBackend, {
      type: 'file',
      path: '/home/x/.local/share/backy/data',
      compression: { codec: 'lz4' },
    });
  });
  it('parses the design example, with = and : separators and comments', () => {
    const c = parseConfig(
      [
        '[DEFAULTS]',
        'logfile = /var/log/backy.log      ; optional',
        'block_size: 1048576',
        'hint_check_blocks = 3',
        'hash_function = sha256',
        '[MetaBackend]',
        'engine = sqlite:////var/lib/backy/backy.sqlite',
        '[DataBackend]',
        'type: file',
        'path = /var/lib/backy/data',
      ].join('\n'),
      'backy.cfg',
      {},
    );
    assert.equal(c.logfile, '/var/log/backy.log');
    assert.equal(c.blockSize, 1048576);
    assert.equal(c.hintCheckBlocks, 3);
    assert.equal(c.hashFunction, 'sha256');
    assert.equal(sqlitePath(c.engine), '/var/lib/backy/backy.sqlite');
    assert.deepEqual(c.dataBackend, {
      type: 'file',
      path: '/var/lib/backy/data',
      compression: { codec: 'lz4' },
    });
  });
  it('parses an s3 data backend with its defaults', () => {
    const c = parseConfig(
      '[DataBackend]\ntype = s3\nendpoint = http://127.0.0.1:7480/\nbucket = backy\nprefix = host1\n',
      'backy.cfg',
      {},
    );
    assert.deepEqual(c.dataBackend, {
      type: 's3',
      endpoint: 'http://127.0.0.1:7480',
      bucket: 'backy',
      prefix: 'host1/',
      region: 'us-east-1',
      pathStyle: true,
      accessKeyId: undefined,
      secretAccessKey: undefined,
      maxConnections: 16,
      timeout: 30,
      caFile: undefined,
      compression: { codec: 'lz4' },
    });
    const aws = parseConfig(
      '[DataBackend]\ntype = s3\nbucket = backy\nregion = eu-west-1\naccess_key_id = AK\nsecret_access_key = SK\ntimeout = 5\nmax_connections = 4',
      'backy.cfg',
      {},
    ).dataBackend;
    assert.equal(aws.type, 's3');
    if (aws.type !== 's3') return;
    assert.equal(aws.endpoint, undefined);
    assert.equal(aws.pathStyle, false, 'AWS itself: virtual-hosted style');
    assert.deepEqual(
      [aws.region, aws.accessKeyId, aws.secretAccessKey, aws.timeout, aws.maxConnections],
      ['eu-west-1', 'AK', 'SK', 5, 4],
    );
  });
  it('ca_file: relative to the config file, for an https endpoint or AWS', () => {
    const tls = parseConfig(
      '[DataBackend]\ntype = s3\nendpoint = https://s3.example:7443\nbucket = backy\nca_file = certs/ca.pem',
      '/etc/backy/backy.cfg',
      {},
    ).dataBackend;
    assert.equal(tls.type === 's3' && tls.caFile, '/etc/backy/certs/ca.pem');
    const aws = parseConfig(
      '[DataBackend]\ntype = s3\nbucket = backy\nca_file = /ca.pem',
      'b.cfg',
      {},
    ).dataBackend;
    assert.equal(aws.type === 's3' && aws.caFile, '/ca.pem');
  });
  it('sqlite:///rel is relative, sqlite:////abs absolute', () => {
    assert.equal(sqlitePath('sqlite:///rel/db.sqlite'), 'rel/db.sqlite');
    assert.equal(sqlitePath('sqlite:////abs/db.sqlite'), '/abs/db.sqlite');
  });
  const bad: [string, string, RegExp][] = [
    ['unknown section', '[Nope]\na = 1', /unknown section \[Nope\]/],
    ['unknown key', '[DEFAULTS]\nblocksize = 4096', /unknown key 'blocksize' in \[DEFAULTS\]/],
    ['bad block_size', '[DEFAULTS]\nblock_size = 4k', /block_size must be a whole number/],
    ['block_size not a multiple of 512', '[DEFAULTS]\nblock_size = 5000', /multiple of 512/],
    ['block_size too small', '[DEFAULTS]\nblock_size = 512', /between/],
    ['negative hint_check_blocks', '[DEFAULTS]\nhint_check_blocks = -1', /hint_check_blocks/],
    ['bad hash function', '[DEFAULTS]\nhash_function = md5', /hash_function must be one of/],
    ['bad engine', '[MetaBackend]\nengine = mysql://x', /\[MetaBackend\] engine must be/],
    ['bad backend type', '[DataBackend]\ntype = tape', /\[DataBackend\] type must be 'file' or 's3'/],
    ['s3 key with type file', '[DataBackend]\nbucket = b1b', /\[DataBackend\] bucket needs type = s3/],
    ['s3 without bucket', '[DataBackend]\ntype = s3', /\[DataBackend\] bucket must be a bucket name/],
    ['s3 bad bucket', '[DataBackend]\ntype = s3\nbucket = Bad_Bucket', /bucket must be a bucket name/],
    ['s3 with path', '[DataBackend]\ntype = s3\nbucket = b1b\npath = /x', /path is for type = file/],
    [
      's3 bad endpoint',
      '[DataBackend]\ntype = s3\nbucket = b1b\nendpoint = 127.0.0.1:7480',
      /endpoint must be a URL/,
    ],
    [
      's3 endpoint with credentials',
      '[DataBackend]\ntype = s3\nbucket = b1b\nendpoint = http://a:b@h',
      /must not hold credentials/,
    ],
    ['s3 half the credentials', '[DataBackend]\ntype = s3\nbucket = b1b\naccess_key_id = AK', /go together/],
    [
      's3 bad path_style',
      '[DataBackend]\ntype = s3\nbucket = b1b\npath_style = maybe',
      /path_style must be true or false/,
    ],
    ['s3 bad timeout', '[DataBackend]\ntype = s3\nbucket = b1b\ntimeout = 0', /timeout must be between 1/],
    [
      's3 ca_file with an http endpoint',
      '[DataBackend]\ntype = s3\nbucket = b1b\nendpoint = http://h:80\nca_file = ca.pem',
      /ca_file is for an https:\/\/ endpoint/,
    ],
    ['ca_file with type file', '[DataBackend]\nca_file = ca.pem', /ca_file needs type = s3/],
    ['s3 bad prefix', '[DataBackend]\ntype = s3\nbucket = b1b\nprefix = ../x', /prefix may hold only/],
    ['key outside a section', 'block_size = 4096', /outside any section/],
    [
      'bad compression',
      '[DataBackend]\ncompression = gzip',
      /compression must be none, lz4, zstd or zstd:LEVEL/,
    ],
    ['zstd level 0', '[DataBackend]\ncompression = zstd:0', /compression must be/],
    ['zstd level too high', '[DataBackend]\ncompression = zstd:23', /compression must be/],
    ['bad encryption', '[DataBackend]\nencryption = rot13', /encryption must be none or aes-256-gcm/],
    [
      'encryption without key_file',
      '[DataBackend]\nencryption = aes-256-gcm',
      /needs key_file = PATH .*backy key create/,
    ],
    ['key_file without encryption', '[DataBackend]\nkey_file = /k', /key_file is set but encryption is not/],
  ];
  it('compression defaults to lz4; none, lz4, zstd (level 1), zstd:LEVEL (negative too) and encryption parse', () => {
    assert.deepEqual(embeddedDefault({}).dataBackend.compression, { codec: 'lz4' });
    const parse = (lines: string) => parseConfig(`[DataBackend]\n${lines}`, 'backy.cfg', {}).dataBackend;
    assert.deepEqual(parse('compression = none').compression, { codec: 'none' });
    assert.deepEqual(parse('compression = lz4').compression, { codec: 'lz4' });
    assert.deepEqual(parse('compression = zstd').compression, { codec: 'zstd', level: 1 });
    assert.deepEqual(parse('compression = zstd:-3').compression, { codec: 'zstd', level: -3 });
    assert.deepEqual(parse('compression = zstd:19').compression, { codec: 'zstd', level: 19 });
    const d = parse('encryption = aes-256-gcm\nkey_file = /etc/backy/k');
    assert.deepEqual(d.encryption, { codec: 'aes-256-gcm', keyFile: '/etc/backy/k' });
    assert.equal(parse('encryption = none').encryption, undefined);
  });
  it("a relative key_file is relative to the config file's directory, not the working directory", () => {
    const key = (file: string, path: string) =>
      parseConfig(`[DataBackend]\nencryption = aes-256-gcm\nkey_file = ${path}`, file, {}).dataBackend
        .encryption?.keyFile;
    assert.equal(key('/etc/backy/backy.cfg', 'backy.key'), '/etc/backy/backy.key');
    assert.equal(key('/etc/backy/backy.cfg', '../keys/k'), '/etc/keys/k');
    assert.equal(key('/etc/backy/backy.cfg', '/srv/k'), '/srv/k');
  });
  for (const [name, text, re] of bad) {
    it(`rejects ${name}, naming the key`, () => {
      assert.throws(
        () => parseConfig(text, 'x.cfg', {}),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
      );
    });
  }
  it('redacts passwords in URLs', () => {
    assert.equal(
      redactUrl('postgresql://backy:s3cret@db:5432/backy'),
      'postgresql://backy:***@db:5432/backy',
    );
    assert.equal(redactUrl('sqlite:////x'), 'sqlite:////x');
    assert.equal(redactUrl('postgresql://u:pa/ss@h/db'), 'postgresql://u:***@h/db');
    assert.equal(
      redactUrl('postgresql://u@h/db?sslmode=require&password=s3cret&x=1'),
      'postgresql://u@h/db?sslmode=require&password=***&x=1',
    );
  });
  it('$BACKY_DATABASE_URL replaces the engine, and is validated', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'backy-cfg-'));
    try {
      const file = join(dir, 'b.cfg');
      await writeFile(file, '[MetaBackend]\nengine = sqlite:////var/lib/backy/x.sqlite\n');
      const url = 'postgresql://backy:pw@db:5432/backy';
      assert.equal(loadConfig(file, { HOME: dir }).engine, 'sqlite:////var/lib/backy/x.sqlite');
      assert.equal(loadConfig(file, { HOME: dir, BACKY_DATABASE_URL: url }).engine, url);
      assert.equal(loadConfig(undefined, { HOME: dir, BACKY_DATABASE_URL: url }).engine, url);
      assert.throws(
        () => loadConfig(file, { HOME: dir, BACKY_DATABASE_URL: 'mysql://u:pw@h/db' }),
        (err: Error) =>
          err instanceof ConfigError &&
          /BACKY_DATABASE_URL/.test(err.message) &&
          !err.message.includes(':pw@'),
      );
    } finally {
      await rm(dir, { recursive: true });
    }
  });
  it('finds $BACKY_CONFIG and refuses a missing explicit file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'backy-cfg-'));
    try {
      const file = join(dir, 'b.cfg');
      await writeFile(file, '[DEFAULTS]\n');
      assert.equal(findConfigFile(undefined, { BACKY_CONFIG: file, HOME: dir }), file);
      assert.throws(() => findConfigFile(join(dir, 'missing.cfg'), {}), /does not exist/);
      assert.throws(
        () => findConfigFile(undefined, { BACKY_CONFIG: join(dir, 'nope'), HOME: dir }),
        /BACKY_CONFIG/,
      );
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});
