/**
 * The tcpecho server: {@linkcode serve} listens on TCP, TLS or a Unix socket
 * and runs one async task per connection, echoing until the client's EOF.
 *
 * @module
 */
import { getLogger, type Logger } from "@logtape/logtape";
import {
  delay,
  escapePreview,
  formatAddr,
  isDisconnect,
  writeAll,
} from "./io.ts";

/** How the server answers: bytes as they arrive, or whole lines. */
export type EchoMode = "raw" | "line";

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
  /** `raw`: echo bytes as they arrive; `line`: answer each whole `\n` line. @default {"raw"} */
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
}

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

/** Read buffer bounds: see {@linkcode ReadBuffer}. */
const MIN_READ_BYTES = 1024;
const MAX_READ_BYTES = 256 * 1024;
/** Small reads in a row (under a quarter of the buffer) before it halves. */
const SHRINK_AFTER_READS = 4;
/** How much of a message a log line shows. */
const PREVIEW_CHARS = 80;
/** Accept-error backoff (EMFILE and the like): first and longest wait. */
const ACCEPT_BACKOFF_MS = [5, 1000] as const;

/** One open connection, as the accept loop, the idle sweep and shutdown see it. */
interface Session {
  readonly conn: Deno.Conn;
  readonly peer: string;
  readonly ip: string;
  /** Idle sweep tick of the last byte moved. */
  tick: number;
  /** Set by whoever closes the conn from outside, so its task logs why. */
  closeReason?: string;
}

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
 */
