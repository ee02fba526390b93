/**
 * Test helpers shared by the `*_test.ts` files, in process: an echo server
 * that misbehaves on purpose to test clients against, log capture, the
 * server's connection events, and socket round trips. Not part of the tool;
 * `testing_cli.ts` runs the CLI as a child process.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  configure,
  type LogLevel,
  type LogRecord,
  reset,
} from "@logtape/logtape";
import { formatAddr, readAll, writeAll } from "./io.ts";
import {
  type ConnEvent,
  serve,
  type ServeOptions,
  type Server,
} from "./server.ts";

export { readAll, writeAll };

// ---- a stand-in: an echo server that misbehaves on purpose -----------------

/**
 * Called on every chunk an {@linkcode echoServer} reads, before it echoes it,
 * with the connection's number (0, 1, … in accept order) and how many bytes
 * it read before this chunk: returns what to echo (the chunk, changed in
 * place or not, or other bytes), or `"close"` to close the connection.
 */
export type Mangle = (
  chunk: Uint8Array,
  state: { readonly conn: number; readonly offset: number },
) => Uint8Array | "close";

/** Options for {@linkcode echoServer}. */
export interface EchoServerOptions {
  /** Changes what is echoed; by default every byte comes back as it came. */
  mangle?: Mangle;
  /** Listen on this Unix socket instead of 127.0.0.1, port 0. */
  path?: string;
  /** Serve TLS with this PEM certificate and key. */
  tls?: { cert: string; key: string };
  /** Echo in writes of at most this many bytes. @default {Infinity} */
  pieceBytes?: number;
  /** After the client's half-close, keep the connection open until closed. @default {false} */
  hold?: boolean;
}

/** A running {@linkcode echoServer}. */
export interface EchoServer extends AsyncDisposable {
  /** Its port on 127.0.0.1 (0 on a Unix socket). */
  readonly port: number;
  /** Stops listening, closes every connection, awaits their tasks (idempotent). */
  close(): Promise<void>;
}

/**
 * A raw echo server that can misbehave on purpose (alter, cut, split or
 * withhold its echo), to test clients against: one task per connection,
 * half-close answered once everything is echoed, every connection tracked
 * and closed by {@linkcode EchoServer.close}.
 *
 * @example
 * ```ts ignore
 * await using server = echoServer({ mangle: flipBitAt(1000) });
 * ```
 */
export function echoServer(options: EchoServerOptions = {}): EchoServer {
  const { mangle, path, tls, pieceBytes = Infinity, hold = false } = options;
  const closing = Promise.withResolvers<void>();
  const listener: Deno.Listener = tls
    ? Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: tls.cert,
      key: tls.key,
    })
    : path === undefined
    ? Deno.listen({ hostname: "127.0.0.1", port: 0 })
    : Deno.listen({ transport: "unix", path });
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  const handle = async (conn: Deno.Conn, index: number) => {
    using _conn = conn;
    const state = { conn: index, offset: 0 };
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (
        let n = await conn.read(buffer);
        n !== null;
        n = await conn.read(buffer)
      ) {
        const out = mangle
          ? mangle(buffer.subarray(0, n), state)
          : buffer.subarray(0, n);
        if (out === "close") return;
        state.offset += n;
        for (let at = 0; at < out.length; at += pieceBytes) {
          await writeAll(
            conn,
            out.subarray(at, Math.min(out.length, at + pieceBytes)),
          );
        }
      }
      if (hold) await closing.promise;
      await conn.closeWrite();
    } catch {
      // reset, or interrupted by close(): this connection is done
    } finally {
      conns.delete(conn);
    }
  };
  const accepting = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        const task: Promise<void> = handle(conn, accepted++).finally(() =>
          tasks.delete(task)
        );
        tasks.add(task);
      }
    } catch { /* listener closed */ }
  })();
  let closed: Promise<void> | undefined;
  const close = () =>
    closed ??= (async () => {
      closing.resolve();
      listener.close();
      await accepting;
      for (const conn of conns) closeQuietly(conn);
      await Promise.all(tasks);
    })();
  return {
    port: path === undefined ? (listener.addr as Deno.NetAddr).port : 0,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * A {@linkcode Mangle} that flips the low bit of byte `at` of each
 * connection's echo, or of connection `conn`'s only.
 */
export function flipBitAt(at: number, conn?: number): Mangle {
  return (chunk, state) => {
    const i = at - state.offset;
    if (
      (conn === undefined || state.conn === conn) && i >= 0 && i < chunk.length
    ) {
      chunk[i] ^= 0x01;
    }
    return chunk;
  };
}

/** Captures LogTape records (all levels) until disposed. */
export async function captureLogs(): Promise<
  AsyncDisposable & {
    records: LogRecord[];
    lines(level?: LogLevel): string[];
    next(re: RegExp, timeoutMs?: number): Promise<string>;
  }
> {
  const records: LogRecord[] = [];
  const waiters: { re: RegExp; resolve: (m: string) => void }[] = [];
  const timers = new Set<ReturnType<typeof setTimeout>>();
  await configure({
    reset: true,
    sinks: {
      array(record) {
        records.push(record);
        const text = render(record);
        for (const w of waiters.splice(0)) {
          if (w.re.test(text)) w.resolve(text);
          else waiters.push(w);
        }
      },
    },
    loggers: [
      { category: ["tcpecho"], lowestLevel: "debug", sinks: ["array"] },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: [] },
    ],
  });
  return {
    records,
    /**
     * The first record from now on whose message matches `re`; rejects after
     * `timeoutMs`, with what was logged (a broken feature fails its test
     * instead of hanging the suite).
     */
    async next(re: RegExp, timeoutMs = 20_000) {
      const { promise, resolve, reject } = Promise.withResolvers<string>();
      const waiter = { re, resolve };
      waiters.push(waiter);
      const timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(waiter), 1);
        const seen = records.map(render).join("\n");
        reject(
          new Error(
            `no log record in ${timeoutMs / 1000} s matched ${re}; ` +
              `it logged:\n${seen}`,
          ),
        );
      }, timeoutMs);
      timers.add(timer);
      try {
        return await promise;
      } finally {
        clearTimeout(timer);
        timers.delete(timer);
      }
    },
    /** The messages logged so far (at `level` only, if given), values filled in. */
    lines(level?: LogLevel): string[] {
      return records.filter((r) => level === undefined || r.level === level)
        .map(render);
    },
    async [Symbol.asyncDispose]() {
      for (const timer of timers) clearTimeout(timer); // waits not awaited
      await reset();
    },
  };
}

