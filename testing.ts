/**
 * Test helpers shared by the `*_test.ts` files, in process: the server's
 * connection events, log capture, socket round trips and probes, seeded
 * random bytes, the TLS test files. Not part of the tool; `testing_cli.ts`
 * runs the CLI as a child process and has the stand-ins to run it against.
 *
 * @module
 */
import assert from "node:assert/strict";
import net from "node:net";
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

/** `text` as UTF-8 bytes. */
export const bytes = (text: string): Uint8Array =>
  new TextEncoder().encode(text);

/** Whether this is a POSIX system (signals, Unix sockets), not Windows. */
export const posix = Deno.build.os !== "windows";

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

/** The file of the CA that signed {@linkcode TLS}'s certificate: `--ca CA_FILE`. */
export const CA_FILE = testdata("ca.pem");

/** That CA's certificate (PEM): `caCerts: [CA]`. */
export const CA = Deno.readTextFileSync(CA_FILE);

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

/**
 * A node:net socket to 127.0.0.1 from `localAddress` (one more client
 * address: Linux's loopback is all of 127.0.0.0/8), and a promise of
 * everything it receives until it is closed.
 */
export async function connectFrom(
  localAddress: string,
  port: number,
): Promise<{ socket: net.Socket; closed: Promise<Uint8Array> }> {
  const socket = net.connect({ host: "127.0.0.1", port, localAddress });
  const chunks: Uint8Array[] = [];
  const closed = new Promise<Uint8Array>((resolve) => {
    socket.on("data", (c: Uint8Array) => chunks.push(new Uint8Array(c)));
    socket.once("close", () => {
      const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
      chunks.reduce((off, c) => (all.set(c, off), off + c.length), 0);
      resolve(all);
    });
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  socket.on("error", () => {}); // a reset is one more way to be closed
  return { socket, closed };
}

/** The peer tag the server gives a client's TCP connection: `ip:port`. */
export function peerOf(conn: Deno.Conn): string {
  return formatAddr(conn.localAddr);
}
