/**
 * A TLS connection that does not verify the server's certificate, for
 * `--insecure`. Deno's own TLS API (2.9.6) always verifies the chain: its
 * `unsafelyDisableHostnameVerification` skips the name check only, and
 * `--unsafely-ignore-certificate-errors` is a runtime flag, not an option.
 * Its `node:tls` takes `rejectUnauthorized: false`, so this connects with
 * `node:tls` and gives the socket the shape of a `Deno.Conn`. It is slower
 * than a `Deno.TlsConn`, which matters to `bench` only, and it does not push
 * back on the server: that node:tls never ends the stream of a socket that
 * was paused (`pause()`, or read in paused mode), so the socket flows and
 * what arrives waits here until read. For an echo server that is at most
 * what we sent and have not read back.
 *
 * @module
 */
import {
  connect as connectNodeTls,
  type ConnectionOptions,
  type TLSSocket,
} from "node:tls";
import { writeAll } from "./io.ts";

/** Where to connect: a host and port, or a Unix socket path. */
export interface InsecureTarget {
  /** Host to connect to (also the name sent in the handshake). */
  hostname: string;
  /** TCP port. */
  port: number;
  /** A Unix socket path instead of the host and port. */
  path?: string;
  /** Aborts the connect attempt. */
  signal: AbortSignal;
}

/**
 * Connects over TLS, trusting any certificate, and resolves once the
 * handshake is done.
 *
 * @throws {Error} the connect or handshake failure (Deno's error classes for
 *   the OS errors it knows), or the signal's reason
 */
export function connectInsecure(target: InsecureTarget): Promise<Deno.Conn> {
  const { hostname, port, path, signal } = target;
  // Half-open as a Deno.Conn is: the server's EOF does not end our side.
  const options: ConnectionOptions & { allowHalfOpen: boolean } = {
    ...(path === undefined ? { host: hostname, port } : { path }),
    rejectUnauthorized: false,
    allowHalfOpen: true,
  };
  const socket = connectNodeTls(options);
  return new Promise<Deno.Conn>((resolve, reject) => {
    const fail = (err: Error) => {
      done();
      socket.destroy();
      reject(denoError(err));
    };
    const abort = () => fail(signal.reason);
    const done = () => {
      socket.off("error", fail);
      signal.removeEventListener("abort", abort);
    };
    socket.once("error", fail);
    signal.addEventListener("abort", abort, { once: true });
    socket.once("secureConnect", () => {
      done();
      resolve(new InsecureTlsConn(socket, path));
    });
  });
}

/** Node's `code` of an OS error, as the `Deno.errors` class Deno would throw. */
const DENO_ERRORS: Record<string, new (message: string) => Error> = {
  ECONNRESET: Deno.errors.ConnectionReset,
  EPIPE: Deno.errors.BrokenPipe,
  ECONNREFUSED: Deno.errors.ConnectionRefused,
  ECONNABORTED: Deno.errors.ConnectionAborted,
  ENOTCONN: Deno.errors.NotConnected,
  ETIMEDOUT: Deno.errors.TimedOut,
  ENOENT: Deno.errors.NotFound,
};

function denoError(err: Error): Error {
  const code = (err as { code?: unknown }).code;
  const ErrorClass = typeof code === "string" ? DENO_ERRORS[code] : undefined;
  return ErrorClass ? new ErrorClass(err.message) : err;
}

/** A `node:tls` socket as a `Deno.Conn`: one read at a time, like a conn. */
class InsecureTlsConn implements Deno.Conn {
  readonly localAddr: Deno.Addr;
  readonly remoteAddr: Deno.Addr;
  #socket: TLSSocket;
  #chunks: Uint8Array[] = []; // received; read up to #head
  #head = 0;
  #ended = false;
  #error: Error | undefined;
  #closed = false;
  #wake: (() => void) | undefined;
  #readable: ReadableStream<Uint8Array<ArrayBuffer>> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;

  constructor(socket: TLSSocket, path: string | undefined) {
    this.#socket = socket;
    const addr = (hostname = "", port = 0): Deno.Addr =>
      path === undefined
        ? { transport: "tcp", hostname, port }
        : { transport: "unix", path };
    this.localAddr = addr(socket.localAddress, socket.localPort);
    this.remoteAddr = addr(socket.remoteAddress, socket.remotePort);
    const wake = () => {
      const resolve = this.#wake;
      this.#wake = undefined;
      resolve?.();
    };
    // Flowing, never paused: see the module's note.
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      wake();
    });
    socket.on("end", () => {
      this.#ended = true;
      wake();
    });
    socket.on("error", (err: Error) => {
      this.#error ??= denoError(err);
      wake();
    });
    socket.on("close", wake);
  }

  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      if (this.#closed) throw new Deno.errors.Interrupted("connection closed");
      const chunk = this.#chunks[this.#head];
      if (chunk !== undefined) {
        const n = Math.min(p.length, chunk.length);
        p.set(chunk.subarray(0, n));
        if (n < chunk.length) this.#chunks[this.#head] = chunk.subarray(n);
        else if (++this.#head === this.#chunks.length) {
          this.#chunks = [];
          this.#head = 0;
        }
        return n;
      }
      if (this.#error) throw this.#error;
      if (this.#ended || this.#socket.destroyed) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#closed) {
      return Promise.reject(new Deno.errors.BadResource("connection closed"));
    }
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      // The callback comes once the bytes are handed on, so p may be reused.
      this.#socket.write(p, (err?: Error | null) => {
        if (err) reject(this.#error ?? denoError(err));
        else resolve(p.length);
      });
    });
  }

  closeWrite(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.end((err?: Error | null) => {
        if (err) reject(this.#error ?? denoError(err));
        else resolve();
      });
    });
  }

  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("connection closed");
    this.#closed = true;
    this.#socket.destroy();
    const resolve = this.#wake; // a pending read rejects with Interrupted
    this.#wake = undefined;
    resolve?.();
  }

  [Symbol.dispose](): void {
    if (!this.#closed) this.close();
  }

  ref(): void {
    this.#socket.ref();
  }

  unref(): void {
    this.#socket.unref();
  }

  get readable(): ReadableStream<Uint8Array<ArrayBuffer>> {
    return this.#readable ??= new ReadableStream({
      pull: async (controller) => {
        const buf = new Uint8Array(64 * 1024);
        const n = await this.read(buf);
        if (n === null) controller.close();
        else controller.enqueue(buf.subarray(0, n));
      },
      cancel: () => this[Symbol.dispose](),
    });
  }

  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= new WritableStream({
      write: (chunk) => writeAll(this, chunk),
      close: () => this.closeWrite(),
      abort: () => this[Symbol.dispose](),
    });
  }
}
