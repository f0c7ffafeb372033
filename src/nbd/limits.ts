/**
 * The NBD server's bounds in one place: what one client may ask for, and what all connections
 * together may hold (the module doc of server.ts tells how they add up).
 */
/** Largest read or write a client may ask for (advertised as the maximum block size). */
export const MAX_REQUEST = 32 << 20;
/** Option data longer than this is refused (names are at most 4096 bytes). */
export const MAX_OPTION_DATA = 64 << 10;
/** A client haggling longer than this many options is dropped. */
export const MAX_OPTIONS = 1024;
/** Requests of one connection in flight at once. */
export const MAX_IN_FLIGHT = 64;
/**
 * What one connection's reads may hold of the block buffers (ReadAccount): read replies are
 * sent a block at a time, and a block stays held until its chunk has been handed to the
 * kernel, so a client that does not read its replies holds two blocks (of 4 MiB; at least two
 * of any size) and waits for its own replies to drain; the others go on.
 */
export const READ_SHARE = 8 << 20;
/**
 * What all connections' reads may hold together: five clients that never read their replies
 * fill it (until the stall timeout closes them); one leaves 32 MiB to everyone else.
 */
export const READ_BUDGET = 40 << 20;
/**
 * All verified blocks, cached or being sent, across connections (12 blocks of 4 MiB):
 * READ_BUDGET and room for the blocks that read-ahead and copy-on-write fetch (each holds one
 * for a moment), so that a block that has its charge always gets its buffer.
 */
export const BLOCK_BUFFERS = READ_BUDGET + (8 << 20);
/** Modified blocks of all -w connections together, not stored yet (8 blocks of 4 MiB). */
export const DIRTY_BUDGET = 32 << 20;
/** Modified blocks one -w connection keeps before storing its oldest. */
export const DIRTY_LIMIT = 8;
/** Modified blocks being stored (hashed, encoded, written) at once, across connections. */
export const STORE_SLOTS = 4;
/** A write's payload is read and applied this many bytes at a time (never held whole). */
export const WRITE_CHUNK = 256 << 10;
/**
 * Default time a connection may make no progress (`--stall-timeout`): with replies waiting
 * that it does not read, or in the middle of a request whose bytes stopped coming. A client
 * idle between requests (a VM booted from a backup) is never closed.
 */
export const STALL_TIMEOUT_MS = 60_000;
/** Default time from connect to the start of transmission (`--handshake-timeout`). */
export const HANDSHAKE_TIMEOUT_MS = 30_000;
/**
 * Connections in the handshake at once. Honest clients finish it in milliseconds and open few
 * connections (nbdcopy 4, qemu 1 per drive), so 32 covers several clients starting together;
 * only a flood or stuck clients fill it, and then each can make the server hold about 1.1 MiB
 * (ByteReader's high water of unread input, 64 KiB of option data): ~35 MiB for all of them,
 * less than the block buffers, until the timeout frees them.
 */
export const MAX_HANDSHAKES = 32;
/**
 * Connections in the handshake at once from one peer address (TCP): a single peer holding
 * idle sockets open, or reconnecting as each times out, cannot take all MAX_HANDSHAKES places
 * and lock every other client out. nbdcopy opens 4 connections at once; qemu 1 per drive.
 */
export const MAX_HANDSHAKES_PER_PEER = 8;
