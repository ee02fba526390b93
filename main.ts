/**
 * `tcpecho`: a TCP echo server, interactive client and load tester.
 *
 * This is the CLI: it alone reads `Deno.args`, configures logging, installs
 * signal handlers, prints `error: …` and sets the exit code.
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { reset } from "@logtape/logtape";
import denoJson from "./deno.json" with { type: "json" };
import {
  type EchoMode,
  removeStaleSocket,
  serve,
  SERVE_DEFAULTS,
  type ServeOptions,
} from "./server.ts";
import {
  BENCH_DEFAULTS,
  formatProgress,
  formatReport,
  runBench,
  spawnServer,
} from "./bench.ts";
import {
  connect,
  CONNECT_DEFAULTS,
  type ConnectOptions,
  interactive,
  pipe,
  targetName,
} from "./client.ts";
import { configureLogging } from "./log.ts";

/** The version in deno.json, the single source of truth. */
export const VERSION: string = denoJson.version;

/** A bad command line: exit code 2 and a usage line. */
export class UsageError extends Error {
  override name = "UsageError";
  /** The usage line of the command that was misused. */
  usage: string;
  constructor(message: string, usage: string) {
    super(message);
    this.usage = usage;
  }
}

const USAGE = {
  main: "usage: tcpecho <server|client|bench> [options]  (tcpecho --help)",
  server: "usage: tcpecho server [--host ADDR] [--port N | --unix PATH] " +
    "[--mode raw|line] [options]  (tcpecho server --help)",
  client: "usage: tcpecho client [--host ADDR] [--port N | --unix PATH] " +
    "[--tls [--ca FILE]]  (tcpecho client --help)",
  bench: "usage: tcpecho bench [--host ADDR] [--port N | --unix PATH] " +
    "[-c N] [-s BYTES] [-d SECONDS] [--pattern pingpong|stream] [--lines] [--json]" +
    "  (tcpecho bench --help)",
} as const;

const MAIN_HELP =
  `tcpecho ${VERSION}: TCP echo server, interactive client and load tester

${USAGE.main}

commands:
  server    run an echo server (raw bytes or lines; TCP, TLS or unix socket)
  client    connect and echo: readline on a terminal, a byte-exact pipe otherwise
  bench     load-test an echo server (this one, ncat, socat, …)

options:
  -h, --help     this help (each command has its own)
  -V, --version  print the version

exit codes: 0 ok, 1 runtime failure, 2 usage error, 130 interrupted
`;

const SERVER_HELP = `${USAGE.server}

Echo every byte (raw, RFC 862) or every line (line mode) back to each client.

  --host ADDR               address to bind; 0.0.0.0 or :: for other machines (default ${SERVE_DEFAULTS.hostname})
  -p, --port N              TCP port; 0 picks a free one (default ${SERVE_DEFAULTS.port})
  --unix PATH               listen on a unix socket instead of TCP
  --mode raw|line           raw: bytes back as they arrive; line: answer each whole line (default ${SERVE_DEFAULTS.mode})
  --max-line BYTES          line mode: a longer line closes that connection (default ${SERVE_DEFAULTS.maxLineBytes})
  --max-conns N             connections at once; more are accepted and closed (default ${SERVE_DEFAULTS.maxConns})
  --max-conns-per-ip N      the same, per client address; 0 is off (default ${SERVE_DEFAULTS.maxConnsPerIp})
  --idle-timeout SECONDS    close a connection that moved no byte this long; 0 is off (default ${
  SERVE_DEFAULTS.idleTimeoutMs / 1000
})
  --shutdown-timeout SECONDS  on SIGINT/SIGTERM wait this long for clients (default ${
  SERVE_DEFAULTS.shutdownTimeoutMs / 1000
})
  --tls-cert FILE --tls-key FILE  serve TLS (PEM certificate chain and key)
  --log-level debug|info|warn|error  (default info)
  -v, --verbose             same as --log-level debug (each message)
  -q, --quiet               same as --log-level warn
  --log-format text|json    json: one JSON object a line (default text)
  -h, --help                this help

Logs go to stderr. SIGINT/SIGTERM stop gracefully; a second signal exits 130.
`;

