/**
 * The server's public types: {@linkcode ServeOptions} and
 * {@linkcode SERVE_DEFAULTS}, a running {@linkcode Server}, its live
 * {@linkcode ServerStats}, and the {@linkcode ConnEvent}s that
 * `onConnState` hears. Private to `server.ts`, which exports them (kept apart
 * so that `server.ts` holds the server itself).
 *
 * @module
 */
import type { RefusalCode } from "./_admission.ts";
import type { ProxyAccept } from "./_proxy_protocol.ts";

export type { ProxyAccept } from "./_proxy_protocol.ts";
export type { RefusalCode } from "./_admission.ts";

/**
 * How the server answers: bytes as they arrive (`raw`, RFC 862), whole lines
 * (`line`), or not at all (`discard`, RFC 863: read and drop everything).
 */
export type EchoMode = "raw" | "line" | "discard";

/** Options for `serve()`. */
export interface ServeOptions {
  /** Address to bind. @default {"127.0.0.1"} */
  hostname?: string;
  /** TCP port; `0` lets the OS choose. @default {8080} */
  port?: number;
  /** Listen on this Unix socket path instead of TCP. */
  path?: string;
  /** TLS certificate chain (PEM text); serve TLS when given with `key`. */
  cert?: string;
  /** TLS private key (PEM text). */
  key?: string;
  /**
   * `raw`: echo bytes as they arrive; `line`: answer each whole `\n` line;
   * `discard`: read and drop everything, answer nothing (faults do not apply).
   * @default {"raw"}
   */
  mode?: EchoMode;
  /** Line mode: a line longer than this (before `\n`) closes its connection. @default {65536} */
  maxLineBytes?: number;
  /** Connections served at once; one more is accepted and closed. @default {10000} */
  maxConns?: number;
  /** Connections at once from one client address; `0` is no limit. @default {0} */
  maxConnsPerIp?: number;
  /** Close a connection that moved no byte for this long; `0` is never. @default {0} */
  idleTimeoutMs?: number;
  /** On {@linkcode Server.close}: wait this long for clients, then close them. @default {5000} */
  shutdownTimeoutMs?: number;
  /**
   * TLS: close a connection whose handshake has not finished after this long
   * (or after `idleTimeoutMs`, when shorter); the same bound holds for the
   * PROXY header. @default {10000}
   */
  handshakeTimeoutMs?: number;
  /** Listen backlog (tests use `1` to make connects hang). */
  tcpBacklog?: number;
  /**
   * TCP and TLS: bind with `SO_REUSEPORT` (Linux; needs `--unstable-net`),
   * so that several servers share the port and the kernel spreads their
   * connections. @default {false}
   */
  reusePort?: boolean;
  /**
   * Fault: hold each echo back this long from when its bytes were read. Echoes
   * stay in order and a streaming client is not slowed by a delay per echo:
   * the server holds up to 256 KiB back, then stops reading. @default {0}
   */
  delayMs?: number;
  /** Fault: plus a uniformly random 0 to `jitterMs` per echo (seeded). @default {0} */
  jitterMs?: number;
  /** Fault: write each echo in pieces of at most this many bytes; `0` is off. @default {0} */
  sliceBytes?: number;
  /** Fault: at least this long between two writes (pieces). @default {0} */
  sliceDelayMs?: number;
  /**
   * Fault: cap each connection's echo at this many KiB/s (token bucket, bursts
   * of 50 ms' worth); `0` is off. @default {0}
   */
  bandwidthKiBps?: number;
  /**
   * Fault: echo this many bytes on a connection, then close it (half-close,
   * read and drop until the client's EOF for at most 1 s, close); `0` is off.
   * @default {0}
   */
  closeAfterBytes?: number;
  /**
   * The share of connections (0 to 1) the faults apply to, drawn per
   * connection in accept order from the seeded generator. @default {1}
   */
  faulty?: number;
  /**
   * Seeds `faulty` and `jitterMs` (a whole number 0 to 2³²−1), so a run can
   * be replayed; drawn at random when absent. The `faults:` line says it.
   */
  seed?: number;
  /**
   * Only clients in these ranges may connect (`10.0.0.0/8`, `::1`…; IPv4-mapped
   * IPv6 is IPv4); others are accepted and closed. Empty: all. @default {[]}
   */
  allow?: readonly string[];
  /** Clients in these ranges are refused, even when `allow` lets them in. @default {[]} */
  deny?: readonly string[];
  /**
   * Each connection starts with a PROXY header of this version (`any`: either),
   * read within `handshakeTimeoutMs`; its source is the client. @default {"off"}
   */
  proxyProtocol?: "off" | ProxyAccept;
  /**
   * Called as each connection changes state (see {@linkcode ConnEvent}):
   * once per connection per state, never per message. What it throws is
   * logged at error and goes no further.
   */
  onConnState?: (event: ConnEvent) => void;
}

/** Defaults of the fault options of {@linkcode ServeOptions}: all off. */
export const FAULT_DEFAULTS = {
  delayMs: 0,
  jitterMs: 0,
  sliceBytes: 0,
  sliceDelayMs: 0,
  bandwidthKiBps: 0,
  closeAfterBytes: 0,
  faulty: 1,
} as const;

/** Defaults of {@linkcode ServeOptions}; also printed by `--help`. */
export const SERVE_DEFAULTS = {
  hostname: "127.0.0.1",
  port: 8080,
  mode: "raw",
  maxLineBytes: 65536,
  maxConns: 10000,
  maxConnsPerIp: 0,
  idleTimeoutMs: 0,
  shutdownTimeoutMs: 5000,
  handshakeTimeoutMs: 10000,
  reusePort: false,
  ...FAULT_DEFAULTS,
  allow: [],
  deny: [],
  proxyProtocol: "off",
} as const;

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

/** Live counters of a running {@linkcode Server}. */
export interface ServerStats {
  /** Connections open now. */
  active: number;
  /**
   * Connections served (accepted and not refused by a limit or `allow`/`deny`),
   * open or done. Connections still reading their PROXY header are not yet
   * counted.
   */
  served: number;
  /** Connections accepted and closed at once by `maxConns`, `maxConnsPerIp`, `allow` or `deny`. */
  refused: number;
  /** Bytes received from clients. */
  bytesIn: number;
  /** Bytes echoed back. */
  bytesOut: number;
}

/** A running echo server, shaped like `Deno.HttpServer`. */
export interface Server<
  Addr extends Deno.NetAddr | Deno.UnixAddr = Deno.NetAddr | Deno.UnixAddr,
> extends AsyncDisposable {
  /** Where it listens; with `port: 0`, the real port. */
  readonly addr: Addr;
  /** Settles once the server has stopped and every connection is closed. */
  readonly finished: Promise<void>;
  /** Live counters. */
  readonly stats: Readonly<ServerStats>;
  /**
   * Stops gracefully: no new connections, waits up to `shutdownTimeoutMs` for
   * clients to finish, then closes the rest. Idempotent.
   */
  close(): Promise<void>;
}
