/**
 * `tcpecho bench` and `tcpecho bench merge`: options, `--help` and run. The
 * CLI runs the connections (with `--udp`, the sockets) in worker isolates
 * (`--threads`, at least one) whose runtime has a bounded I/O tick; the
 * library's `runBench()` and `runUdpBench()` run them in the caller's isolate
 * with the same driver.
 *
 * @module
 */
import {
  bytes,
  checkConnect,
  type Command,
  CONNECT_OPTIONS,
  formatHelp,
  groupOptions,
  integer,
  oneOf,
  type Options,
  secondsMs,
  UsageError,
  type Values,
  withCa,
} from "./_cli.ts";
import { type BenchOutcome, drive } from "./_bench_driver.ts";
import { ErrorGroups } from "./_bench_report.ts";
import { split, WorkerShard } from "./_bench_threads.ts";
import { HlogWriter, mergeHlogs } from "./_hlog.ts";
import { boundIoTick } from "./_tick.ts";
import {
  BENCH_DEFAULTS,
  type BenchIntervalListener,
  type BenchProgress,
  checkBenchOptions,
  formatInterval,
  formatProgress,
  formatReport,
  spawnServer,
} from "./bench.ts";
import { CONNECT_DEFAULTS, targetName } from "./client.ts";
import { SERVE_DEFAULTS } from "./server.ts";
import { checkUdpBenchOptions } from "./_udp_bench.ts";
import { MAX_UDP4_PAYLOAD, UDP_BENCH_DEFAULTS } from "./udp.ts";

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
    choices: ["pingpong", "stream", "connect"],
    help: `one message in flight per connection, continuous streaming, or\n` +
      `connect, one message, close, again (default ${BENCH_DEFAULTS.pattern})`,
  },
  rate: {
    type: "string",
    arg: "N",
    help: "open loop: N messages/s in total, spread evenly; latency from\n" +
      "each message's intended send time (pingpong, connect)",
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
  threads: {
    type: "string",
    arg: "N",
    help: "worker threads the connections are split over (default 1)",
  },
  interval: {
    type: "string",
    arg: "SECONDS",
    help: "one line per interval on stderr: time, msg/s, MiB/s, p99",
  },
  hlog: {
    type: "string",
    arg: "FILE",
    help: "write an HdrHistogram interval log (format 1.3, one histogram\n" +
      'a second); "tcpecho bench merge" adds up several',
  },
  json: {
    type: "boolean",
    help: "one JSON object on stdout instead of the report",
  },
  "send-proxy": {
    type: "string",
    choices: ["v1", "v2"],
    help: "each connection first sends a PROXY header (its own address as\n" +
      "the source), for servers run with --proxy-protocol",
  },
  "spawn-server": {
    type: "boolean",
    help: 'start "tcpecho server --port 0" (with --lines: --mode line and a\n' +
      "--max-line that fits -s; with --udp: --udp) as a child, measure it,\n" +
      "stop it",
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho bench [--host ADDR] [--port N | --unix PATH] " +
  "[--tls [--ca FILE | --insecure]] [--connect-timeout SECONDS] " +
  "[-c N] [-s BYTES] [-d SECONDS] [--pattern pingpong|stream|connect] " +
  "[--rate N] [--lines] [--udp] [--threads N] [--interval SECONDS] [--hlog FILE] " +
  "[--json] [--send-proxy v1|v2] [--spawn-server] [HOST [PORT] | HOST:PORT]" +
  "  (tcpecho bench --help)";

/** How many error lines `bench` prints as they happen; the report groups them all. */
const ERRORS_SHOWN = 5;
/** Most worker threads. */
const MAX_THREADS = 64;
/** Options a UDP ping-pong has no use for, refused with `--udp`. */
const TCP_ONLY = [
  "unix",
  "tls",
  "ca",
  "connect-timeout",
  "lines",
  "rate",
] as const;

const MERGE_OPTIONS = {
  json: {
    type: "boolean",
    help: "one JSON object on stdout instead of the report",
  },
} as const satisfies Options;

const MERGE_USAGE =
  "usage: tcpecho bench merge [--json] FILE.hlog…  (tcpecho bench merge --help)";

/** What `bench merge` checks before it reads any file. @throws {UsageError} */
function checkMerge(_values: unknown, positionals: string[]): void {
  if (positionals.length === 0) {
    throw new UsageError("bench merge needs one or more --hlog files");
  }
}

/** `tcpecho bench merge`: one report from several `--hlog` files. */
const mergeCommand: Command<typeof MERGE_OPTIONS> = {
  name: "merge",
  summary: "one report from the --hlog files of several runs",
  usage: MERGE_USAGE,
  help: formatHelp({
    usage: MERGE_USAGE,
    description:
      `Add up the HdrHistogram logs (--hlog) of several bench runs, on one machine
or many, into one report: histograms exactly, connections and errors summed,
rates over the time the logs span together.`,
    options: MERGE_OPTIONS,
    width: 16,
  }),
  options: MERGE_OPTIONS,
  allowPositionals: true,
  check: checkMerge,
  async run(values, positionals) {
    checkMerge(values, positionals);
    const logs = [];
    for (const name of positionals) {
      try {
        logs.push({ name, text: await Deno.readTextFile(name) });
      } catch (cause) {
        throw new Error(`cannot read "${name}"`, { cause });
      }
    }
    const { result, histogram, udp } = mergeHlogs(logs);
    const n = logs.length;
    console.log(
      values.json ? JSON.stringify(result) : formatReport(result, {
        histogram,
        source: `merge of ${n} log${n === 1 ? "" : "s"}`,
        udp,
      }),
    );
    return 0;
  },
};

/**
 * Every check `tcpecho bench` makes before it starts anything (no CA file
 * read, no server spawned, nothing printed), and the settings they give.
 *
 * @throws {UsageError} naming what is wrong
 */
function checkBench(values: Values<typeof OPTIONS>, positionals: string[]) {
  const { host, port, unix, udp, hlog, "spawn-server": spawn } = values;
  if (
    spawn && ((host ?? port ?? unix) !== undefined || positionals.length > 0)
  ) {
    throw new UsageError(
      "--spawn-server measures its own server: no --host, --port, --unix or HOST PORT",
    );
  }
  if (udp) {
    for (const name of TCP_ONLY) {
      if (values[name] !== undefined) {
        throw new UsageError(`--${name} cannot go with --udp`);
      }
    }
  }
  if (spawn && values.tls) {
    throw new UsageError(
      "--spawn-server starts a plain server: for TLS, start tcpecho server with " +
        "--tls-cert and --tls-key and bench it with --tls --ca",
    );
  }
  const target = checkConnect(values, positionals);
  const connections = integer(values, "connections", [1, 100_000]) ??
    BENCH_DEFAULTS.connections;
  const sizeBytes = bytes(values, "size", [
    1,
    udp ? MAX_UDP4_PAYLOAD : 16 << 20,
  ]) ?? BENCH_DEFAULTS.sizeBytes;
  const durationMs = secondsMs(values, "duration", { positive: true });
  const pattern = oneOf(values, "pattern", OPTIONS.pattern.choices) ??
    BENCH_DEFAULTS.pattern;
  if (udp && pattern !== "pingpong") {
    throw new UsageError(`--pattern ${pattern} cannot go with --udp`);
  }
  const rate = integer(values, "rate", [1, 100_000_000]);
  if (rate !== undefined && pattern === "stream") {
    throw new UsageError("--rate paces messages: not with --pattern stream");
  }
  if (hlog !== undefined && pattern === "stream") {
    throw new UsageError("--hlog logs latency: not with --pattern stream");
  }
  const threads = integer(values, "threads", [1, MAX_THREADS]) ?? 1;
  const intervalMs = secondsMs(values, "interval");
  if (intervalMs !== undefined && intervalMs < 10) {
    throw new UsageError("--interval must be at least 0.01 seconds");
  }
  const sendProxy = oneOf(
    values,
    "send-proxy",
    OPTIONS["send-proxy"].choices,
  );
  if (udp && sendProxy !== undefined) {
    throw new UsageError("--send-proxy cannot go with --udp");
  }
  return {
    target,
    connections,
    sizeBytes,
    durationMs,
    pattern,
    rate,
    threads,
    intervalMs,
    sendProxy,
  };
}

/** `tcpecho bench`: load-test an echo server, checking every echoed byte. */
export const benchCommand: Command<typeof OPTIONS> = {
  name: "bench",
  summary: "load-test an echo server (this one, ncat, socat, …)",
  usage: USAGE,
  commands: [mergeCommand as unknown as Command],
  help: formatHelp({
    usage: USAGE,
    description:
      `Load-test an echo server and check every echoed byte (a mismatch is an error,
exit 1). Reports messages/s, MiB/s, latency percentiles and a histogram,
per-connection fairness, and errors grouped by cause. With --udp, ping-pong
over UDP: a reply not back in time is lost (counted apart, not an error).`,
    options: OPTIONS,
    width: 28,
    notes:
      `A progress line goes to stderr when it is a terminal. Ctrl+C stops early and
still prints what was measured (exit 130). The connections run in worker
threads whose runtime handles at most DENO_TOKIO_MAX_IO_EVENTS_PER_TICK I/O
events per turn (128 unless set), so every connection gets its turn. With
--udp the sockets run there too, split over --threads alike.
"tcpecho bench merge --help": one report from several --hlog files.`,
  }),
  options: OPTIONS,
  allowPositionals: true,
  check: checkBench,
  async run(values, positionals, ctx) {
    const { lines, udp, json, hlog, "spawn-server": spawn } = values;
    const bench = checkBench(values, positionals);
    const target = await withCa(bench.target); // the CA file read now
    target.sendProxy = bench.sendProxy;
    const stop = new AbortController();
    using _signals = ctx.onStopSignals(() => stop.abort());
    // The spawned server speaks what we send: lines get a line-mode server
    // whose line limit fits the message, --udp a UDP server.
    await using server = spawn
      ? await spawnServer([
        ...(lines ? ["--mode", "line"] : []),
        ...(bench.sendProxy ? ["--proxy-protocol", bench.sendProxy] : []),
        ...(lines && bench.sizeBytes - 1 > SERVE_DEFAULTS.maxLineBytes
          ? ["--max-line", `${bench.sizeBytes - 1}`]
          : []),
        ...(udp ? ["--udp"] : []),
        ...(!udp && bench.connections > SERVE_DEFAULTS.maxConns
          ? ["--max-conns", `${bench.connections}`]
          : []),
      ])
      : undefined;
    if (server) {
      target.hostname = "127.0.0.1";
      target.port = server.port;
    }
    const name = targetName(target);
    using log = hlog === undefined ? undefined : new HlogWriter(hlog, {
      target: name,
      pattern: bench.pattern,
      connections: bench.connections,
      size: bench.sizeBytes,
      rate: bench.rate ?? null,
      ...(udp ? { udp: true as const } : {}),
    });
    const progress = Deno.stderr.isTerminal();
    const encoder = new TextEncoder();
    const clear = progress ? "\r\x1b[K" : "";
    const groups = new ErrorGroups({
      lines: lines ?? false,
      sizeBytes: bench.sizeBytes,
    });
    let errorsShown = 0;
    const intervals: BenchIntervalListener[] = [];
    if (bench.intervalMs !== undefined) {
      intervals.push({
        everyMs: bench.intervalMs,
        onInterval: (i) => console.error(`${clear}${formatInterval(i)}`),
      });
    }
    if (log) intervals.push(log.listener());
    const common = {
      connections: bench.connections,
      sizeBytes: bench.sizeBytes,
      durationMs: bench.durationMs,
      signal: stop.signal,
      intervals,
      onProgress: progress
        ? (p: BenchProgress) =>
          Deno.stderr.writeSync(encoder.encode(`\r${formatProgress(p)}\x1b[K`))
        : undefined,
      onError(err: Error) {
        groups.add(err, ctx.describe);
        if (errorsShown++ < ERRORS_SHOWN) {
          console.error(`${clear}warning: ${ctx.describe(err)}`);
        }
      },
    };
    const settings = udp
      ? checkUdpBenchOptions({
        hostname: target.hostname,
        port: target.port,
        ...common,
      })
      : checkBenchOptions({
        ...target,
        ...common,
        pattern: bench.pattern,
        rate: bench.rate,
        lines,
      });
    boundIoTick(); // before the workers start: their runtimes read it
    const workers: WorkerShard[] = [];
    let outcome: BenchOutcome;
    try {
      outcome = await drive(
        settings,
        (events) =>
          split(bench.connections, bench.threads).map((share, i) => {
            const worker = new WorkerShard(
              i,
              { ...settings.shard, ...share },
              events,
            );
            workers.push(worker);
            return worker;
          }),
      );
    } finally {
      for (const worker of workers) await worker[Symbol.asyncDispose]();
    }
    const { result, histogram } = outcome;
    log?.end({
      errors: result.errors,
      ...(udp ? { lost: result.lost } : {}),
    });
    if (progress) Deno.stderr.writeSync(encoder.encode(clear));
    const errorGroups = groups.groups;
    if (json) {
      console.log(JSON.stringify(result));
      for (const group of errorGroups) {
        console.error(
          `errors: ${group.count} × ${group.cause}${
            group.hint ? ` (hint: ${group.hint})` : ""
          }`,
        );
      }
    } else {
      console.log(formatReport(result, {
        target: name,
        threads: bench.threads,
        warmupMs: BENCH_DEFAULTS.warmupMs,
        histogram,
        errors: errorGroups,
        udp,
      }));
    }
    if (
      udp && result.messages === 0 && result.lost > 0 && !stop.signal.aborted
    ) {
      // Nothing measured: a failed run, as a dead TCP target is.
      throw new Error(
        "no reply came back: is a UDP echo server listening there?",
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