const CLIENT_HELP = `${USAGE.client}

On a terminal: type lines, see "server say# …"; Ctrl+D ends, Ctrl+C aborts.
Otherwise a byte-exact pipe: stdin to the server, the echo to stdout.

  --host ADDR                 host to connect to (default ${CONNECT_DEFAULTS.hostname})
  -p, --port N                TCP port (default ${CONNECT_DEFAULTS.port})
  --unix PATH                 connect to a unix socket instead
  --tls                       speak TLS (the certificate is always verified)
  --ca FILE                   also trust this CA (PEM), for self-signed servers
  --connect-timeout SECONDS   give up connecting after this long (default ${
  CONNECT_DEFAULTS.connectTimeoutMs / 1000
})
  -h, --help                  this help
`;

const BENCH_HELP = `${USAGE.bench}

Load-test an echo server and check every echoed byte (a mismatch is an error,
exit 1). Reports messages/s, MiB/s, round-trip latency and errors.

  --host ADDR, -p, --port N, --unix PATH, --tls, --ca FILE, --connect-timeout SECONDS
                              the target, as for client (default ${CONNECT_DEFAULTS.hostname}:${CONNECT_DEFAULTS.port})
  -c, --connections N         concurrent connections (default ${BENCH_DEFAULTS.connections})
  -s, --size BYTES            message size (default ${BENCH_DEFAULTS.sizeBytes})
  -d, --duration SECONDS      measuring time, after a ${
  BENCH_DEFAULTS.warmupMs / 1000
} s warm-up (default ${BENCH_DEFAULTS.durationMs / 1000})
  --pattern pingpong|stream   one message in flight per connection, or continuous streaming (default ${BENCH_DEFAULTS.pattern})
  --lines                     each message is printable text ending in "\\n" (for line-mode servers)
  --json                      one JSON object on stdout instead of the table
  --spawn-server              start "tcpecho server --port 0" (with --lines: --mode line)
                              as a child, measure it, stop it
  -h, --help                  this help

A progress line goes to stderr when it is a terminal. Ctrl+C stops early and
still prints what was measured (exit 130).
`;

/** Options every command knows. */
const COMMON = {
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsConfig["options"];

const TARGET = {
  host: { type: "string" },
  port: { type: "string", short: "p" },
  unix: { type: "string" },
} as const satisfies ParseArgsConfig["options"];

const SERVER_OPTIONS = {
  ...COMMON,
  ...TARGET,
  mode: { type: "string" },
  "max-line": { type: "string" },
  "max-conns": { type: "string" },
  "max-conns-per-ip": { type: "string" },
  "idle-timeout": { type: "string" },
  "shutdown-timeout": { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "log-level": { type: "string" },
  "log-format": { type: "string" },
  verbose: { type: "boolean", short: "v" },
  quiet: { type: "boolean", short: "q" },
} as const satisfies ParseArgsConfig["options"];

const CLIENT_OPTIONS = {
  ...COMMON,
  ...TARGET,
  tls: { type: "boolean" },
  ca: { type: "string" },
  "connect-timeout": { type: "string" },
} as const satisfies ParseArgsConfig["options"];

const BENCH_OPTIONS = {
  ...CLIENT_OPTIONS,
  connections: { type: "string", short: "c" },
  size: { type: "string", short: "s" },
  duration: { type: "string", short: "d" },
  pattern: { type: "string" },
  lines: { type: "boolean" },
  json: { type: "boolean" },
  "spawn-server": { type: "boolean" },
} as const satisfies ParseArgsConfig["options"];

/** Parses a command's arguments strictly; unknown options are usage errors. */
function parse<T extends NonNullable<ParseArgsConfig["options"]>>(
  args: string[],
  options: T,
  usage: string,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false })
      .values;
  } catch (err) {
    // node:util adds hint lines; the first one says it.
    const [first] = (err as Error).message.split("\n");
    throw new UsageError(lowerFirst(first), usage);
  }
}