/** A record's message with its values filled in. */
export function render(record: LogRecord): string {
  return record.message.map((part) => String(part)).join("");
}

/** Writes `data` and reads exactly `data.length` bytes back. */
export async function roundTrip(
  conn: Deno.Conn,
  data: Uint8Array,
): Promise<Uint8Array> {
  const [, back] = await Promise.all([
    writeAll(conn, data),
    readExactly(conn, data.length),
  ]);
  return back;
}

/** Reads exactly `n` bytes; fails if the stream ends first. */
export async function readExactly(
  conn: Deno.Conn,
  n: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error(`stream ended after ${got} of ${n} bytes`);
    got += r;
  }
  return out;
}

/** Writes `data`, half-closes, and returns everything until the server closes. */
export async function echoAll(
  conn: Deno.Conn,
  data: Uint8Array,
): Promise<Uint8Array> {
  const [, back] = await Promise.all([
    writeAll(conn, data).then(() => conn.closeWrite()),
    readAll(conn),
  ]);
  return back;
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export function randomBytes(n: number, seed = 1): Uint8Array {
  return new RandomStream(seed).next(n);
}

// ---- appended for the property, fault and soak tests ----------------------

/**
 * The byte stream of {@linkcode randomBytes} with the same `seed`, produced a
 * piece at a time: a sender and a checker each keep one, so a long stream is
 * verified without being stored.
 */
export class RandomStream {
  #x: number;
  /** Bytes produced so far. */
  offset = 0;

  /** A stream from `seed` (0 counts as 1). */
  constructor(seed = 1) {
    this.#x = seed || 1;
  }

  /** The next `n` bytes of the stream. */
  next(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let x = this.#x;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[i] = x & 0xff;
    }
    this.#x = x;
    this.offset += n;
    return out;
  }
}

/**
 * Calls `onTimeout` (typically closing the test's sockets, so every pending
 * read and write rejects) if `ms` pass before disposal: a broken feature then
 * fails its test instead of hanging the suite. `fired` says whether it did.
 */
export function watchdog(
  ms: number,
  onTimeout: () => void,
): Disposable & { readonly fired: boolean } {
  let fired = false;
  const timer = setTimeout(() => {
    fired = true;
    onTimeout();
  }, ms);
  return {
    get fired() {
      return fired;
    },
    [Symbol.dispose]() {
      clearTimeout(timer);
    },
  };
}

/** Closes `closable`, ignoring "already closed". */
export function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch {
    // already closed
  }
}

/**
 * The soft limit on open descriptors of this process (from
 * `/proc/self/limits`), or `undefined` where that cannot be read.
 */
export function openFilesLimit(): number | undefined {
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const soft = limits.match(/^Max open files\s+(\S+)/m)?.[1];
    return soft === "unlimited" ? Infinity : Number(soft);
  } catch {
    return undefined;
  }
}

