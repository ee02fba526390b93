/**
 * Test helpers for the command line: the CLI (`main.ts`) as a child process,
 * run to completion, under a terminal or kept as a running server; and the
 * stand-ins that clients and spawners are tested against, an echo server
 * that misbehaves on purpose and a stub `main.ts`. Not part of the tool;
 * `testing.ts` holds the in-process helpers.
 *
 * @module
 */
import assert from "node:assert/strict";
import { ServerChild } from "./spawn.ts";
import { closeQuietly, testdata, watchdog, writeAll } from "./testing.ts";

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

/**
 * A command line's arguments, split at white space as a shell would split
 * them unquoted: `argv("--port 0 --workers 2")` is
 * `["--port", "0", "--workers", "2"]`. For arguments without spaces; put a
 * path that may hold one in its own array element.
 */
export function argv(line: string): string[] {
  return line.split(/\s+/).filter((word) => word !== "");
}

/** `tcpecho server`'s TLS options with the test certificate and key. */
export const TLS_ARGS = [
  "--tls-cert",
  testdata("server.pem"),
  "--tls-key",
  testdata("server-key.pem"),
];

/** How long a CLI run may take, unless a test says less. */
export const CHILD_MS = 30_000;

/**
 * Runs the CLI to completion: exit code, stdout and stderr as text. A run
 * still going after `timeoutMs` is killed (SIGKILL) and fails its test,
 * instead of hanging the suite.
 */
export async function runCli(
  args: string[],
  timeoutMs = CHILD_MS,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const { code, stdout, stderr } = await runToEnd(args, timeoutMs);
  const text = new TextDecoder();
  return { code, stdout: text.decode(stdout), stderr: text.decode(stderr) };
}

/**
 * Runs `tcpecho client ARGS` to completion with `input` on its stdin (as
 * {@linkcode runCli}, killed after `timeoutMs`): exit code, stdout as bytes,
 * stderr as text.
 */
export async function runClient(
  args: string[],
  input: Uint8Array,
  timeoutMs = CHILD_MS,
): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const { code, stdout, stderr } = await runToEnd(
    ["client", ...args],
    timeoutMs,
    async (stdin) => {
      const writer = stdin.getWriter();
      await writer.write(input);
      await writer.close();
    },
  );
  return { code, stdout, stderr: new TextDecoder().decode(stderr) };
}

/** `tcpecho ARGS` to its end, `feed` writing its stdin, killed after `timeoutMs`. */
async function runToEnd(
  args: string[],
  timeoutMs: number,
  feed?: (stdin: WritableStream<Uint8Array>) => Promise<void>,
): Promise<Deno.CommandOutput> {
  const child = cli(args, feed ? "piped" : "null").spawn();
  using dog = watchdog(timeoutMs, () => {
    try {
      child.kill("SIGKILL");
    } catch { /* exited meanwhile */ }
  });
  const [, output] = await Promise.all([
    // A child that failed early (no server to connect to) reads nothing.
    feed?.(child.stdin).catch(() => {}),
    child.output(),
  ]);
  assert.ok(
    !dog.fired,
    `tcpecho ${args.join(" ")}: still running after ${timeoutMs / 1000} s`,
  );
  return output;
}

/**
 * Asserts a usage error: exit 2, nothing on stdout, and on stderr two
 * lines, `error: MESSAGE` (`message` in full, or a pattern it matches) and
 * one that matches `usage`.
 */
export async function assertUsageError(
  args: string[],
  message: string | RegExp,
  usage = /^usage: tcpecho/,
  timeoutMs = 10_000,
): Promise<void> {
  const { code, stdout, stderr } = await runCli(args, timeoutMs);
  assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
  assert.equal(stdout, "");
  const lines = stderr.trimEnd().split("\n");
  assert.equal(lines.length, 2, stderr);
  if (typeof message === "string") assert.equal(lines[0], `error: ${message}`);
  else assert.match(lines[0], message);
  assert.match(lines[1], usage);
}

/** The keys of `bench --json`'s object, in the SPEC's order. */
export const RESULT_KEYS = [
  "pattern",
  "connections",
  "size",
  "duration_s",
  "messages",
  "messages_per_s",
  "bytes",
  "mib_per_s",
  "latency_us",
  "errors",
  "rate",
  "latency_uncorrected_us",
  "connects_per_s",
  "lost",
  "per_conn",
];

/** The keys of its `latency_us`, in order. */
export const LATENCY_KEYS = [
  "p50",
  "p75",
  "p90",
  "p95",
  "p99",
  "p999",
  "p9999",
  "max",
];

/**
 * {@linkcode benchJson}, asserting also that the run was clean: no error,
 * and messages echoed.
 */
export async function benchClean(args: string[]) {
  const run = await benchJson(args);
  const shown = JSON.stringify(run.result);
  assert.equal(run.result.errors, 0, shown);
  assert.ok(run.result.messages > 0, shown);
  return run;
}

/**
 * Runs `tcpecho bench ARGS --json` (as {@linkcode runCli}), asserts that it
 * exits 0 (its stderr says why not), and returns the parsed result and the
 * stderr.
 */
export async function benchJson(args: string[]) {
  const { code, stdout, stderr } = await runCli(["bench", ...args, "--json"]);
  assert.equal(code, 0, stderr);
  return { result: JSON.parse(stdout), stderr };
}

/**
 * A running `tcpecho server` child (`deno run -A main.ts server ARGS`, logs
 * uncoloured): a {@linkcode ServerChild} that keeps every stderr line and is
 * killed (SIGKILL) on disposal.
 */
