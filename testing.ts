/**
 * Test helpers shared by the `*_test.ts` files: the CLI as a child process,
 * log capture, and socket round trips. Not part of the tool.
 *
 * @module
 */
import { configure, type LogRecord, reset } from "@logtape/logtape";
import { formatAddr, readAll, writeAll } from "./io.ts";
import type { ConnEvent } from "./server.ts";

export { readAll, writeAll };

const MAIN = new URL("./main.ts", import.meta.url).pathname;

/** `deno run -A main.ts …` as a child process, stdio piped. */
export function cli(args: string[], stdin: "piped" | "null" = "null") {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", MAIN, ...args],
    stdin,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  });
}

/** Runs the CLI to completion: exit code, stdout and stderr as text. */
export async function runCli(
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await cli(args).output();
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

/**
 * A running `tcpecho server` child. Its stderr is read line by line from the
 * start, so `waitFor()` sees every line and the child never blocks on a full
 * pipe. Dispose (or `stop()`) to end it and await everything.
 */
export class ServerProcess implements AsyncDisposable {
  readonly child: Deno.ChildProcess;
  /** Every stderr line so far. */
  readonly lines: string[] = [];
  /** The port from the `listening on` line. */
  port = 0;
  #waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  #reading: Promise<void>;
  #stdout: Promise<Uint8Array>;
  #closed = Promise.withResolvers<void>();

  /**
   * `tcpecho server ARGS`, run through `wrapper` when one is given (such as
   * `prlimit --nofile=64:64 --`).
   */
  constructor(args: string[], wrapper: string[] = []) {
    const [command, ...rest] = [
      ...wrapper,
      Deno.execPath(),
      "run",
      "-A",
      "--quiet",
      MAIN,
      "server",
      ...args,
    ];
    this.child = new Deno.Command(command, {
      args: rest,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.#stdout = new Response(this.child.stdout).bytes();
    this.#reading = this.#readLines();
  }

  /** Starts a server with `args` (add `--port 0`) and waits until it listens. */
  static async start(
    args: string[],
    wrapper: string[] = [],
  ): Promise<ServerProcess> {
    const server = new ServerProcess(args, wrapper);
    const line = await server.waitFor(/listening on /);
    server.port = Number(line.match(/listening on [^\s"]*:(\d+)/)?.[1] ?? 0);
    return server;
  }

  async #readLines(): Promise<void> {
    let pending = "";
    const decoder = new TextDecoder();
    for await (const chunk of this.child.stderr) {
      pending += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = pending.indexOf("\n")) !== -1) {
        this.#line(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
    }
    if (pending !== "") this.#line(pending);
    this.#closed.resolve();
  }

  #line(line: string): void {
    this.lines.push(line);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.re.test(line)) return true;
      w.resolve(line);
      return false;
    });
  }

  /**
   * Resolves with the first stderr line (past or future) matching `re`;
   * rejects if stderr ends first, or after `timeoutMs` (a broken feature
   * fails its test instead of hanging the suite).
   */
  async waitFor(re: RegExp, timeoutMs = 20_000): Promise<string> {
    const seen = this.lines.find((l) => re.test(l));
    if (seen !== undefined) return seen;
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    this.#waiters.push({ re, resolve });
    const fail = (why: string) =>
      reject(new Error(`${why} ${re}; it said:\n${this.lines.join("\n")}`));
    this.#closed.promise.then(() => fail("server exited without logging"));
    const timer = setTimeout(
      () => fail(`no line in ${timeoutMs / 1000} s matched`),
      timeoutMs,
    );
    try {
      return await promise;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends `signal` and resolves with the exit code once all output is read. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    try {
      this.child.kill(signal);
    } catch {
      // already exited
    }
    return await this.exited();
  }

  /** Waits for the child to exit by itself; resolves with its exit code. */
  async exited(): Promise<number> {
    const [status] = await Promise.all([
      this.child.status,
      this.#reading,
      this.#stdout,
    ]);
    return status.code;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }
}

/** Captures LogTape records (all levels) until disposed. */
export async function captureLogs(): Promise<
  AsyncDisposable & {
    records: LogRecord[];
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

/** The peer tag the server gives a client's TCP connection: `ip:port`. */
export function peerOf(conn: Deno.Conn): string {
  return formatAddr(conn.localAddr);
}
