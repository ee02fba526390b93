/**
 * The tcpecho server: {@linkcode serve} listens on TCP, TLS or a Unix socket
 * and runs one async task per connection, echoing until the client's EOF.
 *
 * @module
 */
import { getLogger } from "@logtape/logtape";
import { AccessList } from "./_cidr.ts";
import {
  type ConnEvent,
  SERVE_DEFAULTS,
  type ServeOptions,
  type Server,
  type ServerStats,
} from "./_server_types.ts";
import { IdleSweep } from "./_idle.ts";
import { type ConnLimits, LocalConnLimits } from "./_limits.ts";
import { acceptLoop, listen, removeSocketFile } from "./_listen.ts";
import { echoWithFaults, FaultPlan } from "./_faults.ts";
import type { ProxyAccept } from "./_proxy_protocol.ts";
import { Admission, NO_PERMIT } from "./_admission.ts";
import { WarningLog, type WarningReporter } from "./_summary.ts";
import {
  type Echo,
  seconds,
  type Send,
  Session,
  type SessionHost,
} from "./_session.ts";
import {
  echoDiscard,
  echoLines,
  echoRaw,
  frameLines,
  readChunks,
} from "./_echo.ts";
import { TlsRelay } from "./_tls_relay.ts";
import {
  type ReleaseTls,
  tlsReleaser,
  tlsReleaseUnavailable,
} from "./_tls_release.ts";
import { formatAddr, withDefaults } from "./io.ts";
import { Seconds } from "./log.ts";

export { removeStaleSocket } from "./_listen.ts";
export {
  type ConnEvent,
  type EchoMode,
  type ProxyAccept,
  type RefusalCode,
  SERVE_DEFAULTS,
  type ServeOptions,
  type Server,
  type ServerStats,
} from "./_server_types.ts";

/** TLS without a releaser: logged once per server (once per pool). */
export const TLS_LINGER_WARNING =
  "TLS: descriptors of connections the server closes may linger until the peer acts (Deno 2.9.6): {why}";

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
 * What a server started by {@linkcode serveInPool} shares with the other
 * servers of the CLI's worker pool. Not library API: `_server_worker.ts`
 * alone uses it.
 */
export interface PoolMember {
  /** The pool's `maxConns` count, over all its servers (taken at accept). */
  limits: ConnLimits;
  /** The pool's `maxConnsPerIp` count, when on (taken once the address is known). */
  ipLimits?: ConnLimits;
  /**
   * Takes the refusals and the other warnings a peer can repeat at will:
   * the pool summarises them once for all its servers.
   */
  warnings: WarningReporter;
  /** The faults' random sequence of `seed` this server draws from (its index). */
  faultStream: number;
  /** Told how many connections its drain waits for (`0` too), for one line. */
  onDraining(connections: number): void;
}

/**
 * {@linkcode serve} for one server of the CLI's worker pool: it counts
 * against the pool's limits and draws its own fault sequence; it logs
 * neither `listening on`, `faults:`, the TLS warning, `stopping:` nor
 * `stopped:` (the pool logs each once, with totals).
 */