function lowerFirst(text: string): string {
  return text.charAt(0).toLowerCase() + text.slice(1);
}

/** A whole number in `[min, max]`, or a usage error naming the option. */
function integer(
  value: string | undefined,
  name: string,
  usage: string,
  [min, max] = [0, Number.MAX_SAFE_INTEGER],
): number | undefined {
  if (value === undefined) return undefined;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!(n >= min && n <= max)) {
    const range = max === Number.MAX_SAFE_INTEGER
      ? `a whole number ≥ ${min}`
      : `a whole number from ${min} to ${max}`;
    throw new UsageError(`--${name} takes ${range}, not "${value}"`, usage);
  }
  return n;
}

/** Seconds (fractions allowed) as milliseconds, or a usage error. */
function secondsMs(
  value: string | undefined,
  name: string,
  usage: string,
): number | undefined {
  if (value === undefined) return undefined;
  const s = /^\d+(\.\d+)?$/.test(value) ? Number(value) : NaN;
  if (!(s >= 0 && s <= 1e6)) {
    throw new UsageError(
      `--${name} takes seconds (a number ≥ 0), not "${value}"`,
      usage,
    );
  }
  return s * 1000;
}

function oneOf<T extends string>(
  value: string | undefined,
  name: string,
  choices: readonly T[],
  usage: string,
): T | undefined {
  if (value === undefined || (choices as readonly string[]).includes(value)) {
    return value as T | undefined;
  }
  throw new UsageError(
    `--${name} takes ${choices.join(" or ")}, not "${value}"`,
    usage,
  );
}

/**
 * Reads a PEM file holding a `label` block ("CERTIFICATE", "PRIVATE KEY"),
 * naming what it is for when it cannot. Deno ignores a CA file with no
 * certificate in it, so an unusable file is caught here.
 */
async function readPem(
  path: string,
  what: string,
  label: string,
): Promise<string> {
  try {
    const pem = await Deno.readTextFile(path);
    if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(pem)) {
      throw new Error(`no PEM ${label.toLowerCase()} in it`);
    }
    return pem;
  } catch (cause) {
    throw new Error(`cannot read ${what} "${path}"`, { cause });
  }
}

/** A Unix socket path or a host and port, not both. */
function checkTarget(
  values: { host?: string; port?: string; unix?: string },
  usage: string,
): void {
  if (values.unix !== undefined && (values.port ?? values.host) !== undefined) {
    throw new UsageError("--unix cannot go with --host or --port", usage);
  }
}

/** Where to connect: the target options of `client` and `bench`. */
async function connectOptions(
  values: {
    host?: string;
    port?: string;
    unix?: string;
    tls?: boolean;
    ca?: string;
    "connect-timeout"?: string;
  },
  usage: string,
): Promise<ConnectOptions> {
  checkTarget(values, usage);
  if (values.ca !== undefined && !values.tls) {
    throw new UsageError("--ca needs --tls", usage);
  }
  return {
    hostname: values.host,
    port: integer(values.port, "port", usage, [1, 65535]),
    path: values.unix,
    tls: values.tls,
    caCerts: values.ca === undefined
      ? undefined
      : [await readPem(values.ca, "CA certificate", "CERTIFICATE")],
    connectTimeoutMs: secondsMs(
      values["connect-timeout"],
      "connect-timeout",
      usage,
    ),
  };
}

/**
 * Calls `onSignal` on the first SIGINT/SIGTERM and exits 130 on the second.
 * Dispose to remove the listeners.
 */