export function serve(
  options: ServeOptions & { path: string },
): Server<Deno.UnixAddr>;
export function serve(options?: ServeOptions): Server<Deno.NetAddr>;
export function serve(options: ServeOptions = {}): Server {
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
  } = options;
  const tls = cert !== undefined && key !== undefined;
  const handshakeMs = idleTimeoutMs > 0
    ? Math.min(idleTimeoutMs, handshakeTimeoutMs)
    : handshakeTimeoutMs;
  const log = getLogger(["tcpecho", "server"]);
  const listener = listen({ hostname, port, path, cert, key, tcpBacklog });
  const addr = listener.addr as Deno.NetAddr | Deno.UnixAddr;
  const where = formatAddr(addr);
  log.info("listening on {where}", { where });

  const stats: ServerStats = {
    active: 0,
    served: 0,
    refused: 0,
    bytesIn: 0,
    bytesOut: 0,
  };
  const sessions = new Set<Session>();
  const tasks = new Set<Promise<void>>();
  const perIp = new Map<string, number>();
  const stopping = new AbortController();
  let unixCount = 0;

  // Idle connections are found by one sweep, not a timer per connection: a
  // read only stores the current tick. Four ticks per timeout, closing after
  // five quiet ones, closes an idle conn between 1 and 1.25 timeouts.
  let tick = 0;
  const tickMs = Math.max(1, idleTimeoutMs / 4);
  const sweep = idleTimeoutMs > 0
    ? setInterval(() => {
      tick++;
      for (const s of sessions) {
        if (tick - s.tick >= 5) {
          interrupt(s, `idle for ${seconds(idleTimeoutMs)}`);
        }
      }
    }, tickMs)
    : undefined;

  const echo = mode === "line" ? echoLines : echoRaw;

  async function handle(session: Session): Promise<void> {
    using _conn = session.conn; // closed however we leave
    const clog = log.with({ peer: session.peer });
    const started = performance.now();
    const counts = { bytesIn: 0, bytesOut: 0 };
    clog.info("[{peer}] online");
    try {
      if (tls) await handshake(session, handshakeMs);
      await echo(session, counts, {
        maxLineBytes,
        log: clog,
        onIn: (n) => {
          stats.bytesIn += n;
          session.tick = tick;
        },
        onOut: (n) => {
          stats.bytesOut += n;
          session.tick = tick;
        },
      });
    } catch (err) {
      if (session.closeReason !== undefined) {
        clog.info("[{peer}] closing: {reason}", {
          reason: session.closeReason,
        });
      } else if (err instanceof LimitError || err instanceof HandshakeError) {
        clog.warn("[{peer}] closing: {reason}", { reason: err.message });
      } else if (isDisconnect(err)) {
        clog.debug("[{peer}] {err}", { err: String(err) });
      } else {
        clog.error("[{peer}] connection failed: {err}", { err });
      }
    } finally {
      clog.info(
        "[{peer}] offline ({duration}, {bytesIn} bytes in, {bytesOut} bytes out)",
        {
          duration: seconds(performance.now() - started),
          ...counts,
        },
      );
    }
  }

  function admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr;
    const ip = "hostname" in remote ? remote.hostname : "unix";
    const peer = "hostname" in remote
      ? formatAddr(remote)
      : `unix#${++unixCount}`;
    const fromIp = (perIp.get(ip) ?? 0) + 1;
    let refusal: string | undefined;
    if (stats.active >= maxConns) {
      refusal = `too many connections (max-conns ${maxConns})`;
    } else if (maxConnsPerIp > 0 && fromIp > maxConnsPerIp) {
      refusal =
        `too many connections from ${ip} (max-conns-per-ip ${maxConnsPerIp})`;
    }
    if (refusal !== undefined) {
      stats.refused++;
      log.warn("[{peer}] refused: {refusal}", { peer, refusal });
      conn.close();
      return;
    }
    perIp.set(ip, fromIp);
    stats.active++;
    stats.served++;
    const session: Session = { conn, peer, ip, tick };
    sessions.add(session);
    const task: Promise<void> = handle(session)
      .catch((err) => log.error("connection task failed: {err}", { err }))
      .finally(() => {
        sessions.delete(session);
        tasks.delete(task);
        stats.active--;
        const left = perIp.get(ip)! - 1;
        if (left === 0) perIp.delete(ip);
        else perIp.set(ip, left);
      });
    tasks.add(task);
  }

  async function acceptLoop(): Promise<void> {
    let backoffMs = 0;
    let failures = 0; // since the last warning
    let warnedAt = -Infinity;
    while (!stopping.signal.aborted) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (err) {
        // Closed: by close(), or (never expected) by someone else.
        if (stopping.signal.aborted || err instanceof Deno.errors.BadResource) {
          break;
        }
        if (isDisconnect(err)) {
          // The client gave up before we accepted it: nothing to serve.
          log.debug("accept: {err}", { err: String(err) });
          continue;
        }
        // EMFILE, ENFILE, ENOBUFS…: keep listening, retry after a pause;
        // warn at most once a second, however often it fails.
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
        await delay(backoffMs, stopping.signal);
        continue;
      }
      backoffMs = 0;
      admit(conn);
    }
  }

  const accepting = acceptLoop();
  let closing: Promise<void> | undefined;
  const { promise: finished, resolve: markFinished } = Promise
    .withResolvers<void>();

  async function shutdown(): Promise<void> {
    stopping.abort();
    listener.close();
    await accepting;
    if (tasks.size > 0) {
      log.info("stopping: waiting up to {timeout} for {count} connections", {
        timeout: seconds(shutdownTimeoutMs),
        count: tasks.size,
      });
      const deadline = Promise.withResolvers<void>();
      const timer = setTimeout(deadline.resolve, shutdownTimeoutMs);
      try {
        await Promise.race([Promise.allSettled(tasks), deadline.promise]);
      } finally {
        clearTimeout(timer);
      }
      for (const s of sessions) interrupt(s, "server shutting down");
      await Promise.allSettled(tasks);
    }
    if (sweep !== undefined) clearInterval(sweep);
    if (path !== undefined) removeSocketFile(path);
    log.info("stopped: {served} connections served, {bytesOut} bytes echoed", {
      served: stats.served,
      bytesOut: stats.bytesOut,
    });
    markFinished();
  }

  const server: Server = {
    addr,
    finished,
    stats,
    close() {
      closing ??= shutdown();
      return closing;
    },
    [Symbol.asyncDispose]() {
      return server.close();
    },
  };
  return server;
}

/** What an echo loop reports and may use. */
interface EchoContext {
  maxLineBytes: number;
  log: Logger;
  onIn(n: number): void;
  onOut(n: number): void;
}

