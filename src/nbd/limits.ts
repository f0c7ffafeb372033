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
/** All verified blocks, cached or being sent, across connections (12 blocks of 4 MiB). */
export const BLOCK_BUFFERS = 48 << 20;
/**
 * Blocks held by reads spanning several blocks, across connections: those of the largest read
 * (MAX_REQUEST over two 4 MiB blocks more); a read costing more runs alone.
 */
export const SPANNING_BUDGET = MAX_REQUEST + (8 << 20);
/** Bytes of write payload held by requests in flight, across connections. */
export const WRITE_BUDGET = 32 << 20;
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
