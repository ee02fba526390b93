/**
 * TLS after a PROXY header. The header comes before the TLS handshake, but a
 * Deno server can start TLS only at accept, on a listener of its own
 * (`Deno.listenTls`): `Deno.startTls` is client-only, and `node:tls`'s
 * `TLSSocket` with `isServer` over a stream we feed (Deno 2.9.6) never
 * sends its close_notify on `end()`, so a half-closing client sees an
 * unclean end. So with both, the public port is plain TCP; once a
 * connection's header is read, {@linkcode TlsRelay} copies its bytes over
 * loopback to a private TLS listener, and the session serves the TLS
 * connection accepted there, handshake timeout and all. TLS without the
 * PROXY protocol never comes here. Private to `server.ts`.
 *
 * @module
 */
import { isDisconnect, writeAll } from "./io.ts";
import { LINGER_MS, type Session } from "./_session.ts";
import type { ReleaseTls } from "./_tls_release.ts";

/** Relay buffer per direction. */
const RELAY_BYTES = 16 * 1024;

/**
 * A private TLS listener on 127.0.0.1 and the relays to it. Each relayed
 * connection is told from strangers by its port on our side: a connection
 * nobody claims within `claimTimeoutMs` is closed.
 */
export class TlsRelay {
  readonly #listener: Deno.TlsListener;
  readonly #port: number;
  readonly #claimTimeoutMs: number;
  /** Connections accepted before their relay claimed them, by peer port. */
  readonly #arrived = new Map<
    number,
    { conn: Deno.TlsConn; timer: ReturnType<typeof setTimeout> }
  >();
  /** Relays waiting for their connection, by our port. */
  readonly #waiting = new Map<number, (conn: Deno.TlsConn) => void>();
  readonly #accepting: Promise<void>;
  readonly #release: ReleaseTls | undefined;
  #closed = false;

  /**
   * Listens now.
   *
   * @param release releases the socket of a TLS connection nobody claimed
   * @throws {Error} when the private listener cannot be opened (bad PEM)
   */
  constructor(
    cert: string,
    key: string,
    claimTimeoutMs: number,
    release?: ReleaseTls,
  ) {
    this.#listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert,
      key,
    });
    this.#port = this.#listener.addr.port;
    this.#claimTimeoutMs = claimTimeoutMs;
    this.#release = release;
    this.#accepting = this.#accept();
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.TlsConn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#closed || err instanceof Deno.errors.BadResource) return;
        if (isDisconnect(err)) continue; // gone before its accept
        throw err;
      }
      const port = conn.remoteAddr.port;
      const claim = this.#waiting.get(port);
      if (claim !== undefined) {
        this.#waiting.delete(port);
        claim(conn);
        continue;
      }
      const timer = setTimeout(() => {
        this.#arrived.delete(port);
        this.#release?.(conn);
        conn[Symbol.dispose](); // a stranger
      }, this.#claimTimeoutMs);
      this.#arrived.set(port, { conn, timer });
    }
  }

  /**
   * Serves `session` over TLS: relays its connection (header read) to the
   * private listener, makes the TLS connection accepted there the session's
   * `conn`, and runs `run(session)` while the relay copies. Resolves with
   * what `run` resolves once both are done; the relayed connection is closed
   * on every path.
   */
  async serve<T>(
    session: Session,
    run: (session: Session) => Promise<T>,
  ): Promise<T> {
    using outer = session.conn;
    using inner = await Deno.connect({
      hostname: "127.0.0.1",
      port: this.#port,
    });
    inner.setNoDelay(true); // the relay must not add Nagle's waits
    const tls = await this.#claim((inner.localAddr as Deno.NetAddr).port);
    session.conn = tls;
    const relaying = relay(outer, inner);
    try {
      return await run(session);
    } finally {
      // Interrupted (timeout, shutdown…): nothing more is passed on. (Deno
      // does not end the socket of a TLS connection closed mid-handshake,
      // so the relay would not hear of it.) Else the relay finishes.
      if (session.closeReason !== undefined) closeBoth(outer, inner);
      await relaying;
    }
  }

  /** The connection accepted from our `port`, within the claim timeout. */
  async #claim(port: number): Promise<Deno.TlsConn> {
    const arrived = this.#arrived.get(port);
    if (arrived !== undefined) {
      this.#arrived.delete(port);
      clearTimeout(arrived.timer);
      return arrived.conn;
    }
    const { promise, resolve, reject } = Promise.withResolvers<Deno.TlsConn>();
    this.#waiting.set(port, resolve);
    const timer = setTimeout(() => {
      this.#waiting.delete(port);
      reject(new Deno.errors.TimedOut("the TLS relay was not accepted"));
    }, this.#claimTimeoutMs);
    try {
      return await promise;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the private listener and closes what nobody claimed. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#listener.close();
    await this.#accepting;
    for (const { conn, timer } of this.#arrived.values()) {
      clearTimeout(timer);
      this.#release?.(conn);
      conn[Symbol.dispose]();
    }
    this.#arrived.clear();
  }
}

/**
 * Copies both ways between the client (`outer`) and the private TLS
 * listener (`inner`), half-closes passing on, until the server's side has
 * ended and the client's too (or {@linkcode LINGER_MS} after the server's);
 * then closes both. Never rejects.
 */
async function relay(outer: Deno.Conn, inner: Deno.Conn): Promise<void> {
  const copy = async (from: Deno.Conn, to: Deno.Conn) => {
    const buf = new Uint8Array(RELAY_BYTES);
    for (let n = await from.read(buf); n !== null; n = await from.read(buf)) {
      await writeAll(to, buf.subarray(0, n));
    }
    await to.closeWrite();
  };
  // A failure either way ends both; so does the end of the server's side.
  const upstream = copy(outer, inner).catch(() => closeBoth(outer, inner));
  try {
    await copy(inner, outer);
    // The server half-closed. It may still be reading (lingering after a
    // limit), so the client gets to finish sending, at most LINGER_MS:
    // closing now, with its input unread, would reset the client.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      upstream,
      new Promise((resolve) => timer = setTimeout(resolve, LINGER_MS)),
    ]);
    clearTimeout(timer);
  } catch {
    // reset or closed: the session hears of it from its own connection
  } finally {
    closeBoth(outer, inner);
    await upstream;
  }
}

function closeBoth(outer: Deno.Conn, inner: Deno.Conn): void {
  outer[Symbol.dispose]();
  inner[Symbol.dispose]();
}
