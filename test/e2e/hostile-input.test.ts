/**
 * Hostile input, through the real CLI: hint files, config files, command lines (and export
 * files once `import` exists). Each must be refused with exactly one ERROR line on stderr
 * (besides the INFO start line), no stack trace, exit 2 for usage errors and 1 otherwise, and
 * the store unchanged: the metadata tables (read directly) and the data directory listing
 * after every case, and `ls -m` after all of them, equal what they were before.
 *
 * The cases touch nothing, so they run four at a time. Each prints the line backy said
 * (`# case: ... -> ...`), which is the table in the test report.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { Sandbox, runBacky } from '../lib/cli.js';
import { writeImage } from '../lib/image.js';

const BS = 64 * 1024;
const NIL_UID = '00000000-0000-4000-8000-000000000000';

interface Case {
  name: string;
  /** Arguments after `-c <sandbox cfg>`, or a whole command line with `raw`. */
  args: () => Promise<string[]>;
  raw?: boolean;
  code: 1 | 2;
  re: RegExp;
  /** Only when the CLI has this command. */
  needs?: string;
}

async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string) {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        out.push(`${relative(root, p)}/`);
        await walk(p);
      } else out.push(`${relative(root, p)} ${(await stat(p)).size}`);
    }
  }
  await walk(root);
  return out.sort();
}

/**
 * The metadata, less the leases table: the cases run four at a time on one sandbox, so another
 * case's command may hold a lease while this one is checked (see leakedLeases).
 */
function dumpDb(path: string): string {
  // Read-write (it writes nothing): a read-only connection opened just as the command's own
  // connection closes (checkpointing and removing its -wal) may read a state from before
  // the command's last commit.
  const db = new Database(path, { fileMustExist: true });
  try {
    return ['versions', 'pages', 'objects', 'settings']
      .map((t) => JSON.stringify(db.prepare(`SELECT * FROM ${t} ORDER BY 1, 2`).all()))
      .join('\n');
  } finally {
    db.close();
  }
}