function onStopSignals(onSignal: () => void): Disposable {
  const signals: Deno.Signal[] = Deno.build.os === "windows"
    ? ["SIGINT", "SIGBREAK"]
    : ["SIGINT", "SIGTERM"];
  let seen = 0;
  const handler = () => {
    if (++seen > 1) Deno.exit(130);
    onSignal();
  };
  for (const s of signals) Deno.addSignalListener(s, handler);
  return {
    [Symbol.dispose]() {
      for (const s of signals) Deno.removeSignalListener(s, handler);
    },
  };
}

async function runServer(args: string[]): Promise<number> {
  const usage = USAGE.server;
  const values = parse(args, SERVER_OPTIONS, usage);
  if (values.help) {
    console.log(SERVER_HELP);
    return 0;
  }
  if (
    (values["tls-cert"] === undefined) !== (values["tls-key"] === undefined)
  ) {
    throw new UsageError("--tls-cert and --tls-key go together", usage);
  }
  checkTarget(values, usage);
  if (values.unix !== undefined && values["tls-cert"] !== undefined) {
    throw new UsageError("TLS is served over TCP only, not --unix", usage);
  }
  if (values.verbose && values.quiet) {
    throw new UsageError("-v and -q cannot go together", usage);
  }
  const levelName = oneOf(
    values["log-level"],
    "log-level",
    ["debug", "info", "warn", "error"] as const,
    usage,
  ) ?? (values.verbose ? "debug" : values.quiet ? "warn" : "info");
  const format = oneOf(
    values["log-format"],
    "log-format",
    ["text", "json"] as const,
    usage,
  ) ?? "text";
  const options: ServeOptions = {
    hostname: values.host,
    port: integer(values.port, "port", usage, [0, 65535]),
    path: values.unix,
    mode: oneOf<EchoMode>(values.mode, "mode", ["raw", "line"], usage),
    maxLineBytes: integer(values["max-line"], "max-line", usage, [1, 2 ** 30]),
    maxConns: integer(values["max-conns"], "max-conns", usage, [1, 2 ** 30]),
    maxConnsPerIp: integer(
      values["max-conns-per-ip"],
      "max-conns-per-ip",
      usage,
    ),
    idleTimeoutMs: secondsMs(values["idle-timeout"], "idle-timeout", usage),
    shutdownTimeoutMs: secondsMs(
      values["shutdown-timeout"],
      "shutdown-timeout",
      usage,
    ),
  };
  showStacks = levelName === "debug";
  await configureLogging(levelName, format);
  if (values["tls-cert"] !== undefined && values["tls-key"] !== undefined) {
    options.cert = await readPem(
      values["tls-cert"],
      "TLS certificate",
      "CERTIFICATE",
    );
    options.key = await readPem(values["tls-key"], "TLS key", "PRIVATE KEY");
  }
  if (options.path !== undefined) await removeStaleSocket(options.path);
  const server = serve(options);
  using _signals = onStopSignals(() => void server.close());
  await server.finished;
  return 0;
}

async function runClient(args: string[]): Promise<number> {
  const usage = USAGE.client;
  const values = parse(args, CLIENT_OPTIONS, usage);
  if (values.help) {
    console.log(CLIENT_HELP);
    return 0;
  }
  const options = await connectOptions(values, usage);
  using conn = await connect(options);
  if (!Deno.stdin.isTerminal()) {
    await pipe(conn);
    return 0;
  }
  console.error(`connected to ${targetName(options)}`);
  const end = await interactive(conn);
  if (end === "server-closed") console.error("connection closed by server");
  return end === "interrupted" ? 130 : 0;
}

/** With debug logging, failures also print their stack. */
let showStacks = false;

/** How many error lines `bench` prints before it only counts them. */
const BENCH_ERRORS_SHOWN = 5;

