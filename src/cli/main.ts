/** argv -> command. The only place that turns errors into exit codes. */
import { Command, CommanderError, Option } from 'commander';
import { BackyError, EXIT_ERROR, EXIT_OK, EXIT_USAGE, errorMessage } from '../errors.js';
import { Logger } from '../util/log.js';
import type { Context } from './context.js';
import type { BackupCliOptions } from './commands/backup.js';
import type { NbdCliOptions } from './commands/nbd.js';

// Each command's module (and with it kysely, zod, the storage and pipeline code) is loaded only
// when that command runs: `backy --version` or a usage error loads commander alone. The bundle
// is split by esbuild along these dynamic imports (npm run bundle).
const VERSION = '0.1.0';

export async function main(argv: string[]): Promise<number> {
  const log = new Logger(argv.includes('-v') || argv.includes('--verbose'));
  let ctx: Context | undefined;
  let exitCode = EXIT_OK;
  // A reader that goes away (`backy restore UID - | head`) surfaces as EPIPE on the write in
  // progress, which fails the command with one line; without a listener Node would crash.
  process.stdout.on('error', () => {});

  const program = new Command('backy')
    .description('Block-based, deduplicating backup of VM disk images')
    .version(VERSION)
    .option(
      '-c, --config <file>',
      'config file (default: $BACKY_CONFIG, ./backy.cfg, ~/.config/backy/backy.cfg, /etc/backy.cfg)',
    )
    .option('-m, --machine-output', 'machine-readable output on stdout')
    .option('-v, --verbose', 'debug logging, stack traces on errors')
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      // Usage errors in backy's own one-line format, like every other error.
      outputError: (s) => log.error(`${s.trim().replace(/^error: /, '')} (see 'backy --help')`),
    });

  // Each command: set up the context, log the start, run, log the end.
  const run =
    <A extends unknown[]>(fn: (ctx: Context, ...args: A) => Promise<void>) =>
    async (...args: A) => {
      const g = program.opts<{ config?: string; machineOutput?: boolean }>();
      const { Context } = await import('./context.js');
      ctx = new Context(log, { machine: Boolean(g.machineOutput), config: g.config });
      ctx.loadConfig(); // a bad config fails before any work
      log.info(`$ backy ${argv.slice(2).join(' ')}`);
      await fn(ctx, ...args);
      log.info('Backy complete.');
    };

  program
    .command('backup')
    .description(
      'back up SOURCE (file, block device or - for stdin) as a new version NAME; prints the new uid. ' +
        'With --rbd-export-diff, the stream is the source and only NAME is given',
    )
    .usage('[options] SOURCE NAME\n       backy backup --rbd-export-diff FILE|- [-f UID] NAME')
    // Both optional for commander: with --rbd-export-diff only NAME is given; the command checks.
    .argument('[source]', 'image file, block device, or - for stdin')
    .argument('[name]', 'version name, e.g. vm1@backup1')
    .option('-r, --rbd <hints>', 'rbd diff --format=json output: read only the regions it names')
    .option('-f, --from <uid>', 'base version: copy its block list and read only what changed')
    .option(
      '--rbd-export-diff <file>',
      'rbd export-diff stream (a file, or - for stdin) to apply onto the base (-f); replaces SOURCE',
    )
    .option('--snapshot-name <snap>', 'record the snapshot the backup was read from (shown by ls)')
    .action(async (a: string | undefined, b: string | undefined, opts: BackupCliOptions) => {
      const { backupCommand, backupOperands } = await import('./commands/backup.js');
      backupOperands(a, b, opts); // usage errors before anything is logged
      return run(async (ctx) => backupCommand(ctx, a, b, opts))();
    });

  program
    .command('restore')
    .description('write version UID to TARGET (file, block device, or - for stdout)')
    .argument('<uid>')
    .argument('<target>')
    .option('-s, --sparse', 'do not write zero blocks (the target must read back zeros)')
    .option('--force', 'overwrite an existing regular file')
    .action(
      run(async (ctx, uid: string, target: string, opts: { sparse?: boolean; force?: boolean }) =>
        (await import('./commands/restore.js')).restoreCommand(ctx, uid, target, opts),
      ),
    );

  program
    .command('ls')
    .description('list versions, optionally only those named NAME')
    .argument('[name]')
    .action(
      run(async (ctx, name: string | undefined) => (await import('./commands/ls.js')).lsCommand(ctx, name)),
    );

  program
    .command('rm')
    .description("remove a version's metadata (its blocks go at the next cleanup if nothing else uses them)")
    .argument('<uid>')
    .addOption(new Option('--force', 'remove even while its backup is still running'))
    .action(
      run(async (ctx, uid: string, opts: { force?: boolean }) =>
        (await import('./commands/rm.js')).rmCommand(ctx, uid, opts),
      ),
    );

  program
    .command('scrub')
    .description(
      'verify stored blocks of version UID (all, or a random PERCENT); -s also compares with SOURCE. Exit 3 on damage',
    )
    .argument('<uid>')
    .option('-p, --percent <percent>', 'check a random PERCENT of the blocks (0 < PERCENT <= 100)')
    .option('-s, --source <source>', 'deep scrub: also compare each checked block with this image')
    .action(
      run(async (ctx, uid: string, opts: { percent?: string; source?: string }) =>
        (await import('./commands/scrub.js')).scrubCommand(ctx, uid, opts),
      ),
    );

  program
    .command('cleanup')
    .description('delete stored blocks that no version references (safe while backups run)')
    .option('--dry-run', 'only report what would be deleted')
    .action(
      run(async (ctx, opts: { dryRun?: boolean }) =>
        (await import('./commands/cleanup.js')).cleanupCommand(ctx, opts),
      ),
    );

  program
    .command('export')
    .description("write version UID's metadata to FILE (- for stdout)")
    .argument('<uid>')
    .argument('<file>')
    .action(
      run(async (ctx, uid: string, file: string) =>
        (await import('./commands/export.js')).exportCommand(ctx, uid, file),
      ),
    );

  program
    .command('import')
    .description('add a version from an export FILE (- for stdin); prints its uid')
    .argument('<file>')
    .action(
      run(async (ctx, file: string) => (await import('./commands/import.js')).importCommand(ctx, file)),
    );

  program
    .command('nbd')
    .description(
      'serve versions over NBD (export name = version uid) until SIGINT/SIGTERM; -w: copy-on-write into a new version',
    )
    .option('-a, --address <address>', 'address to listen on (default 127.0.0.1)')
    .option('-p, --port <port>', 'TCP port (default 10809)')
    .option('-u, --socket <path>', 'listen on a Unix socket (created 0600) instead of TCP')
    .option('-w, --write', 'copy-on-write: writes go to a new version, completed at a clean disconnect')
    .option('--discard', 'with -w: throw the writes away at disconnect')
    .action(async (opts: NbdCliOptions) => {
      const { nbdCommand, nbdOptions } = await import('./commands/nbd.js');
      nbdOptions(opts); // usage errors before anything is logged
      return run(async (ctx) => nbdCommand(ctx, opts))();
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    exitCode = handleError(err, log);
    // Set at once: after a failure, work still in flight (a restore's blocks waiting for a
    // buffer) can leave close() pending forever; Node then exits when nothing is left to run,
    // before main returns, and a failed restore would exit 0.
    process.exitCode = exitCode;
  } finally {
    await ctx?.close().catch(() => {});
  }
  return exitCode;
}

