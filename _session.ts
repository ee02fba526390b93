/**
 * One connection of the echo server: {@linkcode Session} (the conn, its peer
 * tag, its byte counts, why the server closed it, how it ends) and the TLS
 * handshake; the echo loops that run on it are `_echo.ts`'s. Private to
 * `server.ts` (and the modules that serve a session: `_echo.ts`,
 * `_faults.ts`, `_tls_relay.ts`).
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import {
  PrefixedConn,
  proxiedPeer,
  type ProxyAccept,
  ProxyHeaderError,
  readProxyHeader,
} from "./_proxy_protocol.ts";
import type { ClosingCode, WarningReporter } from "./_summary.ts";
import type { ReleaseTls } from "./_tls_release.ts";
import { isPeerError } from "./io.ts";
import { Seconds, Template } from "./log.ts";

/**
 * How long the server keeps reading (and dropping) after it ends a
 * connection's echo on purpose (`--max-line`, `--close-after`), before it
 * closes: closing with unread input makes the kernel reset the connection,
 * and a reset can destroy echoes the client has not read yet.
 */
export const LINGER_MS = 1000;
/** The two lines every connection logs: templates parsed once. */
const ONLINE = new Template("[{peer}] online");
const ONLINE_VIA = new Template("[{peer}] online (via {via})");
const OFFLINE = new Template(
  "[{peer}] offline ({duration_s} s, {bytesIn} bytes in, {bytesOut} bytes out)",
);

/** Server-wide byte counters a session adds to as bytes move. */
export interface ByteTotals {
  /** Bytes received from clients. */
  bytesIn: number;
  /** Bytes echoed back. */
  bytesOut: number;
}

/** What a session shares with its server. */
export interface SessionHost {
  /** The server's byte counters, updated on every read and write. */
  totals: ByteTotals;
  /** The server's logger; the session attaches its `peer`. */
  log: Logger;
  /**
   * Takes the warnings a peer can cause at will (a failed handshake, a bad
   * PROXY header), which are summarised, not logged one by one.
   */
  warnings: WarningReporter;
}

/**
 * Echoes a session until the client's EOF: {@linkcode echoRaw},
 * {@linkcode echoLines} or {@linkcode echoDiscard}.
 */
export type Echo = (session: Session) => Promise<void>;

/**
 * Sends one echo (bytes the caller may reuse once it resolves) and counts it;
 * resolving is the caller's cue to read again (backpressure).
 */
export type Send = (bytes: Uint8Array) => Promise<void>;

/**
 * One open connection, as its task, the idle sweep and shutdown see it. Its
 * task runs it with {@linkcode Session.run}; anyone else ends it with
 * {@linkcode Session.interrupt}.
 */
export class Session {
  /**
   * The connection; {@linkcode Session.run} owns and closes it. After a
   * PROXY header, a {@linkcode PrefixedConn} holding what came with it.
   */
  conn: Deno.Conn;
  /**
   * The tag logs show: `ip:port`, `[::1]:port` or `unix#N`; after a PROXY
   * header, its source's.
   */
  peer: string;
  /** The client address limits count by (`unix` for Unix sockets). */
  ip: string;
  /** With a PROXY header that named a source: the socket's own peer tag. */
  via?: string;
  /** Bytes received on this connection. */
  bytesIn = 0;
  /** Bytes echoed on this connection. */
  bytesOut = 0;
  /** Idle sweep ticks since a byte last moved: each read and write resets it. */
  idleTicks = 0;
  /**
   * Why the server closed this connection (idle, handshake, limit,
   * shutdown); `undefined` while open and when the client ended it.
   */
  closeReason?: string;
  /**
   * True while a fault (delay, slice delay, bandwidth) holds an echo back on
   * purpose: that wait is not the client's idleness, so the idle sweep spares
   * the session.
   */
  holding = false;
  /** Whether the server has half-closed the conn (`--close-after` does). */
  halfClosed = false;
  /** Ends the linger after a limit early, while there is one. */
  #endLinger?: () => void;
  readonly #totals: ByteTotals;
  /** The server's logger, for {@linkcode Template.log}. */
  readonly #serverLog: Logger;
  readonly #warnings: WarningReporter;
  #log?: Logger;
  #interrupted?: AbortController;
  readonly #startedAt = performance.now();
  #endedAt?: number;

  /**
   * A session for an accepted `conn`; {@linkcode Session.run} serves it.
   *
   * @param host the server's counters, logger and warning summary
   */
  constructor(conn: Deno.Conn, peer: string, ip: string, host: SessionHost) {
    this.conn = conn;
    this.peer = peer;
    this.ip = ip;
    this.#totals = host.totals;
    this.#serverLog = host.log;
    this.#warnings = host.warnings;
  }

