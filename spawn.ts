/**
 * A `tcpecho server` as a child process, ready once it logs `listening on`:
 * {@linkcode ServerChild} (tests and tools) and {@linkcode spawnServer}
 * (`tcpecho bench --spawn-server`). The child is this same program (the
 * compiled binary, or `deno run main.ts`), another binary, or either run
 * through a wrapper command; every wait on it is bounded.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { readLines } from "./io.ts";

/**
 * The server's ready line, in text (`listening on 127.0.0.1:8080`) or JSON
 * (`"message":"listening on \"[::1]:8080\""`) format; group 1 is the address.
 */
const LISTENING =
  /listening on \\?"?(unix:[^\s"\\]+|\[[^\]\s]+\]:\d+|[^\s"\\[\]]+:\d+)/;

/** Permissions of the child under `deno run`, as the `server` task has them. */
const SERVER_PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env=DENO_TOKIO_MAX_IO_EVENTS_PER_TICK",
  "--allow-ffi",
];

/** Stderr lines before the ready line that a start error quotes. */
const QUOTED_LINES = 20;

/** Options for {@linkcode ServerChild}. */
export interface ServerChildOptions {
  /**
   * A tcpecho binary to run as `PROGRAM server ARGS…`. By default this same
   * program: the binary itself when compiled (`Deno.build.standalone`), else
   * `deno run RUN_FLAGS MAIN_MODULE server ARGS…`.
   */
  program?: string;
  /** Under `deno run`, the module to run. @default {new URL("./main.ts", import.meta.url)} */
  mainModule?: string | URL;
  /**
   * Under `deno run`, its flags before the module.
   * @default {["--allow-net", "--allow-read", "--allow-write", "--allow-env=DENO_TOKIO_MAX_IO_EVENTS_PER_TICK", "--allow-ffi", "--no-prompt"]}
   */
  runFlags?: string[];
  /** A command to run the child through, e.g. `["prlimit", "--nofile=64:64", "--"]`. */
  wrapper?: string[];
  /** Variables added to the child's environment (it inherits the rest). */
  env?: Record<string, string>;
  /** Kill the child if it has not logged `listening on` by then. @default {30000} */
  startTimeoutMs?: number;
  /** {@linkcode ServerChild.stop} kills a child still running this long after its signal. @default {20000} */
  stopTimeoutMs?: number;
  /** How many of the latest stderr lines {@linkcode ServerChild.lines} keeps. @default {Infinity} */
  keepLines?: number;
  /**
   * Called with each stderr line, in order; `afterReady` is whether the
   * ready line came before it. Must not throw.
   */
  onLine?: (line: string, afterReady: boolean) => void;
}

/**
 * A running `tcpecho server` child. Its stderr is read line by line from the
 * start, so {@linkcode ServerChild.waitFor} sees every line and the child
 * never blocks on a full pipe; its stdout is discarded.
 *
 * @example
 * ```ts ignore
 * await using server = new ServerChild(["--port", "0"]);
 * await server.ready;
 * using conn = await Deno.connect({ port: server.port });
 * ```
 */
export class ServerChild implements AsyncDisposable {
  /** The child process. */
  readonly child: Deno.ChildProcess;
  /** The stderr lines so far (the latest `keepLines` of them). */
  readonly lines: string[] = [];
  /** Where it listens, from its ready line: `HOST:PORT`, `[::1]:PORT` or `unix:PATH`; `""` before. */
  address = "";
  /** The port it listens on; 0 before it is ready and for a Unix socket. */
  port = 0;
  /**
   * Resolves with {@linkcode ServerChild.address} at the ready line. Rejects
   * with `cannot start server` once the child is gone, if it exited first
   * (the cause quotes its stderr) or was killed at `startTimeoutMs`.
   */
  readonly ready: Promise<string>;
  #stopTimeoutMs: number;
  #keepLines: number;
  #onLine?: (line: string, afterReady: boolean) => void;
  #early: string[] = [];
  #listening = Promise.withResolvers<string>();
  #waiters: { re: RegExp; resolve: (line: string) => void }[] = [];
  #reading: Promise<void>;
  #exited: Promise<number>;

