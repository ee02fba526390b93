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
  type BenchProgress,
  type BenchResult,
  formatProgress,
  formatReport,
  runBench,
  spawnServer,
} from "./bench.ts";
import { CONNECT_DEFAULTS } from "./client.ts";
import { SERVE_DEFAULTS } from "./server.ts";
import { MAX_UDP4_PAYLOAD, runUdpBench, UDP_BENCH_DEFAULTS } from "./udp.ts";

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
  udp: {
    type: "boolean",
    help: `ping-pong over UDP, one socket per connection; a reply not back
within ${UDP_BENCH_DEFAULTS.lossTimeoutMs / 1000} s is lost`,
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
  "spawn-server": {
    type: "boolean",
    help: 'start "tcpecho server --port 0" (with --lines: --mode line,\n' +
      "with --udp: --udp) as a child, measure it, stop it",
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho bench [--host ADDR] [--port N | --unix PATH] " +
  "[-c N] [-s BYTES] [-d SECONDS] [--pattern pingpong|stream] [--lines] [--udp]" +
  " [--json]  (tcpecho bench --help)";

/** Options a UDP ping-pong has no use for, refused with `--udp`. */
const TCP_ONLY = ["unix", "tls", "ca", "connect-timeout", "lines"] as const;

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
    const { host, port, unix, lines, udp, json, "spawn-server": spawn } =
      values;
    if (spawn && (host ?? port ?? unix) !== undefined) {
      throw new UsageError(
        "--spawn-server measures its own server: no --host, --port or --unix",
      );
    }
    if (udp) {
      for (const name of TCP_ONLY) {
        if (values[name] !== undefined) {
          throw new UsageError(`--${name} cannot go with --udp`);
        }
      }
    }
    const target = await connectOptions(values);
    const connections = integer(values, "connections", [1, 100_000]) ??
      BENCH_DEFAULTS.connections;
    const sizeBytes = integer(values, "size", [
      1,
      udp ? MAX_UDP4_PAYLOAD : 16 << 20,
    ]);
    const durationMs = secondsMs(values, "duration");
    if (durationMs === 0) {
      throw new UsageError("--duration must be more than 0");
    }
    const pattern = oneOf(values, "pattern", OPTIONS.pattern.choices);
    if (udp && pattern === "stream") {
      throw new UsageError("--pattern stream cannot go with --udp");
    }
    const stop = new AbortController();
    using _signals = ctx.onStopSignals(() => stop.abort());
    // The spawned server speaks what we send: lines get a line-mode server.
    await using server = spawn
      ? await spawnServer([
        ...(lines ? ["--mode", "line"] : []),
        ...(udp ? ["--udp"] : []),
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
    const common = {
      connections,
      sizeBytes,
      durationMs,
      signal: stop.signal,
      onProgress: progress
        ? (p: BenchProgress) =>
          Deno.stderr.writeSync(stderr.encode(`\r${formatProgress(p)}\x1b[K`))
        : undefined,
      onError(err: Error) {
        if (errorsShown++ < ERRORS_SHOWN) {
          const clear = progress ? "\r\x1b[K" : "";
          console.error(`${clear}warning: ${ctx.describe(err)}`);
        }
      },
    };
    const result: BenchResult = udp
      ? await runUdpBench({
        hostname: target.hostname,
        port: target.port,
        ...common,
      })
      : await runBench({ ...target, ...common, pattern, lines });
    if (progress) Deno.stderr.writeSync(stderr.encode("\r\x1b[K"));
    console.log(json ? JSON.stringify(result) : formatReport(result, { udp }));
    if (udp && result.messages === 0 && result.lost > 0) {
      console.error(
        "warning: no reply came back: is a UDP echo server listening there?",
      );
    }
    if (result.errors > 0) {
      throw new Error(
        `${result.errors} errors during the run (wrong echoes, resets or failed connections)`,
      );
    }
    return stop.signal.aborted ? 130 : 0;
  },
};
