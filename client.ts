/**
 * The tcpecho client: {@linkcode connect} opens a TCP, TLS or Unix-socket
 * connection; {@linkcode pipe} copies stdin to the socket and the socket to
 * stdout byte for byte; {@linkcode interactive} is the readline front end.
 *
 * @module
 */
import { type ProxyVersion, sendProxyHeader } from "./_proxy_protocol.ts";

export type { ProxyVersion } from "./_proxy_protocol.ts";
import {
  escapeControls,
  formatAddr,
  isDisconnect,
  LineSplitter,
  type Reader,
  writeAll,
  type Writer,
} from "./io.ts";
import { connectInsecure } from "./_insecure_tls.ts";
import { Prompt } from "./_prompt.ts";

/** Where and how to connect; shared by `client` and `bench`. */
export interface ConnectOptions {
  /** Host to connect to. @default {"127.0.0.1"} */
  hostname?: string;
  /** TCP port. @default {8080} */
  port?: number;
  /** Connect to this Unix socket instead of TCP. */
  path?: string;
  /** Speak TLS (the server's certificate is verified unless `insecure`). @default {false} */
  tls?: boolean;
  /** Extra trusted CA certificates (PEM), for self-signed servers. */
  caCerts?: string[];
  /**
   * With `tls`: trust any certificate. Goes through `node:tls`, the only
   * way Deno 2.9.6 offers, so it is slower. @default {false}
   */
  insecure?: boolean;
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
    insecure = false,
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
    if (tls && insecure) {
      return await connectInsecure({ hostname, port, path, signal: abort });
    }
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
 * When the server closes while {@linkcode pipe} still reads its input: how
 * long the read in flight may take to bring bytes that were there already.
 */
const INPUT_GRACE_MS = 250;

/** Options for {@linkcode pipe} and {@linkcode interactive}. */
export interface ExchangeOptions {
  /**
   * Fail when the server sends nothing for this long while we wait for it:
   * for the echo of bytes sent, or for its close after ours. Time spent
   * waiting for input does not count. `0` is off. @default {0}
   */
  idleTimeoutMs?: number;
}

/**
 * Copies `input` to the socket and the socket to `output`, byte for byte, like
 * `nc -N`: at input EOF the sending side is shut down (half-close), then the
 * echo is read until the server closes. If the server closes first, the read
 * still pending on `input` gets 250 ms to bring bytes
 * already waiting (they count as sent), then `input` is closed to end it.
 *
 * Nothing is lost silently: the echo of an echo server is as long as what was
 * sent, so the server closing with fewer bytes back than were taken from
 * `input` is an error, and so is a reset or a failed write. A server that
 * closes before anything was sent or received, `input` not at its end, has
 * refused the connection: an error too, whatever `input` still held.
 *
 * @throws {Error} `the server closed the connection after echoing R of S
 *   bytes`, `the server closed the connection before anything was sent`,
 *   `connection lost after R of S bytes came back` (the cause being the
 *   reset or the failed write), `no data from the server for N s`, or the
 *   error of `input` or `output`
 */
export async function pipe(
  conn: Deno.Conn,
  input: Input = Deno.stdin,
  output: Writer = Deno.stdout,
  options: ExchangeOptions = {},
): Promise<void> {
  const { idleTimeoutMs = 0 } = options;
  using silence = new Silence(idleTimeoutMs, () => closeQuietly(conn));
  let sent = 0; // bytes taken from input, to be sent
  let received = 0;
  let sending = true;
  let sendError: unknown; // the socket's: a failed write or half-close
  const upload = (async () => {
    try {
      const buf = new Uint8Array(64 * 1024);
      for (
        let n = await input.read(buf);
        n !== null;
        n = await input.read(buf)
      ) {
        sent += n;
        silence.waiting();
        await writeAll(conn, buf.subarray(0, n)).catch((err) => {
          throw sendError = err;
        });
      }
      await conn.closeWrite().catch((err) => {
        throw sendError = err;
      });
      silence.waiting(); // for the server to close
    } finally {
      sending = false;
    }
  })().then(() => undefined, (err: unknown) => err); // settled below
  let lost: unknown; // how the download ended, if not at EOF
  const buf = new Uint8Array(64 * 1024);
  // Reads the socket; a reset (or our idle close) ends the loop as `lost`.
  const readOrLose = async (): Promise<number | null> => {
    try {
      return await conn.read(buf);
    } catch (err) {
      // A TLS peer that closes without close_notify: the counts judge it.
      if (!(err instanceof Deno.errors.UnexpectedEof)) lost = err;
      return null;
    }
  };
  // The server closed before we sent or heard anything, `input` still open:
  // it refused us (a limit, allow/deny), and what input held never got there.
  let closedFirst = false;
  try {
    for (let n = await readOrLose(); n !== null; n = await readOrLose()) {
      received += n;
      silence.heard(received < sent || !sending);
      await writeAll(output, buf.subarray(0, n));
    }
  } finally {
    // The server is done. Input may hold bytes already, which were to be
    // sent: the read in flight gets a moment to bring them (losing them is
    // an error below), then we stop waiting for input.
    if (sending) await settled(upload, INPUT_GRACE_MS);
    closedFirst = sending && sent === 0 && received === 0;
    if (sending) input.close();
    // A write still blocked then (a server that half-closed and reads no
    // more) can never finish: closing the conn ends it, as a lost send.
    if (sending) await settled(upload, INPUT_GRACE_MS);
    if (sending) closeQuietly(conn);
  }
  const inputError = await upload;
  if (silence.expired) {
    throw new Error(`no data from the server for ${idleTimeoutMs / 1000} s`);
  }
  lost ??= sendError;
  if (lost !== undefined) {
    throw new Error(
      `connection lost after ${received} of ${sent} bytes came back`,
      { cause: lost },
    );
  }
  if (received < sent) {
    throw new Error(
      `the server closed the connection after echoing ${received} of ${sent} bytes`,
    );
  }
  if (closedFirst) {
    throw new Error(
      "the server closed the connection before anything was sent",
    );
  }
  // Reading input failed on its own, or was interrupted by our close.
  if (inputError !== undefined && !isDisconnect(inputError)) throw inputError;
}

/** Waits for `promise` to settle (it must not reject), at most `ms`. */
async function settled(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<void>((resolve) =>
    timer = setTimeout(resolve, ms)
  );
  try {
    await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The idle timeout of {@linkcode pipe} and {@linkcode interactive}: one timer,
 * running only while we wait for the server, restarted by each byte from it.
 */
class Silence implements Disposable {
  /** Whether the server was silent too long (and `onExpire` was called). */
  expired = false;
  #ms: number;
  #onExpire: () => void;
  #waiting = false;
  #since = 0; // the last byte heard, or the start of the wait
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(ms: number, onExpire: () => void) {
    this.#ms = ms;
    this.#onExpire = onExpire;
  }

  /** We now wait for the server: the clock starts, unless it runs already. */
  waiting(): void {
    if (this.#ms <= 0 || this.#waiting) return;
    this.#waiting = true;
    this.#since = performance.now();
    this.#arm(this.#ms);
  }

  /** Bytes came: the clock restarts, or stops when we wait for nothing more. */
  heard(stillWaiting: boolean): void {
    this.#since = performance.now();
    this.#waiting &&= stillWaiting;
  }

  #arm(ms: number): void {
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      if (!this.#waiting) return;
      const left = this.#since + this.#ms - performance.now();
      if (left > 0) return this.#arm(left);
      this.expired = true;
      this.#onExpire();
    }, ms);
  }

  [Symbol.dispose](): void {
    clearTimeout(this.#timer);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* closed already */ }
}

/** How {@linkcode interactive} ended. */
export type InteractiveEnd = "eof" | "server-closed" | "interrupted";

/**
 * The terminal client: reads lines with a prompt and history, sends each with
 * `\n`, and shows each echoed line as `server say# …`. Ctrl+D ends sending and
 * waits for the outstanding echoes; Ctrl+C ends at once. The cursor is left
 * at the start of a line, for the shell's prompt or the caller's message.
 *
 * @throws {Error} `no data from the server for N s` (see
 *   {@linkcode ExchangeOptions}), or how the connection failed
 */
export async function interactive(
  conn: Deno.Conn,
  options: { prompt?: string } & ExchangeOptions = {},
): Promise<InteractiveEnd> {
  const { prompt = "> ", idleTimeoutMs = 0 } = options;
  using silence = new Silence(idleTimeoutMs, () => closeQuietly(conn));
  const encoder = new TextEncoder();
  let end = "eof" as InteractiveEnd;
  let sending = Promise.resolve();
  let sent = 0;
  let received = 0;
  let halfClosed = false;
  const terminal = new Prompt(prompt, (line) => {
    const bytes = encoder.encode(line + "\n");
    sent += bytes.length;
    silence.waiting();
    sending = sending.then(() => writeAll(conn, bytes));
  });

  const receiving = (async () => {
    const splitter = new LineSplitter(); // a "\r" stays, shown as "\\r"
    const buf = new Uint8Array(64 * 1024);
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      received += n;
      silence.heard(received < sent || halfClosed);
      for (const line of splitter.push(buf.subarray(0, n))) {
        terminal.show(`server say# ${forTerminal(line)}`);
      }
    }
    const last = splitter.end();
    if (last !== undefined) terminal.show(`server say# ${forTerminal(last)}`);
  })();
  const closed = receiving.then(() => "closed" as const);

  try {
    const first = await Promise.race([terminal.closed, closed]);
    if (first === "closed") {
      end = "server-closed";
      return end;
    }
    if (terminal.interrupted) {
      end = "interrupted";
      return end;
    }
    // Ctrl+D: send what is queued, half-close, show the last echoes.
    await sending;
    await conn.closeWrite();
    halfClosed = true;
    silence.waiting();
    await receiving;
    return end;
  } catch (err) {
    end = "server-closed"; // for the cleanup below: the prompt goes
    if (silence.expired) {
      throw new Error(`no data from the server for ${idleTimeoutMs / 1000} s`);
    }
    throw err;
  } finally {
    // Ctrl+C/Ctrl+D leave what was typed and end its line; otherwise the
    // prompt makes way for the message that follows.
    terminal.finish(end === "server-closed");
    if (end !== "eof") closeQuietly(conn); // interrupt the read still pending
    await receiving.catch((err) => {
      if (!isDisconnect(err)) throw err;
    });
    await sending.catch(() => {});
  }
}

/**
 * Echoed text made harmless for a terminal: controls (tab included, as
 * `\t`) and invisible format characters escaped, as in logs.
 */
export function forTerminal(text: string): string {
  return escapeControls(text);
}