  /** Closes with `reason`, a warning summarised with others of `code`. */
  #closeWith(code: ClosingCode, reason: string): void {
    this.closeReason = reason;
    this.#warnings.warn(this.peer, code, reason);
  }

  /**
   * The server's logger with `peer` attached; made on first use, since most
   * connections log only their two lines (and an idle one costs less).
   */
  get log(): Logger {
    return this.#log ??= this.#serverLog.with({ peer: this.peer });
  }

  /** Whether debug records are logged: the echo loops log each message then. */
  get debugging(): boolean {
    return this.#serverLog.isEnabledFor("debug");
  }

  /** Milliseconds since accept, up to the end of {@linkcode Session.run}. */
  get durationMs(): number {
    return (this.#endedAt ?? performance.now()) - this.#startedAt;
  }

  /** Counts `n` bytes received (the hot path: no allocation). */
  received(n: number): void {
    this.bytesIn += n;
    this.#totals.bytesIn += n;
    this.idleTicks = 0;
  }

  /** Counts `n` bytes echoed. */
  sent(n: number): void {
    this.bytesOut += n;
    this.#totals.bytesOut += n;
    this.idleTicks = 0;
  }

  /**
   * Aborts when {@linkcode Session.interrupt} ends the connection, for waits
   * that are not a read or write on it (a fault's delay). Made on first use:
   * the plain echo loops never pay for it.
   */
  get interrupted(): AbortSignal {
    if (this.#interrupted === undefined) {
      this.#interrupted = new AbortController();
      if (this.closeReason !== undefined) this.#abort();
    }
    return this.#interrupted.signal;
  }

  /**
   * Ends the connection from outside (idle sweep, handshake timer, shutdown):
   * the task's pending read or write rejects and it logs `reason`. Only the
   * first reason counts, and the conn is closed only once; a connection
   * already ending (lingering after a limit) stops lingering.
   */
  interrupt(reason: string): void {
    if (this.closeReason !== undefined) {
      this.#endLinger?.(); // a linger ends now; the task closes the conn
      return;
    }
    this.closeReason = reason;
    try {
      this.conn.close();
    } catch {
      // its task closed it a moment ago and is about to end
    }
    this.#abort();
  }

  /**
   * Half-closes (unless a fault did already), so the client gets the echoes
   * written so far and then our FIN rather than a reset, and drops its input
   * until its EOF: at most {@linkcode LINGER_MS}, or until
   * {@linkcode Session.interrupt} (shutdown, the idle sweep). Returns then
   * even if a TLS close_notify is still stuck behind a client that does not
   * read: the caller releases and closes the conn, which ends it.
   */
  async #linger(): Promise<void> {
    const { conn } = this;
    const drain = (async () => {
      if (!this.halfClosed) {
        this.halfClosed = true;
        await conn.closeWrite();
      }
      await dropInput(this);
    })().catch(() => {
      // closed at the bound or by shutdown, or reset by the client: done
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<void>((resolve) => {
      this.#endLinger = resolve;
      timer = setTimeout(resolve, LINGER_MS);
    });
    try {
      await Promise.race([drain, bound]);
    } finally {
      clearTimeout(timer);
      this.#endLinger = undefined;
    }
  }

  #abort(): void {
    this.#interrupted?.abort(
      new Deno.errors.Interrupted(`interrupted: ${this.closeReason}`),
    );
  }

  /**
   * Reads the PROXY header within `timeoutMs` (closing the connection if it
   * does not come) and takes its source as this session's peer; bytes that
   * came with it are read first by the echo. Failures are logged here (a
   * bad, missing or late header is a warning, summarised with the others of
   * its kind) and set {@linkcode Session.closeReason}.
   *
   * @returns whether a header was read; if not, the connection is closed
   */
  async readProxyHeader(
    accept: ProxyAccept,
    timeoutMs: number,
  ): Promise<boolean> {
    let late = false;
    const timer = setTimeout(() => {
      late = this.closeReason === undefined;
      this.interrupt(`no PROXY header within ${seconds(timeoutMs)}`);
    }, timeoutMs);
    try {
      const { header, rest } = await readProxyHeader(this.conn, accept);
      const proxied = proxiedPeer(header);
      if (proxied !== undefined) {
        this.via = this.peer;
        this.peer = proxied.peer;
        this.ip = proxied.ip;
        this.#log = undefined; // made again, with the new peer
      }
      if (rest.length > 0) this.conn = new PrefixedConn(this.conn, rest);
      return true;
    } catch (err) {
      this.#endedAt = performance.now();
      this.conn[Symbol.dispose]();
      const { log } = this;
      if (err instanceof ProxyHeaderError && this.closeReason === undefined) {
        this.#closeWith("proxy-header", `bad PROXY header: ${err.message}`);
      } else if (late) {
        this.#closeWith("proxy-timeout", this.closeReason!);
      } else if (this.closeReason !== undefined) {
        log.info("[{peer}] closing: {reason}", { reason: this.closeReason });
      } else if (isPeerError(err)) {
        log.debug("[{peer}] {err}", { err: String(err) });
      } else {
        log.error("[{peer}] connection failed: {err}", { err });
      }
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The connection task: logs `online`, completes the TLS handshake when
   * `handshakeTimeoutMs` is given, echoes until the client's EOF, logs how it
   * ended and `offline`, and closes the conn. Expected failures end here;
   * only a bug rejects.
   *
   * @param handshakeTimeoutMs TLS only: the bound on the handshake
   * @param release TLS only: releases the socket of a connection that the
   *   server ended (interrupted, a limit, a failed handshake) or that failed
   */
  async run(
    echo: Echo,
    handshakeTimeoutMs?: number,
    release?: ReleaseTls,
  ): Promise<void> {
    using conn = this.conn; // closed however we leave
    const { peer, via } = this;
    if (via === undefined) ONLINE.log(this.#serverLog, "info", { peer });
    else ONLINE_VIA.log(this.#serverLog, "info", { peer, via });
    let failed = false;
    try {
      if (handshakeTimeoutMs !== undefined) {
        await handshake(this, handshakeTimeoutMs);
      }
      await echo(this);
    } catch (err) {
      failed = true;
      if (this.closeReason !== undefined) {
        this.log.info("[{peer}] closing: {reason}", {
          reason: this.closeReason,
        });
      } else if (err instanceof HandshakeError) {
        this.#closeWith("tls-handshake", err.message);
      } else if (err instanceof LimitError) {
        this.#closeWith("max-line", err.message);
        await this.#linger();
      } else if (isPeerError(err)) {
        this.log.debug("[{peer}] {err}", { err: String(err) });
      } else {
        this.log.error("[{peer}] connection failed: {err}", { err });
      }
    } finally {
      // Such a connection may owe the client bytes or a handshake, and Deno
      // 2.9.6 would keep its socket open until the client acts.
      if (failed || this.closeReason !== undefined) release?.(conn);
      this.#endedAt = performance.now();
      OFFLINE.log(this.#serverLog, "info", {
        peer,
        duration_s: new Seconds(this.durationMs),
        bytesIn: this.bytesIn,
        bytesOut: this.bytesOut,
      });
    }
  }
}

/** A per-connection limit was passed; the connection is closed with a warning. */
export class LimitError extends Error {
  override name = "LimitError";
}

/** A TLS client that could not complete the handshake (plaintext, bad CA…). */
class HandshakeError extends Error {
  override name = "HandshakeError";
}

/**
 * Completes a TLS handshake within `timeoutMs`. Deno would do it lazily on the
 * first read; doing it here bounds how long a client that never finishes it
 * (or sends plaintext) holds a connection.
 */
async function handshake(session: Session, timeoutMs: number): Promise<void> {
  const conn = session.conn as Deno.TlsConn;
  const timer = setTimeout(
    () => session.interrupt(`no TLS handshake within ${seconds(timeoutMs)}`),
    timeoutMs,
  );
  try {
    await conn.handshake();
  } catch (cause) {
    // A client gone is a debug line; one that speaks no TLS (plaintext, an
    // alert such as UnknownCA: InvalidData) is worth a warning.
    if (
      session.closeReason !== undefined ||
      (isPeerError(cause) && !(cause instanceof Deno.errors.InvalidData))
    ) {
      throw cause;
    }
    throw new HandshakeError(
      `TLS handshake failed: ${(cause as Error).message}`,
      { cause },
    );
  } finally {
    clearTimeout(timer);
  }
}

/** `1.23 s`: a duration as the offline line shows it. */
export function seconds(ms: number): string {
  return `${new Seconds(ms)} s`;
}

/**
 * Reads and drops the client's input up to its EOF, counting it: what a
 * connection that is done answering does while it lingers. Rejects once the
 * conn is closed or reset.
 */
export async function dropInput(session: Session): Promise<void> {
  const { conn } = session;
  const buf = new Uint8Array(16 * 1024);
  for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
    session.received(n);
  }
}