async function runBenchCommand(args: string[]): Promise<number> {
  const usage = USAGE.bench;
  const values = parse(args, BENCH_OPTIONS, usage);
  if (values.help) {
    console.log(BENCH_HELP);
    return 0;
  }
  const spawn = values["spawn-server"] ?? false;
  if (spawn && (values.host ?? values.port ?? values.unix) !== undefined) {
    throw new UsageError(
      "--spawn-server measures its own server: no --host, --port or --unix",
      usage,
    );
  }
  const target = await connectOptions(values, usage);
  const connections = integer(values.connections, "connections", usage, [
    1,
    100_000,
  ]) ?? BENCH_DEFAULTS.connections;
  const sizeBytes = integer(values.size, "size", usage, [1, 16 << 20]);
  const durationMs = secondsMs(values.duration, "duration", usage);
  if (durationMs === 0) {
    throw new UsageError("--duration must be more than 0", usage);
  }
  const pattern = oneOf(
    values.pattern,
    "pattern",
    ["pingpong", "stream"] as const,
    usage,
  );
  const stop = new AbortController();
  using _signals = onStopSignals(() => stop.abort());
  // The spawned server speaks what we send: lines get a line-mode server.
  await using server = spawn
    ? await spawnServer([
      ...(values.lines ? ["--mode", "line"] : []),
      ...(connections > SERVE_DEFAULTS.maxConns
        ? ["--max-conns", `${connections}`]
        : []),
    ])
    : undefined;
  if (server) {
    target.hostname = "127.0.0.1";
    target.port = server.port;
  }
  const progress = Deno.stderr.isTerminal();
  const stderr = new TextEncoder();
  let errorsShown = 0;
  const result = await runBench({
    ...target,
    connections,
    sizeBytes,
    durationMs,
    pattern,
    lines: values.lines,
    signal: stop.signal,
    onProgress: progress
      ? (p) =>
        Deno.stderr.writeSync(stderr.encode(`\r${formatProgress(p)}\x1b[K`))
      : undefined,
    onError(err) {
      if (errorsShown++ < BENCH_ERRORS_SHOWN) {
        console.error(`${progress ? "\r\x1b[K" : ""}warning: ${describe(err)}`);
      }
    },
  });
  if (progress) Deno.stderr.writeSync(stderr.encode("\r\x1b[K"));
  console.log(values.json ? JSON.stringify(result) : formatReport(result));
  if (result.errors > 0) {
    console.error(
      `error: ${result.errors} errors during the run (wrong echoes, resets or failed connections)`,
    );
    return 1;
  }
  return stop.signal.aborted ? 130 : 0;
}

/** The cause chain, `: `-joined, as the one `error:` line shows it. */
function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e !== undefined; e = (e as Error).cause) {
    // Deno appends the call to OS errors ("…(os error 2): readfile 'x'"); the
    // message already names the file.
    parts.push(
      e instanceof Error
        ? e.message.replace(/( \(os error \d+\)): \w+ '.*'$/, "$1")
        : String(e),
    );
    if (!(e instanceof Error)) break;
  }
  return parts.join(": ");
}

/** Runs the CLI on `args`; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case "server":
        return await runServer(rest);
      case "client":
        return await runClient(rest);
      case "bench":
        return await runBenchCommand(rest);
      case "-h":
      case "--help":
        console.log(MAIN_HELP);
        return 0;
      case "-V":
      case "--version":
        console.log(
          `tcpecho ${VERSION} (deno ${Deno.version.deno}, v8 ${Deno.version.v8})`,
        );
        return 0;
      case undefined:
        throw new UsageError("a command is required", USAGE.main);
      default:
        throw new UsageError(`unknown command "${command}"`, USAGE.main);
    }
  } catch (err) {
    console.error(`error: ${describe(err)}`);
    if (err instanceof UsageError) {
      console.error(err.usage);
      return 2;
    }
    if (showStacks) console.error(err);
    return 1;
  } finally {
    await reset();
  }
}

if (import.meta.main) {
  Deno.exitCode = await main(Deno.args);
}