/** A per-connection limit was passed; the connection is closed with a warning. */
class LimitError extends Error {
  override name = "LimitError";
}

/**
 * Ends someone else's connection from outside (idle sweep, handshake timer,
 * shutdown): its owner's pending read or write rejects and the owner logs
 * `reason`. Only the first reason counts, and the conn is closed only once.
 */
function interrupt(session: Session, reason: string): void {
  if (session.closeReason !== undefined) return;
  session.closeReason = reason;
  try {
    session.conn.close();
  } catch {
    // its owner closed it a moment ago and is about to leave the session set
  }
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
    () => interrupt(session, `no TLS handshake within ${seconds(timeoutMs)}`),
    timeoutMs,
  );
  try {
    await conn.handshake();
  } catch (cause) {
    if (session.closeReason !== undefined || isDisconnect(cause)) throw cause;
    throw new HandshakeError(
      `TLS handshake failed: ${(cause as Error).message}`,
      { cause },
    );
  } finally {
    clearTimeout(timer);
  }
}

/** Raw mode (RFC 862): every byte back as it arrives. */
async function echoRaw(
  session: Session,
  counts: { bytesIn: number; bytesOut: number },
  ctx: EchoContext,
): Promise<void> {
  const { conn } = session;
  const debug = ctx.log.isEnabledFor("debug");
  const rb = new ReadBuffer();
  for (
    let n = await conn.read(rb.bytes);
    n !== null;
    n = await conn.read(rb.bytes)
  ) {
    counts.bytesIn += n;
    ctx.onIn(n);
    const buf = rb.bytes;
    const out = n === buf.length ? buf : buf.subarray(0, n);
    // One write takes it all almost always; writeAll only for the rest.
    const written = await conn.write(out);
    if (written < n) await writeAll(conn, out.subarray(written));
    counts.bytesOut += n;
    ctx.onOut(n);
    if (debug) ctx.log.debug("[{peer}] echoed {n} bytes", { n });
    rb.adapt(n);
  }
  await conn.closeWrite(); // the client sent EOF and has everything back
}

/**
 * Line mode: frame by `\n` from a buffer. Complete lines go back together in
 * one write (byte-identical to answering each); the partial tail waits for its
 * `\n` or EOF. A line over `maxLineBytes` is not echoed and ends the connection.
 */
async function echoLines(
  session: Session,
  counts: { bytesIn: number; bytesOut: number },
  ctx: EchoContext,
): Promise<void> {
  const { conn } = session;
  const { maxLineBytes } = ctx;
  const debug = ctx.log.isEnabledFor("debug");
  const tooLong = () =>
    new LimitError(`line longer than ${maxLineBytes} bytes (max-line)`);
  const rb = new ReadBuffer();
  let end = 0; // bytes held in rb.bytes; they hold no "\n"
  const send = async (bytes: Uint8Array) => {
    await writeAll(conn, bytes);
    counts.bytesOut += bytes.length;
    ctx.onOut(bytes.length);
  };
  for (;;) {
    if (end === rb.bytes.length) rb.grow(end);
    const n = await conn.read(end === 0 ? rb.bytes : rb.bytes.subarray(end));
    if (n === null) break;
    const buf = rb.bytes;
    counts.bytesIn += n;
    ctx.onIn(n);
    // Lines end in the new bytes only; a "\n" in buf[0..end) was handled.
    let lineStart = 0;
    let nl = buf.indexOf(10, end);
    const filled = end + n;
    while (nl !== -1 && nl < filled) {
      if (nl - lineStart > maxLineBytes) break;
      if (debug) logLine(ctx.log, buf.subarray(lineStart, nl + 1));
      lineStart = nl + 1;
      nl = buf.indexOf(10, lineStart);
    }
    if (nl >= filled) nl = -1;
    if (lineStart > 0) await send(buf.subarray(0, lineStart));
    if (nl !== -1 || filled - lineStart > maxLineBytes) throw tooLong();
    // Keep the unfinished line at the start of the buffer.
    buf.copyWithin(0, lineStart, filled);
    end = filled - lineStart;
    if (debug && end > 0) {
      ctx.log.debug("[{peer}] holding {end} bytes of an unfinished line", {
        end,
      });
    }
    if (end === 0) rb.adapt(n);
  }
  if (end > 0) { // bytes after the last "\n" at EOF are echoed too
    const tail = rb.bytes.subarray(0, end);
    if (debug) logLine(ctx.log, tail);
    await send(tail);
  }
  await conn.closeWrite();
}

