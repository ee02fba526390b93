/**
 * `tcpecho server`: its options, `--help` and run.
 *
 * @module
 */
import {
  bytes,
  checkKeyPair,
  checkTarget,
  type Command,
  formatHelp,
  fraction,
  integer,
  milliseconds,
  oneOf,
  type Options,
  readPem,
  secondsMs,
  UsageError,
  type Values,
} from "./_cli.ts";
import { parseCidr } from "./_cidr.ts";
import { runPool, runUdp } from "./_server_run.ts";
import { IO_EVENTS_ENV, IO_EVENTS_PER_TICK } from "./_tick.ts";
import { LOG_DEFAULTS, LOG_FORMATS, LOG_LEVEL_NAMES } from "./log.ts";
import {
  removeStaleSocket,
  SERVE_DEFAULTS,
  type ServeOptions,
} from "./server.ts";
import { UDP_SERVE_DEFAULTS } from "./udp.ts";

/** The longest `--delay`, `--jitter` or `--slice-delay`: a day. */
const MAX_FAULT_MS = 86_400_000;

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
    help:
      `TCP (or UDP) port; 0 picks a free one (default ${SERVE_DEFAULTS.port})`,
  },
  unix: {
    type: "string",
    arg: "PATH",
    help: "listen on a unix socket instead of TCP",
  },
  udp: {
    type: "boolean",
    help: "serve UDP instead: echo each datagram to its sender",
  },
  mode: {
    type: "string",
    choices: ["raw", "line", "discard"],
    help:
      `raw: bytes back as they arrive; line: answer each whole line;\ndiscard: read and drop everything (default ${SERVE_DEFAULTS.mode})`,
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
  drop: {
    type: "string",
    arg: "FRACTION",
    help:
      `UDP: drop this share (0-1) of datagrams unanswered (default ${UDP_SERVE_DEFAULTS.drop})`,
  },
  delay: {
    type: "string",
    arg: "MS",
    help:
      `fault: hold each echo back this long, TCP and UDP (default ${SERVE_DEFAULTS.delayMs})`,
  },
  jitter: {
    type: "string",
    arg: "MS",
    help:
      `fault: plus a random 0..MS per echo, seeded (default ${SERVE_DEFAULTS.jitterMs})`,
  },
  slice: {
    type: "string",
    arg: "BYTES",
    help:
      `fault: write each echo in pieces of at most BYTES; 0 is off (default ${SERVE_DEFAULTS.sliceBytes})`,
  },
  "slice-delay": {
    type: "string",
    arg: "MS",
    help:
      `fault: pause this long between pieces (writes) (default ${SERVE_DEFAULTS.sliceDelayMs})`,
  },
  bandwidth: {
    type: "string",
    arg: "KIB",
    help:
      `fault: cap each connection's echo at KIB KiB/s; 0 is off (default ${SERVE_DEFAULTS.bandwidthKiBps})`,
  },
  "close-after": {
    type: "string",
    arg: "BYTES",
    help:
      `fault: echo this many bytes, then close the connection; 0 is off (default ${SERVE_DEFAULTS.closeAfterBytes})`,
  },
  faulty: {
    type: "string",
    arg: "FRACTION",
    help:
      `share of connections (0-1) the faults apply to (default ${SERVE_DEFAULTS.faulty})`,
  },
  seed: {
    type: "string",
    arg: "N",
    help:
      "seeds --jitter, --faulty and --drop (default: random; logged at start)",
  },
  allow: {
    type: "string",
    multiple: true,
    arg: "CIDR",
    help:
      "only clients in this range (IPv4 or IPv6; an address is one host);\n" +
      "repeatable; others are accepted and closed (default everyone)",
  },
  deny: {
    type: "string",
    multiple: true,
    arg: "CIDR",
    help: "refuse clients in this range, even if allowed; repeatable",
  },
  "proxy-protocol": {
    type: "string",
    choices: ["v1", "v2", "any"],
    help: "each connection starts with a PROXY header (HAProxy's); its\n" +
      "source is the client for logs, limits, --allow/--deny (default off)",
  },
  admin: {
    type: "string",
    arg: "HOST:PORT",
    help: "serve GET /metrics (Prometheus), /healthz, /readyz (default off)",
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
  "[--mode raw|line|discard | --udp] [--tls-cert FILE --tls-key FILE] [options]" +
  "  (tcpecho server --help)";

/** Options that mean nothing without connections, refused with `--udp`. */
const TCP_ONLY = [
  "unix",
  "tls-cert",
  "tls-key",
  "max-line",
  "max-conns",
  "max-conns-per-ip",
  "idle-timeout",
  "slice",
  "slice-delay",
  "bandwidth",
  "close-after",
  "faulty",
  "allow",
  "deny",
  "proxy-protocol",
  "admin",
] as const;

/**
 * Refuses what does not go with the transport: TCP-only options with
 * `--udp`, UDP-only ones without it.
 *
 * @throws {UsageError}
 */
function checkTransport(values: Values<typeof OPTIONS>): void {
  if (!values.udp) {
    if (values.drop !== undefined) {
      throw new UsageError("--drop needs --udp");
    }
    return;
  }
  if (values.mode !== undefined && values.mode !== "raw") {
    throw new UsageError(
      `--mode ${values.mode} cannot go with --udp: UDP echoes raw`,
    );
  }
  for (const name of TCP_ONLY) {
    if (values[name] !== undefined) {
      throw new UsageError(`--${name} cannot go with --udp`);
    }
  }
}

/** `tcpecho server`: run an echo server until SIGINT/SIGTERM. */
export const serverCommand: Command<typeof OPTIONS> = {
  name: "server",
  summary: "run an echo server (raw bytes or lines; TCP, TLS or unix socket)",
  usage: USAGE,
  help: formatHelp({
    usage: USAGE,
    description:
      `Echo every byte (raw, RFC 862) or every line (line mode) back to each client,
or with --udp each datagram to its sender.`,
    options: OPTIONS,
    width: 26,
    notes:
      "Logs go to stderr; `listening on` and `admin on` are printed at any log level.\n" +
      "SIGINT/SIGTERM/SIGHUP/SIGQUIT stop gracefully, a second one exits 130;\n" +
      "SIGUSR1 logs the counters; SIGUSR2 is ignored. Workers take at most\n" +
      `${IO_EVENTS_ENV} (${IO_EVENTS_PER_TICK} unless set) I/O events per tick:\n` +
      "that keeps busy connections even. --udp serves from one socket in the\n" +
      "main isolate (Deno cannot share a UDP port between workers): --workers N\n" +
      "over 1 with --udp is refused, auto means 1.",
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
    checkTransport(values);
    const { allow = [], deny = [] } = values;
    for (const [name, rules] of [["allow", allow], ["deny", deny]] as const) {
      for (const rule of rules) {
        try {
          parseCidr(rule);
        } catch {
          throw new UsageError(
            `--${name} takes an IP address or CIDR range, not "${rule}"`,
          );
        }
      }
    }
    const proxyProtocol = oneOf(
      values,
      "proxy-protocol",
      OPTIONS["proxy-protocol"].choices,
    );
    if (
      unix !== undefined && allow.length + deny.length > 0 && !proxyProtocol
    ) {
      throw new UsageError(
        "--allow and --deny need client addresses: not --unix (unless --proxy-protocol)",
      );
    }
    const admin = values.admin === undefined
      ? undefined
      : hostPort(values.admin, "admin");
    const level = oneOf(values, "log-level", OPTIONS["log-level"].choices) ??
      (verbose ? "debug" : quiet ? "warn" : LOG_DEFAULTS.level);
    const format = oneOf(values, "log-format", OPTIONS["log-format"].choices) ??
      LOG_DEFAULTS.format;
    const workers = workerCount(values.workers, {
      unix: unix !== undefined,
      udp: values.udp === true,
    });
    if (values.udp) {
      oneOf(values, "mode", OPTIONS.mode.choices);
      const options = {
        hostname: host,
        port: integer(values, "port", [0, 65535]),
        drop: fraction(values, "drop"),
        delayMs: milliseconds(values, "delay", [0, 3_600_000]),
        jitterMs: milliseconds(values, "jitter", [0, 3_600_000]),
        seed: integer(values, "seed", [0, 2 ** 32 - 1]),
        shutdownTimeoutMs: secondsMs(values, "shutdown-timeout"),
      };
      await ctx.configureLogging(level, format);
      return await runUdp(ctx, options);
    }
    const mode = oneOf(values, "mode", OPTIONS.mode.choices);
    const echoFaults = [
      "delay",
      "jitter",
      "slice",
      "slice-delay",
      "bandwidth",
      "close-after",
    ] as const;
    for (const name of echoFaults) {
      if (mode === "discard" && values[name] !== undefined) {
        throw new UsageError(
          `--${name} does nothing with --mode discard (nothing is echoed)`,
        );
      }
    }
    const options: ServeOptions = {
      hostname: host,
      port: integer(values, "port", [0, 65535]),
      path: unix,
      mode,
      maxLineBytes: bytes(values, "max-line", [1, 2 ** 30]),
      maxConns: integer(values, "max-conns", [1, 2 ** 30]),
      maxConnsPerIp: integer(values, "max-conns-per-ip"),
      idleTimeoutMs: secondsMs(values, "idle-timeout"),
      shutdownTimeoutMs: secondsMs(values, "shutdown-timeout"),
      delayMs: milliseconds(values, "delay", [0, MAX_FAULT_MS]),
      jitterMs: milliseconds(values, "jitter", [0, MAX_FAULT_MS]),
      sliceBytes: bytes(values, "slice", [0, 2 ** 30]),
      sliceDelayMs: milliseconds(values, "slice-delay", [0, MAX_FAULT_MS]),
      bandwidthKiBps: integer(values, "bandwidth", [0, 2 ** 30]),
      closeAfterBytes: bytes(values, "close-after"),
      faulty: fraction(values, "faulty"),
      seed: integer(values, "seed", [0, 2 ** 32 - 1]),
      allow,
      deny,
      proxyProtocol,
    };
    if (
      options.maxLineBytes !== undefined &&
      (options.mode ?? SERVE_DEFAULTS.mode) !== "line"
    ) throw new UsageError("--max-line applies to --mode line");
    await ctx.configureLogging(level, format);
    if (certFile !== undefined && keyFile !== undefined) {
      options.cert = await readPem(certFile, "TLS certificate", "CERTIFICATE");
      options.key = await readPem(keyFile, "TLS key", "PRIVATE KEY");
      await checkKeyPair(
        { file: certFile, pem: options.cert },
        { file: keyFile, pem: options.key },
      );
    }
    if (options.path !== undefined) await removeStaleSocket(options.path);
    return await runPool(ctx, {
      workers,
      serve: options,
      level,
      format,
      admin,
    });
  },
};

/**
 * `--workers`: a count, or `auto` for one per core. Above 1, each worker
 * listens on the port with `SO_REUSEPORT`, which balances only on Linux, and
 * which neither a unix socket nor UDP (served in the main isolate) has:
 * there `auto` means 1.
 *
 * @throws {UsageError} for a bad value, or above 1 where it cannot work
 */
function workerCount(
  value: string | undefined,
  where: { unix: boolean; udp: boolean },
): number {
  const linux = Deno.build.os === "linux" || Deno.build.os === "android";
  if (value === "auto") {
    return linux && !where.unix && !where.udp
      ? navigator.hardwareConcurrency
      : 1;
  }
  const n = integer({ workers: value }, "workers", [1, 1024]) ??
    WORKERS_DEFAULT;
  if (n > 1 && where.unix) {
    throw new UsageError(
      "--workers above 1 needs TCP: a unix socket has one listener",
    );
  }
  if (n > 1 && where.udp) {
    throw new UsageError(
      "--workers above 1 cannot go with --udp: UDP is served from one socket",
    );
  }
  if (n > 1 && !linux) {
    throw new UsageError(
      `--workers above 1 needs Linux (SO_REUSEPORT), not ${Deno.build.os}`,
    );
  }
  return n;
}

/** `HOST:PORT` or `[IPv6]:PORT`, or a usage error naming the option. */
function hostPort(
  value: string,
  name: string,
): { hostname: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(value);
  const port = Number(match?.[3]);
  if (match === null || port > 65535) {
    throw new UsageError(`--${name} takes HOST:PORT, not "${value}"`);
  }
  return { hostname: match[1] ?? match[2], port };
}
