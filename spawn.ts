/**
 * Starting `tcpecho server` as a child process to measure:
 * {@linkcode spawnServer} (`tcpecho bench --spawn-server`).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

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
 * The server's ready line, in text (`listening on 127.0.0.1:8080`) or JSON
 * (`"message":"listening on \"[::1]:8080\""`) format.
 */
const LISTENING =
  /listening on \\?"?(unix:[^\s"\\]+|\[[^\]\s]+\]:\d+|[^\s"\\[\]]+:\d+)/;

/** Permissions of the child under `deno run`, as the `server` task has them. */
const SERVER_PERMISSIONS = ["--allow-net", "--allow-read", "--allow-write"];

/**
 * Starts `tcpecho server --port 0 ARGS…` (no `--port 0` with `--unix`) as a
 * child of this same program
 * (the compiled binary, or `deno run main.ts`), and resolves once it logs
 * `listening on HOST:PORT`. Its stdout is discarded, its stderr drained.
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
  const {
    mainModule = new URL("./main.ts", import.meta.url),
    startTimeoutMs = 30_000,
    onLog,
  } = options;
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
  const serverArgs = ["server", ...(unix ? [] : ["--port", "0"]), ...args];
  const commandArgs = Deno.build.standalone ? serverArgs : [
    "run",
    ...SERVER_PERMISSIONS,
    "--no-prompt",
    mainModule instanceof URL ? fileURLToPath(mainModule) : mainModule,
    ...serverArgs,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args: commandArgs,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  const ready = Promise.withResolvers<string>();
  const seen: string[] = []; // stderr before ready, for the error message
  let isReady = false;
  const drained = (async () => {
    const decoder = new TextDecoder();
    let pending = "";
    const onLine = (line: string) => {
      if (isReady) return onLog?.(line);
      const match = LISTENING.exec(line);
      if (match) {
        isReady = true;
        ready.resolve(match[1]);
      } else if (seen.push(line) > 20) seen.shift();
    };
    for await (const chunk of child.stderr) {
      pending += decoder.decode(chunk, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop()!;
      for (const line of lines) onLine(line.replace(/\r$/, ""));
    }
    pending += decoder.decode();
    if (pending) onLine(pending);
  })();
  const exited = child.status.then(({ code }) => code);

  let stopping: Promise<number> | undefined;
  const stop = (): Promise<number> =>
    stopping ??= (async () => {
      try {
        child.kill("SIGTERM");
      } catch { /* exited already */ }
      const code = await exited;
      await Promise.all([drained, watch]);
      return code;
    })();

  const timer = setTimeout(
    () =>
      ready.reject(
        new Error(`no "listening on" line after ${startTimeoutMs / 1000} s`),
      ),
    startTimeoutMs,
  );
  // Settles `ready` (if still pending) when the child dies before it is ready.
  const watch = exited.then((code) =>
    ready.reject(new Error(`exited with code ${code}: ${seen.join(" | ")}`))
  );
  let address: string;
  try {
    address = await ready.promise;
  } catch (cause) {
    await stop();
    throw new Error("cannot start server", { cause });
  } finally {
    clearTimeout(timer);
  }
  const port = address.startsWith("unix:")
    ? 0
    : Number(/:(\d+)$/.exec(address)?.[1] ?? 0);
  return {
    port,
    address,
    stop,
    async [Symbol.asyncDispose]() {
      await stop();
    },
  };
}
