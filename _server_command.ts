/**
 * `tcpecho server`: its options, `--help` and run.
 *
 * @module
 */
import {
  checkTarget,
  type Command,
  type CommandContext,
  formatHelp,
  integer,
  oneOf,
  type Options,
  readPem,
  secondsMs,
  UsageError,
} from "./_cli.ts";
import { getLogger } from "@logtape/logtape";
import { type PoolOptions, ServerPool } from "./_server_pool.ts";
import { boundIoTick, IO_EVENTS_ENV, IO_EVENTS_PER_TICK } from "./_tick.ts";
import { formatAddr } from "./io.ts";
import {
  announce,
  LOG_DEFAULTS,
  LOG_FORMATS,
  LOG_LEVEL_NAMES,
  Seconds,
  writeStderr,
} from "./log.ts";
import {
  removeStaleSocket,
  SERVE_DEFAULTS,
  type ServeOptions,
} from "./server.ts";

/** `--workers` when not given. */
const WORKERS_DEFAULT = 1;

const OPTIONS = {
  host: {
    type: "string",
    arg: "ADDR",
    help:
      `address to bind; 0.0.0.0 or :: for other machines (default ${SERVE_DEFAULTS.hostname})`,
  },
  port: {
    type: "string",
    short: "p",
    arg: "N",
    help: `TCP port; 0 picks a free one (default ${SERVE_DEFAULTS.port})`,
  },
  unix: {
    type: "string",
    arg: "PATH",
    help: "listen on a unix socket instead of TCP",
  },
  mode: {
    type: "string",
    choices: ["raw", "line"],
    help:
      `raw: bytes back as they arrive; line: answer each whole line (default ${SERVE_DEFAULTS.mode})`,
  },
  "max-line": {
    type: "string",
    arg: "BYTES",
    help:
      `line mode: a longer line closes that connection (default ${SERVE_DEFAULTS.maxLineBytes})`,
  },
  "max-conns": {
    type: "string",
    arg: "N",
    help:
      `connections at once; more are accepted and closed (default ${SERVE_DEFAULTS.maxConns})`,
  },
  "max-conns-per-ip": {
    type: "string",
    arg: "N",
    help:
      `the same, per client address; 0 is off (default ${SERVE_DEFAULTS.maxConnsPerIp})`,
  },
  "idle-timeout": {
    type: "string",
    arg: "SECONDS",
    help: `close a connection that moved no byte this long; 0 is off (default ${
      SERVE_DEFAULTS.idleTimeoutMs / 1000
    })`,
  },
  "shutdown-timeout": {
    type: "string",
    arg: "SECONDS",
    help: `on SIGINT/SIGTERM wait this long for clients (default ${
      SERVE_DEFAULTS.shutdownTimeoutMs / 1000
    })`,
  },
  "tls-cert": {
    type: "string",
    arg: "FILE",
    label: "--tls-cert FILE --tls-key FILE",
    help: "serve TLS (PEM certificate chain and key)",
  },
  "tls-key": { type: "string", arg: "FILE" }, // in the --tls-cert row
  workers: {
    type: "string",
    arg: "N|auto",
    help:
      `serve in N worker threads, each listening on the port (Linux, TCP);\nauto: one per core (default ${WORKERS_DEFAULT})`,
  },
  "log-level": {
    type: "string",
    choices: LOG_LEVEL_NAMES,
    help: `(default ${LOG_DEFAULTS.level})`,
  },
  verbose: {
    type: "boolean",
    short: "v",
    help: "same as --log-level debug (each message)",
  },
  quiet: { type: "boolean", short: "q", help: "same as --log-level warn" },
  "log-format": {
    type: "string",
    choices: LOG_FORMATS,
    help: `json: one JSON object a line (default ${LOG_DEFAULTS.format})`,
  },
} as const satisfies Options;

const USAGE = "usage: tcpecho server [--host ADDR] [--port N | --unix PATH] " +
  "[--mode raw|line] [options]  (tcpecho server --help)";