  /** Starts `tcpecho server ARGS…` (add `--port 0` for a free port). */
  constructor(args: string[], options: ServerChildOptions = {}) {
    const {
      program = Deno.build.standalone ? Deno.execPath() : undefined,
      mainModule = new URL("./main.ts", import.meta.url),
      runFlags = [...SERVER_PERMISSIONS, "--no-prompt"],
      wrapper = [],
      env,
      startTimeoutMs = 30_000,
      stopTimeoutMs = 20_000,
      keepLines = Infinity,
      onLine,
    } = options;
    this.#stopTimeoutMs = stopTimeoutMs;
    this.#keepLines = keepLines;
    this.#onLine = onLine;
    const module = mainModule instanceof URL
      ? fileURLToPath(mainModule)
      : mainModule;
    const [command, ...rest] = [
      ...wrapper,
      ...(program === undefined
        ? [Deno.execPath(), "run", ...runFlags, module]
        : [program]),
      "server",
      ...args,
    ];
    this.child = new Deno.Command(command, {
      args: rest,
      env,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#reading = this.#read(this.child.stderr);
    // Exited = its status is known and its stderr read to the end.
    this.#exited = Promise.all([this.child.status, this.#reading])
      .then(([status]) => status.code);

    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      this.#kill("SIGKILL");
    }, startTimeoutMs);
    const notReady = (cause: Error) =>
      this.#listening.reject(new Error("cannot start server", { cause }));
    this.#exited.then(
      (code) =>
        notReady(
          new Error(
            timedOut
              ? `no "listening on" line after ${startTimeoutMs / 1000} s`
              : `exited with code ${code}: ${this.#early.join(" | ")}`,
          ),
        ),
      notReady,
    );
    this.ready = this.#listening.promise.finally(() => clearTimeout(timer));
    this.ready.catch(() => {}); // the owner awaits it, maybe only later
  }

  async #read(stderr: ReadableStream<Uint8Array>): Promise<void> {
    for await (const line of readLines(stderr, { crlf: true })) {
      const afterReady = this.address !== "";
      if (!afterReady) {
        const match = LISTENING.exec(line);
        if (match) {
          this.address = match[1];
          this.port = this.address.startsWith("unix:")
            ? 0
            : Number(/:(\d+)$/.exec(this.address)![1]);
          this.#listening.resolve(this.address);
        } else if (this.#early.push(line) > QUOTED_LINES) this.#early.shift();
      }
      this.lines.push(line);
      if (this.lines.length > this.#keepLines) this.lines.shift();
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.re.test(line)) return true;
        w.resolve(line);
        return false;
      });
      this.#onLine?.(line, afterReady);
    }
  }

  /**
   * Resolves with the first stderr line (among those kept, or a later one)
   * matching `re`; rejects if stderr ends first, or after `timeoutMs`.
   */
  async waitFor(re: RegExp, timeoutMs = 20_000): Promise<string> {
    const seen = this.lines.find((line) => re.test(line));
    if (seen !== undefined) return seen;
    const { promise, resolve, reject } = Promise.withResolvers<string>();
    this.#waiters.push({ re, resolve });
    const fail = (why: string) =>
      reject(new Error(`${why} ${re}; it said:\n${this.lines.join("\n")}`));
    const ended = () => fail("server exited without logging");
    this.#reading.then(ended, ended);
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

  /**
   * Sends `signal` (nothing if it has exited) and resolves with the exit
   * code once stderr is read to the end; a child still running after
   * `stopTimeoutMs` gets SIGKILL.
   */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<number> {
    this.#kill(signal);
    const timer = setTimeout(() => this.#kill("SIGKILL"), this.#stopTimeoutMs);
    try {
      return await this.#exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Waits for the child to exit by itself and resolves with its exit code;
   * rejects (leaving it running) after `timeoutMs`.
   */
  async exited(timeoutMs = 30_000): Promise<number> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`still running after ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.#exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Same as {@linkcode ServerChild.stop} with SIGTERM. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  #kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch {
      // exited already
    }
  }
}

/** Options for {@linkcode spawnServer}. */
export interface SpawnServerOptions {
  /**
   * Under `deno run`, the module to run with `server …`; ignored in a
   * compiled binary (it is the program). Tests point it at a stub.
   * @default {new URL("./main.ts", import.meta.url)}
   */
  mainModule?: string | URL;
  /** Give up when the server has not logged `listening on` by then. @default {30000} */
  startTimeoutMs?: number;
  /** Each stderr line after `listening on`. The child's stderr is drained either way. */
  onLog?: (line: string) => void;
}

/** A server started by {@linkcode spawnServer}. */
export interface SpawnedServer {
  /** The port it listens on (0 for a Unix socket). */
  port: number;
  /** What it logged after `listening on`: `HOST:PORT`, `[::1]:PORT` or `unix:PATH`. */
  address: string;
  /** SIGTERM, then its exit code once it has exited (idempotent). */
  stop(): Promise<number>;
  /** Same as {@linkcode SpawnedServer.stop}. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts `tcpecho server --port 0 ARGS…` (no `--port 0` with `--unix`) as a
 * child of this same program (the compiled binary, or `deno run main.ts`),
 * and resolves once it logs `listening on HOST:PORT`. Its stdout is
 * discarded, its stderr drained.
 *
 * @param args more `server` options, e.g. `["--mode", "line"]`.
 * @throws {TypeError} for `-q` or `--log-level warn|error`: they hide the
 *   line waited for.
 * @throws {Error} `cannot start server`, the cause saying how it exited (with
 *   its last stderr lines) or that it stayed silent for `startTimeoutMs`.
 */
export async function spawnServer(
  args: string[] = [],
  options: SpawnServerOptions = {},
): Promise<SpawnedServer> {
  const { mainModule, startTimeoutMs, onLog } = options;
  const quiet = args.some((arg, i) =>
    arg === "-q" || arg === "--quiet" ||
    /^--log-level=(warn|error)$/.test(arg) ||
    (arg === "--log-level" && /^(warn|error)$/.test(args[i + 1] ?? ""))
  );
  if (quiet) {
    throw new TypeError(
      'cannot spawn the server quiet: it would hide its "listening on" line',
    );
  }
  const unix = args.some((arg) =>
    arg === "--unix" || arg.startsWith("--unix=")
  );
  const server = new ServerChild(
    [...(unix ? [] : ["--port", "0"]), ...args],
    {
      mainModule,
      startTimeoutMs,
      keepLines: 0,
      onLine: onLog && ((line, afterReady) => afterReady && onLog(line)),
    },
  );
  await server.ready; // on failure, the child is gone already
  let stopping: Promise<number> | undefined;
  const stop = (): Promise<number> => stopping ??= server.stop();
  return {
    port: server.port,
    address: server.address,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}
