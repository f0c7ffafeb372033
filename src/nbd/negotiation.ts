/**
 * The NBD server's handshake: fixed newstyle greeting, client flags, and option haggling up to
 * NBD_OPT_GO or NBD_OPT_EXPORT_NAME (which open the export through the ExportSession) or
 * NBD_OPT_ABORT. Unknown and malformed options get the protocol's errors; what the protocol
 * has no answer for (bad magic, unknown client flags, an unknown NBD_OPT_EXPORT_NAME, too many
 * options) drops the connection.
 *
 * TLS (NBD_OPT_STARTTLS, with --tls-psk or --tls-cert): the reply is sent in plaintext, then
 * the TLS handshake, then haggling goes on encrypted with what was negotiated before
 * forgotten. Bytes that arrived after STARTTLS and before its reply could only have been
 * injected by someone on the path: the connection is dropped. With --tls-only every option
 * but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD until TLS is on (the
 * protocol's FORCEDTLS), and NBD_OPT_EXPORT_NAME, which has no error reply, drops.
 */
import type { Log, Wire } from './connection.js';
import { DropConnection } from './connection.js';
import { MAX_OPTIONS, MAX_OPTION_DATA, MAX_REQUEST } from './limits.js';
import * as P from './protocol.js';
import type { NbdServer, NbdServerOptions } from './server.js';
import type { ExportSession } from './session.js';

/** The id of base:allocation, the only metadata context served. */
export const BASE_ALLOCATION_ID = 1;

interface MetaSelection {
  name: string;
  baseAllocation: boolean;
}

/** What transmission needs to know of the negotiation. */
export interface Negotiated {
  structured: boolean;
  meta: MetaSelection | undefined;
}

export class Negotiation {
  readonly #server: NbdServer;
  readonly #opts: NbdServerOptions;
  readonly #wire: Wire;
  readonly #session: ExportSession;
  readonly #log: Log;
  #noZeroes = false;
  #secure = false;
  #toldTlsRequired = false;
  #structured = false;
  #meta: MetaSelection | undefined;

  constructor(server: NbdServer, opts: NbdServerOptions, wire: Wire, session: ExportSession, log: Log) {
    this.#server = server;
    this.#opts = opts;
    this.#wire = wire;
    this.#session = session;
    this.#log = log;
  }

