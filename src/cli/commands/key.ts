import { createKeyFile } from '../../storage/keyfile.js';
import type { Context } from '../context.js';

/** `backy key create FILE`: the key is only ever written to FILE, never printed. */
export async function keyCreateCommand(ctx: Context, file: string) {
  const keys = await createKeyFile(file);
  ctx.log.info(
    `Created key file ${file} (fingerprint ${keys.fingerprint.slice(0, 16)}). Keep a copy somewhere safe: without it the data of a store it encrypts is lost`,
  );
  if (ctx.machine) ctx.out(`key ${keys.fingerprint}`);
}