export class ServerProcess extends ServerChild {
  /**
   * `tcpecho server ARGS`, run through `wrapper` when one is given (such as
   * `prlimit --nofile=64:64 --`).
   */
  constructor(args: string[], wrapper: string[] = []) {
    super(args, {
      mainModule: MAIN,
      runFlags: ["-A", "--quiet"],
      wrapper,
      env: { NO_COLOR: "1" },
      startTimeoutMs: 20_000,
    });
  }

  /** Starts a server with `args` (add `--port 0`) and waits until it listens. */
  static async start(
    args: string[],
    wrapper: string[] = [],
  ): Promise<ServerProcess> {
    const server = new ServerProcess(args, wrapper);
    await server.ready;
    return server;
  }

  /** Kills the child (SIGKILL) and waits for it. */
  override async [Symbol.asyncDispose](): Promise<void> {
    await this.stop("SIGKILL");
  }
}

// ---- stand-ins: an echo server that misbehaves on purpose, a stub main.ts --

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

/**
 * A stand-in for `main.ts` (a {@linkcode ServerChild} `mainModule`) that
 * logs as `tcpecho server` does and echoes: `starting`, the ready line
 * (JSON with `--log-format json`), `args: ARGS`. `--silent` leaves out the
 * ready line, `--env` adds `env: $STUB_ENV`, `--ignore-sigterm` keeps it
 * running on SIGTERM (else it exits 0).
 */
export const STUB_SERVER = `
// The handler goes first: a parent that saw a line may send SIGTERM at once.
Deno.addSignalListener("SIGTERM", () => {
  if (!Deno.args.includes("--ignore-sigterm")) Deno.exit(0);
});
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
console.error("starting");
if (!Deno.args.includes("--silent")) {
  console.error(
    Deno.args.includes("json")
      ? JSON.stringify({ message: 'listening on "127.0.0.1:' + listener.addr.port + '"' })
      : "listening on 127.0.0.1:" + listener.addr.port,
  );
}
console.error("args: " + Deno.args.join(" "));
if (Deno.args.includes("--env")) console.error("env: " + Deno.env.get("STUB_ENV"));
for await (const conn of listener) {
  (async () => {
    const buf = new Uint8Array(65536);
    try {
      for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
        for (let d = 0; d < n;) d += await conn.write(buf.subarray(d, n));
      }
      await conn.closeWrite();
    } catch {}
    try { conn.close(); } catch {}
  })();
}
`;

/**
 * A temporary directory holding `source` (by default
 * {@linkcode STUB_SERVER}) as `stub.ts`; removed on disposal.
 */
export async function stubServer(
  source: string = STUB_SERVER,
): Promise<AsyncDisposable & { dir: string; stub: string }> {
  const dir = await Deno.makeTempDir({ prefix: "tcpecho_stub_" });
  const stub = `${dir}/stub.ts`;
  await Deno.writeTextFile(stub, source);
  return {
    dir,
    stub,
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Whether script(1) is here, to run a child under a pseudo-terminal. */
export const hasScript = (() => {
  try {
    return new Deno.Command("script", { args: ["--version"] }).outputSync()
      .success;
  } catch {
    return false;
  }
})();

/**
 * `tcpecho client ARGS` (or `tcpecho COMMAND ARGS`) under a real
 * pseudo-terminal, via script(1): keys typed, what the screen shows, the
 * exit code. Each wait to see a text fails after `seeMs`; the child is
 * killed after {@linkcode CHILD_MS}.
 */
export function underPty(
  args: string[],
  seeMs = 20_000,
  tcpechoCommand = "client",
) {
  const command = [
    Deno.execPath(),
    "run",
    "-A",
    "--quiet",
    MAIN,
    tcpechoCommand,
  ].concat(args).join(" ");
  const child = new Deno.Command("script", {
    args: ["-qefc", command, "/dev/null"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", TERM: "dumb" },
    signal: AbortSignal.timeout(CHILD_MS),
  }).spawn();
  let screen = "";
  const waiters: { text: string; resolve: () => void }[] = [];
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      screen += decoder.decode(chunk, { stream: true });
      for (const w of waiters.splice(0)) {
        if (screen.includes(w.text)) w.resolve();
        else waiters.push(w);
      }
    }
  })();
  const writer = child.stdin.getWriter();
  const encoder = new TextEncoder();
  return {
    /** Everything the terminal showed so far. */
    get screen() {
      return screen;
    },
    /** Types `text` (`\r` is Enter, `\x04` Ctrl+D, `\x03` Ctrl+C). */
    type: (text: string) => writer.write(encoder.encode(text)),
    /** Resolves once `text` is on screen; rejects after `seeMs`. */
    async see(text: string): Promise<void> {
      if (screen.includes(text)) return;
      const { promise, resolve, reject } = Promise.withResolvers<void>();
      waiters.push({ text, resolve });
      const timer = setTimeout(
        () => reject(new Error(`never saw ${text}; screen:\n${screen}`)),
        seeMs,
      );
      try {
        await promise;
      } finally {
        clearTimeout(timer);
      }
    },
    /** Closes its stdin and waits for it: the exit code. */
    async exit(): Promise<number> {
      await writer.close().catch(() => {});
      const [status] = await Promise.all([
        child.status,
        reading,
        child.stderr.cancel(),
      ]);
      return status.code;
    },
  };
}