export function serveInPool(options: ServeOptions, member: PoolMember): Server {
  return new EchoServer(options, member);
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
  readonly #proxy: ProxyAccept | undefined; // PROXY header versions taken
  readonly #headerTimeoutMs: number;
  readonly #relay: TlsRelay | undefined; // TLS after a PROXY header
  /** TLS: releases the sockets of connections the server closes. */
  readonly #release: ReleaseTls | undefined;
  readonly #shutdownTimeoutMs: number;
  readonly #admission: Admission;
  readonly #host: SessionHost;
  readonly #idle: IdleSweep<Session>;
  readonly #onConnState: ((event: ConnEvent) => void) | undefined;
  readonly #sessions = new Set<Session>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #stopping = new AbortController();
  readonly #accepting: Promise<void>;
  readonly #markFinished: () => void;
  readonly #member: PoolMember | undefined;
  #closing: Promise<void> | undefined;
  #unixCount = 0;

  constructor(options: ServeOptions, member?: PoolMember) {
    const {
      hostname,
      port,
      path,
      cert,
      key,
      mode,
      maxLineBytes,
      maxConns,
      maxConnsPerIp,
      idleTimeoutMs,
      shutdownTimeoutMs,
      handshakeTimeoutMs,
      tcpBacklog,
      reusePort,
      allow,
      deny,
      proxyProtocol,
      onConnState,
    } = withDefaults(options, SERVE_DEFAULTS);
    const plan = FaultPlan.from(options, member?.faultStream); // throws on a bad value
    const faults = mode === "discard" ? undefined : plan; // nothing to delay
    // Check the rules before listening: a bad one throws with nothing open.
    const access = new AccessList(allow, deny);
    const tls = cert !== undefined && key !== undefined;
    this.#proxy = proxyProtocol === "off" ? undefined : proxyProtocol;
    // Listen first: if it throws, nothing else (no timer) was started. With
    // a PROXY header before TLS, the port is plain TCP (see _tls_relay.ts).
    const relay = tls && this.#proxy !== undefined;
    this.#listener = relay
      ? listen({ hostname, port, tcpBacklog, reusePort })
      : listen({ hostname, port, path, cert, key, tcpBacklog, reusePort });
    this.addr = this.#listener.addr as Deno.NetAddr | Deno.UnixAddr;
    this.#member = member;

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
          if (s.debugging) s.log.debug("[{peer}] faults apply");
          return echoWithFaults(s, connFaults, (send) => read(s, send));
        };
      };
    }
    const boundMs = idleTimeoutMs > 0
      ? Math.min(idleTimeoutMs, handshakeTimeoutMs)
      : handshakeTimeoutMs;
    this.#handshakeTimeoutMs = tls ? boundMs : undefined;
    this.#headerTimeoutMs = boundMs;
    this.#release = tls ? tlsReleaser() : undefined;
    try {
      this.#relay = relay
        ? new TlsRelay(cert!, key!, boundMs, this.#release)
        : undefined;
    } catch (cause) {
      this.#listener.close();
      throw new Error(`cannot listen on ${formatAddr(this.addr)}`, { cause });
    }
    if (member === undefined) { // a pool says these once, for all
      if (tls && this.#release === undefined) {
        this.#log.warn(TLS_LINGER_WARNING, { why: tlsReleaseUnavailable() });
      }
      if (faults !== undefined) {
        this.#log.info("faults: {faults}", { faults: faults.describe() });
      }
      this.#log.info("listening on {where}", { where: formatAddr(this.addr) });
    }
    this.#shutdownTimeoutMs = shutdownTimeoutMs;
    this.#onConnState = onConnState;
    // Two limits: all connections at accept, one address's once it is known.
    const limits: ConnLimits = member?.limits ??
      new LocalConnLimits(maxConns, 0);
    const ipLimits = member !== undefined
      ? member.ipLimits
      : maxConnsPerIp > 0
      ? new LocalConnLimits(Infinity, maxConnsPerIp)
      : undefined;
    const warnings = member?.warnings ?? new WarningLog(this.#log);
    this.#host = { totals: this.stats, log: this.#log, warnings };
    this.#admission = new Admission(
      {
        limits,
        ipLimits,
        access: access.empty ? undefined : access,
        release: relay ? undefined : this.#release, // relayed: plain TCP
      },
      warnings,
      (refusal) => {
        this.stats.refused++;
        this.#emit({ state: "refused", ...refusal });
      },
    );
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
    this.#accepting = acceptLoop(
      this.#listener,
      this.#stopping.signal,
      this.#log,
      (conn) => this.#admit(conn),
    );
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Refuses `conn` past `maxConns`; otherwise, with the PROXY protocol,
   * starts a task that reads its header first, and without, admits the
   * client (`allow`/`deny`, `maxConnsPerIp`) and starts its session.
   */
  #admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr;
    const ip = "hostname" in remote ? remote.hostname : "unix";
    const peer = "hostname" in remote
      ? formatAddr(remote)
      : `unix#${++this.#unixCount}`;
    const slot = this.#admission.accept(conn, peer, ip);
    if (slot === undefined) return;
    // Faulty or not is decided at accept, in accept order, so a seed replays.
    if (this.#proxy !== undefined) {
      const echo = this.#pickEcho?.() ?? this.#echo;
      const session = new Session(conn, peer, ip, this.#host);
      const proxied = this.#handleProxied(session, slot, this.#proxy, echo);
      this.#track(session, proxied);
      return;
    }
    const permit = this.#admission.client(conn, peer, ip);
    if (permit === undefined) {
      slot[Symbol.dispose]();
      return;
    }
    this.stats.served++;
    const echo = this.#pickEcho?.() ?? this.#echo;
    const session = new Session(conn, peer, ip, this.#host);
    this.#track(session, this.#handle(session, slot, permit, echo));
  }

  /**
   * Counts and tracks a session's task until it ends; then tells
   * `onConnState` it closed, unless the task says it was refused.
   */
  #track(session: Session, handling: Promise<boolean>): void {
    this.stats.active++;
    this.#sessions.add(session);
    const task: Promise<void> = handling
      .catch((err) => {
        this.#log.error("connection task failed: {err}", { err });
        return true;
      })
      .then((served) => {
        this.#sessions.delete(session);
        this.#tasks.delete(task);
        this.stats.active--;
        if (served && this.#onConnState !== undefined) {
          this.#emitClosed(session);
        }
      });
    this.#tasks.add(task);
  }

  /** The connection task: holds the permits for as long as the session runs. */
  async #handle(
    session: Session,
    slot: Disposable,
    permit: Disposable,
    echo: Echo,
  ): Promise<boolean> {
    using _slot = slot;
    using _permit = permit;
    const { peer, via } = session;
    this.#emit(via ? { state: "open", peer, via } : { state: "open", peer });
    await session.run(echo, this.#handshakeTimeoutMs, this.#release);
    return true;
  }

  /**
   * A PROXY protocol connection's task: reads the header, admits the client
   * it names, and runs the session. Resolves `false` if it was refused.
   */
  async #handleProxied(
    session: Session,
    slot: Disposable,
    accept: ProxyAccept,
    echo: Echo,
  ): Promise<boolean> {
    using _slot = slot;
    if (!(await session.readProxyHeader(accept, this.#headerTimeoutMs))) {
      this.stats.served++; // a connection closed with a warning, not refused
      return true;
    }
    const { conn, peer, ip, via } = session;
    const permit = this.#admission.client(conn, peer, ip, via);
    if (permit === undefined) return false;
    this.stats.served++;
    if (this.#relay === undefined) {
      return await this.#handle(session, NO_PERMIT, permit, echo);
    }
    using _permit = permit;
    return await this.#relay.serve(
      session,
      (s) => this.#handle(s, NO_PERMIT, NO_PERMIT, echo),
    );
  }

  /** Tells `onConnState` how `session` ended. */
  #emitClosed(session: Session): void {
    const { peer, via, bytesIn, bytesOut, durationMs, closeReason } = session;
    const event: ConnEvent = {
      state: "closed",
      peer,
      bytesIn,
      bytesOut,
      durationMs,
    };
    if (via !== undefined) event.via = via;
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
    if (this.#member !== undefined) this.#member.onDraining(tasks.size);
    else if (tasks.size > 0) {
      log.info(
        "stopping: waiting up to {timeout_s} s for {count} connections",
        {
          timeout_s: new Seconds(this.#shutdownTimeoutMs),
          count: tasks.size,
        },
      );
    }
    if (tasks.size > 0) {
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
    this.#admission[Symbol.dispose]();
    await this.#relay?.close();
    await this.#release?.settled(); // no timer outlives the server
    if (this.#path !== undefined) removeSocketFile(this.#path);
    if (this.#member === undefined) {
      const { served, bytesOut } = this.stats;
      log.info(
        "stopped: {served} connections served, {bytesOut} bytes echoed",
        {
          served,
          bytesOut,
        },
      );
    }
    this.#markFinished();
  }
}