function logLine(log: Logger, line: Uint8Array): void {
  const text = escapePreview(line, PREVIEW_CHARS);
  log.debug("[{peer}] req: {text}, resp: {text}", { text });
}

/**
 * The adaptive read buffer. An idle connection's pending read holds the whole
 * buffer, so it starts at {@linkcode MIN_READ_BYTES} (an idle connection costs
 * ~7.5 KiB of server memory in all); a read that fills it doubles it, up to
 * {@linkcode MAX_READ_BYTES} (big reads are what make streaming fast);
 * {@linkcode SHRINK_AFTER_READS} small reads in a row halve it again.
 */
class ReadBuffer {
  bytes: Uint8Array = new Uint8Array(MIN_READ_BYTES);
  #smallReads = 0;

  /** Resizes after a read of `n` bytes whose data has been used up. */
  adapt(n: number): void {
    const size = this.bytes.length;
    if (n === size) {
      this.#smallReads = 0;
      if (size < MAX_READ_BYTES) this.bytes = new Uint8Array(size * 2);
    } else if (n < size >> 2 && size > MIN_READ_BYTES) {
      if (++this.#smallReads >= SHRINK_AFTER_READS) {
        this.#smallReads = 0;
        this.bytes = new Uint8Array(size >> 1);
      }
    } else {
      this.#smallReads = 0;
    }
  }

  /** Doubles the buffer, keeping its first `used` bytes (a partial line). */
  grow(used: number): void {
    const bigger = new Uint8Array(this.bytes.length * 2);
    bigger.set(this.bytes.subarray(0, used));
    this.bytes = bigger;
  }
}

function listen(
  options: Pick<
    ServeOptions,
    "hostname" | "port" | "path" | "cert" | "key" | "tcpBacklog"
  >,
): Deno.Listener {
  const { hostname, port, path, cert, key, tcpBacklog } = options;
  const where = path !== undefined
    ? `unix:${path}`
    : formatAddr({ transport: "tcp", hostname: hostname!, port: port! });
  try {
    if (path !== undefined) {
      checkSocketPath(path);
      const unix = Deno.listen({ transport: "unix", path });
      if (cert === undefined || key === undefined) return unix;
      unix.close();
      throw new TypeError("TLS over a Unix socket is not supported");
    }
    if (cert !== undefined && key !== undefined) {
      return Deno.listenTls({ hostname, port, cert, key, tcpBacklog });
    }
    return Deno.listen({ hostname, port, tcpBacklog });
  } catch (cause) {
    throw new Error(`cannot listen on ${where}`, { cause });
  }
}

/** Refuses a path that exists and is not a socket: such a file is never deleted. */
function checkSocketPath(path: string): void {
  try {
    if (!Deno.lstatSync(path).isSocket) {
      throw new Deno.errors.AlreadyExists(`"${path}" is not a socket`);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

/**
 * Removes a stale Unix socket file at `path`: one nobody listens on (a
 * connect is refused). A live socket, or a path that is not a socket, is left
 * alone (then {@linkcode serve} reports it). Call before `serve({ path })`.
 *
 * @returns whether a stale socket was removed
 */
export async function removeStaleSocket(path: string): Promise<boolean> {
  try {
    if (!Deno.lstatSync(path).isSocket) return false;
  } catch {
    return false; // nothing there (or unreadable: serve() will say)
  }
  try {
    using _conn = await Deno.connect({ transport: "unix", path });
    return false; // somebody answers: in use
  } catch (err) {
    if (!(err instanceof Deno.errors.ConnectionRefused)) return false;
  }
  Deno.removeSync(path);
  return true;
}

function removeSocketFile(path: string): void {
  try {
    if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
  } catch {
    // already gone: nothing to clean up
  }
}

/** `1.23 s`, as the offline line shows durations. */
function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}