  /** Greets and haggles; the negotiated state once transmission starts, undefined on NBD_OPT_ABORT. */
  async run(): Promise<Negotiated | undefined> {
    this.#wire.send(P.encodeHandshake(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES));
    const clientFlags = P.decodeClientFlags(await this.#wire.reader.read(4));
    if ((clientFlags & ~P.CLIENT_FLAGS_KNOWN) !== 0)
      throw new DropConnection(`unknown client flags 0x${clientFlags.toString(16)}`);
    this.#noZeroes = (clientFlags & P.FLAG_NO_ZEROES) !== 0;
    if (!(await this.#haggle())) return undefined;
    return { structured: this.#structured, meta: this.#meta };
  }

  /** Returns true when transmission starts, false when the client aborted. */
  async #haggle(): Promise<boolean> {
    for (let count = 0; count < MAX_OPTIONS; count++) {
      const { option, length } = P.decodeOptionHeader(await this.#wire.reader.read(P.OPTION_HEADER_SIZE));
      if (length > MAX_OPTION_DATA) {
        if (option === P.OPT.EXPORT_NAME) throw new DropConnection(`export name of ${length} bytes`);
        await this.#wire.reader.skip(length);
        this.#reply(option, P.REP.ERR_TOO_BIG, `option data of ${length} bytes is too long`);
        continue;
      }
      const data = await this.#wire.reader.read(length);
      if (this.#server.closing) {
        this.#reply(option, P.REP.ERR_SHUTDOWN, 'the server is shutting down');
        throw new DropConnection('server shutting down');
      }
      if (this.#opts.tlsOnly && !this.#secure && option !== P.OPT.STARTTLS && option !== P.OPT.ABORT) {
        if (option === P.OPT.EXPORT_NAME)
          throw new DropConnection('NBD_OPT_EXPORT_NAME without TLS (--tls-only)');
        this.#reply(option, P.REP.ERR_TLS_REQD, 'this server requires TLS (NBD_OPT_STARTTLS; nbds:// URIs)');
        if (!this.#toldTlsRequired) this.#log('info', `refused option ${option} without TLS (--tls-only)`);
        this.#toldTlsRequired = true;
        continue;
      }
      try {
        const done = await this.#option(option, data);
        if (done !== undefined) return done;
      } catch (err) {
        if (!(err instanceof P.NbdProtocolError)) throw err;
        this.#reply(option, P.REP.ERR_INVALID, err.message);
      }
    }
    throw new DropConnection(`more than ${MAX_OPTIONS} options`);
  }

  #reply(option: number, type: number, message = ''): void {
    this.#wire.send(P.encodeOptionReply(option, type, Buffer.from(message, 'utf8')));
  }

  /** Handles one option; true: start transmission; false: end; undefined: go on haggling. */
  async #option(option: number, data: Buffer): Promise<boolean | undefined> {
    const { OPT, REP } = P;
    switch (option) {
      case OPT.EXPORT_NAME: {
        const name = data.toString('utf8');
        const v = await this.#server.findExport(name);
        // The only answer this option allows to an unknown name is a closed connection.
        if (!v) throw new DropConnection(`NBD_OPT_EXPORT_NAME: no export '${name.slice(0, 80)}'`);
        await this.#session.open(v);
        this.#wire.send(P.encodeExportNameReply(v.sizeBytes, this.#flags(), this.#noZeroes));
        return true;
      }
      case OPT.ABORT:
        this.#reply(option, REP.ACK);
        return false;
      case OPT.LIST: {
        if (data.length !== 0) {
          this.#reply(option, REP.ERR_INVALID, 'NBD_OPT_LIST takes no data');
          return undefined;
        }
        for (const v of await this.#server.listExports()) {
          this.#wire.send(P.encodeOptionReply(option, REP.SERVER, P.encodeServerReply(v.uid, v.name)));
          await this.#wire.drained();
        }
        this.#reply(option, REP.ACK);
        return undefined;
      }
      case OPT.STRUCTURED_REPLY:
        if (data.length !== 0) this.#reply(option, REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else if (this.#structured) this.#reply(option, REP.ERR_INVALID, 'structured replies are already on');
        else {
          this.#structured = true;
          this.#reply(option, REP.ACK);
        }
        return undefined;
      case OPT.INFO:
      case OPT.GO: {
        const req = P.decodeInfoRequest(data);
        const v = await this.#server.findExport(req.name);
        if (!v) {
          this.#reply(
            option,
            REP.ERR_UNKNOWN,
            `no export '${req.name.slice(0, 80)}' (export names are version uids)`,
          );
          return undefined;
        }
        const infos = [
          P.encodeInfoExport(v.sizeBytes, this.#flags()),
          P.encodeInfoBlockSize(1, 4096, MAX_REQUEST),
        ];
        if (req.infos.includes(P.INFO.NAME)) infos.push(P.encodeInfoName(v.uid));
        if (req.infos.includes(P.INFO.DESCRIPTION)) {
          infos.push(Buffer.concat([Buffer.from([0, P.INFO.DESCRIPTION]), Buffer.from(v.name, 'utf8')]));
        }
        if (option === OPT.GO) await this.#session.open(v);
        for (const i of infos) this.#wire.send(P.encodeOptionReply(option, REP.INFO, i));
        this.#reply(option, REP.ACK);
        return option === OPT.GO ? true : undefined;
      }
      case OPT.LIST_META_CONTEXT:
      case OPT.SET_META_CONTEXT: {
        const set = option === OPT.SET_META_CONTEXT;
        if (set) this.#meta = undefined; // replaced even when this one fails
        if (!this.#structured) {
          this.#reply(option, REP.ERR_INVALID, 'negotiate structured replies first');
          return undefined;
        }
        const req = P.decodeMetaContextRequest(data);
        if (!(await this.#server.findExport(req.name))) {
          this.#reply(option, REP.ERR_UNKNOWN, `no export '${req.name.slice(0, 80)}'`);
          return undefined;
        }
        const match = set
          ? req.queries.includes(P.BASE_ALLOCATION)
          : req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === P.BASE_ALLOCATION);
        if (match) {
          this.#wire.send(
            P.encodeOptionReply(
              option,
              REP.META_CONTEXT,
              P.encodeMetaContextReply(set ? BASE_ALLOCATION_ID : 0, P.BASE_ALLOCATION),
            ),
          );
        }
        if (set) this.#meta = { name: req.name, baseAllocation: match };
        this.#reply(option, REP.ACK);
        return undefined;
      }
      case OPT.STARTTLS:
        await this.#startTls(data);
        return undefined;
      default:
        this.#reply(option, REP.ERR_UNSUP, `option ${option} is not supported`);
        return undefined;
    }
  }

  async #startTls(data: Buffer): Promise<void> {
    const { OPT, REP } = P;
    const tls = this.#opts.tls;
    if (!tls) return this.#reply(OPT.STARTTLS, REP.ERR_POLICY, 'TLS is not configured on this server');
    if (data.length !== 0)
      return this.#reply(OPT.STARTTLS, REP.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    if (this.#secure) return this.#reply(OPT.STARTTLS, REP.ERR_INVALID, 'TLS is already on');
    if (this.#wire.reader.unread > 0)
      throw new DropConnection('data after NBD_OPT_STARTTLS, before its reply');
    // Nothing more may be read in plaintext: the next bytes are the client's TLS hello.
    this.#wire.reader.detach();
    const raw = this.#wire.socket;
    this.#wire.send(P.encodeOptionReply(OPT.STARTTLS, REP.ACK, Buffer.alloc(0)));
    let secured;
    try {
      secured = await tls.upgrade(raw);
    } catch (err) {
      throw new DropConnection((err as Error).message);
    }
    this.#wire.upgrade(secured.socket);
    this.#secure = true;
    // What was negotiated in plaintext could have been altered on the way: start afresh.
    this.#structured = false;
    this.#meta = undefined;
    const { protocol, cipher, peer } = secured.info;
    this.#log(
      'info',
      `TLS on (${protocol}, ${cipher}${peer ? `, ${tls.kind === 'psk' ? 'PSK user' : 'client'} ${peer}` : ''})`,
    );
  }

  #flags(): number {
    const { TFLAG } = P;
    let f = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_DF;
    // Writes go to a new version per connection, so connections do not see each other's
    // writes: multi-conn is safe only read-only.
    if (this.#opts.writable) f |= TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
    else f |= TFLAG.READ_ONLY | TFLAG.CAN_MULTI_CONN;
    return f;
  }
}
