/**
 * Listening for the echo server: TCP, TLS or a Unix socket, the accept loop
 * with its backoff, and the socket file's care (a stale one replaced on request, a non-socket never deleted,
 * ours removed on stop). Private to `server.ts`, which re-exports
 * {@linkcode removeStaleSocket}.
 *
 * @module
 */
import type { Logger } from "@logtape/logtape";
import { delay, formatAddr, isDisconnect } from "./io.ts";
import { WarningThrottle } from "./_summary.ts";

/** Accept-error backoff (EMFILE and the like): first and longest wait. */
const ACCEPT_BACKOFF_MS = [5, 1000] as const;

/** Where and how to listen: the matching fields of `ServeOptions`. */
export interface ListenOptions {
  /** Address to bind (TCP). */
  hostname: string;
  /** TCP port; `0` lets the OS choose. */
  port: number;
  /** Listen on this Unix socket path instead of TCP. */
  path?: string;
  /** TLS certificate chain (PEM); TLS when given with `key`. */
  cert?: string;
  /** TLS private key (PEM). */
  key?: string;
  /** Listen backlog. */
  tcpBacklog?: number;
  /** TCP and TLS: set `SO_REUSEPORT` (unstable `net`). */
  reusePort?: boolean;
}

/**
 * Binds now.
 *
 * @throws {Error} `cannot listen on ADDR`, with the OS error as `cause`.
 */
export function listen(options: ListenOptions): Deno.Listener {
  const { hostname, port, path, cert, key, tcpBacklog, reusePort } = options;
  const where = path !== undefined
    ? `unix:${path}`
    : formatAddr({ transport: "tcp", hostname, port });
  try {
    if (path !== undefined) {
      checkSocketPath(path);
      const unix = Deno.listen({ transport: "unix", path });
      if (cert === undefined || key === undefined) return unix;
      unix.close();
      throw new TypeError("TLS over a Unix socket is not supported");
    }
    if (cert !== undefined && key !== undefined) {
      return Deno.listenTls({
        hostname,
        port,
        cert,
        key,
        tcpBacklog,
        reusePort,
      });
    }
    return Deno.listen({ hostname, port, tcpBacklog, reusePort });
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

/** Removes our socket file on stop, if it is still there and still a socket. */
export function removeSocketFile(path: string): void {
  try {
    if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
  } catch {
    // already gone: nothing to clean up
  }
}

/**
 * Accepts on `listener` until `signal` aborts (or the listener is closed),
 * handing each connection to `admit`. A client that gave up before its
 * accept is skipped; any other failure (EMFILE, ENFILE, ENOBUFS…) is retried
 * after a doubling pause, and warned about at most once a second.
 */
export async function acceptLoop(
  listener: Deno.Listener,
  signal: AbortSignal,
  log: Logger,
  admit: (conn: Deno.Conn) => void,
): Promise<void> {
  let backoffMs = 0;
  const throttle = new WarningThrottle();
  while (!signal.aborted) {
    let conn: Deno.Conn;
    try {
      conn = await listener.accept();
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
      const failures = throttle.count("accept");
      if (failures !== undefined) {
        log.warn(
          "cannot accept a connection: {err}; retrying ({failures} failed since the last warning)",
          { err: String(err), failures },
        );
      }
      await delay(backoffMs, signal);
      continue;
    }
    backoffMs = 0;
    noDelay(conn);
    admit(conn);
  }
}

/**
 * Turns Nagle's algorithm off on a TCP connection (Deno leaves it on): else
 * an echo written while an earlier one is unacknowledged waits for the
 * client's delayed ACK, up to 40 ms on Linux, as it does for a client that
 * writes twice, then reads. Deno's TLS connections cannot set it (2.9.6).
 */
function noDelay(conn: Deno.Conn): void {
  if (!("setNoDelay" in conn)) return; // a Unix socket, TLS
  try {
    (conn as Deno.TcpConn).setNoDelay(true);
  } catch {
    // the client is already gone: its task will find out
  }
}
