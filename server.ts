/**
 * The tcpecho server: {@linkcode serve} listens on TCP, TLS or a Unix socket
 * and runs one async task per connection, echoing until the client's EOF.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { IdleSweep } from "./_idle.ts";
import { type ConnLimits, LocalConnLimits } from "./_limits.ts";
import { listen, removeSocketFile } from "./_listen.ts";
import { echoWithFaults, FaultPlan, readChunks } from "./_faults.ts";
import {
  type Echo,
  echoDiscard,
  echoLines,
  echoRaw,
  frameLines,
  seconds,
  type Send,
  Session,
} from "./_session.ts";
import { delay, formatAddr, isDisconnect } from "./io.ts";

export { removeStaleSocket } from "./_listen.ts";

/**
 * How the server answers: bytes as they arrive (`raw`, RFC 862), whole lines
 * (`line`), or not at all (`discard`, RFC 863: read and drop everything).
 */
export type EchoMode = "raw" | "line" | "discard";

/** Options for {@linkcode serve}. */
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
   * (or after `idleTimeoutMs`, when shorter). @default {10000}
   */
  handshakeTimeoutMs?: number;
  /** Listen backlog (tests use `1` to make connects hang). */
  tcpBacklog?: number;
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
   * Called as each connection changes state (see {@linkcode ConnEvent}):
   * once per connection per state, never per message. What it throws is
   * logged at error and goes no further.
   */
  onConnState?: (event: ConnEvent) => void;
}

/**
 * A connection changed state, as {@linkcode ServeOptions.onConnState} hears
 * it (Go's `http.ConnState`): `open` once admitted; `closed` once it is
 * closed and no longer counted in {@linkcode ServerStats.active}; `refused`
 * when a limit turned it away (it was closed at once and never opened).
 */
export type ConnEvent =
  | {
    state: "open";
    /** The peer tag logs show: `ip:port`, `[::1]:port` or `unix#N`. */
    peer: string;
  }
  | {
    state: "closed";
    /** The peer tag, as in `open`. */
    peer: string;
    /** Bytes received on this connection. */
    bytesIn: number;
    /** Bytes echoed on this connection. */
    bytesOut: number;
    /** Milliseconds from accept to close. */
    durationMs: number;
    /**
     * Why the server closed it (`idle for 1.00 s`, `line longer than …`,
     * `TLS handshake failed: …`, `server shutting down`…); absent when the
     * client ended it or it failed.
     */
    reason?: string;
  }
  | {
    state: "refused";
    /** The peer tag, as in `open`. */
    peer: string;
    /** Which limit refused it: `too many connections (max-conns 10000)`… */
    reason: string;
  };

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
  delayMs: 0,
  jitterMs: 0,
  sliceBytes: 0,
  sliceDelayMs: 0,
  bandwidthKiBps: 0,
  closeAfterBytes: 0,
  faulty: 1,
} as const;

/** Live counters of a running {@linkcode Server}. */
export interface ServerStats {
  /** Connections open now. */
  active: number;
  /** Connections served (accepted and not refused by a limit), open or done. */
  served: number;
  /** Connections accepted and closed at once by `maxConns` / `maxConnsPerIp`. */
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

/** Accept-error backoff (EMFILE and the like): first and longest wait. */
const ACCEPT_BACKOFF_MS = [5, 1000] as const;

/**
 * Starts an echo server. Binding happens now: a port in use or a bad address
 * throws at once.
 *
 * @example Serve on a free port and stop
 * ```ts ignore
 * await using server = serve({ port: 0, mode: "line" });
 * console.log(server.addr.port);
 * ```
 * @throws {Error} `cannot listen on ADDR`, with the OS error as `cause`.
 * @throws {RangeError} for a fault option out of range (`faulty: 2`).
 */
export function serve(
  options: ServeOptions & { path: string },
): Server<Deno.UnixAddr>;
/** Starts an echo server on TCP (or TLS with `cert` and `key`). */
export function serve(options?: ServeOptions): Server<Deno.NetAddr>;
export function serve(options: ServeOptions = {}): Server {
  return new EchoServer(options);
}

/**
 * The {@linkcode Server} behind {@linkcode serve}, split the way Go's
 * `http.Server` and mini-redis's `Listener` are: an accept loop with backoff,
 * admission (limits), one tracked task per connection, and a bounded drain on
 * close. The connections themselves are {@linkcode Session}s.
 */
class EchoServer implements Server {
  readonly addr: Deno.NetAddr | Deno.UnixAddr;
  readonly finished: Promise<void>;
  readonly stats: ServerStats = {
    active: 0,
    served: 0,
    refused: 0,
    bytesIn: 0,
    bytesOut: 0,
  };
  readonly #log = getLogger(["tcpecho", "server"]);
  readonly #listener: Deno.Listener;
  readonly #path: string | undefined;
  readonly #echo: Echo;
  /** With faults on: picks each connection's echo (faulty or plain). */
  readonly #pickEcho: (() => Echo) | undefined;
  /** TLS only: the bound on each handshake. */
  readonly #handshakeTimeoutMs: number | undefined;
  readonly #shutdownTimeoutMs: number;
  readonly #limits: ConnLimits;
  readonly #idle: IdleSweep<Session>;
  readonly #onConnState: ((event: ConnEvent) => void) | undefined;
  readonly #sessions = new Set<Session>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #stopping = new AbortController();
  readonly #accepting: Promise<void>;
  readonly #markFinished: () => void;
  #closing: Promise<void> | undefined;
  #unixCount = 0;

