/**
 * The tcpecho client: {@linkcode connect} opens a TCP, TLS or Unix-socket
 * connection; {@linkcode pipe} copies stdin to the socket and the socket to
 * stdout byte for byte; {@linkcode interactive} is the readline front end.
 *
 * @module
 */
import process from "node:process";
import { createInterface } from "node:readline";
import { type ProxyVersion, sendProxyHeader } from "./_proxy_protocol.ts";

export type { ProxyVersion } from "./_proxy_protocol.ts";
import {
  formatAddr,
  isDisconnect,
  LineSplitter,
  type Reader,
  writeAll,
  type Writer,
} from "./io.ts";

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
  /**
   * First send a PROXY header of this version (before TLS), naming our own
   * address as the source and the server's as the destination, for servers
   * that expect one (`tcpecho server --proxy-protocol`).
   */
  sendProxy?: ProxyVersion;
}

/** Defaults of {@linkcode ConnectOptions}; also printed by `--help`. */
export const CONNECT_DEFAULTS = {
  hostname: "127.0.0.1",
  port: 8080,
  connectTimeoutMs: 5000,
} as const;

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
    sendProxy,
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
    if (sendProxy !== undefined) {
      try {
        await sendProxyHeader(tcp, sendProxy);
      } catch (err) {
        tcp.close();
        throw err;
      }
    }
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

/** A byte source that can be closed to interrupt a pending read (`Deno.stdin`). */
export interface Input extends Reader {
  /** Closes the source; a pending `read()` then rejects or returns EOF. */
  close(): void;
}

/**
 * Copies `input` to the socket and the socket to `output`, byte for byte, like
 * `nc -N`: at input EOF the sending side is shut down (half-close), then the
 * echo is read until the server closes. If the server closes first, `input`
 * is closed to end the read still pending on it.
 *
 * @throws {Error} when the connection fails (a reset, or a write error other
 *   than the server having gone away).
 */
export async function pipe(
  conn: Deno.Conn,
  input: Input = Deno.stdin,
  output: Writer = Deno.stdout,
): Promise<void> {
  let sending = true;
  const upload = (async () => {
    try {
      const buf = new Uint8Array(64 * 1024);
      for (
        let n = await input.read(buf);
        n !== null;
        n = await input.read(buf)
      ) {
        await writeAll(conn, buf.subarray(0, n));
      }
      await conn.closeWrite();
    } finally {
      sending = false;
    }
  })().then(() => undefined, (err: unknown) => err); // settled below
  try {
    const buf = new Uint8Array(64 * 1024);
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      await writeAll(output, buf.subarray(0, n));
    }
  } finally {
    if (sending) input.close(); // the server is done: stop waiting for input
  }
  const err = await upload;
  // Writes fail once the server has gone; the download said how it ended.
  if (err !== undefined && !isDisconnect(err)) throw err;
}

/** How {@linkcode interactive} ended. */
export type InteractiveEnd = "eof" | "server-closed" | "interrupted";

/**
 * The terminal client: reads lines with a prompt and history, sends each with
 * `\n`, and shows each echoed line as `server say# …`. Ctrl+D ends sending and
 * waits for the outstanding echoes; Ctrl+C ends at once.
 */
export async function interactive(
  conn: Deno.Conn,
  options: { prompt?: string } = {},
): Promise<InteractiveEnd> {
  const { prompt = "> " } = options;
  const rl = createInterface({
    input: process.stdin,
    output: process.stdout,
    prompt,
    historySize: 1000,
    terminal: true,
  });
  const encoder = new TextEncoder();
  let end = "eof" as InteractiveEnd;
  let sending = Promise.resolve();
  const done = Promise.withResolvers<void>();
  const show = (text: string) => {
    // Clear the prompt line, print, then redraw the prompt and typed text.
    process.stdout.write(`\r\x1b[K${text}\n`);
    rl.prompt(true);
  };
  rl.on("line", (line: string) => {
    const bytes = encoder.encode(line + "\n");
    sending = sending.then(() => writeAll(conn, bytes));
    rl.prompt();
  });
  rl.on("SIGINT", () => {
    end = "interrupted";
    rl.close();
  });
  rl.on("close", () => done.resolve());
  rl.prompt();

  const receiving = (async () => {
    const splitter = new LineSplitter(); // a "\r" stays, shown as "\\r"
    const buf = new Uint8Array(64 * 1024);
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      for (const line of splitter.push(buf.subarray(0, n))) {
        show(`server say# ${forTerminal(line)}`);
      }
    }
    const last = splitter.end();
    if (last !== undefined) show(`server say# ${forTerminal(last)}`);
  })();
  const received = receiving.then(() => "closed" as const);

  try {
    const first = await Promise.race([done.promise, received]);
    if (first === "closed") {
      end = "server-closed";
      return end;
    }
    if (end === "interrupted") return end;
    // Ctrl+D: send what is queued, half-close, show the last echoes.
    await sending;
    await conn.closeWrite();
    await receiving;
    return end;
  } finally {
    rl.close();
    if (end !== "eof") conn.close(); // interrupt the read still pending
    await receiving.catch((err) => {
      if (!isDisconnect(err)) throw err;
    });
    await sending.catch(() => {});
  }
}

/** Echoed text made harmless for a terminal: control characters escaped. */
export function forTerminal(text: string): string {
  return text.replace(
    // deno-lint-ignore no-control-regex
    /[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g,
    (c) =>
      c === "\r"
        ? "\\r"
        : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}
