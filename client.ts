/**
 * The tcpecho client: {@linkcode connect} opens a TCP, TLS or Unix-socket
 * connection; {@linkcode pipe} copies stdin to the socket and the socket to
 * stdout byte for byte; {@linkcode interactive} is the readline front end.
 *
 * @module
 */

/** Where and how to connect; shared by `client` and `bench`. */
export interface ConnectOptions {
  /** Host to connect to. @default {"127.0.0.1"} */
  hostname?: string;
  /** TCP port. @default {8080} */
  port?: number;
  /** Connect to this Unix socket instead of TCP. */
  path?: string;
  /** Speak TLS (the server's certificate is always verified). @default {false} */
  tls?: boolean;
  /** Extra trusted CA certificates (PEM), for self-signed servers. */
  caCerts?: string[];
  /** Give up connecting after this long. @default {5000} */
  connectTimeoutMs?: number;
  /** Abort the connect attempt. */
  signal?: AbortSignal;
}

/** Defaults of {@linkcode ConnectOptions}; also printed by `--help`. */
export const CONNECT_DEFAULTS = {
  hostname: "127.0.0.1",
  port: 8080,
  connectTimeoutMs: 5000,
} as const;

/** `HOST:PORT` (`[::1]:PORT` for IPv6) or `unix:PATH`, as logs and errors show it. */
export function formatAddr(addr: Deno.Addr): string {
  if (!("hostname" in addr)) {
    return "path" in addr ? `unix:${addr.path}` : addr.transport;
  }
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

/** The address {@linkcode connect} would use, formatted like {@linkcode formatAddr}. */
export function targetName(options: ConnectOptions = {}): string {
  const {
    hostname = CONNECT_DEFAULTS.hostname,
    port = CONNECT_DEFAULTS.port,
    path,
  } = options;
  return path !== undefined
    ? `unix:${path}`
    : formatAddr({ transport: "tcp", hostname, port });
}

/**
 * Opens a connection.
 *
 * @throws {Error} `cannot connect to HOST:PORT`, with the OS error as `cause`
 *   (a `TimeoutError` after `connectTimeoutMs`).
 */
export async function connect(
  options: ConnectOptions = {},
): Promise<Deno.Conn> {
  const {
    hostname = CONNECT_DEFAULTS.hostname,
    port = CONNECT_DEFAULTS.port,
    path,
    tls = false,
    caCerts,
    connectTimeoutMs = CONNECT_DEFAULTS.connectTimeoutMs,
    signal,
  } = options;
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), connectTimeoutMs);
  const abort = signal
    ? AbortSignal.any([signal, timeout.signal])
    : timeout.signal;
  try {
    const tcp = path === undefined
      ? await Deno.connect({ hostname, port, signal: abort })
      : await Deno.connect({ transport: "unix", path }); // local: never hangs
    if (!tls) return tcp;
    const conn = await Deno.startTls(tcp as Deno.TcpConn, {
      hostname: path === undefined ? hostname : "localhost",
      caCerts,
    });
    // The handshake is lazy; finish it here so a bad certificate is a connect
    // error. Closing the conn is how an abort interrupts it.
    const interrupt = () => conn.close();
    abort.addEventListener("abort", interrupt, { once: true });
    try {
      await conn.handshake();
    } catch (err) {
      if (!abort.aborted) conn.close();
      throw err;
    } finally {
      abort.removeEventListener("abort", interrupt);
    }
    return conn;
  } catch (cause) {
    const reason = timeout.signal.aborted
      ? new Error(`timed out after ${connectTimeoutMs / 1000} s`)
      : cause;
    throw new Error(`cannot connect to ${targetName(options)}`, {
      cause: reason,
    });
  } finally {
    clearTimeout(timer);
  }
}