/**
 * Records a server's connection events: pass `onConnState` to `serve()`,
 * then wait on `find()` / `count()` instead of on log wording. Every wait
 * is bounded. Dispose to clear the timers of waits nobody awaited.
 */
export class ConnEvents implements Disposable {
  /** Every event so far, in order. */
  readonly events: ConnEvent[] = [];
  #waiters = new Set<() => void>();
  #timers = new Set<ReturnType<typeof setTimeout>>();

  /** The hook for `serve({ onConnState })`. */
  readonly onConnState = (event: ConnEvent): void => {
    this.events.push(event);
    for (const check of this.#waiters) check();
  };

  /**
   * `serve({ port: 0, ...options })` on TCP, its events recorded here: the
   * server a test awaits events of.
   */
  serve(
    options: Omit<ServeOptions, "path" | "onConnState"> = {},
  ): Server<Deno.NetAddr> {
    return serve({ port: 0, ...options, onConnState: this.onConnState });
  }

  /**
   * The first `state` event (past or future) that `match` accepts; rejects
   * after `timeoutMs` with the events seen.
   */
  async find<S extends ConnEvent["state"]>(
    state: S,
    match: (event: Extract<ConnEvent, { state: S }>) => boolean = () => true,
    timeoutMs = 20_000,
  ): Promise<Extract<ConnEvent, { state: S }>> {
    const [event] = await this.count(state, 1, match, timeoutMs);
    return event;
  }

  /**
   * Resolves with the `state` events that `match` accepts once there are at
   * least `n` of them (past or future); rejects after `timeoutMs` with the
   * events seen.
   */
  count<S extends ConnEvent["state"]>(
    state: S,
    n: number,
    match: (event: Extract<ConnEvent, { state: S }>) => boolean = () => true,
    timeoutMs = 20_000,
  ): Promise<Extract<ConnEvent, { state: S }>[]> {
    type E = Extract<ConnEvent, { state: S }>;
    const matching = () =>
      this.events.filter((e): e is E => e.state === state && match(e as E));
    const { promise, resolve, reject } = Promise.withResolvers<E[]>();
    const check = () => {
      const found = matching();
      if (found.length < n) return;
      done();
      resolve(found);
    };
    const timer = setTimeout(() => {
      done();
      const seen = this.events.map((e) => JSON.stringify(e)).join("\n");
      reject(
        new Error(
          `${matching().length} of ${n} ${state} events in ` +
            `${timeoutMs / 1000} s; events:\n${seen}`,
        ),
      );
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      this.#timers.delete(timer);
      this.#waiters.delete(check);
    };
    this.#timers.add(timer);
    this.#waiters.add(check);
    check();
    return promise;
  }

  /** Clears the timers of waits nobody awaited. */
  [Symbol.dispose](): void {
    for (const timer of this.#timers) clearTimeout(timer);
  }
}

/** The path of `testdata/NAME` (test certificates and keys). */
export function testdata(name: string): string {
  return new URL(`./testdata/${name}`, import.meta.url).pathname;
}

/** The test server's certificate and key (PEM, for `localhost`): `serve({ ...TLS })`. */
export const TLS = {
  cert: Deno.readTextFileSync(testdata("server.pem")),
  key: Deno.readTextFileSync(testdata("server-key.pem")),
};

/** The CA that signed {@linkcode TLS}'s certificate (PEM): `caCerts: [CA]`. */
export const CA = Deno.readTextFileSync(testdata("ca.pem"));

/** Whether this machine has an IPv6 loopback to bind. */
export const hasIpv6 = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

/**
 * Streams 1 MiB writes at `port` from a client that never reads, until the
 * server closes it as "idle for 0.10 s" (give it `idleTimeoutMs: 100`): that
 * is once its write is blocked on the client and it has stopped reading in
 * turn. Asserts that it did stop taking bytes (not all of 64 MiB were
 * written) and returns its `closed` event.
 */
export async function streamUntilStalled(
  port: number,
  events: ConnEvents,
): Promise<Extract<ConnEvent, { state: "closed" }>> {
  using conn = await Deno.connect({ port });
  const stalled = events.find("closed", (e) => e.reason === "idle for 0.10 s");
  const chunk = new Uint8Array(1 << 20);
  let written = 0;
  const writing = (async () => {
    while (written < 64 << 20) written += await conn.write(chunk);
  })().catch(() => {}); // ends when the server closes the conn
  const closed = await stalled;
  assert.ok(written < 64 << 20, `all ${written} bytes were taken`);
  conn.close();
  await writing;
  return closed;
}

/** The peer tag the server gives a client's TCP connection: `ip:port`. */
export function peerOf(conn: Deno.Conn): string {
  return formatAddr(conn.localAddr);
}
