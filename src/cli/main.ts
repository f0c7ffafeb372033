/** argv -> command. The only place that turns errors into exit codes. */
import { Command, CommanderError, Option } from 'commander';
import {
  BackyError,
  EXIT_ERROR,
  EXIT_OK,
  EXIT_USAGE,
  ExitStatus,
  InterruptedError,
  errorMessage,
} from '../errors.js';
import { Logger } from '../util/log.js';
import type { Context } from './context.js';
import type { BackupCliOptions } from './commands/backup.js';
import type { CopyCliOptions } from './commands/copy.js';
import type { NbdCliOptions } from './commands/nbd.js';

// Each command's module (and with it kysely, zod, the storage and pipeline code) is loaded only
// when that command runs: `backy --version` or a usage error loads commander alone. The bundle
// is split by esbuild along these dynamic imports (npm run bundle).
const VERSION = '0.1.0';

/** How long an interrupted command may take to release the database and workers before exiting anyway. */
const CLOSE_GRACE_MS = 3000;

export async function main(argv: string[]): Promise<number> {
  const log = new Logger(argv.includes('-v') || argv.includes('--verbose'));
  let ctx: Context | undefined;
  let exitCode = EXIT_OK;
  // A reader that goes away (`backy restore UID - | head`) surfaces as EPIPE on the write in
  // progress, which fails the command with one line; without a listener Node would crash.
  process.stdout.on('error', () => {});

  // SIGINT and SIGTERM abort the command's work through this signal: every long wait in the
  // core is raced with it, the command then names what it leaves behind (an incomplete
  // version, a partial target) and releases what it holds. A second signal exits at once.
  const interrupt = new AbortController();
  const onSignal = (sig: 'SIGINT' | 'SIGTERM') => {
    if (interrupt.signal.aborted) process.exit(new InterruptedError(sig).exitCode);
    interrupt.abort(new InterruptedError(sig));
  };
  const onInt = () => onSignal('SIGINT');
  const onTerm = () => onSignal('SIGTERM');
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onTerm);

  const program = new Command('backy')
    .description('Block-based, deduplicating backup of VM disk images')
    .version(VERSION)
    .option(
      '-c, --config <file>',
      'config file (default: $BACKY_CONFIG, ./backy.cfg, ~/.config/backy/backy.cfg, /etc/backy.cfg)',
    )
    .option('-m, --machine-output', 'machine-readable output on stdout')
    .option('--json', 'results as JSON on stdout')
    .option('-v, --verbose', 'debug logging, stack traces on errors')
    .exitOverride()
    .showHelpAfterError(false)
    .configureOutput({
      writeErr: (s) => process.stderr.write(s),
      // Usage errors in backy's own one-line format, like every other error.
      outputError: (s) => log.error(`${s.trim().replace(/^error: /, '')} (see 'backy --help')`),
    });

  // Each command: set up the context, log the start, run, log the end (INFO lines: on stderr
  // only with -v, so that cron mails carry only warnings and errors; always in the log file).
  const run =
    <A extends unknown[]>(fn: (ctx: Context, ...args: A) => Promise<void>) =>
    async (...args: A) => {
      const g = program.opts<{ config?: string; machineOutput?: boolean; json?: boolean }>();
      const { Context } = await import('./context.js');
      ctx = new Context(log, {
        machine: Boolean(g.machineOutput),
        json: Boolean(g.json),
        config: g.config,
        signal: interrupt.signal,
      });
      ctx.loadConfig(); // a bad config fails before any work
      log.info(`$ backy ${argv.slice(2).join(' ')}`);
      interrupt.signal.throwIfAborted();
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
    .argument(
      '[source]',
      'image file, block device, - for stdin, or an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH)',
    )
    .argument('[name]', 'version name, e.g. vm1@backup1')
    .option('-r, --rbd <hints>', 'rbd diff --format=json output: read only the regions it names')
    .option(
      '--thin-delta <file>',
      "thin_delta XML (LVM thin; --snap1 = the -f base's snapshot, --snap2 = SOURCE): read only what changed",
    )
    .option(
      '--dirty-bitmap <name>',
      'qemu dirty bitmap NAME of the NBD SOURCE (qemu:dirty-bitmap:NAME, e.g. qemu-nbd -B NAME): read only its dirty extents',
    )
    .option('-f, --from <uid>', 'base version: copy its block list and read only what changed')
    .option(
      '--rbd-export-diff <file>',
      'rbd export-diff stream (a file, or - for stdin) to apply onto the base (-f); replaces SOURCE',
    )
    .option('--snapshot-name <snap>', 'record the snapshot the backup was read from (shown by ls)')
    .option('--force-base', "accept a -f base whose NAME (or thin device) differs from the new version's")
    .option(
      '--verify-unhinted',
      'read every block the hints call unchanged and compare it with the base (a full read; stores only changes)',
    )
    .option('--protect', 'protect the new version (from rm and enforce) once it is valid')
    .option('-l, --label <key=value>', 'label the new version (repeatable)', collect, [])
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
    .option('--label <key=value>', 'only versions with this label (repeatable: all must match)', collect, [])
    .action(
      run(async (ctx, name: string | undefined, opts: { label: string[] }) =>
        (await import('./commands/ls.js')).lsCommand(ctx, name, opts),
      ),
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
      'verify stored blocks of version UID (all, or a random PERCENT); -s also compares with SOURCE. ' +
        '--all: every version, longest-unscrubbed first. Exit 3 on damage',
    )
    .usage('[options] UID\n       backy scrub --all [-p PERCENT] [--older-than DURATION]')
    .argument('[uid]')
    .option('-p, --percent <percent>', 'check a random PERCENT of the blocks (0 < PERCENT <= 100)')
    .option('-s, --source <source>', 'deep scrub: also compare each checked block with this image')
    .option('--all', 'scrub every complete version (valid or invalid), longest-unscrubbed first')
    .option(
      '--older-than <duration>',
      'with --all: only versions not scrubbed within DURATION (e.g. 7d, 12h)',
    )
    .action(
      async (
        uid: string | undefined,
        opts: { percent?: string; source?: string; all?: boolean; olderThan?: string },
      ) => {
        const { scrubOperands } = await import('./commands/scrub.js');
        scrubOperands(uid, opts); // usage errors before anything is logged
        return run(async (ctx) =>
          opts.all
            ? (await import('./commands/scrub-all.js')).scrubAllCommand(ctx, opts)
            : (await import('./commands/scrub.js')).scrubCommand(ctx, uid!, opts),
        )();
      },
    );

  program
    .command('recover')
    .description(
      'rebuild the metadata database from the store: add every version whose copy the store holds and the database lacks (or only UIDs)',
    )
    .argument('[uid...]')
    .option('--dry-run', 'only show what would be recovered')
    .option(
      '--forget',
      'give up the versions UID... whose copies cannot be recovered (cleanup may then free their blocks)',
    )
    .action(
      run(async (ctx, uids: string[], opts: { dryRun?: boolean; forget?: boolean }) =>
        opts.forget
          ? (await import('./commands/recover-forget.js')).forgetCommand(ctx, uids, opts)
          : (await import('./commands/recover.js')).recoverCommand(ctx, uids, opts),
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
    .command('protect')
    .description('protect versions: rm (even with --force) and enforce refuse to remove them')
    .argument('<uid...>')
    .action(
      run(async (ctx, uids: string[]) =>
        (await import('./commands/protect.js')).protectCommand(ctx, uids, true),
      ),
    );

  program
    .command('unprotect')
    .description('remove the protection of versions')
    .argument('<uid...>')
    .action(
      run(async (ctx, uids: string[]) =>
        (await import('./commands/protect.js')).protectCommand(ctx, uids, false),
      ),
    );

  program
    .command('label')
    .description('set (KEY=VALUE) and remove (KEY-) labels of version UID')
    .argument('<uid>')
    .argument('<changes...>')
    .action(
      run(async (ctx, uid: string, changes: string[]) =>
        (await import('./commands/label.js')).labelCommand(ctx, uid, changes),
      ),
    );

  program
    .command('enforce')
    .description(
      'retention: remove the valid, unprotected versions of each NAME (all names if none) that RULES ' +
        '(e.g. latest3,hours24,days7,weeks4,months12,years3) do not keep; prints each removed uid',
    )
    .argument('<rules>')
    .argument('[names...]')
    .option('--dry-run', 'only print what would be removed')
    .option('--local-time', 'calendar buckets in the local time zone instead of UTC')
    .action(
      run(async (ctx, rules: string, names: string[], opts: { dryRun?: boolean; localTime?: boolean }) =>
        (await import('./commands/enforce.js')).enforceCommand(ctx, rules, names, opts),
      ),
    );

  program
    .command('du')
    .description(
      'space used by versions (all, or the given UIDs) and the store: sparse, referenced, exclusive, ratios',
    )
    .argument('[uids...]')
    .action(run(async (ctx, uids: string[]) => (await import('./commands/du.js')).duCommand(ctx, uids)));

  program
    .command('run')
    .description(
      'run jobs ([job NAME] sections) now: the named ones, all, or with --due those due; max_parallel at a time; one line per job; exit 1 if any failed',
    )
    .argument('[jobs...]')
    .option('--due', 'only the jobs that are due (every has passed since their last success)')
    .action(
      run(async (ctx, jobs: string[], opts: { due?: boolean }) =>
        (await import('./commands/run.js')).runCommand(ctx, jobs, opts),
      ),
    );

  program
    .command('daemon')
    .description(
      'run the jobs when due, cleanup and scrubs as configured ([scheduler]); serve /metrics and /jobs on listen; ' +
        'SIGHUP reloads the config, SIGTERM waits for running jobs (bounded) and exits 0. Does not daemonize',
    )
    .option(
      '--stop-timeout <seconds>',
      'on SIGTERM/SIGINT, how long running jobs may take to finish before they are stopped (default 60)',
    )
    .action(async (opts: { stopTimeout?: string }) => {
      const { daemonCommand, parseStopTimeout } = await import('./commands/daemon.js');
      const graceSeconds = parseStopTimeout(opts.stopTimeout); // usage errors before anything is logged
      return run(async (ctx) => daemonCommand(ctx, { graceSeconds }))();
    });

  program
    .command('jobs')
    .description(
      'the configured jobs: source, last success and its age, last result, next due, versions, state',
    )
    .action(run(async (ctx) => (await import('./commands/jobs.js')).jobsCommand(ctx)));

  program
    .command('check')
    .description(
      'Nagios/Icinga plugin for the jobs (all, or the named ones): one line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN',
    )
    .argument('[jobs...]')
    .action(async (jobs: string[]) => {
      const { checkCommand, checkUnknown } = await import('./commands/check.js');
      try {
        await run(async (ctx) => checkCommand(ctx, jobs))();
      } catch (err) {
        // Whatever keeps the check from being made (a bad config, an unreachable database) is
        // UNKNOWN to the monitoring system, on stdout where it reads it; the log says why.
        if (!(err instanceof ExitStatus) && err instanceof BackyError) log.error(err.message);
        throw checkUnknown(undefined, err);
      }
    });

  program
    .command('copy')
    .description(
      'copy versions (UID..., --name NAME..., or --all) to the database and store that the --to config names: blocks re-encoded for it, only what it lacks is sent',
    )
    .argument('[uids...]')
    .requiredOption('--to <config>', "the target's config file (its database and data store)")
    .option('--name <name>', 'every version named NAME (repeatable)', collect, [])
    .option('--all', 'every version')
    .option('--since <duration>', 'only versions made within DURATION (e.g. 36h, 7d, 2w)')
    .option('--dry-run', 'only show what would be copied')
    .action(async (uids: string[], opts: CopyCliOptions) => {
      const { copyCommand, copyOperands } = await import('./commands/copy.js');
      copyOperands(uids, opts); // usage errors before anything is logged
      return run(async (ctx) => copyCommand(ctx, uids, opts))();
    });

  const key = program.command('key').description('encryption keys');
  key
    .command('create')
    .description('write a new random key file FILE (mode 0600; never overwrites)')
    .argument('<file>')
    .option(
      '--passphrase',
      'seal the key under a passphrase (from BACKY_NEW_PASSPHRASE, or typed twice on the terminal)',
    )
    .action(
      run(async (ctx, file: string, opts: { passphrase?: boolean }) =>
        (await import('./commands/key.js')).keyCreateCommand(ctx, file, opts),
      ),
    );
  key
    .command('passphrase')
    .description(
      "add or change the passphrase of key file FILE (--remove: store the key unsealed); the store's key stays the same",
    )
    .argument('<file>')
    .option('--remove', 'remove the passphrase: the key is stored in the clear (mode 0600)')
    .action(
      run(async (ctx, file: string, opts: { remove?: boolean }) =>
        (await import('./commands/key.js')).keyPassphraseCommand(ctx, file, opts),
      ),
    );

  program
    .command('nbd')
    .description(
      'serve versions over NBD (export name = version uid) until SIGINT/SIGTERM; -w: copy-on-write into a new version',
    )
    .option('-a, --address <address>', 'address to listen on (default 127.0.0.1)')
    .option('-p, --port <port>', 'TCP port (default 10809)')
    .option('-u, --socket <path>', 'listen on a Unix socket (created 0600) instead of TCP')
    .option('-w, --write', 'copy-on-write: writes go to a new version, completed when the client disconnects')
    .option('--discard', 'with -w: throw the writes away at disconnect')
    .option(
      '--handshake-timeout <seconds>',
      'close a connection that has not finished the NBD handshake within this time (default 30)',
    )
    .option(
      '--stall-timeout <seconds>',
      'close a connection that leaves its replies unread, or stops in the middle of a request, this long (default 60)',
    )
    .option(
      '--tls-psk <file>',
      "TLS with pre-shared keys: 'username:hexkey' lines (nbdkit's, psktool's format), mode 0600",
    )
    .option('--tls-cert <file>', 'TLS with this X.509 certificate (PEM); needs --tls-key')
    .option('--tls-key <file>', 'the private key of --tls-cert (PEM)')
    .option('--tls-ca <file>', 'with --tls-cert: require client certificates signed by this CA (PEM)')
    .option('--tls-only', 'refuse clients that do not start TLS')
    .option(
      '--insecure',
      'allow a non-loopback address without --tls-only (anyone reaching it reads every version)',
    )
    .action(async (opts: NbdCliOptions) => {
      const { nbdCommand, nbdOptions } = await import('./commands/nbd.js');
      nbdOptions(opts); // usage errors before anything is logged
      return run(async (ctx) => nbdCommand(ctx, opts))();
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    exitCode = handleError(interrupted(err, interrupt.signal), log);
    // Set at once: after a failure, work still in flight (a restore's blocks waiting for a
    // buffer) can leave close() pending forever; Node then exits when nothing is left to run,
    // before main returns, and a failed restore would exit 0.
    process.exitCode = exitCode;
  } finally {
    const closed = ctx?.close().catch(() => {});
    if (interrupt.signal.aborted) {
      // Work abandoned by the interruption may still wait on input or output that never comes
      // (stdin, a pipe nobody reads): exit rather than wait for the event loop to drain.
      await Promise.race([closed, new Promise((r) => setTimeout(r, CLOSE_GRACE_MS).unref())]);
      process.exit(exitCode);
    }
    await closed;
    process.off('SIGINT', onInt);
    process.off('SIGTERM', onTerm);
  }
  return exitCode;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/**
 * After a signal every failure is the interruption: work torn down by it may fail in other
 * ways first (a closed pool, a destroyed stream), but the user stopped the command.
 */
function interrupted(err: unknown, signal: AbortSignal): unknown {
  if (!signal.aborted || err instanceof InterruptedError || err instanceof CommanderError) return err;
  const reason = signal.reason as InterruptedError;
  return reason.leaving(errorMessage(err));
}

function handleError(err: unknown, log: Logger): number {
  if (err instanceof CommanderError) {
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT_OK;
    // `backy help` asks for help (exit 0); plain `backy` with no command is a usage error: commander
    // prints the help to stderr then, and says so with a non-zero exitCode.
    if (err.code === 'commander.help') return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    return EXIT_USAGE; // commander has printed its one-line message
  }
  if (err instanceof ExitStatus) return err.exitCode;
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