  constructor(options: ServeOptions) {
    const {
      hostname = SERVE_DEFAULTS.hostname,
      port = SERVE_DEFAULTS.port,
      path,
      cert,
      key,
      mode = SERVE_DEFAULTS.mode,
      maxLineBytes = SERVE_DEFAULTS.maxLineBytes,
      maxConns = SERVE_DEFAULTS.maxConns,
      maxConnsPerIp = SERVE_DEFAULTS.maxConnsPerIp,
      idleTimeoutMs = SERVE_DEFAULTS.idleTimeoutMs,
      shutdownTimeoutMs = SERVE_DEFAULTS.shutdownTimeoutMs,
      handshakeTimeoutMs = SERVE_DEFAULTS.handshakeTimeoutMs,
      tcpBacklog,
      onConnState,
    } = options;
    const plan = FaultPlan.from(options); // throws on a bad value
    const faults = mode === "discard" ? undefined : plan; // nothing to delay
    // Listen first: if it throws, nothing else (no timer) was started.
    this.#listener = listen({ hostname, port, path, cert, key, tcpBacklog });
    this.addr = this.#listener.addr as Deno.NetAddr | Deno.UnixAddr;
    const where = formatAddr(this.addr);
    if (faults !== undefined) {
      this.#log.info("faults: {faults}", { faults: faults.describe() });
    }
    this.#log.info("listening on {where}", { where });

    this.#path = path;
    this.#echo = mode === "line"
      ? (session) => echoLines(session, maxLineBytes)
      : mode === "discard"
      ? echoDiscard
      : echoRaw;
    if (faults !== undefined) {
      const read = mode === "line"
        ? (session: Session, send: Send) =>
          frameLines(session, maxLineBytes, send)
        : readChunks;
      this.#pickEcho = () => {
        const connFaults = faults.next();
        if (connFaults === undefined) return this.#echo;
        return (s) => {
          s.log.debug("[{peer}] faults apply");
          return echoWithFaults(s, connFaults, (send) => read(s, send));
        };
      };
    }
    const tls = cert !== undefined && key !== undefined;
    this.#handshakeTimeoutMs = !tls
      ? undefined
      : idleTimeoutMs > 0
      ? Math.min(idleTimeoutMs, handshakeTimeoutMs)
      : handshakeTimeoutMs;
    this.#shutdownTimeoutMs = shutdownTimeoutMs;
    this.#onConnState = onConnState;
    this.#limits = new LocalConnLimits(maxConns, maxConnsPerIp);
    const idle = `idle for ${seconds(idleTimeoutMs)}`;
    this.#idle = new IdleSweep(
      idleTimeoutMs,
      this.#sessions,
      // A fault holding an echo back is our wait, not the client's idleness.
      (session) => {
        if (!session.holding) session.interrupt(idle);
      },
    );
    const { promise, resolve } = Promise.withResolvers<void>();
    this.finished = promise;
    this.#markFinished = resolve;
    this.#accepting = this.#acceptLoop();
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Accepts until {@linkcode EchoServer.close}. A client that gave up before
   * its accept is skipped; any other failure (EMFILE, ENFILE, ENOBUFS…) is
   * retried after a doubling pause, and warned about at most once a second.
   */
  async #acceptLoop(): Promise<void> {
    const log = this.#log;
    const { signal } = this.#stopping;
    let backoffMs = 0;
    let failures = 0; // since the last warning
    let warnedAt = -Infinity;
    while (!signal.aborted) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        // Closed: by close(), or (never expected) by someone else.
        if (signal.aborted || err instanceof Deno.errors.BadResource) break;
        if (isDisconnect(err)) {
          // The client gave up before we accepted it: nothing to serve.
          log.debug("accept: {err}", { err: String(err) });
          continue;
        }
        backoffMs = Math.min(
          ACCEPT_BACKOFF_MS[1],
          Math.max(ACCEPT_BACKOFF_MS[0], backoffMs * 2),
        );
        failures++;
        if (performance.now() - warnedAt >= 1000) {
          warnedAt = performance.now();
          log.warn(
            "cannot accept a connection: {err}; retrying ({failures} failed since the last warning)",
            { err: String(err), failures },
          );
          failures = 0;
        }
        await delay(backoffMs, signal);
        continue;
      }
      backoffMs = 0;
      this.#admit(conn);
    }
  }

  /** Refuses `conn` past a limit; otherwise starts and tracks its task. */
  #admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr;
    const ip = "hostname" in remote ? remote.hostname : "unix";
    const peer = "hostname" in remote
      ? formatAddr(remote)
      : `unix#${++this.#unixCount}`;
    const permit = this.#limits.acquire(ip);
    if (permit === undefined) {
      const refusal = this.#limits.refusal(ip);
      this.stats.refused++;
      this.#log.warn("[{peer}] refused: {refusal}", { peer, refusal });
      conn.close();
      this.#emit({ state: "refused", peer, reason: refusal });
      return;
    }
    this.stats.active++;
    this.stats.served++;
    const session = new Session(conn, peer, ip, this.stats, this.#log);
    this.#sessions.add(session);
    // Faulty or not is decided here, in accept order, so a seed replays.
    const echo = this.#pickEcho?.() ?? this.#echo;
    const task: Promise<void> = this.#handle(session, permit, echo)
      .catch((err) => this.#log.error("connection task failed: {err}", { err }))
      .finally(() => {
        this.#sessions.delete(session);
        this.#tasks.delete(task);
        this.stats.active--;
        if (this.#onConnState !== undefined) this.#emitClosed(session);
      });
    this.#tasks.add(task);
  }

  /** The connection task: holds the permit for as long as the session runs. */
  async #handle(
    session: Session,
    permit: Disposable,
    echo: Echo,
  ): Promise<void> {
    using _permit = permit;
    this.#emit({ state: "open", peer: session.peer });
    await session.run(echo, this.#handshakeTimeoutMs);
  }

  /** Tells `onConnState` how `session` ended. */
  #emitClosed(session: Session): void {
    const { peer, bytesIn, bytesOut, durationMs, closeReason } = session;
    const event: ConnEvent = {
      state: "closed",
      peer,
      bytesIn,
      bytesOut,
      durationMs,
    };
    if (closeReason !== undefined) event.reason = closeReason;
    this.#emit(event);
  }

  /** Tells `onConnState`, if any; what it throws stops here. */
  #emit(event: ConnEvent): void {
    if (this.#onConnState === undefined) return;
    try {
      this.#onConnState(event);
    } catch (err) {
      this.#log.error("onConnState failed: {err}", { err });
    }
  }

  /**
   * Stops accepting, waits up to the shutdown timeout for the connections to
   * end, then interrupts the rest and waits for their tasks.
   */
  async #shutdown(): Promise<void> {
    const log = this.#log;
    const tasks = this.#tasks;
    this.#stopping.abort();
    this.#listener.close();
    await this.#accepting;
    if (tasks.size > 0) {
      log.info("stopping: waiting up to {timeout} for {count} connections", {
        timeout: seconds(this.#shutdownTimeoutMs),
        count: tasks.size,
      });
      const deadline = Promise.withResolvers<void>();
      const timer = setTimeout(deadline.resolve, this.#shutdownTimeoutMs);
      try {
        await Promise.race([Promise.allSettled(tasks), deadline.promise]);
      } finally {
        clearTimeout(timer);
      }
      for (const s of this.#sessions) s.interrupt("server shutting down");
      await Promise.allSettled(tasks);
    }
    this.#idle[Symbol.dispose]();
    if (this.#path !== undefined) removeSocketFile(this.#path);
    log.info("stopped: {served} connections served, {bytesOut} bytes echoed", {
      served: this.stats.served,
      bytesOut: this.stats.bytesOut,
    });
    this.#markFinished();
  }
}