/** `tcpecho server`: run an echo server until SIGINT/SIGTERM. */
export const serverCommand: Command<typeof OPTIONS> = {
  name: "server",
  summary: "run an echo server (raw bytes or lines; TCP, TLS or unix socket)",
  usage: USAGE,
  help: formatHelp({
    usage: USAGE,
    description:
      "Echo every byte (raw, RFC 862) or every line (line mode) back to each client.",
    options: OPTIONS,
    width: 26,
    notes: "Logs go to stderr; `listening on` is printed at any log level.\n" +
      "SIGINT/SIGTERM/SIGHUP stop gracefully, a second one exits 130; " +
      "SIGUSR1 logs\nthe counters. Workers take at most " +
      `${IO_EVENTS_ENV} (${IO_EVENTS_PER_TICK}\nunless set) ` +
      "I/O events per tick: that keeps busy connections even.",
  }),
  options: OPTIONS,
  async run(values, _positionals, ctx) {
    const {
      host,
      unix,
      "tls-cert": certFile,
      "tls-key": keyFile,
      verbose,
      quiet,
    } = values;
    if ((certFile === undefined) !== (keyFile === undefined)) {
      throw new UsageError("--tls-cert and --tls-key go together");
    }
    checkTarget(values);
    if (unix !== undefined && certFile !== undefined) {
      throw new UsageError("TLS is served over TCP only, not --unix");
    }
    if (verbose && quiet) {
      throw new UsageError("-v and -q cannot go together");
    }
    const level = oneOf(values, "log-level", OPTIONS["log-level"].choices) ??
      (verbose ? "debug" : quiet ? "warn" : LOG_DEFAULTS.level);
    const format = oneOf(values, "log-format", OPTIONS["log-format"].choices) ??
      LOG_DEFAULTS.format;
    const options: ServeOptions = {
      hostname: host,
      port: integer(values, "port", [0, 65535]),
      path: unix,
      mode: oneOf(values, "mode", OPTIONS.mode.choices),
      maxLineBytes: integer(values, "max-line", [1, 2 ** 30]),
      maxConns: integer(values, "max-conns", [1, 2 ** 30]),
      maxConnsPerIp: integer(values, "max-conns-per-ip"),
      idleTimeoutMs: secondsMs(values, "idle-timeout"),
      shutdownTimeoutMs: secondsMs(values, "shutdown-timeout"),
    };
    const workers = workerCount(values.workers, options.path !== undefined);
    await ctx.configureLogging(level, format);
    if (certFile !== undefined && keyFile !== undefined) {
      options.cert = await readPem(certFile, "TLS certificate", "CERTIFICATE");
      options.key = await readPem(keyFile, "TLS key", "PRIVATE KEY");
    }
    if (options.path !== undefined) await removeStaleSocket(options.path);
    return await runPool(ctx, {
      workers,
      serve: options,
      level,
      format,
      onLog: writeStderr,
    });
  },
};

/**
 * `--workers`: a count, or `auto` for one per core. Above 1, each worker
 * listens on the port with `SO_REUSEPORT`, which balances only on Linux, and
 * which a unix socket does not have: there `auto` means 1.
 *
 * @throws {UsageError} for a bad value, or above 1 where it cannot work
 */
function workerCount(value: string | undefined, unix: boolean): number {
  const linux = Deno.build.os === "linux" || Deno.build.os === "android";
  if (value === "auto") {
    return linux && !unix ? navigator.hardwareConcurrency : 1;
  }
  const n = integer({ workers: value }, "workers", [1, 1024]) ??
    WORKERS_DEFAULT;
  if (n > 1 && unix) {
    throw new UsageError(
      "--workers above 1 needs TCP: a unix socket has one listener",
    );
  }
  if (n > 1 && !linux) {
    throw new UsageError(
      `--workers above 1 needs Linux (SO_REUSEPORT), not ${Deno.build.os}`,
    );
  }
  return n;
}

/**
 * Runs the server's worker pool until a stop signal: signal handlers first,
 * then the workers, then `listening on` (at any log level); at the end
 * `stopped:` with the totals. A worker's death ends it with that error.
 *
 * @returns the exit code
 */
async function runPool(
  ctx: CommandContext,
  options: Omit<PoolOptions, "onDraining">,
): Promise<number> {
  const log = getLogger(["tcpecho", "server"]);
  const { serve, format } = options;
  // Signals are heard from now on, before the workers start.
  const running: { pool?: ServerPool; stopped?: boolean } = {};
  using _stop = ctx.onStopSignals(() => {
    running.stopped = true;
    void running.pool?.close();
  });
  using _stats = ctx.onStatsSignal(() => {
    running.pool?.stats().then(
      ({ active, served, refused, bytesOut }) =>
        log.info(
          "stats: {active} active, {served} served, {refused} refused, {bytesOut} bytes echoed",
          { active, served, refused, bytesOut },
        ),
      () => {}, // the pool is going down: finished says why
    );
  });
  // Before the workers start: their runtimes read it as they start.
  const tick = boundIoTick();
  if (tick.source === "default") {
    log.warn(
      "cannot set {name} (no --allow-env for it): under load, some connections may wait long",
      { name: IO_EVENTS_ENV },
    );
  }
  log.debug("{workers} workers, {name}={value} ({source})", {
    workers: options.workers,
    name: IO_EVENTS_ENV,
    ...tick,
  });
  const pool = running.pool = await ServerPool.start({
    ...options,
    onDraining(count) {
      if (count === 0) return;
      log.info(
        "stopping: waiting up to {timeout_s} s for {count} connections",
        {
          timeout_s: new Seconds(
            serve.shutdownTimeoutMs ?? SERVE_DEFAULTS.shutdownTimeoutMs,
          ),
          count,
        },
      );
    },
  });
  if (running.stopped) void pool.close();
  else {
    const where = formatAddr(pool.addr);
    announce(format, ["tcpecho", "server"], "listening on {where}", { where });
  }
  const { served, bytesOut } = await pool.finished;
  log.info("stopped: {served} connections served, {bytesOut} bytes echoed", {
    served,
    bytesOut,
  });
  return 0;
}
