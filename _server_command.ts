/**
 * `tcpecho server`: its options, `--help` and run.
 *
 * @module
 */
import {
  checkTarget,
  type Command,
  formatHelp,
  integer,
  oneOf,
  type Options,
  readPem,
  secondsMs,
  UsageError,
} from "./_cli.ts";
import { serveAdmin } from "./_admin.ts";
import { parseCidr } from "./_cidr.ts";
import { emptySnapshot, MetricsRecorder } from "./_metrics.ts";
import { LOG_DEFAULTS, LOG_FORMATS, LOG_LEVEL_NAMES } from "./log.ts";
import {
  removeStaleSocket,
  serve,
  SERVE_DEFAULTS,
  type ServeOptions,
  type Server,
} from "./server.ts";

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
    notes:
      "Logs go to stderr. SIGINT/SIGTERM stop gracefully; a second signal exits 130.",
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
      allow,
      deny,
      proxyProtocol,
    };
    await ctx.configureLogging(level, format);
    if (certFile !== undefined && keyFile !== undefined) {
      options.cert = await readPem(certFile, "TLS certificate", "CERTIFICATE");
      options.key = await readPem(keyFile, "TLS key", "PRIVATE KEY");
    }
    if (options.path !== undefined) await removeStaleSocket(options.path);
    // The admin endpoint binds first: if it cannot, no client was accepted.
    let server: Server | undefined;
    let draining = false;
    const metrics = admin && new MetricsRecorder();
    options.onConnState = metrics?.onConnState;
    await using _admin = admin && serveAdmin({
      ...admin,
      snapshot: () =>
        server ? metrics!.snapshot(server.stats) : emptySnapshot(),
      ready: () => server !== undefined && !draining,
    });
    const running = server = serve(options);
    using _signals = ctx.onStopSignals(() => {
      draining = true;
      void running.close();
    });
    await running.finished;
    return 0;
  },
};

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