function handleError(err: unknown, log: Logger): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT_OK;
    // `backy help` asks for help (exit 0); plain `backy` with no command is a usage error: commander
    // prints the help to stderr then, and says so with a non-zero exitCode.
    if (err.code === 'commander.help') return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    return EXIT_USAGE; // commander has printed its one-line message
  }
  if (err instanceof BackyError) {
    log.error(err.message);
    if (log.verbose && err.stack) process.stderr.write(`${err.stack}\n`);
    return err.exitCode;
  }
  const code = (err as { code?: unknown } | undefined)?.code;
  if (code === 'EPIPE') {
    log.error('the output pipe was closed before all output was written (EPIPE)');
    return EXIT_ERROR;
  }
  if (typeof code === 'string' && code.startsWith('SQLITE_')) {
    // better-sqlite3's errors: name the database and, for the common case, what to do.
    const hint = code === 'SQLITE_FULL' ? '; free space on its file system and run the command again' : '';
    log.error(`metadata database error: ${errorMessage(err)} (${code})${hint}`);
    if (log.verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return EXIT_ERROR;
  }
  log.error(`unexpected error: ${errorMessage(err)}${log.verbose ? '' : ' (run with -v for details)'}`);
  if (log.verbose && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  return EXIT_ERROR;
}
