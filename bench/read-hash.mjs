// The hardware reference for the benchmark: one thread reads a file sequentially in 4 MiB
// pieces and hashes it (sha256 via node:crypto or blake3 via @napi-rs/blake-hash), optionally
// comparing every piece with zeros first (what a backup does before hashing).
// Plain JavaScript so that no TypeScript loader adds start-up time to the reference.
// Usage: node bench/read-hash.mjs FILE sha256|blake3 [zero-check]
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { Blake3Hasher } from '@napi-rs/blake-hash';

const [file, algo, zeroCheck] = process.argv.slice(2);
const piece = 4 << 20;
const buf = Buffer.allocUnsafe(piece);
const zeros = Buffer.alloc(piece);
const fh = await open(file, 'r');
const sha = algo === 'sha256' ? createHash('sha256') : undefined;
const b3 = algo === 'blake3' ? new Blake3Hasher() : undefined;
let zeroPieces = 0;
for (let off = 0; ;) {
  const { bytesRead } = await fh.read(buf, 0, piece, off);
  if (bytesRead === 0) break;
  const data = buf.subarray(0, bytesRead);
  off += bytesRead;
  if (zeroCheck && data.equals(zeros.subarray(0, bytesRead))) {
    zeroPieces++;
    continue;
  }
  if (sha) sha.update(data);
  else b3.update(data);
}
await fh.close();
process.stdout.write(`${sha ? sha.digest('hex') : b3.digest('hex')} ${zeroPieces}\n`);
