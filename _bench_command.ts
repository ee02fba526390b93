/**
 * `tcpecho bench`: its options, `--help` and run.
 *
 * @module
 */
import {
  type Command,
  CONNECT_OPTIONS,
  connectOptions,
  formatHelp,
  groupOptions,
  integer,
  oneOf,
  type Options,
  secondsMs,
  UsageError,
} from "./_cli.ts";
import {
  BENCH_DEFAULTS,
  formatProgress,
  formatReport,
  runBench,
  spawnServer,
} from "./bench.ts";
import { CONNECT_DEFAULTS } from "./client.ts";
import { SERVE_DEFAULTS } from "./server.ts";

const OPTIONS = {
  ...groupOptions(
    CONNECT_OPTIONS,
    `the target, as for client (default ${CONNECT_DEFAULTS.hostname}:${CONNECT_DEFAULTS.port})`,
  ),
  connections: {
    type: "string",
    short: "c",
    arg: "N",
    help: `concurrent connections (default ${BENCH_DEFAULTS.connections})`,
  },
  size: {
    type: "string",
    short: "s",
    arg: "BYTES",
    help: `message size (default ${BENCH_DEFAULTS.sizeBytes})`,
  },
  duration: {
    type: "string",
    short: "d",
    arg: "SECONDS",
    help: `measuring time, after a ${
      BENCH_DEFAULTS.warmupMs / 1000
    } s warm-up (default ${BENCH_DEFAULTS.durationMs / 1000})`,
  },
  pattern: {
    type: "string",
    choices: ["pingpong", "stream"],
    help:
      `one message in flight per connection, or continuous streaming (default ${BENCH_DEFAULTS.pattern})`,
  },
  lines: {
    type: "boolean",
    help:
      'each message is printable text ending in "\\n" (for line-mode servers)',
  },
  json: {
    type: "boolean",
    help: "one JSON object on stdout instead of the table",
  },
  "send-proxy": {
    type: "string",
    choices: ["v1", "v2"],
    help: "each connection first sends a PROXY header (its own address as\n" +
      "the source), for servers run with --proxy-protocol",
  },
  "spawn-server": {
    type: "boolean",
    help: 'start "tcpecho server --port 0" (with --lines: --mode line)\n' +
      "as a child, measure it, stop it",
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho bench [--host ADDR] [--port N | --unix PATH] " +
  "[-c N] [-s BYTES] [-d SECONDS] [--pattern pingpong|stream] [--lines] [--json]" +
  "  (tcpecho bench --help)";

/** How many error lines `bench` prints before it only counts them. */
const ERRORS_SHOWN = 5;

/** `tcpecho bench`: load-test an echo server, checking every echoed byte. */
export const benchCommand: Command<typeof OPTIONS> = {
  name: "bench",
  summary: "load-test an echo server (this one, ncat, socat, …)",
  usage: USAGE,
  help: formatHelp({
    usage: USAGE,
    description:
      `Load-test an echo server and check every echoed byte (a mismatch is an error,
exit 1). Reports messages/s, MiB/s, round-trip latency and errors.`,
    options: OPTIONS,
    width: 28,
    notes:
      `A progress line goes to stderr when it is a terminal. Ctrl+C stops early and
still prints what was measured (exit 130).`,
  }),
  options: OPTIONS,
  async run(values, _positionals, ctx) {
    const { host, port, unix, lines, json, "spawn-server": spawn } = values;
    if (spawn && (host ?? port ?? unix) !== undefined) {
      throw new UsageError(
        "--spawn-server measures its own server: no --host, --port or --unix",
      );
    }
    const target = await connectOptions(values);
    const connections = integer(values, "connections", [1, 100_000]) ??
      BENCH_DEFAULTS.connections;
    const sizeBytes = integer(values, "size", [1, 16 << 20]);
    const durationMs = secondsMs(values, "duration");
    if (durationMs === 0) {
      throw new UsageError("--duration must be more than 0");
    }
    const pattern = oneOf(values, "pattern", OPTIONS.pattern.choices);
    const sendProxy = oneOf(
      values,
      "send-proxy",
      OPTIONS["send-proxy"].choices,
    );
    const stop = new AbortController();
    using _signals = ctx.onStopSignals(() => stop.abort());
    // The spawned server speaks what we send: lines get a line-mode server.
    await using server = spawn
      ? await spawnServer([
        ...(lines ? ["--mode", "line"] : []),
        ...(sendProxy ? ["--proxy-protocol", sendProxy] : []),
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
      lines,
      sendProxy,
      signal: stop.signal,
      onProgress: progress
        ? (p) =>
          Deno.stderr.writeSync(stderr.encode(`\r${formatProgress(p)}\x1b[K`))
        : undefined,
      onError(err) {
        if (errorsShown++ < ERRORS_SHOWN) {
          const clear = progress ? "\r\x1b[K" : "";
          console.error(`${clear}warning: ${ctx.describe(err)}`);
        }
      },
    });
    if (progress) Deno.stderr.writeSync(stderr.encode("\r\x1b[K"));
    console.log(json ? JSON.stringify(result) : formatReport(result));
    if (result.errors > 0) {
      throw new Error(
        `${result.errors} errors during the run (wrong echoes, resets or failed connections)`,
      );
    }
    return stop.signal.aborted ? 130 : 0;
  },
};