/** Lease rows whose process has exited: a command that ended without releasing what it held. */
function leakedLeases(path: string): unknown[] {
  const db = new Database(path, { fileMustExist: true });
  try {
    const rows = db.prepare('SELECT * FROM leases').all() as { pid: number }[];
    return rows.filter((l) => !pidAlive(l.pid));
  } finally {
    db.close();
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** stderr is the optional INFO start line and exactly one ERROR line; returns the message. */
function oneErrorLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  assert.doesNotMatch(stderr, /^ {4}at /m, `no stack trace without -v:\n${stderr}`);
  const errors = lines.filter((l) => l.startsWith('   ERROR: '));
  assert.equal(errors.length, 1, `exactly one ERROR line:\n${stderr}`);
  const others = lines.filter((l) => !l.startsWith('   ERROR: '));
  assert.ok(
    others.every((l) => /^ {4}INFO: \$ backy /.test(l)),
    `nothing but the start line and the error:\n${stderr}`,
  );
  assert.ok(stderr.endsWith(`${errors[0]}\n`), 'the error is the last line');
  return errors[0].slice('   ERROR: '.length);
}

describe('hostile input is refused with one line and changes nothing', { concurrency: 4 }, () => {
  let sb: Sandbox;
  let img: string;
  let uid: string;
  let invalidUid: string;
  let commands: Set<string>;
  let lsBefore: string;
  let dbBefore: string;
  let dataBefore: string[];

  before(async () => {
    sb = await Sandbox.create({ defaults: `block_size = ${BS}` });
    img = sb.path('disk.img');
    await writeImage(img, { blocks: 8, blockSize: BS, tail: 100, kinds: (i) => (i % 3 ? 'random' : 'zero') });
    uid = await sb.backup([img, 'vm@one']);
    invalidUid = await sb.backup([img, 'vm@two']);
    // A version found damaged (as scrub or restore would leave it): never a base.
    const db = new Database(sb.dbPath);
    db.prepare("UPDATE versions SET status = 'invalid' WHERE uid = ?").run(invalidUid);
    db.close();
    const help = await sb.ok(['--help']);
    commands = new Set([...help.stdout.matchAll(/^ {2}([a-z]+)\b/gm)].map((m) => m[1]));
    await mkdir(sb.path('adir'));
    lsBefore = (await sb.ok(['-m', 'ls'])).stdout;
    dbBefore = dumpDb(sb.dbPath);
    dataBefore = await listTree(sb.dataDir);
  });

  after(async () => {
    // ls -m, once more, after every case.
    if (sb) assert.equal((await sb.ok(['-m', 'ls'])).stdout, lsBefore);
    // Every case has ended: no lease at all may remain, live or not.
    if (sb) {
      const db = new Database(sb.dbPath, { fileMustExist: true });
      try {
        assert.deepEqual(db.prepare('SELECT * FROM leases').all(), [], 'no lease after all cases');
      } finally {
        db.close();
      }
    }
    await sb?.remove();
  });

  const file = async (name: string, text: string) => {
    await writeFile(sb.path(name), text);
    return sb.path(name);
  };
  const hint =
    (name: string, text: string): Case['args'] =>
    async () => ['backup', '-r', await file(name, text), img, 'vm@hinted'];
  const hintCase = (name: string, text: string, re: RegExp): Case => ({
    name: `hints: ${name}`,
    args: hint(`${name.replace(/\W+/g, '-')}.json`, text),
    code: 1,
    re,
  });
  const size = 8 * BS + 100;
  const config = (name: string, text: string, re: RegExp, args: string[] = ['ls']): Case => ({
    name: `config: ${name}`,
    raw: true,
    args: async () => ['-c', await file(`${name.replace(/\W+/g, '-')}.cfg`, text), ...args],
    code: 1,
    re,
  });
  const cfgWith = (section: string) => () =>
    `${section}\n[MetaBackend]\nengine = sqlite:///${sb.dbPath}\n[DataBackend]\npath = ${sb.dataDir}\n`;

  const cases: Case[] = [
    // ---- hint files ----
    hintCase('not JSON', 'offset=1\nlength=2\n', /hint file .* is not valid JSON: .*$/),
    hintCase('empty file', '', /is not valid JSON/),
    hintCase('an object, not an array', '{"offset":0,"length":1,"exists":"true"}', /expected array/),
    hintCase('null', 'null', /expected array/),
    hintCase('array of numbers', '[0, 65536]', /at \[0\]: .*expected object/),
    hintCase('negative offset', '[{"offset":-1,"length":10,"exists":"true"}]', /at \[0\]\.offset: .*>=0/),
    hintCase('non-integer offset', '[{"offset":1.5,"length":10,"exists":"true"}]', /at \[0\]\.offset: .*int/),
    hintCase(
      'offset above 2^53',
      '[{"offset":9007199254740993,"length":1,"exists":"true"}]',
      /\[0\]\.offset: Too big/,
    ),
    hintCase('offset 1e300', '[{"offset":1e300,"length":1,"exists":"true"}]', /\[0\]\.offset: Too big/),
    hintCase(
      'offset + length above 2^53',
      '[{"offset":9007199254740990,"length":9007199254740990,"exists":"true"}]',
      /too large/,
    ),
    hintCase(
      'offset as a string',
      '[{"offset":"0","length":10,"exists":"true"}]',
      /\[0\]\.offset: .*expected number/,
    ),
    hintCase('length missing', '[{"offset":0,"exists":"true"}]', /\[0\]\.length/),
    hintCase(
      'exists is "maybe"',
      '[{"offset":0,"length":10,"exists":"maybe"}]',
      /\[0\]\.exists: expected true, false/,
    ),
    hintCase('exists is 1', '[{"offset":0,"length":10,"exists":1}]', /\[0\]\.exists/),
    hintCase(
      'second extent bad',
      '[{"offset":0,"length":10,"exists":"true"},{"offset":10,"length":-5,"exists":"true"}]',
      /at \[1\]\.length/,
    ),
    hintCase(
      'past the end of the source',
      JSON.stringify([{ offset: size - 10, length: 11, exists: 'true' }]),
      /ends past the end of the source \(\d+ bytes\)/,
    ),
    hintCase(
      'exists:false past the end',
      JSON.stringify([{ offset: size, length: BS, exists: 'false' }]),
      /past the end/,
    ),
    hintCase(
      'overlapping extents',
      JSON.stringify([
        { offset: 0, length: 2 * BS, exists: 'true' },
        { offset: BS, length: BS, exists: 'false' },
      ]),
      /extents overlap at offset 65536/,
    ),
    hintCase(
      'overlapping extents out of order',
      JSON.stringify([
        { offset: 2 * BS, length: BS, exists: 'true' },
        { offset: 0, length: 2 * BS + 1, exists: 'false' },
      ]),
      /extents overlap at offset 131072 \(extent \[0\]\)/,
    ),
    hintCase(
      'cut short inside an extent',
      '[{"offset":0,"length":10,"exists":"true"},{"offset":65536,"len',
      /is not valid JSON: unexpected end of input inside extent \[1\]/,
    ),
    hintCase('deeply nested JSON', `${'['.repeat(5000)}${']'.repeat(5000)}`, /at \[0\]/),
    {
      name: 'hints: the hint file is a directory',
      args: async () => ['backup', '-r', sb.path('adir'), img, 'x'],
      code: 1,
      re: /cannot read hint file .*adir: .*EISDIR/,
    },
    {
      name: 'hints: an endless file (/dev/zero)',
      args: async () => ['backup', '-r', '/dev/zero', img, 'x'],
      code: 1,
      re: /hint file \/dev\/zero is larger than 256 MiB/,
    },
    {
      name: 'hints: the hint file does not exist',
      args: async () => ['backup', '-r', sb.path('none.json'), img, 'x'],
      code: 1,
      re: /cannot read hint file .*ENOENT/,
    },
    {
      name: 'hints: with stdin as the source',
      args: async () => ['backup', '-r', await file('ok.json', '[]'), '-', 'x'],
      code: 2,
      re: /-r \(hints\) needs a seekable SOURCE/,
    },

    // ---- rbd export-diff streams (refused before any version exists) ----
    {
      name: 'export-diff: not a stream',
      args: async () => ['backup', '--rbd-export-diff', await file('g.diff', 'garbage\n'), '-f', uid, 'vm@d'],
      code: 1,
      re: /is not an rbd export-diff stream/,
    },
    {
      name: 'export-diff: random bytes',
      args: async () => [
        'backup',
        '--rbd-export-diff',
        await file('r.diff', '\u0000\u0001binary\n\r\u001b[31m'),
        '-f',
        uid,
        'vm@d',
      ],
      code: 1,
      re: /is not an rbd export-diff stream: it starts with ".*", expected/,
    },
    {
      name: 'export-diff: a directory',
      args: async () => ['backup', '--rbd-export-diff', sb.path('adir'), '-f', uid, 'vm@d'],
      code: 1,
      re: /is a directory/,
    },

    // ---- config files ----
    config('unknown section', '[Backends]\ntype = file\n', /unknown section \[Backends\]/),
    config('unknown key', '[DEFAULTS]\nblok_size = 65536\n', /unknown key 'blok_size' in \[DEFAULTS\]/),
    config('key outside a section', 'block_size = 65536\n', /key 'block_size' is outside any section/),
    config('bad engine URL', '[MetaBackend]\nengine = mysql://backy:pw@db/backy\n', /engine must be sqlite:/),
    config(
      'malformed PostgreSQL URL',
      '[MetaBackend]\nengine = postgresql://u:pw@[::1\n',
      /not a valid PostgreSQL URL/,
    ),
    config('sqlite URL without a path', '[MetaBackend]\nengine = sqlite:///\n', /sqlite URL has no path/),
    config(
      'unknown backend type',
      '[DataBackend]\ntype = tape\n',
      /\[DataBackend\] type must be 'file' or 's3', got 'tape'/,
    ),
    config(
      's3 without a bucket',
      '[DataBackend]\ntype = s3\n',
      /\[DataBackend\] bucket must be a bucket name/,
    ),
    config('empty data path', '[DataBackend]\npath =\n', /path must not be empty/),
    config(
      'block_size not a number',
      '[DEFAULTS]\nblock_size = 4M\n',
      /block_size must be a whole number, got '4M'/,
    ),
    config('block_size negative', '[DEFAULTS]\nblock_size = -65536\n', /block_size must be a whole number/),
    config('block_size too small', '[DEFAULTS]\nblock_size = 1024\n', /block_size must be between 4096 and/),
    config(
      'block_size huge',
      '[DEFAULTS]\nblock_size = 99999999999999999999\n',
      /block_size must be between/,
    ),
    config('block_size not a multiple of 512', '[DEFAULTS]\nblock_size = 5000\n', /multiple of 512/),
    config(
      'hint_check_blocks negative',
      '[DEFAULTS]\nhint_check_blocks = -1\n',
      /hint_check_blocks must be a whole number/,
    ),
    config(
      'unknown hash function',
      '[DEFAULTS]\nhash_function = md5\n',
      /hash_function must be one of blake3, sha256/,
    ),
    {
      name: 'config: hash function differs from the store',
      raw: true,
      args: async () => ['-c', await file('sha.cfg', cfgWith('[DEFAULTS]\nhash_function = sha256')()), 'ls'],
      code: 1,
      re: /store was created with 'blake3'/,
    },
    config(
      'metadata database path cannot be created (under /proc)',
      '[MetaBackend]\nengine = sqlite:////proc/backy-test/backy.sqlite\n',
      /cannot create metadata database \/proc\/backy-test\/backy\.sqlite: .*ENOENT/,
    ),
    {
      name: 'config: an endless file (/dev/zero)',
      raw: true,
      args: async () => ['-c', '/dev/zero', 'ls'],
      code: 1,
      re: /config file \/dev\/zero is larger than 1 MiB/,
    },
    {
      name: 'config: engine names a directory',
      raw: true,
      args: async () => [
        '-c',
        await file('enginedir.cfg', `[MetaBackend]\nengine = sqlite:///${sb.path('adir')}\n`),
        'ls',
      ],
      code: 1,
      re: /cannot create metadata database .*adir: .*\(EISDIR\)/,
    },
    {
      name: 'config: engine names a file that is not a database',
      raw: true,
      args: async () => [
        '-c',
        await file('engineimg.cfg', `[MetaBackend]\nengine = sqlite:///${img}\n`),
        'ls',
      ],
      code: 1,
      re: /cannot open metadata database .*disk\.img: file is not a database/,
    },
    {
      name: 'config: the config file does not exist',
      raw: true,
      args: async () => ['-c', sb.path('missing.cfg'), 'ls'],
      code: 1,
      re: /config file .*missing\.cfg does not exist/,
    },
    {
      name: 'config: the config path is a directory (unreadable)',
      raw: true,
      args: async () => ['-c', sb.path('adir'), 'ls'],
      code: 1,
      re: /cannot read config file .*adir: .*\(EISDIR\)/,
    },
    {
      name: 'config: $BACKY_CONFIG names a missing file',
      raw: true,
      args: async () => ['ls'],
      code: 1,
      re: /\(from \$BACKY_CONFIG\) does not exist/,
    },

    // ---- command lines ----
    {
      name: 'cli: unknown uid',
      args: async () => ['restore', NIL_UID, sb.path('out.img')],
      code: 1,
      re: /version 00000000-0000-4000-8000-000000000000 not found/,
    },
    {
      name: 'cli: malformed uid (restore)',
      args: async () => ['restore', 'abc', sb.path('out.img')],
      code: 1,
      re: /'abc' is not a version uid/,
    },
    {
      name: 'cli: malformed uid (rm)',
      args: async () => ['rm', "'; DROP TABLE versions; --"],
      code: 1,
      re: /is not a version uid/,
    },
    {
      name: 'cli: malformed base uid',
      args: async () => ['backup', '-f', 'x', img, 'n'],
      code: 1,
      re: /'x' is not a version uid/,
    },
    {
      name: 'cli: unknown base uid',
      args: async () => ['backup', '-f', NIL_UID, img, 'n'],
      code: 1,
      re: /not found/,
    },
    {
      name: 'cli: base is invalid',
      args: async () => ['backup', '-f', invalidUid, img, 'n'],
      code: 1,
      re: /is invalid and cannot be the base of a backup/,
    },
    {
      name: 'cli: restore without TARGET',
      args: async () => ['restore', uid],
      code: 2,
      re: /missing required argument 'target'/,
    },
    {
      name: 'cli: backup without NAME',
      args: async () => ['backup', img],
      code: 2,
      re: /missing required argument 'name'/,
    },
    {
      name: 'cli: backup without operands',
      args: async () => ['backup'],
      code: 2,
      re: /missing required argument 'source'/,
    },
    { name: 'cli: rm without UID', args: async () => ['rm'], code: 2, re: /missing required argument 'uid'/ },
    { name: 'cli: too many operands', args: async () => ['ls', 'a', 'b'], code: 2, re: /too many arguments/ },
    {
      name: 'cli: unknown option',
      args: async () => ['ls', '--bogus'],
      code: 2,
      re: /unknown option '--bogus'/,
    },
    {
      name: 'cli: unknown global option',
      args: async () => ['--bogus', 'ls'],
      code: 2,
      re: /unknown option '--bogus'/,
    },
    {
      name: 'cli: unknown command',
      args: async () => ['frobnicate'],
      code: 2,
      re: /unknown command 'frobnicate'/,
    },
    {
      name: 'cli: NAME with whitespace',
      args: async () => ['backup', img, 'vm one'],
      code: 2,
      re: /must not contain whitespace/,
    },
    {
      name: 'cli: NAME with an escape sequence',
      args: async () => ['backup', img, 'vm\u001b[31mred'],
      code: 2,
      re: /NAME must not contain control characters \("vm\\u001b\[31mred"\)/,
    },
    {
      name: 'cli: NAME of 300 characters',
      args: async () => ['backup', img, 'a'.repeat(300)],
      code: 2,
      re: /NAME is 300 characters long; at most 255/,
    },
    {
      name: 'cli: a file name with a newline stays on one line',
      args: async () => ['backup', '-r', sb.path('no\nsuch.json'), img, 'vm@n'],
      code: 1,
      re: /cannot read hint file .*no\\u000asuch\.json: no such file/,
    },
    { name: 'cli: empty NAME', args: async () => ['backup', img, ''], code: 2, re: /non-empty single line/ },
    {
      name: 'cli: source does not exist',
      args: async () => ['backup', sb.path('none.img'), 'n'],
      code: 1,
      re: /source .* does not exist/,
    },
    {
      name: 'cli: source is a directory',
      args: async () => ['backup', sb.dir, 'n'],
      code: 1,
      re: /is a directory, not an image/,
    },
    {
      name: 'cli: target is the metadata database',
      args: async () => ['restore', '--force', uid, sb.dbPath],
      code: 1,
      re: /is backy's metadata database/,
    },
    {
      name: 'cli: target is the database -wal file',
      args: async () => ['restore', '--force', uid, `${sb.dbPath}-wal`],
      code: 1,
      re: /is backy's metadata database .*-wal/,
    },
    {
      name: 'cli: target is a symlink to the database',
      args: async () => {
        const { symlink } = await import('node:fs/promises');
        const link = sb.path('db-link');
        await symlink(sb.dbPath, link).catch(() => {});
        return ['restore', '--force', uid, link];
      },
      code: 1,
      re: /is backy's metadata database/,
    },
    {
      name: 'cli: target is the data directory',
      args: async () => ['restore', '--force', uid, sb.dataDir],
      code: 1,
      re: /is inside backy's data directory/,
    },
    {
      name: 'cli: target is inside the data directory',
      args: async () => ['restore', uid, join(sb.dataDir, 'restored.img')],
      code: 1,
      re: /is inside backy's data directory/,
    },
    {
      name: 'cli: target is an object file',
      args: async () => {
        const obj = (await listTree(sb.dataDir)).find((l) => !l.endsWith('/'))!.split(' ')[0];
        return ['restore', '--force', uid, join(sb.dataDir, obj)];
      },
      code: 1,
      re: /is inside backy's data directory/,
    },
    {
      name: 'cli: target is a directory',
      args: async () => ['restore', uid, sb.path('adir')],
      code: 1,
      re: /is a directory/,
    },
    {
      name: 'cli: target exists, no --force',
      args: async () => ['restore', uid, img],
      code: 1,
      re: /exists; use --force/,
    },
    {
      name: 'cli: target in a missing directory',
      args: async () => ['restore', uid, sb.path('no/such/dir/out.img')],
      code: 1,
      re: /cannot open restore target .*ENOENT/,
    },
    { name: 'cli: rm unknown uid', args: async () => ['rm', NIL_UID], code: 1, re: /not found/ },
    // export and import, once they exist (the export file format itself: export-import.test.ts)
    {
      name: 'cli: export onto the metadata database',
      needs: 'export',
      args: async () => ['export', uid, sb.dbPath],
      code: 1,
      re: /backy\.sqlite (exists already|is backy's metadata database)/,
    },
    {
      name: 'cli: export into the data directory',
      needs: 'export',
      args: async () => ['export', uid, join(sb.dataDir, 'version.jsonl')],
      code: 1,
      re: /export file .*version\.jsonl is inside backy's data directory/,
    },
    {
      name: 'cli: import a directory',
      needs: 'import',
      args: async () => ['import', sb.path('adir')],
      code: 1,
      re: /adir.*\(?EISDIR\)?/,
    },
    {
      name: 'cli: import the metadata database',
      needs: 'import',
      args: async () => ['import', sb.dbPath],
      code: 1,
      re: /line 1: not valid UTF-8/,
    },
    {
      name: 'cli: import an endless file (/dev/zero)',
      needs: 'import',
      args: async () => ['import', '/dev/zero'],
      code: 1,
      re: /\/dev\/zero line 1: longer than \d+ bytes/,
    },
    {
      name: 'cli: import without FILE',
      needs: 'import',
      args: async () => ['import'],
      code: 2,
      re: /missing required argument/,
    },
    // scrub's -p, once scrub exists
    {
      name: 'cli: scrub -p 0',
      needs: 'scrub',
      args: async () => ['scrub', '-p', '0', uid],
      code: 2,
      re: /PERCENT/,
    },
    {
      name: 'cli: scrub -p 101',
      needs: 'scrub',
      args: async () => ['scrub', '-p', '101', uid],
      code: 2,
      re: /PERCENT/,
    },
    {
      name: 'cli: scrub -p abc',
      needs: 'scrub',
      args: async () => ['scrub', '-p', 'abc', uid],
      code: 2,
      re: /PERCENT/,
    },
    {
      name: 'cli: scrub -s directory',
      needs: 'scrub',
      args: async () => ['scrub', '-s', sb.dir, uid],
      code: 1,
      re: /is a directory/,
    },
  ];

  for (const c of cases) {
    it(c.name, async (t) => {
      if (c.needs && !commands.has(c.needs)) {
        t.skip(`no '${c.needs}' command in this build yet`);
        return;
      }
      const args = await c.args();
      const r = c.raw
        ? await runBacky(args, {
            cwd: sb.dir,
            env: c.name.includes('BACKY_CONFIG') ? { BACKY_CONFIG: sb.path('nope.cfg') } : {},
          })
        : await sb.run(args);
      const message = oneErrorLine(r.stderr);
      t.diagnostic(`case: ${c.name} -> exit ${r.code}: ${message}`);
      assert.equal(r.code, c.code, r.stderr);
      assert.match(message, c.re);
      assert.equal(r.stdout, '', 'nothing on stdout');
      assert.equal(dumpDb(sb.dbPath), dbBefore, 'metadata unchanged');
      assert.deepEqual(leakedLeases(sb.dbPath), [], 'no lease left behind');
      assert.deepEqual(await listTree(sb.dataDir), dataBefore, 'data directory unchanged');
    });
  }
});
