/**
 * {@linkcode ConnEvent}: what `ServeOptions.onConnState` hears. Private to
 * `server.ts`, which exports the type.
 *
 * @module
 */
import type { RefusalCode } from "./_admission.ts";

/**
 * A connection changed state, as `ServeOptions.onConnState` hears
 * it (Go's `http.ConnState`): `open` once admitted; `closed` once it is
 * closed and no longer counted in `ServerStats.active`; `refused`
 * when a limit turned it away (it was closed at once and never opened).
 */
export type ConnEvent =
  | {
    state: "open";
    /**
     * The peer tag logs show: `ip:port`, `[::1]:port` or `unix#N`; with a
     * PROXY header, its source's.
     */
    peer: string;
    /** With a PROXY header that named a source: the socket's own peer tag. */
    via?: string;
  }
  | {
    state: "closed";
    /** The peer tag, as in `open`. */
    peer: string;
    /** As in `open`. */
    via?: string;
    /** Bytes received on this connection. */
    bytesIn: number;
    /** Bytes echoed on this connection. */
    bytesOut: number;
    /** Milliseconds from accept to close. */
    durationMs: number;
    /**
     * Why the server closed it (`idle for 1.00 s`, `line longer than …`,
     * `TLS handshake failed: …`, `bad PROXY header: …`, `server shutting
     * down`…); absent when the client ended it or it failed. A bad or
     * missing PROXY header: `closed` with no `open` before, socket's peer.
     */
    reason?: string;
  }
  | {
    state: "refused";
    /** The peer tag, as in `open`. */
    peer: string;
    /** As in `open`. */
    via?: string;
    /** Which rule refused it, for programs. */
    code: RefusalCode;
    /** The same for people: `too many connections (max-conns 10000)`… */
    reason: string;
  };
