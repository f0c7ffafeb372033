import { createKeyFile, rewrapKeyFile } from '../../storage/keyfile.js';
import type { Context } from '../context.js';
import { newPassphrase, passphraseSource } from '../passphrase.js';

/** `backy key create FILE [--passphrase]`: the key is only ever written to FILE, never printed. */
export async function keyCreateCommand(ctx: Context, file: string, opts: { passphrase?: boolean } = {}) {
  const passphrase = opts.passphrase ? await newPassphrase(`key file ${file}`) : undefined;
  const keys = await createKeyFile(file, passphrase);
  ctx.log.notice(
    `Created key file ${file} (fingerprint ${keys.fingerprint.slice(0, 16)}${passphrase ? ', sealed with a passphrase' : ''}). Keep a copy somewhere safe: without it${passphrase ? ' and its passphrase' : ''} the data of a store it encrypts is lost`,
  );
  if (ctx.json) {
    ctx.out(JSON.stringify({ key_file: file, fingerprint: keys.fingerprint, sealed: Boolean(passphrase) }));
  } else if (ctx.machine) ctx.out(`key ${keys.fingerprint}`);
}

/**
 * `backy key passphrase FILE [--remove]`: reseals the same key (the store's fingerprint does not
 * change) under a new passphrase, or stores it unsealed. The current passphrase, if any, comes
 * from the usual sources (BACKY_PASSPHRASE, BACKY_PASSCOMMAND, the terminal).
 */
export async function keyPassphraseCommand(ctx: Context, file: string, opts: { remove?: boolean } = {}) {
  const current = passphraseSource();
  const next = opts.remove ? undefined : () => newPassphrase(`key file ${file}`);
  const keys = await rewrapKeyFile(file, current, next);
  ctx.log.info(
    opts.remove
      ? `Key file ${file} now holds the key unsealed (fingerprint ${keys.fingerprint.slice(0, 16)}); protect the file itself`
      : `Key file ${file} is now sealed with the new passphrase (fingerprint ${keys.fingerprint.slice(0, 16)}, unchanged)`,
  );
  if (ctx.json)
    ctx.out(JSON.stringify({ key_file: file, fingerprint: keys.fingerprint, sealed: !opts.remove }));
  else if (ctx.machine) ctx.out(`key ${keys.fingerprint}`);
}
